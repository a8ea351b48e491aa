package buildinfo

import (
	"runtime/debug"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestVersion(t *testing.T) {
	module := func(v string) func() (*debug.BuildInfo, bool) {
		return func() (*debug.BuildInfo, bool) { return &debug.BuildInfo{Main: debug.Module{Version: v}}, true }
	}
	none := func() (*debug.BuildInfo, bool) { return nil, false }
	tests := []struct {
		name    string
		stamped string
		read    func() (*debug.BuildInfo, bool)
		want    string
	}{
		{"the stamp wins over the module version", "v2.0.0-3-gabcdef", module("v1.2.3"), "v2.0.0-3-gabcdef"},
		{"no stamp: the module version (go install …@v1.2.3)", "dev", module("v1.2.3"), "v1.2.3"},
		{"an empty stamp counts as none", "", module("v1.2.3"), "v1.2.3"},
		{"a pseudo-version from a checkout", "dev", module("v0.0.0-20261205140000-abcdef123456+dirty"), "v0.0.0-20261205140000-abcdef123456+dirty"},
		{"(devel): no version known", "dev", module("(devel)"), "dev"},
		{"no build information", "dev", none, "dev"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := version(tt.stamped, tt.read); got != tt.want {
				t.Errorf("version(%q) = %q, want %q", tt.stamped, got, tt.want)
			}
		})
	}
	// Version reads the running binary's build information; a stamp
	// wins over whatever it holds.
	if got := Version("v9.9.9"); got != "v9.9.9" {
		t.Errorf("Version(v9.9.9) = %q", got)
	}
}

func TestCollector(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(Collector("v1.2.3", "go1.26.0"))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(fams) != 1 || fams[0].GetName() != "attache_build_info" || len(fams[0].Metric) != 1 {
		t.Fatalf("gathered %v, want one attache_build_info series", fams)
	}
	m := fams[0].Metric[0]
	labels := map[string]string{}
	for _, l := range m.Label {
		labels[l.GetName()] = l.GetValue()
	}
	if m.Gauge.GetValue() != 1 || len(labels) != 2 || labels["version"] != "v1.2.3" || labels["goversion"] != "go1.26.0" {
		t.Fatalf("attache_build_info = %v %v, want 1 with version v1.2.3 and goversion go1.26.0", labels, m.Gauge.GetValue())
	}
}
