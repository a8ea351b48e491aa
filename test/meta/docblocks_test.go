package meta

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// A docBlock is one fenced code block of a Markdown page: its info string
// (```yaml fragment → lang "yaml", tags ["fragment"]), its text with the
// fence's indentation removed, and where it starts, for messages.
type docBlock struct {
	page string
	line int
	lang string
	tags []string
	text string
}

func (b docBlock) String() string {
	return b.page + ":" + strconv.Itoa(b.line) + " (```" + b.lang + ")"
}

func (b docBlock) has(tag string) bool {
	for _, t := range b.tags {
		if t == tag {
			return true
		}
	}
	return false
}

var fenceRE = regexp.MustCompile("^( *)```(.*)$")

// blocks returns every fenced code block of a page. A fence may be indented
// (a block inside a list item); its closing fence has the same indentation.
// An unclosed block's line is returned as unclosed.
func blocks(page, text string) (out []docBlock, unclosed int) {
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		m := fenceRE.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		indent, info := m[1], strings.Fields(m[2])
		b := docBlock{page: page, line: i + 1}
		if len(info) > 0 {
			b.lang, b.tags = info[0], info[1:]
		}
		var body []string
		closed := false
		for i++; i < len(lines); i++ {
			if lines[i] == indent+"```" {
				closed = true
				break
			}
			body = append(body, strings.TrimPrefix(lines[i], indent))
		}
		if !closed {
			return out, b.line
		}
		b.text = strings.Join(body, "\n") + "\n"
		out = append(out, b)
	}
	return out, 0
}

// repoRoot is the repository's root, relative to this package's directory
// (where go test runs it). Absolute, since some checks change directory.
func repoRoot() string {
	root, err := filepath.Abs("../..")
	if err != nil {
		panic(err)
	}
	return root
}

// docPages lists README.md and every page under docs/, relative to the root.
func docPages() ([]string, error) {
	pages := []string{"README.md"}
	more, err := filepath.Glob(filepath.Join(repoRoot(), "docs", "*.md"))
	if err != nil {
		return nil, err
	}
	for _, p := range more {
		rel, err := filepath.Rel(repoRoot(), p)
		if err != nil {
			return nil, err
		}
		pages = append(pages, rel)
	}
	sort.Strings(pages[1:])
	return pages, nil
}

func readPage(page string) (string, error) {
	b, err := os.ReadFile(filepath.Join(repoRoot(), page))
	return string(b), err
}

// shellWords splits one shell command line into words, honouring single
// and double quotes and backslash escapes, and dropping a trailing
// # comment. It is enough for the documentation's examples, which use no
// expansions in the commands this package runs.
func shellWords(line string) []string {
	var (
		words []string
		cur   strings.Builder
		inTok bool
		quote rune
	)
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote != 0:
			switch {
			case r == quote:
				quote = 0
			case r == '\\' && quote == '"' && i+1 < len(rs) && strings.ContainsRune(`"\$`+"`", rs[i+1]):
				i++
				cur.WriteRune(rs[i])
			default:
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inTok = r, true
		case r == '\\' && i+1 < len(rs):
			i++
			cur.WriteRune(rs[i])
			inTok = true
		case r == ' ' || r == '\t':
			if inTok {
				words = append(words, cur.String())
				cur.Reset()
				inTok = false
			}
		case r == '#' && !inTok:
			i = len(rs)
		default:
			cur.WriteRune(r)
			inTok = true
		}
	}
	if inTok {
		words = append(words, cur.String())
	}
	return words
}

// commands joins a shell block's continued lines and splits each line at
// && and ; into the commands it runs, each as words.
func commands(text string) [][]string {
	var out [][]string
	joined := strings.ReplaceAll(text, "\\\n", " ")
	for _, line := range strings.Split(joined, "\n") {
		var cmd []string
		for _, w := range shellWords(line) {
			if w == "&&" || w == ";" || w == "||" {
				if len(cmd) > 0 {
					out = append(out, cmd)
				}
				cmd = nil
				continue
			}
			if strings.HasSuffix(w, ";") && len(w) > 1 {
				cmd = append(cmd, strings.TrimSuffix(w, ";"))
				out = append(out, cmd)
				cmd = nil
				continue
			}
			cmd = append(cmd, w)
		}
		if len(cmd) > 0 {
			out = append(out, cmd)
		}
	}
	return out
}

// envPrefix splits leading NAME=value words (the environment of one
// command) from the command itself.
func envPrefix(words []string) (env, rest []string) {
	envRE := regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
	for len(words) > 0 && envRE.MatchString(words[0]) {
		env = append(env, words[0])
		words = words[1:]
	}
	return env, words
}

// githubSlug is the anchor GitHub gives a heading: lower case, punctuation
// other than '-' and '_' dropped, spaces turned into '-'.
func githubSlug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
			b.WriteRune(r)
		}
	}
	return b.String()
}

var headingRE = regexp.MustCompile(`(?m)^#{1,6} +(.+?) *$`)

// anchors returns the anchors of a page's headings, outside code blocks,
// numbered as GitHub numbers repeats (-1, -2 …).
func anchors(text string) map[string]bool {
	seen := map[string]int{}
	out := map[string]bool{}
	inCode := false
	for _, line := range strings.Split(text, "\n") {
		if fenceRE.MatchString(line) {
			inCode = !inCode
			continue
		}
		if inCode {
			continue
		}
		m := headingRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		plain := strings.NewReplacer("`", "", "*", "").Replace(m[1])
		plain = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`).ReplaceAllString(plain, "$1")
		s := githubSlug(plain)
		if n := seen[s]; n > 0 {
			out[s+"-"+strconv.Itoa(n)] = true
		} else {
			out[s] = true
		}
		seen[s]++
	}
	return out
}
