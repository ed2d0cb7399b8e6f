package exec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/gpumesh/gpumesh/internal/atomicfile"
)

// DefaultImageCache is how many bytes of images a provider keeps of those it
// pulled for jobs, unless told otherwise.
const DefaultImageCache = 100 << 30

// maxCachedImages bounds the images the cache's file may name.
const maxCachedImages = 10000

// ImageCache is the images this provider pulled for jobs: what it pulled,
// when, and when a task last used each. Over its cap, the images least
// recently used go first, except those a running task uses. Images this
// cache did not pull (the operator's own) are never removed.
//
// The record is a JSON file (Path), written whole on every change, so a
// restarted provider still knows which images are its own.
type ImageCache struct {
	Path     string // the record file; "" keeps it in memory only
	MaxBytes int64  // cap of the images' total size; 0: DefaultImageCache; negative: no cap
	Log      *slog.Logger

	mu      sync.Mutex // guards the fields below and the file
	loaded  bool
	images  map[string]*CachedImage // by reference
	running map[string]int          // references in use by running tasks
}

// CachedImage is one image the cache pulled.
type CachedImage struct {
	Ref    string    `json:"ref"`    // as the job named it, e.g. "pytorch/pytorch:2.3.0-cuda12.1"
	ID     string    `json:"id"`     // the engine's image ID when pulled
	Size   int64     `json:"size"`   // bytes, as the engine counts them
	Pulled time.Time `json:"pulled"` // when it was pulled
	Used   time.Time `json:"used"`   // when a task last started with it
}

type cacheFile struct {
	Images []CachedImage `json:"images"`
}

func (c *ImageCache) load() {
	if c.loaded {
		return
	}
	c.loaded = true
	c.images = map[string]*CachedImage{}
	c.running = map[string]int{}
	if c.Path == "" {
		return
	}
	data, err := os.ReadFile(c.Path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			c.log().Warn("image cache record unreadable; images pulled before are kept, not evicted", "file", c.Path, "err", err)
		}
		return
	}
	var f cacheFile
	if err := json.Unmarshal(data, &f); err != nil {
		c.log().Warn("image cache record unreadable; images pulled before are kept, not evicted", "file", c.Path, "err", err)
		return
	}
	for i, im := range f.Images {
		if i >= maxCachedImages {
			break
		}
		if im.Ref != "" {
			c.images[im.Ref] = &f.Images[i]
		}
	}
}

func (c *ImageCache) save() {
	if c.Path == "" {
		return
	}
	f := cacheFile{Images: c.list()}
	data, err := json.MarshalIndent(f, "", "  ")
	if err == nil {
		err = atomicfile.Write(c.Path, data, 0o600)
	}
	if err != nil {
		c.log().Warn("image cache record not saved", "file", c.Path, "err", err)
	}
}

// list is the cached images, least recently used first.
func (c *ImageCache) list() []CachedImage {
	out := make([]CachedImage, 0, len(c.images))
	for _, im := range c.images {
		out = append(out, *im)
	}
	slices.SortFunc(out, func(a, b CachedImage) int {
		if d := a.Used.Compare(b.Used); d != 0 {
			return d
		}
		return strings.Compare(a.Ref, b.Ref)
	})
	return out
}

func (c *ImageCache) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

func (c *ImageCache) maxBytes() int64 {
	if c.MaxBytes == 0 {
		return DefaultImageCache
	}
	return c.MaxBytes
}

// Images is what the cache holds, least recently used first.
func (c *ImageCache) Images() []CachedImage {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.load()
	return c.list()
}

// Pulled records an image this provider has just pulled, as used at now.
func (c *ImageCache) Pulled(ref, id string, size int64, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.load()
	if len(c.images) >= maxCachedImages {
		return
	}
	c.images[ref] = &CachedImage{Ref: ref, ID: id, Size: size, Pulled: now, Used: now}
	c.save()
}

// Acquire marks ref in use by a running task (it is not evicted until
// Release) and, if the cache pulled it, used at now.
func (c *ImageCache) Acquire(ref string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.load()
	c.running[ref]++
	if im, ok := c.images[ref]; ok {
		im.Used = now
		c.save()
	}
}

// Release ends one Acquire of ref.
func (c *ImageCache) Release(ref string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.load()
	if c.running[ref] <= 1 {
		delete(c.running, ref)
	} else {
		c.running[ref]--
	}
}

// Evict removes the images this cache pulled, least recently used first,
// until their total size is within the cap; images in use by a running
// task, or by any container of the engine, stay. It returns the references
// it removed.
func (c *ImageCache) Evict(ctx context.Context, cli client.APIClient) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.load()
	limit := c.maxBytes()
	if limit < 0 {
		return nil, nil
	}
	var total int64
	for _, im := range c.images {
		total += im.Size
	}
	var removed []string
	var errs []error
	for _, im := range c.list() {
		if total <= limit {
			break
		}
		if c.running[im.Ref] > 0 {
			continue
		}
		ins, err := cli.ImageInspect(ctx, im.Ref)
		switch {
		case cerrdefs.IsNotFound(err): // gone already (removed by hand)
			delete(c.images, im.Ref)
			total -= im.Size
			continue
		case err != nil:
			errs = append(errs, fmt.Errorf("looking up cached image %s: %w", im.Ref, err))
			continue
		case ins.ID != im.ID:
			// The name now means another image than the one pulled: the
			// operator's, not the cache's. It stays; the record goes.
			delete(c.images, im.Ref)
			total -= im.Size
			continue
		}
		// Not forced: an image a container uses (even one not of ours)
		// stays. Another name of the same image keeps it too: removing
		// the reference only untags it.
		if _, err := cli.ImageRemove(ctx, im.Ref, image.RemoveOptions{PruneChildren: true}); err != nil {
			if cerrdefs.IsConflict(err) {
				continue
			}
			errs = append(errs, fmt.Errorf("removing cached image %s: %w", im.Ref, err))
			continue
		}
		c.log().Info("image cache: removed the least recently used image", "image", im.Ref, "bytes", im.Size, "last_used", im.Used)
		delete(c.images, im.Ref)
		total -= im.Size
		removed = append(removed, im.Ref)
	}
	c.save()
	return removed, errors.Join(errs...)
}
