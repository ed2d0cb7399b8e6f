package cli

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
)

// addInputs has the node add every src input of spec (relative to the
// spec file's folder) to its content store, showing progress on stderr,
// and puts each one's CID in its place: the path never leaves this
// machine, and the submit that follows sends no bytes twice.
func addInputs(ctx context.Context, g *globals, cl *node.Client, spec *jobspec.Spec, specDir string) error {
	for i, in := range spec.Inputs {
		if in.Src == "" {
			continue
		}
		path := in.Src
		if !filepath.IsAbs(path) {
			abs, err := filepath.Abs(filepath.Join(specDir, path))
			if err != nil {
				return err
			}
			path = abs
		}
		p, err := cl.AddInput(ctx, path, func(p node.InputProgress) {
			pct := 100
			if p.Total > 0 {
				pct = int(p.Done * 100 / p.Total)
			}
			fmt.Fprintf(g.stderr, "\rinput %s: %d%% of %s", text.Printable(in.Src), pct, node.FormatSize(p.Total))
		})
		if err != nil {
			fmt.Fprintln(g.stderr)
			return fmt.Errorf("inputs[%d] (%s): %w", i, in.Src, err)
		}
		fmt.Fprintf(g.stderr, "\rinput %s: %s in %d files, %s\n", text.Printable(in.Src), node.FormatSize(p.Total), p.Files, p.CID)
		spec.Inputs[i].Src, spec.Inputs[i].CID = "", p.CID
	}
	return nil
}

// getCheckpoint has the node write a job's latest checkpoint into dir.
func getCheckpoint(ctx context.Context, g *globals, cl *node.Client, id, dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	c, err := cl.GetCheckpoint(ctx, id, abs)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "checkpoint of job %s (attempt %d, %s): %s in %d files into %s\n",
		id, c.Attempt+1, c.At.Local().Format("2006-01-02 15:04:05"), node.FormatSize(c.Bytes), c.Files, abs)
	return nil
}
