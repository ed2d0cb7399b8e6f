// Package cli is the gpumesh command line (cobra). Run is the whole program;
// main only calls it. Commands other than node, key and swarm talk to the
// running node's local API and to nothing else.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/gpumesh/gpumesh/node"
	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command failed
	exitUsage = 2 // the command line was wrong
)

// usageError marks errors in how the command was called.
type usageError struct{ error }

// Run runs the gpumesh command line with args (without the program name)
// and returns the process exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var je jobExit
	if errors.As(err, &je) { // the job's own exit code, its reason already shown
		if je.reason != "" {
			fmt.Fprintf(stderr, "gpumesh: %s\n", je.reason)
		}
		return je.code
	}
	fmt.Fprintf(stderr, "gpumesh: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") {
		fmt.Fprintln(stderr, "Run 'gpumesh --help' for usage.")
		return exitUsage
	}
	return exitError
}

// globals are the flags every command has.
type globals struct {
	dataDir   string
	logLevel  string
	logFormat string
	stdout    io.Writer
	stderr    io.Writer
}

func (g *globals) logger() (*slog.Logger, error) {
	return newLogger(g.stderr, g.logLevel, g.logFormat)
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "gpumesh",
		Short: "A peer-to-peer GPU compute mesh",
		Long: `gpumesh is a peer-to-peer GPU compute mesh with no central coordinator.
Run a peer with 'gpumesh node'; the other commands talk to it.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		Version:       node.Version,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.PersistentPreRunE = func(c *cobra.Command, _ []string) error {
		if _, err := g.logger(); err != nil {
			return usageError{err}
		}
		abs, err := filepath.Abs(g.dataDir)
		if err != nil {
			return usageError{fmt.Errorf("--data %q: %w", g.dataDir, err)}
		}
		g.dataDir = abs
		return nil
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.dataDir, "data", node.DefaultDataDir(), "data dir: key, config, store and local API (env GPUMESH_DATA)")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	pf.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.AddCommand(
		nodeCmd(g), keyCmd(g), swarmCmd(g),
		idCmd(g), peersCmd(g), statusCmd(g),
		gpusCmd(g), jobCmd(g), pricesCmd(g), proofCmd(g), localnetCmd(g), demoCmd(g),
	)
	root.AddCommand(providerCmd(g))
	for _, c := range root.Commands() {
		c.Args = wrapArgs(c.Args)
		for _, sub := range c.Commands() {
			sub.Args = wrapArgs(sub.Args)
		}
	}
	return root
}

// wrapArgs turns argument-count errors into usage errors.
func wrapArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	if check == nil {
		check = cobra.NoArgs
	}
	return func(c *cobra.Command, args []string) error {
		if err := check(c, args); err != nil {
			return usageError{fmt.Errorf("%s: %w", c.CommandPath(), err)}
		}
		return nil
	}
}

// output is the -o flag of commands that print data.
// jobExit ends the CLI with a job's exit code.
type jobExit struct {
	code   int
	reason string
}

func (e jobExit) Error() string { return fmt.Sprintf("job exited with code %d: %s", e.code, e.reason) }

type output struct{ format string }

func (o *output) register(c *cobra.Command) {
	c.Flags().StringVarP(&o.format, "output", "o", "text", "output format: text or json")
}

func (o *output) check() error {
	switch o.format {
	case "text", "json":
		return nil
	}
	return usageError{fmt.Errorf("-o %q: want text or json", o.format)}
}

// print writes v as indented JSON when -o json, else calls text.
func (o *output) print(w io.Writer, v any, text func()) error {
	if o.format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	text()
	return nil
}

// joinOr renders an empty list as "-".
func joinOr(s []string, sep string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, sep)
}
