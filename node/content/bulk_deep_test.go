package content_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"

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

// On a transport that buffers nothing (libp2p's mocknet, which the
// node's mesh tests run on), a fetch that asks more than one batch ahead
// while the holder writes its answers before it reads the next request
// still completes: the fetcher's requests go out apart from its reads.
// (Its requests and reads were one loop once: both ends waited on a
// write, and a 200 MB image or input fetch hung.)
func TestBulkFetchOverATransportThatBuffersNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	var hs [2]host.Host
	var ss [2]*content.Service
	for i := range hs {
		h, err := mn.GenPeer()
		if err != nil {
			t.Fatal(err)
		}
		s, err := content.New(h, content.Config{Dir: filepath.Join(t.TempDir(), "content"), Prefix: "/gpumesh/test"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		hs[i], ss[i] = h, s
	}
	if err := mn.LinkAll(); err != nil {
		t.Fatal(err)
	}
	if err := mn.ConnectAllButSelf(); err != nil {
		t.Fatal(err)
	}
	// 300 small files: one request of a batch is not all the DAG.
	dir := filepath.Join(t.TempDir(), "many")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		data := fmt.Appendf(nil, "file %d\n", i)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", i)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// And one file of several leaves.
	big := make([]byte, 3*content.ChunkSize)
	_, _ = rand.NewChaCha8([32]byte{5}).Read(big)
	if err := os.WriteFile(filepath.Join(dir, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := ss[0].Add(ctx, dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	grant(t, ss[0], root.CID, hs[1])
	st, release, err := ss[1].FetchFrom(ctx, root.CID, 0, hs[0].ID())
	if err != nil {
		t.Fatal(err)
	}
	release()
	if got := ss[1].Stats().BulkBytes; st.Bytes < root.Bytes || got != st.FetchedBytes {
		t.Fatalf("fetch %+v, %d bytes on the bulk stream: want the whole DAG there", st, got)
	}
}
