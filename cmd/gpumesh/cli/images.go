package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
)

// addImage has the node put the job's image on the mesh where its Docker
// engine has it (as the submit would), showing progress on stderr, and
// puts the image's CID in the spec: providers that lack the image fetch
// it from the mesh. An image the engine lacks is left to a registry,
// unless the spec says imageFrom: submitter.
func addImage(ctx context.Context, g *globals, cl *node.Client, spec *jobspec.Spec) error {
	if spec.Image == "" || spec.ImageCID != "" || spec.ImageFrom == jobspec.ImageFromRegistry {
		return nil
	}
	name := text.Printable(spec.Image)
	shown := false
	added, err := cl.AddImage(ctx, spec.Image, spec.ImageFrom, func(p node.ImageProgress) {
		pct := 100
		if p.Total > 0 {
			pct = int(p.Added * 100 / p.Total)
		}
		shown = true
		fmt.Fprintf(g.stderr, "\rimage %s: %d%% of %s", name, pct, node.FormatSize(p.Total))
	})
	if shown {
		fmt.Fprintln(g.stderr)
	}
	if err != nil {
		return err
	}
	if added.CID == "" {
		return nil
	}
	fmt.Fprintf(g.stderr, "image %s: %s in %d layers, on the mesh as %s\n", name, node.FormatSize(added.Bytes), added.Layers, added.CID)
	spec.ImageCID = added.CID
	return nil
}

// printImages says where each member's image came from.
func printImages(w io.Writer, j node.Job) {
	for _, r := range j.Runs {
		im := r.Image
		if im == nil {
			continue
		}
		var how string
		switch im.Source {
		case node.ImageFromProvider:
			how = "on its provider already, 0 B moved"
		case node.ImageFromMesh:
			how = fmt.Sprintf("over the mesh, %s moved of %s", node.FormatSize(im.Moved), node.FormatSize(im.Bytes))
			if len(im.From) > 0 {
				var from []string
				for _, p := range im.From {
					from = append(from, text.Line(p))
				}
				how += " from " + strings.Join(from, ", ")
			}
		default:
			how = "from a registry"
		}
		fmt.Fprintf(w, "member %d image: %s (%d ms)\n", r.Rank, how, im.Millis)
	}
}
