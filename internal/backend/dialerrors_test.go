package backend

import (
	"errors"
	"io/fs"
	"strings"
	"syscall"
	"testing"
)

func TestDialErrors(t *testing.T) {
	var d DialErrors
	if d.Err() != nil || d.Len() != 0 {
		t.Fatalf("empty: %v, %d", d.Err(), d.Len())
	}
	for range 4 {
		d.Add("127.0.0.1:1", syscall.ECONNREFUSED)
	}
	if got, want := d.Err().Error(), "127.0.0.1:1: connection refused (4 dials)"; got != want {
		t.Errorf("four alike: %q, want %q", got, want)
	}
	d.Add("127.0.0.1:2", errors.New("i/o timeout"))
	d.Add("127.0.0.1:1", syscall.ECONNREFUSED)
	d.Add("db:5432", errors.Join(errors.New("lookup db"), fs.ErrNotExist))
	err := d.Err()
	want := "127.0.0.1:1: connection refused (5 dials); 127.0.0.1:2: i/o timeout; db:5432: lookup db; file does not exist"
	if err.Error() != want || strings.Contains(err.Error(), "\n") {
		t.Errorf("mixed: %q, want %q, on one line", err, want)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) || !errors.Is(err, fs.ErrNotExist) || d.Len() != 7 {
		t.Errorf("errors.Is does not see every failure, or Len %d is not 7", d.Len())
	}
}
