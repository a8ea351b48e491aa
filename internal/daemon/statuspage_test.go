package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/attache/attache/internal/testenv"
)

// TestStatusPageInBrowser opens the admin API's status page in a real
// headless Chromium (Debian's package, driven over the DevTools protocol):
// the page shows both backends up, shows the one that dies go down, shows
// the "disconnected" banner when the API becomes unreachable and recovers
// when it comes back. Screenshots are saved as test artifacts (the path is
// logged) so a person can look at what operators see.
func TestStatusPageInBrowser(t *testing.T) {
	browser := findChromium(t)
	victim, survivor := startKillableEcho(t), startKillableEcho(t)
	d := startAdminDaemon(t, fmt.Sprintf(`services:
  - name: redis
    listen: 127.0.0.1:0
    backends: [%s, %s]
    health_check: {interval: 100ms, timeout: 100ms, fall: 2, rise: 1}
`, victim.addr(), survivor.addr()))
	gentleTraffic(t, d.bound[0].Addr.String())
	// The browser reaches the API through a relay the test can cut, as a
	// network partition would.
	rl := testenv.StartRelay(t, strings.TrimPrefix(d.url, "http://"))
	pageURL := "http://" + rl.Addr + "/"

	ctx := startBrowser(t, browser)
	runIn := func(ctx context.Context, what string, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		tctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := chromedp.Do(tctx, steps...); err != nil {
			shot(t, ctx, "statuspage-failed.png")
			t.Fatalf("%s: %v", what, err)
		}
	}
	run := func(what string, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		runIn(ctx, what, timeout, steps...)
	}
	text := func(sel chromedp.CSS) string {
		t.Helper()
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		s, err := chromedp.Run(tctx, chromedp.Text(sel))
		if err != nil {
			t.Fatalf("reading %s: %v", sel, err)
		}
		return s
	}
	row := func(addr, health string) chromedp.CSS {
		return chromedp.CSS(fmt.Sprintf(`tr[data-addr=%q][data-health=%q]`, addr, health))
	}

	run("open the page and see both backends up", 60*time.Second,
		chromedp.Navigate(pageURL),
		chromedp.WaitVisible(row(victim.addr(), "up")),
		chromedp.WaitVisible(row(survivor.addr(), "up")),
		chromedp.WaitVisible(chromedp.CSS(`body[data-connection="live"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#ready[data-ready="yes"]`)),
	)
	// Throughput is computed from two snapshots' byte counters.
	run("see the throughput", 30*time.Second,
		chromedp.Poll[chromedp.Void](`/[1-9].*\/s$/.test(document.querySelector('[data-service="redis"] [data-stat="rate_in"] .v').textContent)`),
	)
	t.Logf("the page shows %s in", text(`[data-service="redis"] [data-stat="rate_in"] .v`))

	killed := time.Now()
	victim.kill()
	run("see the killed backend go down", 15*time.Second,
		chromedp.WaitVisible(row(victim.addr(), "down")),
	)
	t.Logf("the page showed the killed backend down %s after the kill", time.Since(killed).Round(time.Millisecond))
	run("see the other backend still up", 30*time.Second, chromedp.WaitVisible(row(survivor.addr(), "up")))
	check := text(row(victim.addr(), "down") + ` td.check`)
	lastErr := text(row(victim.addr(), "down") + ` td.err`)
	summary := text(`[data-service="redis"] .summary`)
	if check != "failing" || lastErr == "" || summary != "1 of 2 up" {
		t.Errorf("dead backend's row: check %q, last error %q, summary %q; want failing, an error, 1 of 2 up", check, lastErr, summary)
	}
	shot(t, ctx, "statuspage.png")

	rl.SetCut(true)
	run("see the disconnected banner", 30*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`#banner`)),
		chromedp.WaitVisible(chromedp.CSS(`body[data-connection="disconnected"]`)),
	)
	shot(t, ctx, "statuspage-disconnected.png")
	rl.SetCut(false)
	run("see the page recover", 30*time.Second,
		chromedp.WaitNotVisible(chromedp.CSS(`#banner`)),
		chromedp.WaitVisible(chromedp.CSS(`body[data-connection="live"]`)),
		chromedp.WaitVisible(row(victim.addr(), "down")),
	)

	// A browser without EventSource (or a proxy that refuses the stream)
	// gets the same page by polling the JSON endpoints.
	tab, closeTab := chromedp.NewContext(ctx)
	defer closeTab()
	if err := chromedp.Do(tab); err != nil {
		t.Fatalf("opening a second tab: %v", err)
	}
	runIn(tab, "see the page by polling", 60*time.Second,
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument,
				page.AddScriptToEvaluateOnNewDocumentParams{Source: "delete window.EventSource;"})
			return err
		}),
		chromedp.Navigate(pageURL),
		chromedp.WaitVisible(chromedp.CSS(`body[data-connection="polling"]`)),
		chromedp.WaitVisible(row(victim.addr(), "down")),
		chromedp.WaitVisible(row(survivor.addr(), "up")),
		chromedp.WaitVisible(chromedp.CSS(`#ready[data-ready="yes"]`)),
	)
}

