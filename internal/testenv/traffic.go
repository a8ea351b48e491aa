package testenv

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Traffic is a steady load through a proxy to echo backends: workers that
// open short connections one after another, each sending a random payload,
// half-closing and checking every byte of the echo, and long-lived streams
// that send random chunks and check each echoed chunk byte for byte. Tests
// run it while they change the backend set, then assert on the Result.
type Traffic struct {
	addr   string
	cancel context.CancelFunc
	wg     sync.WaitGroup

	shortOK, shortFailed atomic.Int64
	streamBytes          atomic.Int64
	streamFailed         atomic.Int64
	mu                   sync.Mutex
	errs                 []string
}

// TrafficResult is what a Traffic saw.
type TrafficResult struct {
	ShortOK, ShortFailed int64 // short connections completed / failed (any error, or a wrong byte)
	StreamBytes          int64 // bytes echoed intact on the long-lived streams
	StreamFailed         int64 // long-lived streams that broke or corrupted a byte
	Errors               []string
}

func (r TrafficResult) String() string {
	return fmt.Sprintf("short ok=%d failed=%d, streams failed=%d, stream bytes=%d, first errors=%q",
		r.ShortOK, r.ShortFailed, r.StreamFailed, r.StreamBytes, r.Errors)
}

// StartTraffic starts shortWorkers and streams against addr. Stop it (or let
// the test end) to collect the result.
func StartTraffic(t testing.TB, addr string, shortWorkers, streams int) *Traffic {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tr := &Traffic{addr: addr, cancel: cancel}
	for i := range shortWorkers {
		tr.wg.Go(func() { tr.shortLoop(ctx, uint64(i)) })
	}
	ready := make(chan struct{}, streams)
	for i := range streams {
		tr.wg.Go(func() { tr.stream(ctx, uint64(1000+i), ready) })
	}
	for range streams {
		<-ready
	}
	t.Cleanup(func() { tr.Stop() })
	return tr
}

func (tr *Traffic) fail(format string, args ...any) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.errs) < 10 {
		tr.errs = append(tr.errs, fmt.Sprintf(format, args...))
	}
}

// Progress returns the short connections completed so far, so a test can
// wait for traffic to have flowed.
func (tr *Traffic) Progress() int64 { return tr.shortOK.Load() }

// AwaitProgress waits until n more short connections have completed (or
// failed) than when it was called, so that a test changing things in a loop
// lets traffic run through every state. It gives up after a minute.
func (tr *Traffic) AwaitProgress(n int64) {
	target := tr.shortOK.Load() + tr.shortFailed.Load() + n
	deadline := time.Now().Add(time.Minute)
	for tr.shortOK.Load()+tr.shortFailed.Load() < target && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

// Stop ends the load, waits for every connection to finish cleanly and
// returns what happened. It may be called more than once.
func (tr *Traffic) Stop() TrafficResult {
	tr.cancel()
	tr.wg.Wait()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return TrafficResult{
		ShortOK: tr.shortOK.Load(), ShortFailed: tr.shortFailed.Load(),
		StreamBytes: tr.streamBytes.Load(), StreamFailed: tr.streamFailed.Load(),
		Errors: append([]string(nil), tr.errs...),
	}
}

func (tr *Traffic) shortLoop(ctx context.Context, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 42))
	buf := make([]byte, 64<<10)
	for ctx.Err() == nil {
		payload := buf[:1+rng.IntN(len(buf)-1)]
		for i := range payload {
			payload[i] = byte(rng.Uint32())
		}
		if err := tr.short(payload); err != nil {
			tr.shortFailed.Add(1)
			tr.fail("short connection: %v", err)
			continue
		}
		tr.shortOK.Add(1)
	}
}

func (tr *Traffic) short(payload []byte) error {
	c, err := net.DialTimeout("tcp", tr.addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if rerr != nil {
		return fmt.Errorf("read after %d of %d bytes: %w", len(got), len(payload), rerr)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo differs: got %d bytes, sent %d", len(got), len(payload))
	}
	return nil
}

// stream keeps one connection for the whole run, sending a chunk and
// checking its echo, until ctx is done; then it half-closes and expects a
// clean end.
func (tr *Traffic) stream(ctx context.Context, seed uint64, ready chan<- struct{}) {
	rng := rand.New(rand.NewPCG(seed, 7))
	c, err := net.DialTimeout("tcp", tr.addr, 10*time.Second)
	ready <- struct{}{}
	if err != nil {
		tr.streamFailed.Add(1)
		tr.fail("stream dial: %v", err)
		return
	}
	defer c.Close()
	out := make([]byte, 16<<10)
	in := make([]byte, len(out))
	for ctx.Err() == nil {
		chunk := out[:1+rng.IntN(len(out)-1)]
		for i := range chunk {
			chunk[i] = byte(rng.Uint32())
		}
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(chunk); err != nil {
			tr.streamFailed.Add(1)
			tr.fail("stream write after %d bytes: %v", tr.streamBytes.Load(), err)
			return
		}
		if _, err := io.ReadFull(c, in[:len(chunk)]); err != nil {
			tr.streamFailed.Add(1)
			tr.fail("stream read: %v", err)
			return
		}
		if !bytes.Equal(in[:len(chunk)], chunk) {
			tr.streamFailed.Add(1)
			tr.fail("stream echo corrupted")
			return
		}
		tr.streamBytes.Add(int64(len(chunk)))
		// A stream is long-lived, not a firehose: leave room for the
		// short connections.
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(rng.IntN(5)) * time.Millisecond):
		}
	}
	_ = c.(*net.TCPConn).CloseWrite()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if n, err := io.Copy(io.Discard, c); err != nil || n != 0 {
		tr.streamFailed.Add(1)
		tr.fail("stream end: %d stray bytes, %v", n, err)
	}
}
