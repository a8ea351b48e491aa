package e2e

import (
	"archive/zip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestVersionFromGoInstall: a binary made by `go install …@v1.2.3`, with no
// -ldflags, reports v1.2.3 from `attache version` (the version the
// toolchain records in the binary). The module is served at that version by
// a file GOPROXY holding this checkout's tracked files; the dependencies
// come from the local module cache, so nothing is fetched. The install
// uses a module cache of its own, so the shared one never holds this
// made-up version.
func TestVersionFromGoInstall(t *testing.T) {
	const module, version = "github.com/attache/attache", "v1.2.3"
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	proxy := t.TempDir()
	dir := filepath.Join(proxy, module, "@v")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		"list":            version + "\n",
		version + ".info": `{"Version":"` + version + `","Time":"` + time.Now().UTC().Format(time.RFC3339) + `"}`,
		version + ".mod":  string(gomod),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeModuleZip(t, root, filepath.Join(dir, version+".zip"), module+"@"+version+"/")

	modcache := strings.TrimSpace(goEnv(t, "GOMODCACHE"))
	bin := t.TempDir()
	install := exec.Command("go", "install", module+"/cmd/attache@"+version)
	install.Dir = t.TempDir() // outside any module
	install.Env = append(os.Environ(), "GOBIN="+bin, "CGO_ENABLED=0", "GOSUMDB=off",
		"GOMODCACHE="+t.TempDir(), "GOFLAGS=-mod=mod -modcacherw", // removable by TempDir's cleanup
		"GOPROXY=file://"+proxy+",file://"+filepath.Join(modcache, "cache", "download"))
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("go install %s/cmd/attache@%s: %v\n%s", module, version, err, out)
	}
	stdout, stderr, code, err := runCmd(t.Context(), time.Minute, filepath.Join(bin, "attache"), "version")
	if err != nil || code != 0 {
		t.Fatalf("attache version: exit %d, %v\n%s", code, err, stderr)
	}
	if got := strings.TrimSpace(stdout); got != "attache "+version {
		t.Fatalf("attache version = %q, want %q", got, "attache "+version)
	}
}

// writeModuleZip writes a module zip of the files git tracks under root,
// as they are in the working tree, each named prefix+path.
func writeModuleZip(t *testing.T, root, path, prefix string) {
	t.Helper()
	files, err := exec.Command("git", "-C", root, "ls-files", "-z").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zw := zip.NewWriter(f)
	for name := range strings.SplitSeq(strings.TrimRight(string(files), "\x00"), "\x00") {
		data, err := os.ReadFile(filepath.Join(root, name))
		if os.IsNotExist(err) {
			continue // deleted in the working tree
		}
		if err != nil {
			t.Fatal(err)
		}
		w, err := zw.Create(prefix + name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
}

func goEnv(t *testing.T, key string) string {
	t.Helper()
	out, err := exec.Command("go", "env", key).Output()
	if err != nil {
		t.Fatalf("go env %s: %v", key, err)
	}
	return string(out)
}
