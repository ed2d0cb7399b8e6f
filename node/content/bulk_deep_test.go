package content_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node/content"
)

// A DAG of more leaves than a node links (two levels under the root)
// comes whole on the bulk stream.
func TestBulkFetchOfADeepDAG(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	hb, b := peerOn(t, 0)
	connect(t, hb, ha)
	data := make([]byte, 180*content.ChunkSize+5)
	_, _ = rand.NewChaCha8([32]byte{3}).Read(data)
	src := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := a.Add(ctx, src, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	grant(t, a, root.CID, hb)
	st, release, err := b.FetchFrom(ctx, root.CID, 0, ha.ID())
	if err != nil {
		t.Fatal(err)
	}
	release()
	if got := b.Stats().BulkBytes; got != st.FetchedBytes || st.Bytes < root.Bytes {
		t.Fatalf("fetch %+v, %d bytes on the bulk stream: want the whole DAG there", st, got)
	}
}

// More fetches from one holder at once than it takes bulk streams: those
// refused go on over bitswap, and all complete.
func TestBulkFetchesBeyondAPeersStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	hb, b := peerOn(t, 0)
	connect(t, hb, ha)
	var roots []content.Root
	for i := range 6 {
		data := make([]byte, 8*content.ChunkSize+i)
		_, _ = rand.NewChaCha8([32]byte{4, byte(i)}).Read(data)
		src := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(src, data, 0o644); err != nil {
			t.Fatal(err)
		}
		root, err := a.Add(ctx, src, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		grant(t, a, root.CID, hb)
		roots = append(roots, root)
	}
	errs := make(chan error, len(roots))
	for _, r := range roots {
		go func() {
			_, release, err := b.FetchFrom(ctx, r.CID, 0, ha.ID())
			if err == nil {
				release()
			}
			errs <- err
		}()
	}
	for range roots {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
