package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// WriteManPages writes a roff man page (section 1) for cmd and every
// available command below it into dir: attache.1, attache-check.1 …. The
// pages say what --help says, with the flags under the same headings.
// version goes in the page footer; no date is written, so the pages are
// reproducible.
func WriteManPages(cmd *cobra.Command, dir, version string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("man page directory: %w", err)
	}
	var err error
	forEachCommand(cmd, func(c *cobra.Command) {
		if err != nil || (c.HasParent() && !c.IsAvailableCommand()) {
			return
		}
		name := strings.ReplaceAll(c.CommandPath(), " ", "-") + ".1"
		if werr := os.WriteFile(filepath.Join(dir, name), manPage(c, version), 0o644); werr != nil {
			err = fmt.Errorf("writing man page %s: %w", name, werr)
		}
	})
	return err
}

// manPage is one command's page in the man(7) macros.
func manPage(c *cobra.Command, version string) []byte {
	var b bytes.Buffer
	page := strings.ReplaceAll(c.CommandPath(), " ", "-")
	fmt.Fprintf(&b, ".TH %s 1 \"\" \"attache %s\" \"attache manual\"\n", strings.ToUpper(page), roff(version))
	fmt.Fprintf(&b, ".SH NAME\n%s \\- %s\n", roff(page), roff(c.Short))
	b.WriteString(".SH SYNOPSIS\n")
	if !c.HasParent() {
		for _, form := range runForms {
			fmt.Fprintf(&b, ".B %s\n.br\n", roff(form[0]))
		}
	} else {
		fmt.Fprintf(&b, ".B %s\n", roff(c.UseLine()))
	}
	if desc := c.Long; desc != "" {
		b.WriteString(".SH DESCRIPTION\n")
		writeText(&b, desc)
	}
	if c.HasAvailableSubCommands() {
		b.WriteString(".SH COMMANDS\n")
		for _, sub := range c.Commands() {
			if sub.IsAvailableCommand() {
				fmt.Fprintf(&b, ".TP\n.B %s\n%s\n", roff(sub.UseLine()), roff(sub.Short))
			}
		}
	}
	c.InitDefaultHelpFlag()
	b.WriteString(".SH OPTIONS\n")
	for _, g := range flagGroups(c.Flags()) {
		fmt.Fprintf(&b, ".SS %s\n", roff(g.name))
		g.flags.VisitAll(func(f *pflag.Flag) {
			varname, usage := pflag.UnquoteUsage(f)
			b.WriteString(".TP\n")
			if f.Shorthand != "" {
				fmt.Fprintf(&b, "\\fB\\-%s\\fR, ", roff(f.Shorthand))
			}
			fmt.Fprintf(&b, "\\fB\\-\\-%s\\fR", roff(f.Name))
			if varname != "" && f.NoOptDefVal == "" {
				fmt.Fprintf(&b, " \\fI%s\\fR", roff(varname))
			}
			b.WriteString("\n" + roff(usage))
			if f.DefValue != "" && f.DefValue != "[]" && f.DefValue != "0" && f.DefValue != "false" && !strings.Contains(usage, "(default") {
				fmt.Fprintf(&b, " (default %s)", roff(f.DefValue))
			}
			b.WriteString("\n")
		})
	}
	var see []string
	if c.HasParent() {
		see = append(see, strings.ReplaceAll(c.Parent().CommandPath(), " ", "-")+"(1)")
	}
	for _, sub := range c.Commands() {
		if sub.IsAvailableCommand() {
			see = append(see, strings.ReplaceAll(sub.CommandPath(), " ", "-")+"(1)")
		}
	}
	if len(see) > 0 {
		fmt.Fprintf(&b, ".SH SEE ALSO\n%s\n", roff(strings.Join(see, ", ")))
	}
	return b.Bytes()
}

// writeText turns help prose into roff: blank lines separate paragraphs,
// and indented lines (examples, numbered steps) are kept as they are.
func writeText(b *bytes.Buffer, text string) {
	for para := range strings.SplitSeq(strings.TrimSpace(text), "\n\n") {
		if strings.HasPrefix(para, " ") {
			fmt.Fprintf(b, ".PP\n.nf\n%s\n.fi\n", roff(para))
			continue
		}
		fmt.Fprintf(b, ".PP\n%s\n", roff(para))
	}
}

// roff escapes text for a roff line: backslashes, dashes (which roff would
// print as hyphens, and man pages mean as the ASCII minus of a flag), and a
// line starting with a control character.
func roff(s string) string {
	s = strings.NewReplacer(`\`, `\e`, "-", `\-`).Replace(s)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}
