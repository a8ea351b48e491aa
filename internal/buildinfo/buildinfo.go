// Package buildinfo says which build of attache is running, for
// `attache version` and the attache_build_info metric.
package buildinfo

import (
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// unstamped is the value of a version variable no -ldflags -X has set.
const unstamped = "dev"

// Version returns this build's version: stamped, the value the build set
// with -ldflags -X (make sets cli.Version from git describe), unless it is
// empty or "dev"; else the main module's version recorded in the binary
// (v1.2.3 after `go install …@v1.2.3`; a pseudo-version for a build in a
// git checkout); else "dev".
func Version(stamped string) string {
	return version(stamped, debug.ReadBuildInfo)
}

func version(stamped string, read func() (*debug.BuildInfo, bool)) string {
	if stamped != "" && stamped != unstamped {
		return stamped
	}
	// "(devel)" is what the toolchain records when it knows no version.
	if bi, ok := read(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return unstamped
}

// Collector is the attache_build_info gauge: always 1, labelled with the
// version and the Go toolchain that built the binary.
func Collector(version, goVersion string) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "attache_build_info",
		Help:        "Always 1; labelled with the version of attache and the Go version that built it.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": goVersion},
	})
	g.Set(1)
	return g
}
