package pidfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteReadRemove(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "attache.pid")
	if err := Write(path, 123); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, 456); err != nil { // replaces
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "456\n" {
		t.Fatalf("file: %q, %v", b, err)
	}
	if pid, err := Read(path); err != nil || pid != 456 {
		t.Fatalf("Read: %d, %v", pid, err)
	}
	// Another process's pid: kept.
	if err := RemoveIfOwn(path, 123); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("RemoveIfOwn removed another process's pid file: %v", err)
	}
	if err := RemoveIfOwn(path, 456); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("RemoveIfOwn left its own pid file: %v", err)
	}
	if err := RemoveIfOwn(path, 456); err != nil {
		t.Fatalf("RemoveIfOwn on a missing file: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pid")
	if err := os.WriteFile(bad, []byte("twelve\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"missing", func() error { _, err := Read(filepath.Join(dir, "none.pid")); return err }(), "no such file"},
		{"garbage", func() error { _, err := Read(bad); return err }(), `want a process id, got "twelve"`},
		{"no directory", Write(filepath.Join(dir, "missing", "a.pid"), 1), "no such file"},
	}
	for _, tt := range tests {
		if tt.err == nil || !strings.Contains(tt.err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, tt.err, tt.want)
		}
	}
}
