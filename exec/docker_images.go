package exec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/client"
)

// Images moved between engines without a registry (node/images): what
// the engine has, `docker save` and `docker load`.

// ImageInfo is what the engine says of an image.
type ImageInfo struct {
	ID     string   // the engine's ID: the config's digest (the classic store) or the manifest's (the containerd store)
	Size   int64    // bytes
	Layers []string // the layers' digests (the config's rootfs diff_ids), base first
}

// Image is what the engine says of the image ref names, and whether the
// engine has it.
func (d *Docker) Image(ctx context.Context, ref string) (info ImageInfo, ok bool, err error) {
	ins, err := d.cli.ImageInspect(ctx, ref)
	switch {
	case cerrdefs.IsNotFound(err):
		return ImageInfo{}, false, nil
	case err != nil:
		return ImageInfo{}, false, fmt.Errorf("docker: looking up image %s: %w", ref, err)
	}
	info = ImageInfo{ID: ins.ID, Size: ins.Size}
	if ins.RootFS.Type == "layers" || len(ins.RootFS.Layers) > 0 {
		info.Layers = ins.RootFS.Layers
	}
	return info, true, nil
}

// SaveImage writes to w the tar stream `docker save ref` writes.
func (d *Docker) SaveImage(ctx context.Context, ref string, w io.Writer) error {
	rc, err := d.cli.ImageSave(ctx, []string{ref})
	if err != nil {
		return fmt.Errorf("docker: exporting image %s: %w", ref, err)
	}
	defer rc.Close()
	if _, err := io.Copy(w, rc); err != nil {
		return fmt.Errorf("docker: exporting image %s: %w", ref, err)
	}
	return nil
}

// LoadImage gives the engine the tar stream `docker load` reads, and
// waits until it has loaded it (or failed). The engine reads the whole
// stream before it loads anything: a stream that ends in an error (r's
// writer closed with one) loads nothing.
func (d *Docker) LoadImage(ctx context.Context, r io.Reader) error {
	resp, err := d.cli.ImageLoad(ctx, r, client.ImageLoadWithQuiet(true))
	if err != nil {
		return fmt.Errorf("docker: loading an image: %w", err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("docker: loading an image: %w", err)
	}
	// The engine answers 200 and reports a failure in its JSON stream.
	if i := strings.Index(string(out), `"errorDetail"`); i >= 0 {
		return fmt.Errorf("docker: loading an image: %s", strings.TrimSpace(string(out[i:])))
	}
	return nil
}

// Adopt records an image loaded for jobs in the image cache (as a pull
// is), so it is removed least recently used first once the cache is over
// its cap; then it evicts.
func (d *Docker) Adopt(ctx context.Context, ref string) error {
	info, ok, err := d.Image(ctx, ref)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("docker: image " + ref + " not found after its load")
	}
	d.cache.Pulled(ref, info.ID, info.Size, time.Now())
	d.evict(ctx)
	return nil
}

// evict removes cached images over the cache's cap, and says which.
func (d *Docker) evict(ctx context.Context) {
	removed, err := d.cache.Evict(ctx, d.cli)
	if err != nil {
		// Some may be gone all the same.
		d.log().Warn("image cache eviction", "err", err)
	}
	if len(removed) > 0 {
		d.log().Info("image cache over its cap: removed images", "images", removed)
		if d.cfg.Removed != nil {
			d.cfg.Removed(removed)
		}
	}
}
