package exec_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec"
)

func TestTheImageCacheRemovesTheLeastRecentlyUsedOfItsOwnImages(t *testing.T) {
	img := testImage(t)
	cli := dockerClient(t)
	ctx := context.Background()
	base, err := cli.ImageInspect(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	// Copies of the test image under names of this test's: a, b, c and d
	// "pulled" by the cache, op the operator's own.
	prefix := "gpumesh-test:cache-" + taskName(t)[len("gpumesh-test-"):]
	ref := func(s string) string { return prefix + "-" + s }
	for _, s := range []string{"a", "b", "c", "d", "op"} {
		if err := cli.ImageTag(ctx, img, ref(s)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { removeImage(cli, ref(s)) })
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	path := filepath.Join(t.TempDir(), "images.json")
	cache := &exec.ImageCache{Path: path, MaxBytes: base.Size*5/2 + 1} // room for two and a half
	for i, s := range []string{"a", "b", "c", "d"} {
		cache.Pulled(ref(s), base.ID, base.Size, t0.Add(time.Duration(i)*time.Minute))
	}
	// a is the least recently used but runs now.
	cache.Acquire(ref("a"), t0)

	removed, err := cache.Evict(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{ref("b"), ref("c")}; !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v (the least recently used not in use)", removed, want)
	}
	for s, there := range map[string]bool{"a": true, "b": false, "c": false, "d": true, "op": true} {
		_, err := cli.ImageInspect(ctx, ref(s))
		if got := err == nil; got != there {
			t.Errorf("image %s on the engine: %v, want %v (inspect: %v)", s, got, there, err)
		}
	}
	if _, err := cli.ImageInspect(ctx, img); err != nil {
		t.Errorf("the test image itself is gone: %v", err)
	}

	// The record survives a restart; an image in use no longer, over the
	// cap, goes next; the operator's never.
	again := &exec.ImageCache{Path: path, MaxBytes: base.Size / 2}
	var names []string
	for _, im := range again.Images() {
		names = append(names, im.Ref)
	}
	if want := []string{ref("a"), ref("d")}; !slices.Equal(names, want) {
		t.Fatalf("after a restart the cache holds %v, want %v", names, want)
	}
	removed, err = again.Evict(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{ref("a"), ref("d")}; !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	if _, err := cli.ImageInspect(ctx, ref("op")); err != nil {
		t.Errorf("the operator's image was removed: %v", err)
	}
	if left := again.Images(); len(left) != 0 {
		t.Errorf("cache still holds %v", left)
	}
}

func TestTheImageCacheLeavesANameThatNowMeansAnotherImage(t *testing.T) {
	img := testImage(t)
	cli := dockerClient(t)
	ctx := context.Background()
	name := "gpumesh-test:cache-" + taskName(t)[len("gpumesh-test-"):]
	if err := cli.ImageTag(ctx, img, name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeImage(cli, name) })
	cache := &exec.ImageCache{MaxBytes: 1}
	// Pulled as another image; the name was since given to this one.
	cache.Pulled(name, "sha256:0000000000000000000000000000000000000000000000000000000000000000", 100, time.Now())
	removed, err := cache.Evict(ctx, cli)
	if err != nil || len(removed) != 0 {
		t.Errorf("removed %v (%v), want nothing", removed, err)
	}
	if _, err := cli.ImageInspect(ctx, name); err != nil {
		t.Errorf("the image now under the name was removed: %v", err)
	}
	if left := cache.Images(); len(left) != 0 {
		t.Errorf("cache still records %v", left)
	}
}