// findChromium returns Debian's chromium, failing the test when it is
// missing unless ATTACHE_BROWSER=0 says to go without a browser.
func findChromium(t *testing.T) string {
	t.Helper()
	if os.Getenv("ATTACHE_BROWSER") == "0" {
		t.Skip("ATTACHE_BROWSER=0: the status page is not tested in a browser")
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed (%v): run scripts/deps.sh, or set ATTACHE_BROWSER=0 to skip the browser test", err)
	}
	return p
}

// startBrowser starts a headless Chromium for the test and stops it at the
// end, checking that none of its processes is left behind.
func startBrowser(t *testing.T, path string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox, // root in a container has no user namespaces for the sandbox
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 800),
		chromedp.Flag("lang", "en-US"),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	// Start the browser now, with no timeout (it would stop the browser),
	// so a failure to start is reported as such.
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		cancelAlloc()
		t.Fatalf("starting %s: %v", path, err)
	}
	proc := chromedp.FromContext(ctx).Browser.Process()
	dataDir := userDataDir(proc.Pid)
	t.Cleanup(func() {
		cancel()
		cancelAlloc() // kills the browser if it did not close, and reaps it
		if dataDir == "" {
			t.Errorf("could not read the browser's --user-data-dir to check for leftovers")
			return
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			left := processesWith("--user-data-dir=" + dataDir)
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("chromium processes left running after the test: %v", left)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := syscall.Kill(proc.Pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("the browser process %d is still there (a zombie?): kill 0: %v", proc.Pid, err)
		}
	})
	return ctx
}

// userDataDir reads the browser's profile directory from its command line.
func userDataDir(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	for arg := range bytes.SplitSeq(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(arg, []byte("--user-data-dir=")); ok {
			return string(v)
		}
	}
	return ""
}

// processesWith lists the processes that have arg on their command line.
func processesWith(arg string) []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for a := range bytes.SplitSeq(b, []byte{0}) {
			if string(a) == arg {
				out = append(out, e.Name())
				break
			}
		}
	}
	return out
}

// shot saves a screenshot of the page to the artifacts directory:
// $ATTACHE_ARTIFACTS, else attache-artifacts in the system's temp dir.
func shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("ATTACHE_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "attache-artifacts")
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	t.Logf("screenshot saved: %s", p)
}

// gentleTraffic sends a small echo through the service every 100ms, each
// on a new connection (the byte counters take a connection's bytes when it
// ends), and keeps one more connection open, so the page has throughput
// and an open connection to show. Connections to a killed backend fail;
// the next ones go elsewhere.
func gentleTraffic(t *testing.T, addr string) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	echo := func(payload []byte, hold bool) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return
		}
		defer c.Close()
		defer context.AfterFunc(ctx, func() { c.Close() })()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(payload); err != nil {
			return
		}
		if _, err := io.ReadFull(c, make([]byte, len(payload))); err != nil || !hold {
			return
		}
		c.SetDeadline(time.Time{})
		<-ctx.Done()
	}
	wg.Go(func() { echo([]byte("held"), true) })
	wg.Go(func() {
		chunk := bytes.Repeat([]byte("attache "), 4096) // 32 KiB
		for {
			echo(chunk, false)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
}
