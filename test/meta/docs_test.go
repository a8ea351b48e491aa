package meta

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/attache/attache/internal/cli"
	"github.com/attache/attache/internal/config"
)

// The fenced blocks of README.md and docs/*.md, by info string:
//
//	```yaml            a whole configuration: config.Load accepts it and it has a service
//	```yaml fragment   a part of one: the strict parser (config.ParseFile) accepts its keys
//	```yaml invalid    wrong on purpose: config.Load refuses it
//	```sh              commands: every attache command line is run by the real CLI in
//	                   check mode (see runDocCommand), docker run lines of the image too
//	```console         a transcript: "$ cat F" writes the lines after it to F, every other
//	                   "$ attache …" runs, and its output must be the lines after it
//	```text, ```mermaid, ```go  shown, not run
//
// Any other info string, or none, is an error, so that no example escapes.
var knownLangs = []string{"yaml", "sh", "console", "text", "mermaid", "go"}

func allBlocks(t *testing.T) []docBlock {
	t.Helper()
	pages, err := docPages()
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) < 10 {
		t.Fatalf("want README.md and the docs/ pages, found %v", pages)
	}
	var out []docBlock
	for _, p := range pages {
		text, err := readPage(p)
		if err != nil {
			t.Fatal(err)
		}
		bs, unclosed := blocks(p, text)
		if unclosed > 0 {
			t.Errorf("%s:%d: code block never closed", p, unclosed)
		}
		out = append(out, bs...)
	}
	return out
}

func TestDocBlocksAreTagged(t *testing.T) {
	for _, b := range allBlocks(t) {
		if !slices.Contains(knownLangs, b.lang) {
			t.Errorf("%s: want a block tagged one of %v (see the comment on knownLangs), got %q", b, knownLangs, b.lang)
		}
		for _, tag := range b.tags {
			if b.lang != "yaml" || (tag != "fragment" && tag != "invalid") {
				t.Errorf("%s: unknown tag %q", b, tag)
			}
		}
	}
}

// TestDocYAMLLoads loads every YAML block with the real parser.
func TestDocYAMLLoads(t *testing.T) {
	n := 0
	for _, b := range allBlocks(t) {
		if b.lang != "yaml" {
			continue
		}
		n++
		switch {
		case b.has("fragment"):
			if _, err := config.ParseFile(b.page, []byte(b.text)); err != nil {
				t.Errorf("%s: the fragment does not parse: %v", b, err)
			}
		case b.has("invalid"):
			if _, err := config.Load(config.Sources{File: b.page, FileData: []byte(b.text)}); err == nil {
				t.Errorf("%s: marked invalid, but it loads", b)
			}
		default:
			cfg, err := config.Load(config.Sources{File: b.page, FileData: []byte(b.text)})
			if err != nil {
				t.Errorf("%s: %v", b, err)
				continue
			}
			if len(cfg.Services) == 0 {
				t.Errorf("%s defines no service (tag it fragment if it is part of a file)", b)
			}
		}
	}
	if n < 10 {
		t.Errorf("only %d yaml blocks found", n)
	}
}

// runAttache runs the real command line in-process, as cmd/attache does,
// and returns its exit code and what it printed (stdout then stderr).
func runAttache(args, environ []string) (int, string) {
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	code := cli.Main(ctx, cli.Env{Args: args, Environ: environ, Stdout: &out, Stderr: &errOut})
	return code, out.String() + errOut.String()
}

// subcommands are the first arguments that are not a daemon's flags or
// HOST PORT: the command tree's, and cobra's own help and completion.
var subcommands = func() []string {
	out := []string{"help", "completion"}
	for _, c := range cli.NewCommand(cli.Env{}).Commands() {
		out = append(out, c.Name())
	}
	return out
}()

// helpOnly are the subcommands that act on a running attache or run a
// demo: the docs' lines of them are parsed, not run, by appending --help.
var helpOnly = []string{"status", "upgrade", "demo", "healthcheck"}

