package docker

import (
	"context"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
	"github.com/attache/attache/internal/tlsclient"
)

// TestCallers finds containers by address on a user-defined network, reads
// their BACKEND_<port> variables and attache.connect.<port> labels (the
// variable winning), answers again from the cache, and drops the cached
// answer on the container's events: a renamed container is seen renamed.
func TestCallers(t *testing.T) {
	testenv.DockerAvailable(t)
	nw := testenv.NewDockerNetwork(t)
	c1 := testenv.RunContainer(t, testenv.ContainerSpec{Network: nw.ID,
		Env:    []string{"BACKEND_6379=10.0.0.5:6379,10.0.0.6:6379", "BACKEND_X=1", "OTHER=2"},
		Labels: map[string]string{"attache.connect.6379": "label-loses:1", "attache.connect.5432": "pg:5432"}})
	c2 := testenv.RunContainer(t, testenv.ContainerSpec{Network: nw.ID})

	callers := runCallers(t, "unix://"+testenv.DockerSocket(t), nil)

	lookup := func(ip string) *Caller {
		t.Helper()
		cl, err := callers.Lookup(t.Context(), netip.MustParseAddr(ip))
		if err != nil {
			t.Fatalf("Lookup(%s): %v", ip, err)
		}
		return cl
	}
	ip1, ip2 := c1.IP(t, nw.Name), c2.IP(t, nw.Name)
	cl := lookup(ip1)
	if cl == nil || cl.Name != c1.Name || cl.ID != c1.ID {
		t.Fatalf("Lookup(%s) = %+v, want container %s", ip1, cl, c1.Name)
	}
	want := map[int]string{6379: "10.0.0.5:6379,10.0.0.6:6379", 5432: "pg:5432"}
	if len(cl.Connect) != len(want) || cl.Connect[6379] != want[6379] || cl.Connect[5432] != want[5432] {
		t.Errorf("Connect = %v, want %v", cl.Connect, want)
	}
	if cl := lookup(ip2); cl == nil || cl.Name != c2.Name || len(cl.Connect) != 0 {
		t.Errorf("Lookup(%s) = %+v, want container %s choosing nothing", ip2, cl, c2.Name)
	}
	if cl := lookup("192.0.2.1"); cl != nil {
		t.Errorf("Lookup(192.0.2.1) = %+v, want no container", cl)
	}

	// Once the events stream is open, answers come from the cache.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, before := callers.Stats()
		lookup(ip1)
		if _, after := callers.Stats(); after > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lookups never answered from the cache")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// An event about the container drops its cached answer.
	renamed := c1.Name + "-renamed"
	if out, err := exec.Command("docker", "rename", c1.Name, renamed).CombinedOutput(); err != nil {
		t.Fatalf("docker rename: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("docker", "rm", "--force", renamed).Run() })
	for {
		if cl := lookup(ip1); cl != nil && cl.Name == renamed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cache still answers the old name after docker rename")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPortSuffix(t *testing.T) {
	for k, want := range map[string]int{"BACKEND_6379": 6379, "BACKEND_": 0, "BACKEND_0": 0, "BACKEND_70000": 0,
		"BACKEND_63a": 0, "BACKEND_123456": 0, "OTHER_1": 0} {
		got, ok := portSuffix(k, "BACKEND_")
		if ok != (want != 0) || got != want && ok {
			t.Errorf("portSuffix(%q) = %d, %v; want %d", k, got, ok, want)
		}
	}
}

// runCallers makes Callers for host and runs them until the test ends.
func runCallers(t *testing.T, host string, tlsFiles *tlsclient.Files) *Callers {
	t.Helper()
	callers, err := NewCallers(host, tlsFiles, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { callers.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return callers
}
