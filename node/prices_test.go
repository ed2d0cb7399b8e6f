package node_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

const h100 = "H100-80GB"

// usd is a price in USDC units: usd(2.10) = 2_100_000.
func usd(v float64) uint64 { return uint64(math.Round(v * 1e6)) }

// waitPriceMesh waits until every node has a GossipSub mesh on the price
// topic, so a tick reaches everyone.
func waitPriceMesh(ctx context.Context, t testing.TB, m *meshtest.Mesh) {
	t.Helper()
	topic := gossip.TopicName("public", gossip.PricesTopic)
	testwait.Until(t, ctx, "every node to have a price-topic mesh", func() (bool, string) {
		for i, nd := range m.Nodes {
			if nd.Gossip().Stats(topic).Mesh == 0 {
				return false, fmt.Sprintf("node %d has none", i)
			}
		}
		return true, ""
	})
}

// outsider is a libp2p host on the mesh's network that runs plain GossipSub
// (no validator, flood publishing), joined to the price topic and connected
// to the given nodes: it sends what a gpumesh peer never would.
type outsider struct {
	host  host.Host
	topic *pubsub.Topic
}

func newOutsider(ctx context.Context, t testing.TB, m *meshtest.Mesh, index int, to []int) *outsider {
	t.Helper()
	id := meshtest.Key(666, index)
	h, err := m.Net.AddPeer(id.Key, ma.StringCast(fmt.Sprintf("/ip4/10.66.6.%d/tcp/4021", index)))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Net.LinkAll(); err != nil {
		t.Fatal(err)
	}
	ps, err := pubsub.NewGossipSub(ctx, h, pubsub.WithFloodPublish(true), pubsub.WithPeerOutboundQueueSize(1024))
	if err != nil {
		t.Fatal(err)
	}
	topic, err := ps.Join(gossip.TopicName("public", gossip.PricesTopic))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := topic.Subscribe(); err != nil { // to be a topic peer; never read
		t.Fatal(err)
	}
	for _, i := range to {
		nh := m.Nodes[i].Host()
		if err := h.Connect(ctx, peer.AddrInfo{ID: nh.ID(), Addrs: nh.Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	testwait.Until(t, ctx, "the outsider to see its peers on the price topic", func() (bool, string) {
		n := len(topic.ListPeers())
		return n == len(to), fmt.Sprintf("%d of %d", n, len(to))
	})
	return &outsider{host: h, topic: topic}
}

// publish sends data on the price topic, signed by key (the outsider's own
// when nil).
func (o *outsider) publish(ctx context.Context, t testing.TB, data []byte, key *node.Identity) {
	t.Helper()
	var opts []pubsub.PubOpt
	if key != nil {
		opts = append(opts, pubsub.WithSecretKeyAndPeerId(key.Key, key.PeerID))
	}
	if err := o.topic.Publish(ctx, data, opts...); err != nil {
		t.Fatal(err)
	}
}

func marshal(t testing.TB, tk gossip.Tick) []byte {
	t.Helper()
	data, err := tk.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// board is what the test compares across peers: the index of one class.
func board(nd *node.Node) gossip.Quote {
	p := nd.Prices(h100)
	if len(p.Classes) == 0 {
		return gossip.Quote{}
	}
	return p.Classes[0]
}

// sameNumbers is the part of a quote that must agree on every peer (the
// EWMA depends on when each peer saw each tick).
func sameNumbers(q gossip.Quote) string {
	return fmt.Sprintf("providers=%d counted=%d mature=%d gpus=%d best=%d median=%d mean=%d depth=%v",
		q.Providers, q.Counted, q.Mature, q.GPUs, q.Best, q.Median, q.Mean, q.Depth)
}

// TestSpotMarketOn50Peers runs the price topic on 50 real nodes: 20 of them
// quote, every board converges to the same numbers, ticks an honest peer
// would never forward never reach a board, and a flood of 100 fresh
// identities barely moves the median.
//
// The nodes share a clock the test moves forward, so that the honest
// providers mature (a minute here) without the test waiting for it.
func TestSpotMarketOn50Peers(t *testing.T) {
	const n, providers, maturity = 50, 20, time.Minute
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	m := meshtest.Start(t, n, meshtest.Options{Seed: 4, Config: func(i int, c *node.Config) {
		c.PriceBoard = gossip.BoardConfig{Probation: time.Millisecond, Maturity: maturity}
		c.Clock = clock
		c.ScoreView = true
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	waitPriceMesh(ctx, t, m)

	// 20 providers ask 1.90, 1.91, ... 2.09 for 8 GPUs each.
	askOf := func(i int) uint64 { return usd(1.90 + 0.01*float64(i)) }
	quoteAll := func() {
		for i := range providers {
			if err := m.Nodes[i].Quote(ctx, h100, askOf(i), 8); err != nil {
				t.Fatal(err)
			}
		}
	}
	// until holds re-quotes every second (a heartbeat, as the price loop
	// would send, for a tick that went out before a mesh formed) until cond.
	until := func(what string, cond func() bool) {
		t.Helper()
		quoteAll()
		last := time.Now()
		testwait.Until(t, ctx, what, func() bool {
			if time.Since(last) > time.Second {
				quoteAll()
				last = time.Now()
			}
			return cond()
		})
	}
	start := time.Now()
	until("every board to list the 20 providers", func() bool {
		for _, nd := range m.Nodes {
			if board(nd).Counted != providers {
				return false
			}
		}
		return true
	})
	offset.Add(int64(maturity)) // a minute later, all of them mature
	var want gossip.Quote
	until("every board to hold the same mature market", func() bool {
		want = board(m.Nodes[0])
		if want.Mature != providers {
			return false
		}
		for _, nd := range m.Nodes[1:] {
			if sameNumbers(board(nd)) != sameNumbers(want) {
				return false
			}
		}
		return true
	})
	t.Logf("50 boards agree after %v: %s", time.Since(start).Round(time.Millisecond), sameNumbers(want))
	if want.Median != usd(1.99) || want.Best != usd(1.90) || want.GPUs != 8*providers {
		t.Fatalf("board %s: want median 1.99, best 1.90, 160 GPUs", sameNumbers(want))
	}

	t.Run("ticks no honest peer forwards never reach a board", func(t *testing.T) {
		neighbours := []int{5, 10, 25, 30, 45}
		evil := newOutsider(ctx, t, m, 1, neighbours)
		victim := meshtest.Key(4, 0) // provider 0
		now := clock()
		forged := gossip.Tick{Provider: victim.PeerID, Class: h100, Unit: gossip.DefaultUnit, Ask: usd(99), Available: 8, Seq: uint64(now.UnixNano()) + 1e12, Time: now, Until: now.Add(90 * time.Second)}
		sybil := meshtest.Key(667, 0)
		stale := forged
		stale.Provider, stale.Time = sybil.PeerID, now.Add(-5*time.Minute)
		old := forged
		old.Seq = 1 // an old sequence of provider 0, signed by provider 0
		big := make([]byte, 300)
		copy(big, marshal(t, forged))

		evil.publish(ctx, t, marshal(t, forged), nil)        // names provider 0, signed by the attacker: reject
		evil.publish(ctx, t, []byte("not a tick"), nil)      // garbage: reject
		evil.publish(ctx, t, big, nil)                       // oversized: reject
		evil.publish(ctx, t, marshal(t, stale), &sybil)      // 5 minutes old: ignore
		evil.publish(ctx, t, marshal(t, old), &victim)       // replay of an older sequence: ignore
		evil.publish(ctx, t, marshal(t, stale)[:20], &sybil) // truncated: reject
		topic := gossip.TopicName("public", gossip.PricesTopic)
		testwait.For(t, 20*time.Second, "the attacker's neighbours to refuse all six", func() (bool, string) {
			for _, i := range neighbours {
				if st := m.Nodes[i].Gossip().Stats(topic); st.Rejected < 4 || st.Ignored < 2 {
					return false, fmt.Sprintf("node %d: %+v", i, st)
				}
			}
			return true, ""
		})
		for i, nd := range m.Nodes {
			p := nd.Prices(h100)
			if len(p.Classes) != 1 || sameNumbers(p.Classes[0]) != sameNumbers(want) {
				t.Fatalf("node %d's board changed: %+v", i, p.Classes)
			}
		}
		testwait.Until(t, ctx, "the attacker's score to fall below the gossip threshold", func() (bool, string) {
			s, ok := m.Nodes[neighbours[0]].Gossip().Score(evil.host.ID())
			return ok && s < gossip.GossipThreshold, fmt.Sprintf("score %v (known %v)", s, ok)
		})
	})

	t.Run("a flood of 100 fresh identities moves the median less than 5%", func(t *testing.T) {
		flooder := newOutsider(ctx, t, m, 2, []int{3, 17, 22, 38})
		sybils := map[peer.ID]bool{}
		for i := range 100 {
			sybils[meshtest.Key(668, i).PeerID] = true
		}
		// Count the newcomers each board takes, rather than poll 50 boards.
		took := make([]atomic.Int32, n)
		for i, nd := range m.Nodes {
			stop := nd.WatchPrices(func(tk gossip.Tick) {
				if sybils[tk.Provider] {
					took[i].Add(1)
				}
			})
			defer stop()
		}
		now := clock()
		for i := range 100 {
			id := meshtest.Key(668, i)
			tk := gossip.Tick{Provider: id.PeerID, Class: h100, Unit: gossip.DefaultUnit, Ask: 1000 * want.Median, Available: gossip.MaxAvailable, Seq: 1, Time: now, Until: now.Add(90 * time.Second)}
			flooder.publish(ctx, t, marshal(t, tk), &id)
		}
		testwait.Until(t, ctx, "every board to take the 100 newcomers", func() (bool, string) {
			for i := range took {
				if n := took[i].Load(); n != 100 {
					return false, fmt.Sprintf("node %d took %d", i, n)
				}
			}
			return true, ""
		})
		t.Logf("the flood reached all 50 boards in %v", clock().Sub(now).Round(time.Millisecond))
		worst := map[string]float64{}
		for i, nd := range m.Nodes {
			q := board(nd)
			if q.Providers != providers+100 {
				t.Fatalf("node %d lists %d providers, want %d", i, q.Providers, providers+100)
			}
			if q.Mature != providers {
				t.Fatalf("node %d: %d mature providers, want %d", i, q.Mature, providers)
			}
			for name, pair := range map[string][2]uint64{"median": {want.Median, q.Median}, "trimmed mean": {want.Mean, q.Mean}} {
				move := math.Abs(float64(pair[1])/float64(pair[0]) - 1)
				worst[name] = max(worst[name], move)
				if move >= 0.05 {
					t.Errorf("node %d: %s moved %.1f%% (%d to %d)", i, name, 100*move, pair[0], pair[1])
				}
			}
		}
		t.Logf("largest move on 50 boards: median %.2f%%, trimmed mean %.2f%%", 100*worst["median"], 100*worst["trimmed mean"])
	})
}

// TestAProviderQuotesItsPolicyForItsGPUs: a peer with GPUs and a fixed price
// gossips its ask, every board shows it, and the directory's offer carries it.
func TestAProviderQuotesItsPolicyForItsGPUs(t *testing.T) {
	m := meshtest.Start(t, 4, meshtest.Options{Seed: 5, Providers: 1, Price: "fixed:2.10", Config: func(i int, c *node.Config) {
		c.PriceBoard = gossip.BoardConfig{Probation: time.Millisecond, Maturity: time.Millisecond}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if ask, ok := m.Nodes[0].Ask(h100); !ok || ask != usd(2.10) {
		t.Fatalf("provider's ask %d, %v; want 2.10", ask, ok)
	}
	if _, ok := m.Nodes[0].Ask("A100-40GB"); ok {
		t.Fatal("the provider asks for a class it lacks")
	}
	// The first tick may have gone out before the others joined the topic;
	// the loop sends it again within a few seconds.
	testwait.Until(t, ctx, "every board to show the provider's ask", func() (bool, string) {
		for i, nd := range m.Nodes {
			if q := board(nd); q.Median != usd(2.10) || q.GPUs != 8 {
				return false, fmt.Sprintf("node %d: median %d, %d GPUs", i, q.Median, q.GPUs)
			}
		}
		return true, ""
	})
	testwait.Until(t, ctx, "the offer to carry the price", func() bool {
		o := m.Nodes[0].LocalGPUs().Offer
		return o != nil && len(o.GPUs) == 1 && o.GPUs[0].Price == usd(2.10)
	})
	// Nodes without a policy quote nothing.
	if p := m.Nodes[1].Prices(""); len(p.Asks) != 0 || p.Policy != "" {
		t.Fatalf("a node without GPUs or policy quotes %+v", p)
	}
}

func TestPricesOverTheLocalAPI(t *testing.T) {
	dir, err := os.MkdirTemp("", "gm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	nd, err := node.New(node.Config{
		DataDir: dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, NoMDNS: true, NoNAT: true,
		GPUs: "mock:dgxa100", Price: "auto:floor=1.50,target=0.7",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := nd.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer nd.Close()
	cl, err := node.NewClient(dir)
	if err != nil {
		t.Fatal(err)
	}
	var p node.Prices
	testwait.Until(t, ctx, "the node's own quote on its board", func() bool {
		p, err = cl.Prices(ctx, "A100-40GB")
		return err == nil && len(p.Classes) == 1
	})
	// Alone, an auto policy starts at its floor; its own quote is listed
	// but in probation (2 minutes by default).
	want := node.LocalAsk{Class: "A100-40GB", Ask: usd(1.50), Available: 8}
	if len(p.Asks) != 1 || p.Asks[0].Class != want.Class || p.Asks[0].Ask != want.Ask || p.Asks[0].Available != want.Available {
		t.Fatalf("asks %+v, want [%+v]", p.Asks, want)
	}
	if q := p.Classes[0]; q.Class != "A100-40GB" || q.Providers != 1 || q.Counted != 0 {
		t.Fatalf("board %+v: want one provider in probation", q)
	}
	if p.Token != "USDC" || p.Decimals != 6 || p.Policy != "auto:floor=1.50,target=0.7" || p.Topic != "/gpumesh/public/prices/3" {
		t.Fatalf("answer %+v", p)
	}
	if all, err := cl.Prices(ctx, ""); err != nil || len(all.Classes) != 1 {
		t.Fatalf("all classes: %+v, %v", all.Classes, err)
	}
	if _, err := cl.Prices(ctx, "H100 80GB"); err == nil || !strings.Contains(err.Error(), "want a GPU class") {
		t.Fatalf("bad class: %v, want an error naming the problem", err)
	}
}

func TestBadPriceConfigIsRefusedAtNew(t *testing.T) {
	for _, cfg := range []node.Config{
		{Price: "2.10"},
		{Price: "auto:floor=0"},
		{PriceUnit: "usdc"},
		{PriceBoard: gossip.BoardConfig{Trim: 0.9}},
	} {
		if _, err := node.New(cfg); err == nil {
			t.Errorf("New(%+v) accepted it", cfg)
		}
	}
}
