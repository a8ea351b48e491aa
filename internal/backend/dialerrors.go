package backend

import (
	"fmt"
	"strings"
)

// DialErrors collects the failed dials of one connection (or UDP session)
// across its retries, for the one line that reports them. errors.Join would
// put every attempt on a line of its own, the same "connection refused"
// four times over in one log field; Err says each distinct failure once,
// with how many dials met it, on one line. The zero value is empty and
// ready to use; it is not safe for concurrent use.
type DialErrors struct{ errs []error }

// Add records that the dial of addr failed with err.
func (d *DialErrors) Add(addr string, err error) {
	d.errs = append(d.errs, fmt.Errorf("%s: %w", addr, err))
}

// Len is how many failed dials were added.
func (d *DialErrors) Len() int { return len(d.errs) }

// Err returns the failures as one error, nil if there were none. Its text
// lists each distinct "addr: error" once, in the order first met, with
// "(N dials)" after one that N dials met, joined by "; ". errors.Is and
// errors.As see every failure.
func (d *DialErrors) Err() error {
	if len(d.errs) == 0 {
		return nil
	}
	return dialErrors(append([]error(nil), d.errs...))
}

type dialErrors []error

func (e dialErrors) Error() string {
	var order []string
	count := map[string]int{}
	for _, err := range e {
		msg := strings.ReplaceAll(err.Error(), "\n", "; ")
		if count[msg] == 0 {
			order = append(order, msg)
		}
		count[msg]++
	}
	var b strings.Builder
	for i, msg := range order {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(msg)
		if n := count[msg]; n > 1 {
			fmt.Fprintf(&b, " (%d dials)", n)
		}
	}
	return b.String()
}

func (e dialErrors) Unwrap() []error { return e }
