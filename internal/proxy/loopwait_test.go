package proxy

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestParkedEpollWaits: a loop parked in Go's poller returns the events
// that were ready before it looked, wakes for one that comes while it is
// parked, and returns none once its timeout passes.
func TestParkedEpollWaits(t *testing.T) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(epfd)
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(efd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		t.Fatal(err)
	}
	p, err := newParkedEpoll(epfd)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	events := make([]unix.EpollEvent, 4)
	signal := func() {
		one := [8]byte{1}
		if _, err := unix.Write(efd, one[:]); err != nil {
			t.Error(err)
		}
	}
	// signalSoon signals from another goroutine a little later, so that
	// the wait has most likely parked by then. Nothing depends on it: an
	// event that comes first is one ready before the wait, which must be
	// returned too.
	signalSoon := func() {
		go func() {
			time.Sleep(20 * time.Millisecond)
			signal()
		}()
	}

	signal()
	if n, err := p.wait(events, -1); n != 1 || err != nil || events[0].Fd != int32(efd) {
		t.Fatalf("an event ready before the wait: got %d events (%v), want the eventfd's", n, err)
	}

	// Edge-triggered: the event was taken, so this waits for the next.
	signalSoon()
	if n, err := p.wait(events, -1); n != 1 || err != nil {
		t.Fatalf("an event while parked: got %d events (%v), want 1", n, err)
	}

	if n, err := p.wait(events, 10); n != 0 || err != nil {
		t.Fatalf("nothing happening for 10 ms: got %d events (%v), want 0", n, err)
	}
	// A wait without a timeout after one with: the deadline is cleared
	// (an expired one would end the wait before it looked at all).
	signalSoon()
	if n, err := p.wait(events, -1); n != 1 || err != nil {
		t.Fatalf("after a timed wait, an event while parked: got %d events (%v), want 1", n, err)
	}
}
