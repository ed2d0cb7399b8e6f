package gossip

import (
	"context"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
)

// tcpHost is a libp2p host of test key i on loopback TCP.
func tcpHost(t testing.TB, i int) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.Identity(testKey(i)), libp2p.NoTransports, libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// PublishFlushed returns once its tick has been written to the stream of
// every peer of the topic (the last point this peer sees of it: a closing
// node's last words, node.withdrawAsks, are sent with it), and says to
// how many; each gets the tick. A peer alone waits for no one. Real
// GossipSub on loopback TCP.
func TestPublishFlushedSaysWhomTheTickWasWrittenTo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const receivers = 3
	var feeds []*PriceFeed
	var hs []host.Host
	for i := range 1 + receivers {
		h := tcpHost(t, 1+i)
		g, err := New(ctx, h, Config{Swarm: "test"})
		if err != nil {
			t.Fatal(err)
		}
		f, err := g.JoinPrices(PriceFeedConfig{})
		if err != nil {
			t.Fatal(err)
		}
		feeds, hs = append(feeds, f), append(hs, h)
	}
	now := time.Now()
	tk := Tick{Provider: hs[0].ID(), Class: "H100-80GB", Unit: DefaultUnit, Ask: 2_100_000, Seq: 1, Time: now, Until: now.Add(time.Minute)}
	// Alone on the topic: no one to wait for.
	written, err := feeds[0].PublishFlushed(ctx, tk)
	if err != nil || written != 0 || ctx.Err() != nil {
		t.Fatalf("alone: written to %d, %v (ctx %v); want 0 at once", written, err, ctx.Err())
	}
	for _, r := range hs[1:] {
		if err := hs[0].Connect(ctx, peer.AddrInfo{ID: r.ID(), Addrs: r.Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	testwait.Until(t, ctx, "the publisher to see every receiver on the topic", func() bool { return feeds[0].Peers() == receivers })
	for seq := uint64(2); seq < 12; seq++ {
		tk.Seq, tk.Time = seq, time.Now()
		written, err := feeds[0].PublishFlushed(ctx, tk)
		if err != nil {
			t.Fatal(err)
		}
		if written != receivers {
			t.Fatalf("tick %d: written to %d peers, want %d", seq, written, receivers)
		}
		for i, f := range feeds[1:] {
			got, err := f.Next(ctx)
			if err != nil || got.Seq != seq {
				t.Fatalf("tick %d: receiver %d got %+v, %v", seq, i, got, err)
			}
		}
	}
}
