package content_test

import (
	"context"
	"os"
	"strings"
	"testing"

	blocks "github.com/ipfs/go-block-format"

	"github.com/gpumesh/gpumesh/node/content"
)

// Sync flushes the store's filesystem, and says which store it could not.
func TestStoreSyncFlushesAndNamesAStoreItCannot(t *testing.T) {
	dir := t.TempDir()
	s, err := content.OpenStore(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), blocks.NewBlock([]byte("a checkpoint's block"))); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(); err != nil {
		t.Fatalf("sync: %v", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(); err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("sync of a store whose folder is gone: %v, want an error naming %s", err, dir)
	}
}
