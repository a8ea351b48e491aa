// Package pidfile writes and reads the file that names attache's running
// process, so that `attache upgrade` and service managers (systemd's
// PIDFile=) find the current process across zero-downtime upgrades, in
// which the process id changes while the service does not stop.
//
// Typical usage:
//
//	err := pidfile.Write(path, os.Getpid()) // once serving
//	defer pidfile.RemoveIfOwn(path, os.Getpid())
package pidfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Write replaces the file at path with pid. It writes a temporary file in
// the same directory and renames it over path, so a reader sees the old
// pid or the new one, never an empty or half-written file.
func Write(path string, pid int) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := fmt.Fprintf(tmp, "%d\n", pid); err != nil {
		tmp.Close()
		return fmt.Errorf("pid file: writing %s: %w", tmp.Name(), err)
	}
	// Readable by the operator's tools, as pid files usually are.
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("pid file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("pid file: writing %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	return nil
}

// Read returns the pid named in the file at path.
func Read(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("pid file: %w", err)
	}
	text := strings.TrimSpace(string(b))
	pid, err := strconv.Atoi(text)
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s: want a process id, got %q", path, text)
	}
	return pid, nil
}

// RemoveIfOwn removes the file at path if it still names pid. After an
// upgrade it names the new process, which the old one must not erase on
// its way out. A missing file is not an error.
func RemoveIfOwn(path string, pid int) error {
	got, err := Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil || got != pid {
		return nil // not ours (or not a pid file any more): leave it alone
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("pid file: %w", err)
	}
	return nil
}
