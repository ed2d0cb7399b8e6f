package gossip

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
)

// mockHosts adds n hosts with the test keys first..first+n-1 to mn.
func mockHosts(t testing.TB, mn mocknet.Mocknet, first, n int) []host.Host {
	t.Helper()
	var hs []host.Host
	for i := first; i < first+n; i++ {
		addr := ma.StringCast(fmt.Sprintf("/ip4/127.%d.%d.%d/tcp/4021", (i>>16)&0xff, (i>>8)&0xff, i&0xff))
		h, err := mn.AddPeer(testKey(i), addr)
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	return hs
}

func TestPriceFeedCarriesTicksAndPenalizesForgers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mn := mocknet.New()
	defer mn.Close()
	hs := mockHosts(t, mn, 1, 5)
	evil := mockHosts(t, mn, 99, 1)[0]
	if err := mn.LinkAll(); err != nil {
		t.Fatal(err)
	}
	feeds := make([]*PriceFeed, len(hs))
	gs := make([]*Gossip, len(hs))
	for i, h := range hs {
		g, err := New(ctx, h, Config{Swarm: "test", ScoreView: true})
		if err != nil {
			t.Fatal(err)
		}
		gs[i] = g
		if feeds[i], err = g.JoinPrices(PriceFeedConfig{}); err != nil {
			t.Fatal(err)
		}
		defer feeds[i].Close()
	}
	// The attacker runs plain GossipSub: no validator stops what it sends.
	eps, err := pubsub.NewGossipSub(ctx, evil, pubsub.WithFloodPublish(true))
	if err != nil {
		t.Fatal(err)
	}
	etopic, err := eps.Join(TopicName("test", PricesTopic))
	if err != nil {
		t.Fatal(err)
	}
	esub, err := etopic.Subscribe() // to be in the mesh; never read
	if err != nil {
		t.Fatal(err)
	}
	defer esub.Cancel()
	if err := mn.ConnectAllButSelf(); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, ctx, "every peer to see every other on the topic", func() bool {
		for _, f := range feeds {
			if f.Peers() < len(hs) {
				return false
			}
		}
		return true
	})

	now := time.Now()
	seq := uint64(now.UnixNano())
	honest := Tick{Provider: hs[0].ID(), Class: "H100-80GB", Unit: DefaultUnit, Ask: 2_100_000, Available: 8, Seq: seq, Time: now, Until: now.Add(90 * time.Second)}
	if err := feeds[0].Publish(ctx, honest); err != nil {
		t.Fatal(err)
	}
	for i, f := range feeds {
		got, err := f.Next(ctx)
		if err != nil || got.Provider != honest.Provider || got.Seq != honest.Seq {
			t.Fatalf("peer %d got %+v, %v; want the honest tick; stats %+v", i, got, err, gs[i].Stats(f.Topic()))
		}
	}

	// A peer cannot publish a tick in another's name.
	forged := honest
	forged.Seq++
	forged.Ask = 99_000_000
	if err := feeds[1].Publish(ctx, forged); err == nil {
		t.Fatal("peer 1 published a tick naming peer 0")
	}

	// The attacker sends garbage, forgeries, oversized and stale ticks.
	stale := Tick{Provider: evil.ID(), Class: "H100-80GB", Unit: DefaultUnit, Ask: 1, Available: 8, Seq: 1, Time: now.Add(-5 * time.Minute), Until: now.Add(time.Minute)}
	staleData, _ := stale.Marshal()
	forgedData, _ := forged.Marshal()
	for _, data := range [][]byte{[]byte("garbage"), forgedData, make([]byte, 1024), staleData, forgedData[:10]} {
		if err := etopic.Publish(ctx, data); err != nil {
			t.Fatal(err)
		}
	}
	testwait.Until(t, ctx, "the attacker's score to fall below the gossip threshold", func() bool {
		s, ok := gs[0].Score(evil.ID())
		return ok && s < GossipThreshold
	})

	// None of it arrived: the next tick every peer gets is the honest one.
	honest.Seq++
	honest.Time = time.Now()
	if err := feeds[0].Publish(ctx, honest); err != nil {
		t.Fatal(err)
	}
	for i, f := range feeds {
		got, err := f.Next(ctx)
		if err != nil || got.Provider != honest.Provider || got.Seq != honest.Seq || got.Ask != honest.Ask {
			t.Fatalf("peer %d got %+v, %v; want the second honest tick", i, got, err)
		}
	}
	st := gs[1].Stats(feeds[1].Topic())
	if st.Rejected != 4 || st.Ignored != 1 || st.Delivered != 2 || st.Received < 7 {
		t.Fatalf("peer 1 stats %+v: want 4 rejected (garbage, forged, oversized, truncated), 1 ignored (stale), 2 delivered of 7+ received", st)
	}
}

func TestPublishRefusesTicksOverTheRate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mn := mocknet.New()
	defer mn.Close()
	h := mockHosts(t, mn, 1, 1)[0]
	g, err := New(ctx, h, Config{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := g.JoinPrices(PriceFeedConfig{Validator: ValidatorConfig{Burst: 2, Rate: 0.001}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	now := time.Now()
	var errs []error
	for i := range 3 {
		tk := Tick{Provider: h.ID(), Class: "H100-80GB", Unit: DefaultUnit, Ask: 2_100_000, Available: 8, Seq: uint64(i + 1), Time: now, Until: now.Add(90 * time.Second)}
		errs = append(errs, f.Publish(ctx, tk))
	}
	if errs[0] != nil || errs[1] != nil || errs[2] == nil {
		t.Fatalf("publish errors %v: want nil, nil, refused", errs)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Next hands out what was buffered, then reports the end.
	for i := 0; ; i++ {
		_, err := f.Next(ctx)
		if err == nil && i < 2 {
			continue
		}
		if err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Next after Close: %v, want the subscription's end", err)
		}
		break
	}
}