var parseErrorRE = regexp.MustCompile(`(?i)not defined|unknown (flag|command|shorthand)|invalid argument|bad flag`)

// runDocCommand runs one documented attache command line without letting
// it act on the machine:
//
//   - a daemon's line (flags, -c FILE, HOST PORT, link variables) runs as
//     `attache check` with the same arguments and environment: it must
//     exit 0, which takes every flag and the whole configuration;
//   - check, version, certs (in the test's directory) and iptables
//     (without --apply, which prints the rules and changes nothing) run as
//     written and must exit 0;
//   - status, upgrade, demo and healthcheck get --help appended: every flag before it
//     must parse.
//
// A -c FILE that does not exist in the directory gets the page's first
// whole yaml block, so that a page can show the file, then the command.
func runDocCommand(t *testing.T, b docBlock, words, environ []string, firstYAML string) {
	t.Helper()
	args := slices.Clone(words[1:])
	for i, a := range args {
		if (a == "-c" || a == "--config" || a == "-config") && i+1 < len(args) {
			if _, err := os.Stat(args[i+1]); err != nil {
				if firstYAML == "" {
					t.Errorf("%s: %q needs %s, and the page has no yaml block to write there", b, strings.Join(words, " "), args[i+1])
					return
				}
				if err := os.WriteFile(args[i+1], []byte(firstYAML), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	sub := ""
	if len(args) > 0 && slices.Contains(subcommands, args[0]) {
		sub = args[0]
	}
	line := strings.Join(append(slices.Clone(environ), words...), " ")
	switch {
	case sub == "":
		args = append([]string{"check"}, args...)
	case sub == "iptables":
		args = slices.DeleteFunc(args, func(a string) bool { return a == "--apply" })
	case slices.Contains(helpOnly, sub):
		code, out := runAttache(append(args, "--help"), environ)
		if (code != 0 && code != cli.ExitUsage) || parseErrorRE.MatchString(out) {
			t.Errorf("%s: %s does not parse (exit %d):\n%s", b, line, code, out)
		}
		return
	}
	if code, out := runAttache(args, environ); code != 0 {
		t.Errorf("%s: %s\n  ran as attache %s: exit %d:\n%s", b, line, strings.Join(args, " "), code, out)
	}
}

// dockerValueFlags are the docker run options the docs use that take a
// value; the image is the first word that is neither one nor its value.
var dockerValueFlags = []string{"--name", "-p", "-e", "-v", "-l", "--network", "--link", "--expose", "--label", "--env", "--volume", "--publish", "--cap-add", "--user", "-u", "--restart"}

// checkDockerRun checks a docker run line: its -e BACKEND_<port> values and
// attache.connect.<port> labels parse as a consumer's backends, and a line
// that runs the attache image has its arguments and -e variables run as
// runDocCommand does (a line with neither depends on links Docker sets, and
// is not run).
func checkDockerRun(t *testing.T, b docBlock, words []string, firstYAML string) {
	t.Helper()
	var env []string
	image := ""
	var rest []string
	for i := 2; i < len(words); i++ {
		w := words[i]
		if slices.Contains(dockerValueFlags, w) && i+1 < len(words) {
			v := words[i+1]
			i++
			switch w {
			case "-e", "--env":
				env = append(env, v)
				checkConsumerValue(t, b, "BACKEND_", v)
			case "-l", "--label":
				checkConsumerValue(t, b, "attache.connect.", v)
			}
			continue
		}
		if strings.HasPrefix(w, "-") {
			continue
		}
		image, rest = w, words[i+1:]
		break
	}
	if image != "attache" && !strings.HasPrefix(image, "attache:") && !strings.HasPrefix(image, "ghcr.io/attache/attache") {
		return
	}
	if len(rest) == 0 && len(env) == 0 {
		return
	}
	runDocCommand(t, b, append([]string{"attache"}, rest...), env, firstYAML)
}

// checkConsumerValue parses NAME<port>=value as transparent mode's
// per-consumer lookup would.
func checkConsumerValue(t *testing.T, b docBlock, prefix, kv string) {
	t.Helper()
	name, value, ok := strings.Cut(kv, "=")
	if !ok || !strings.HasPrefix(name, prefix) {
		return
	}
	cfg := &config.Config{Link: config.Link{Cert: "c", Key: "k", CA: "ca"}}
	if _, err := config.ConsumerService("consumer", value, nil, cfg); err != nil {
		t.Errorf("%s: %s: %v", b, kv, err)
	}
}

// makeTargets are the targets the Makefile defines.
func makeTargets(t *testing.T) []string {
	t.Helper()
	mk, err := os.ReadFile(filepath.Join(repoRoot(), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^([a-z][a-z0-9_-]*):`).FindAllSubmatch(mk, -1) {
		out = append(out, string(m[1]))
	}
	return out
}

// TestDocCommandsParse runs every attache command line of the sh blocks
// (see runDocCommand) in a directory of the page's own, in order, so that
// `attache certs init` comes before `attache certs issue`. make targets
// must exist in the Makefile.
func TestDocCommandsParse(t *testing.T) {
	all := allBlocks(t)
	targets := makeTargets(t)
	ran := 0
	for _, page := range pagesOf(all) {
		t.Run(page, func(t *testing.T) {
			t.Chdir(t.TempDir())
			first := firstWholeYAML(all, page)
			for _, b := range all {
				if b.page != page || b.lang != "sh" {
					continue
				}
				for _, words := range commands(b.text) {
					env, cmd := envPrefix(words)
					if len(cmd) == 0 {
						continue
					}
					switch {
					case cmd[0] == "attache":
						ran++
						runDocCommand(t, b, cmd, env, first)
					case cmd[0] == "docker" && len(cmd) > 1 && cmd[1] == "run":
						checkDockerRun(t, b, cmd, first)
					case cmd[0] == "make":
						for _, tg := range cmd[1:] {
							if !strings.HasPrefix(tg, "-") && !strings.Contains(tg, "=") && !slices.Contains(targets, tg) {
								t.Errorf("%s: make %s: no such target in the Makefile", b, tg)
							}
						}
					}
				}
			}
		})
	}
	if ran < 15 {
		t.Errorf("only %d attache command lines were run", ran)
	}
}

func pagesOf(bs []docBlock) []string {
	var out []string
	for _, b := range bs {
		if !slices.Contains(out, b.page) {
			out = append(out, b.page)
		}
	}
	return out
}

func firstWholeYAML(bs []docBlock, page string) string {
	for _, b := range bs {
		if b.page == page && b.lang == "yaml" && len(b.tags) == 0 {
			return b.text
		}
	}
	return ""
}

// TestDocTranscripts replays every console block: "$ cat F" writes the
// lines that follow to F, "$ attache …" runs the real CLI (its environment
// from NAME=value words before it; `; echo "exit $?"` adds the exit line)
// and what it prints must be the lines that follow, exactly.
func TestDocTranscripts(t *testing.T) {
	n := 0
	for _, b := range allBlocks(t) {
		if b.lang != "console" {
			continue
		}
		n++
		t.Run(fmt.Sprintf("%s:%d", b.page, b.line), func(t *testing.T) {
			t.Chdir(t.TempDir())
			type step struct {
				cmd  string
				want []string
			}
			var steps []step
			for _, line := range strings.Split(strings.TrimSuffix(b.text, "\n"), "\n") {
				if cmd, ok := strings.CutPrefix(line, "$ "); ok {
					steps = append(steps, step{cmd: cmd})
					continue
				}
				if len(steps) == 0 {
					t.Fatalf("%s: a transcript starts with a $ command, got %q", b, line)
				}
				steps[len(steps)-1].want = append(steps[len(steps)-1].want, line)
			}
			for _, s := range steps {
				words := shellWords(s.cmd)
				if len(words) == 2 && words[0] == "cat" {
					if err := os.WriteFile(words[1], []byte(strings.Join(s.want, "\n")+"\n"), 0o600); err != nil {
						t.Fatal(err)
					}
					continue
				}
				echoExit := false
				if i := slices.Index(words, "echo"); i > 0 && i+1 < len(words) && strings.HasSuffix(words[i-1], ";") && words[i+1] == "exit $?" {
					words[i-1] = strings.TrimSuffix(words[i-1], ";")
					words, echoExit = words[:i], true
				}
				env, cmd := envPrefix(words)
				if len(cmd) == 0 || cmd[0] != "attache" {
					t.Fatalf("%s: a transcript runs attache or cat, got %q", b, s.cmd)
				}
				code, out := runAttache(cmd[1:], env)
				got := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
				if out == "" {
					got = nil
				}
				if echoExit {
					got = append(got, fmt.Sprintf("exit %d", code))
				} else if code != 0 {
					t.Errorf("%s: $ %s: exit %d", b, s.cmd, code)
				}
				for i := range got {
					got[i] = strings.TrimRight(got[i], " ")
				}
				if !slices.Equal(got, s.want) {
					t.Errorf("%s: $ %s\n got:\n%s\nwant:\n%s", b, s.cmd, strings.Join(got, "\n"), strings.Join(s.want, "\n"))
				}
			}
		})
	}
	if n < 2 {
		t.Errorf("only %d console transcripts found", n)
	}
}

var mdLinkRE = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// TestDocLinks: every relative link of README.md, docs/ and bench/README.md
// points at a file of the repository, and every #anchor at a heading of
// the page it names.
func TestDocLinks(t *testing.T) {
	pages, err := docPages()
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, "bench/README.md")
	for _, p := range pages {
		text, err := readPage(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mdLinkRE.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			dest := p
			if file != "" {
				dest = filepath.Join(filepath.Dir(p), file)
			}
			body, err := readPage(dest)
			if err != nil {
				if fi, serr := os.Stat(filepath.Join(repoRoot(), dest)); serr == nil && fi.IsDir() && anchor == "" {
					continue
				}
				t.Errorf("%s: link %s: %v", p, target, err)
				continue
			}
			if anchor != "" && !anchors(body)[anchor] {
				t.Errorf("%s: link %s: %s has no heading with anchor #%s", p, target, dest, anchor)
			}
		}
	}
}

// TestDocsNoStaleClaims keeps out what was once wrong: the claim that
// sockets are registered once and never touched by epoll_ctl again (output
// is armed and disarmed), and paths outside the repository.
func TestDocsNoStaleClaims(t *testing.T) {
	pages, err := docPages()
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, "bench/README.md")
	stale := regexp.MustCompile(`(?i)registered once|never epoll_ctl|epoll_ctl again|\.\./shared|/work/|\.\./\.\./`)
	for _, p := range pages {
		text, err := readPage(p)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(text, "\n") {
			if m := stale.FindString(line); m != "" {
				t.Errorf("%s:%d: %q: stale or outside the repository", p, i+1, m)
			}
		}
	}
}

// TestReadmeIsAFirstScreen keeps the README short, and its performance
// table the latest run bench/README.md records.
func TestReadmeIsAFirstScreen(t *testing.T) {
	text := readme(t)
	if n := strings.Count(text, "\n"); n > 300 {
		t.Errorf("README.md has %d lines; keep it under 300 and move reference material to docs/", n)
	}
	bench, err := readPage("bench/README.md")
	if err != nil {
		t.Fatal(err)
	}
	dates := regexp.MustCompile(`(?m)^#+ .*?(\d{4}-\d{2}-\d{2})`).FindAllStringSubmatch(bench, -1)
	if len(dates) == 0 {
		t.Fatal("bench/README.md has no dated run heading")
	}
	latest := ""
	for _, d := range dates {
		latest = max(latest, d[1])
	}
	if !strings.Contains(text, latest) {
		t.Errorf("README.md's performance table should be the latest run in bench/README.md, of %s, and say so", latest)
	}
}

// configSections maps the parser's names of the file's mappings (as its
// "unknown key in …" errors give them) to the heading of their table in
// docs/configuration.md.
var configSections = map[string]string{
	"top level":             "Top level",
	"defaults":              "`defaults`",
	"service":               "`services[]`",
	"backend":               "`services[].backends[]`",
	"health_check":          "`services[].health_check`",
	"accept_proxy":          "`services[].accept_proxy`",
	"discovery":             "`discovery`",
	"discovery.dns":         "`discovery.dns`",
	"discovery.etcd":        "`discovery.etcd`",
	"discovery.consul":      "`discovery.consul`",
	"discovery.docker":      "`discovery.docker`",
	"discovery.docker.tls":  "`discovery.docker.tls`",
	"link":                  "`link`",
	"link.register":         "`link.register`",
	"offer.a":               "`link.offer.SERVICE`",
	"transparent":           "`transparent`",
	"discovery.etcd.tls":    "`discovery.etcd.tls`",
	"discovery.consul.tls":  "`discovery.consul.tls`",
	"link.offer.a":          "`link.offer.SERVICE`",
	"services.health_check": "`services[].health_check`",
}

// probeConfig puts an unknown key in every mapping of the file, so that
// the parser lists the keys it accepts there.
const probeConfig = `zz: 1
defaults: {zz: 1}
discovery:
  zz: 1
  dns: {zz: 1}
  etcd: {zz: 1, tls: {zz: 1}}
  consul: {zz: 1, tls: {zz: 1}}
  docker: {zz: 1, tls: {zz: 1}}
link: {zz: 1, register: {zz: 1}, offer: {a: {zz: 1}}}
transparent: {zz: 1}
services:
  - zz: 1
    health_check: {zz: 1}
    accept_proxy: {zz: 1}
    backends: [{addr: a:1, zz: 1}]
`

// TestConfigReferenceListsEveryKey asks the real parser which keys each
// mapping of the file accepts, and checks that docs/configuration.md has a
// table for each mapping listing exactly those keys.
func TestConfigReferenceListsEveryKey(t *testing.T) {
	_, err := config.ParseFile("probe.yaml", []byte(probeConfig))
	if err == nil {
		t.Fatal("the probe configuration parsed")
	}
	parser := map[string][]string{}
	re := regexp.MustCompile(`: zz: unknown key in (.+?) \(want one of: ([^)]*)\)`)
	for _, m := range re.FindAllStringSubmatch(err.Error(), -1) {
		parser[m[1]] = strings.Split(m[2], ", ")
	}
	if len(parser) < 12 {
		t.Fatalf("the parser listed keys for only %d mappings:\n%v", len(parser), err)
	}
	doc, err := readPage("docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	for section, keys := range parser {
		heading, ok := configSections[section]
		if !ok {
			t.Errorf("the parser has a mapping %q with keys %v that configSections does not map to a heading", section, keys)
			continue
		}
		documented, found := tableKeys(doc, heading)
		if !found {
			t.Errorf("docs/configuration.md: no heading %q for the parser's %s keys %v", heading, section, keys)
			continue
		}
		slices.Sort(keys)
		slices.Sort(documented)
		if !slices.Equal(keys, documented) {
			t.Errorf("docs/configuration.md, %s: the table lists %v; the parser accepts %v", heading, documented, keys)
		}
	}
}

// tableKeys returns the `key` cells of the first column of the table under
// the heading "### <heading>" (up to the next heading).
func tableKeys(doc, heading string) ([]string, bool) {
	lines := strings.Split(doc, "\n")
	start := slices.Index(lines, "### "+heading)
	if start < 0 {
		return nil, false
	}
	var keys []string
	key := regexp.MustCompile("`([a-z_]+)`")
	for _, l := range lines[start+1:] {
		if strings.HasPrefix(l, "#") {
			break
		}
		first, _, ok := strings.Cut(strings.TrimPrefix(l, "| "), " |")
		if !ok || !strings.HasPrefix(l, "| `") {
			continue
		}
		for _, m := range key.FindAllStringSubmatch(first, -1) {
			keys = append(keys, m[1])
		}
	}
	return keys, true
}
