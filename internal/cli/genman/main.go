// Command genman writes attache's man pages (attache.1, attache-check.1 …),
// one per command, from the very command tree the binary runs, so they
// cannot drift from --help. It is a program of its own, run by `make man`,
// so that the attache binary, which ships FROM scratch where nobody reads
// man pages, carries none of it.
//
// Usage: go run ./internal/cli/genman [DIR]   (default dist/man)
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/attache/attache/internal/buildinfo"
	"github.com/attache/attache/internal/cli"
)

func main() {
	dir := "dist/man"
	if len(os.Args) > 1 {
		dir = os.Args[1]
	}
	root := cli.NewCommand(cli.Env{Stdout: io.Discard, Stderr: io.Discard})
	root.InitDefaultCompletionCmd() // documented as every other command
	if err := cli.WriteManPages(root, dir, buildinfo.Version(cli.Version)); err != nil {
		fmt.Fprintln(os.Stderr, "genman:", err)
		os.Exit(1)
	}
}
