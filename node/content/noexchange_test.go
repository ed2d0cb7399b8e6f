package content_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node/content"
	"github.com/libp2p/go-libp2p"
)

// A service without the exchange (a simulated peer's) still fetches over
// bulk streams from a holder, serves no bitswap, and a fetch that needs
// the exchange says it has none.
func TestWithoutTheExchangeBulkFetchesAndFetchSaysWhy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	hb, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	b, err := content.New(hb, content.Config{Dir: filepath.Join(t.TempDir(), "content"), Prefix: "/gpumesh/test", NoExchange: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(); _ = hb.Close() })
	for _, p := range hb.Mux().Protocols() {
		if strings.Contains(string(p), "bitswap") {
			t.Errorf("a service without the exchange serves %s", p)
		}
	}
	connect(t, hb, ha)
	root, err := a.Add(ctx, tree(t, 3*content.ChunkSize+1), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Fetch(ctx, root.CID, 0); !errors.Is(err, content.ErrNoExchange) {
		t.Fatalf("Fetch without the exchange: %v, want ErrNoExchange", err)
	}
	grant(t, a, root.CID, hb)
	st, release, err := b.FetchFrom(ctx, root.CID, 0, ha.ID())
	if err != nil {
		t.Fatalf("bulk fetch without the exchange: %v", err)
	}
	release()
	if st.FetchedBytes != st.Bytes || st.Bytes < root.Bytes {
		t.Fatalf("fetch: %+v, want every byte of the %d-byte DAG over bulk streams", st, root.Bytes)
	}
	if got := b.Received(ha.ID()); got != uint64(st.FetchedBytes) {
		t.Fatalf("received %d bytes from a, want the %d fetched", got, st.FetchedBytes)
	}
}
