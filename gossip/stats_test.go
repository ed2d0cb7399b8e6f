package gossip

import (
	"context"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
)

func TestSentBytesAddUpToEverythingSentByPart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mn := mocknet.New()
	defer mn.Close()
	hs := mockHosts(t, mn, 1, 3)
	if err := mn.LinkAll(); err != nil {
		t.Fatal(err)
	}
	gs := make([]*Gossip, len(hs))
	feeds := make([]*PriceFeed, len(hs))
	for i, h := range hs {
		g, err := New(ctx, h, Config{Swarm: "test"})
		if err != nil {
			t.Fatal(err)
		}
		gs[i] = g
		if feeds[i], err = g.JoinPrices(PriceFeedConfig{}); err != nil {
			t.Fatal(err)
		}
		defer feeds[i].Close()
	}
	if err := mn.ConnectAllButSelf(); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, ctx, "every peer to see every other on the topic", func() bool {
		for _, f := range feeds {
			if f.Peers() < len(hs)-1 {
				return false
			}
		}
		return true
	})
	before := gs[0].Sent().Topics[feeds[0].Topic()]
	now := time.Now()
	tick := Tick{Provider: hs[0].ID(), Class: "H100-80GB", Unit: DefaultUnit, Ask: 2_100_000, Available: 8, Seq: uint64(now.UnixNano()), Time: now, Until: now.Add(90 * time.Second)}
	if err := feeds[0].Publish(ctx, tick); err != nil {
		t.Fatal(err)
	}
	for i, f := range feeds[1:] {
		if _, err := f.Next(ctx); err != nil {
			t.Fatalf("peer %d: %v", i+1, err)
		}
	}
	data, err := tick.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s := gs[0].Sent()
	// Flood publishing: the author sends the tick, signed and framed, to
	// both other peers.
	if got := s.Topics[feeds[0].Topic()] - before; got < 2*uint64(len(data)) {
		t.Errorf("price topic bytes sent for one tick to 2 peers: %d, want at least 2 × %d", got, len(data))
	}
	sum := s.IHave + s.IWant + s.Graft + s.Prune + s.IDontWant + s.Subscriptions + s.Framing
	for _, v := range s.Topics {
		sum += v
	}
	if total, _ := gs[0].Bytes(); sum != total {
		t.Errorf("parts add up to %d bytes, Bytes says %d sent: %+v", sum, total, s)
	}
}
