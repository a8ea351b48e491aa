package cli

import (
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// respellArgs rewrites the flag spellings Go's flag package accepted, which
// attache's command line was first written with, into pflag's: a long name
// after one dash (-forward X, -admin=H:P, -help) gets two, and a one-letter
// name after two (--c FILE, --h) gets one. Every spelling that worked keeps
// working, in scripts, Dockerfiles and the arguments an upgrade passes on.
//
// The command is found the way the old parser found it, by the leading
// words naming subcommands; only names that command defines are touched,
// and a flag's value is never rewritten (--log-format -json stays a value).
// Everything after "--" is left alone, as are shell-completion requests,
// whose last word is what the user is typing.
func respellArgs(root *cobra.Command, args []string) []string {
	out := make([]string, 0, len(args))
	if len(args) > 0 && strings.HasPrefix(args[0], cobra.ShellCompRequestCmd) {
		return append(out, args...)
	}
	cmd := root
	i := 0
	for ; i < len(args); i++ {
		sub := subcommand(cmd, args[i])
		if sub == nil {
			break
		}
		out = append(out, args[i])
		cmd = sub
	}
	cmd.InitDefaultHelpFlag()
	return append(out, respellFlags(cmd.Flags(), args[i:])...)
}

// respellFlags is respellArgs over the flags of one flag set.
func respellFlags(fs *pflag.FlagSet, args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		a = respell(fs, a)
		out = append(out, a)
		if wantsValue(fs, a) && i+1 < len(args) {
			i++
			out = append(out, args[i])
		}
	}
	return out
}

// respell is one argument in pflag's spelling.
func respell(fs *pflag.FlagSet, a string) string {
	switch {
	case strings.HasPrefix(a, "--"):
		name, _, _ := strings.Cut(a[2:], "=")
		if len(name) == 1 && fs.ShorthandLookup(name) != nil {
			return a[1:]
		}
	case strings.HasPrefix(a, "-") && len(a) > 2:
		name, _, _ := strings.Cut(a[1:], "=")
		if len(name) > 1 && fs.Lookup(name) != nil {
			return "-" + a
		}
	}
	return a
}

// wantsValue reports whether a, in pflag's spelling, is a flag whose value
// is the next argument.
func wantsValue(fs *pflag.FlagSet, a string) bool {
	var f *pflag.Flag
	switch {
	case strings.HasPrefix(a, "--") && !strings.Contains(a, "="):
		f = fs.Lookup(a[2:])
	case len(a) == 2 && a[0] == '-' && a[1] != '-':
		f = fs.ShorthandLookup(a[1:])
	}
	return f != nil && f.NoOptDefVal == ""
}

// subcommand is cmd's subcommand called name (or an alias of it), or nil.
func subcommand(cmd *cobra.Command, name string) *cobra.Command {
	for _, c := range cmd.Commands() {
		if c.Name() == name || c.HasAlias(name) {
			return c
		}
	}
	return nil
}
