package content_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	kaddht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node/content"
)

// routedPeer is peerOn with a real DHT (server mode, the test's prefix)
// as the service's Routing.
func routedPeer(t *testing.T) (host.Host, *content.Service, *kaddht.IpfsDHT) {
	t.Helper()
	h := bareHost(t)
	d, err := kaddht.New(h, kaddht.Mode(kaddht.ModeServer), kaddht.ProtocolPrefix("/gpumesh/test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	s, err := content.New(h, content.Config{Dir: filepath.Join(t.TempDir(), "content"), Prefix: "/gpumesh/test", Routing: d})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return h, s, d
}

// A peer found by its provider record, not named by the caller, is a
// stranger like any other on the bulk path: the one here announces the
// root and sends a wrong leaf; it is asked (the peer named has nothing),
// cut off, and the fetch completes from the honest holder over bitswap.
func TestBulkPeerFromAProviderRecordThatForgesIsCutOff(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a, _ := routedPeer(t)       // the honest holder: shares, never announces
	hf, forger, df := routedPeer(t) // announces the root, serves a wrong leaf
	he, _, _ := routedPeer(t)       // named by the caller, holds nothing
	hb, b, db := routedPeer(t)      // fetches
	src := tree(t, 3*content.ChunkSize)
	root, err := a.Add(ctx, src, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	connect(t, hf, ha)
	grant(t, a, root.CID, hf)
	if _, rel, err := forger.FetchFrom(ctx, root.CID, 0, ha.ID()); err != nil {
		t.Fatal(err)
	} else {
		rel()
	}
	leaf := aLeaf(t, ctx, forger, root.CID)
	if err := forger.Store().DeleteBlock(ctx, leaf); err != nil {
		t.Fatal(err)
	}
	forgedLeaf, _ := blocks.NewBlockWithCid(make([]byte, content.ChunkSize), leaf)
	if err := forger.Store().Put(ctx, forgedLeaf); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*content.Service{a, forger} {
		if err := s.Share(ctx, root.CID); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range []host.Host{ha, hf, he} {
		connect(t, hb, h)
	}
	connect(t, he, hf)
	testwait.For(t, 20*time.Second, "the DHTs know each other", func() bool {
		return db.RoutingTable().Size() >= 2 && df.RoutingTable().Size() >= 2
	})
	if err := df.Provide(ctx, root.CID, true); err != nil {
		t.Fatal(err)
	}
	st, release, err := b.FetchFrom(ctx, root.CID, 0, he.ID())
	if err != nil {
		t.Fatal(err)
	}
	release()
	// The peer named answers "none" at the root: what came on a bulk
	// stream came from the peer of the provider record.
	if forger.Stats().ServedBlocks == 0 || b.Stats().BulkBytes == 0 {
		t.Fatalf("the forger served %d blocks, %d bytes came on bulk streams: want the peer of the provider record asked there", forger.Stats().ServedBlocks, b.Stats().BulkBytes)
	}
	if b.ForgersCut() != 1 {
		t.Fatalf("%d peers cut off, want the forger", b.ForgersCut())
	}
	testwait.For(t, 10*time.Second, "the forger disconnected", func() bool { return hb.Network().Connectedness(hf.ID()) != network.Connected })
	dst := filepath.Join(t.TempDir(), "in")
	if err := b.WriteTo(ctx, root.CID, dst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = content.RemoveTree(dst) })
	sameTree(t, src, dst)
	if st.Bytes < root.Bytes {
		t.Fatalf("fetch %+v, want the whole DAG", st)
	}
}
