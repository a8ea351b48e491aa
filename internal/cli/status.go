package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/attache/attache/internal/admin"
)

// DefaultAdmin is where `attache status` looks when --admin is not given.
const DefaultAdmin = "127.0.0.1:9901"

// readToken reads the admin bearer token at start, so a bad path fails
// before anything listens rather than at the first mutating call.
func readToken(path, adminAddr string) (string, error) {
	if path == "" {
		return "", nil
	}
	if adminAddr == "" {
		return "", fmt.Errorf("flag --admin-token-file %s: needs --admin HOST:PORT, the API it protects", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("flag --admin-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("flag --admin-token-file: %s is empty; want the bearer token", path)
	}
	return tok, nil
}

func statusCommand(e Env) *cobra.Command {
	var (
		addr string
		raw  bool
	)
	c := &cobra.Command{
		Use:   "status [--admin HOST:PORT] [--json]",
		Short: "print a running attache's services and backends (through its admin API)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("admin") {
				if a := lookupEnv(e.Environ, envAdmin); a != "" {
					addr = a
				}
			}
			return exitWith(runStatus(cmd.Context(), e, addr, raw))
		},
	}
	c.Flags().StringVar(&addr, "admin", DefaultAdmin, "the admin API's `HOST:PORT` (default $"+envAdmin+", else "+DefaultAdmin+")")
	c.Flags().BoolVar(&raw, "json", false, "print the raw JSON of /v1/services")
	return c
}

// runStatus is `attache status`: GET /v1/services of a running attache and
// print it as a table, or as the raw JSON with --json.
func runStatus(ctx context.Context, e Env, addr string, raw bool) int {
	body, err := fetchServices(ctx, addr)
	if err != nil {
		fmt.Fprintf(e.Stderr, "attache status: %v\n", err)
		return ExitRuntime
	}
	if raw {
		e.Stdout.Write(body)
		return ExitOK
	}
	var v struct{ Services []admin.Service }
	if err := json.Unmarshal(body, &v); err != nil {
		fmt.Fprintf(e.Stderr, "attache status: decoding the answer of %s: %v\n", addr, err)
		return ExitRuntime
	}
	printStatus(e.Stdout, v.Services)
	return ExitOK
}

func fetchServices(ctx context.Context, addr string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	url := "http://" + addr + "/v1/services"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("admin address %q: %w", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the admin API at %s (is attache running with --admin %s?): %w", addr, addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// printStatus prints one row per backend; the service's columns are
// repeated so each row stands alone under grep.
func printStatus(w io.Writer, services []admin.Service) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tLISTEN\tBACKEND\tHEALTHY\tACTIVE\tBYTES IN/OUT")
	for _, s := range services {
		bytes := fmt.Sprintf("%d/%d", s.Connections.BytesIn, s.Connections.BytesOut)
		if len(s.Backends) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t%d\t%s\n", s.Name, s.Listen, s.Connections.Active, bytes)
		}
		for _, b := range s.Backends {
			healthy := "yes"
			switch {
			case b.Draining:
				healthy = "draining"
			case !b.Healthy:
				healthy = "no"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", s.Name, s.Listen, b.Addr, healthy, b.Active, bytes)
		}
	}
	tw.Flush()
}
