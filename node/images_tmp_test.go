package node

import (
	"os"
	"path/filepath"
	"testing"
)

// What a crash left in images-tmp/ (an image half taken apart) is gone
// once the node starts again; the rest of the data dir is not touched.
func TestImageLeftoversOfACrashAreRemovedAtStart(t *testing.T) {
	dir := t.TempDir()
	left := filepath.Join(dir, "images-tmp", "0123456789abcdef")
	if err := os.MkdirAll(left, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(left, "layer.tar"), make([]byte, 1<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(dir, "keep.txt")
	if err := os.WriteFile(keep, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	startNode(t, Config{DataDir: dir, GPUs: "none"})
	if _, err := os.Stat(filepath.Join(dir, "images-tmp")); !os.IsNotExist(err) {
		t.Fatalf("images-tmp after a start: %v, want it removed", err)
	}
	if b, err := os.ReadFile(keep); err != nil || string(b) != "mine" {
		t.Fatalf("another file of the data dir: %q, %v; want it kept", b, err)
	}
}
