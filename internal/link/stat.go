package link

import (
	"fmt"
	"os"
	"syscall"
)

// statFile stamps a file by what changes when it is rewritten or replaced.
// It follows symlinks, so a swapped link target counts as a change.
func statFile(p string) (stamp, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return stamp{}, err
	}
	if !fi.Mode().IsRegular() {
		return stamp{}, fmt.Errorf("%s: %w", p, errNotRegular)
	}
	st := stamp{mod: fi.ModTime(), size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	return st, nil
}
