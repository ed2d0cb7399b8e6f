package gossip

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
)

// BenchmarkTickPropagation measures, on libp2p's mocknet (in-memory links,
// no injected latency) with every peer running this package's GossipSub
// (peer scoring, flood publishing) and price feed:
//
//   - ms/99%: time from Publish until 99% of the peers have accepted a tick
//   - copies/peer: copies of a tick each peer receives (amplification), all
//     copies counted until the swarm is quiet
//   - x-raw: ms/99% over the same for a plain GossipSub message of the same
//     size on a topic with no validator, published right after in the same
//     swarm: what the tick's validation costs on the path
//
// Each peer dials 6 random others (about 12 connections each). Peers are
// plain gossip routers, not whole nodes: no DHT, so 500 fit in one process.
func BenchmarkTickPropagation(b *testing.B) {
	for _, n := range []int{100, 500} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) { benchPropagation(b, n) })
	}
}

type benchPeer struct {
	host host.Host
	g    *Gossip
	feed *PriceFeed
	raw  *pubsub.Topic
}

func benchPropagation(b *testing.B, n int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mn := mocknet.New()
	defer mn.Close()
	hosts := mockHosts(b, mn, 1, n)
	rng := rand.New(rand.NewPCG(uint64(n), 1))
	type edge struct{ a, b int }
	var edges []edge
	linked := map[edge]bool{}
	for i := range n {
		for range 6 {
			j := rng.IntN(n)
			e := edge{min(i, j), max(i, j)}
			if i == j || linked[e] {
				continue
			}
			linked[e] = true
			edges = append(edges, e)
			if _, err := mn.LinkPeers(hosts[e.a].ID(), hosts[e.b].ID()); err != nil {
				b.Fatal(err)
			}
		}
	}
	peers := make([]*benchPeer, n)
	var tickSeen, rawSeen atomic.Int64  // peers that got the current one
	var tickWant, rawWant atomic.Uint64 // sequence of the current tick, raw message number
	for i, h := range hosts {
		g, err := New(ctx, h, Config{Swarm: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		f, err := g.JoinPrices(PriceFeedConfig{})
		if err != nil {
			b.Fatal(err)
		}
		raw, err := g.PubSub().Join(g.Topic("raw"))
		if err != nil {
			b.Fatal(err)
		}
		sub, err := raw.Subscribe()
		if err != nil {
			b.Fatal(err)
		}
		peers[i] = &benchPeer{host: h, g: g, feed: f, raw: raw}
		go func() {
			for {
				t, err := f.Next(ctx)
				if err != nil {
					return
				}
				if t.Seq == tickWant.Load() {
					tickSeen.Add(1)
				}
			}
		}()
		go func() {
			for {
				m, err := sub.Next(ctx)
				if err != nil {
					return
				}
				if len(m.Data) >= 8 && uint64(m.Data[0])<<8|uint64(m.Data[1]) == rawWant.Load() {
					rawSeen.Add(1)
				}
			}
		}()
	}
	for _, e := range edges {
		if err := hosts[e.a].Connect(ctx, peer.AddrInfo{ID: hosts[e.b].ID(), Addrs: hosts[e.b].Addrs()}); err != nil {
			b.Fatal(err)
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel()
	testwait.Until(b, wctx, "every peer to have a mesh on both topics", func() bool {
		for _, p := range peers {
			if p.g.Stats(p.feed.Topic()).Mesh < 3 || p.g.Stats(p.raw.String()).Mesh < 3 {
				return false
			}
		}
		return true
	})

	received := func(topic func(*benchPeer) string) uint64 {
		var sum uint64
		for _, p := range peers {
			sum += p.g.Stats(topic(p)).Received
		}
		return sum
	}
	tickTopic := func(p *benchPeer) string { return p.feed.Topic() }
	rawTopic := func(p *benchPeer) string { return p.raw.String() }
	// spread publishes one message and returns when 99% of the peers have
	// it, then waits for all and for the last copies.
	spread := func(seen *atomic.Int64, topic func(*benchPeer) string, publish func() error) (time.Duration, uint64) {
		before := received(topic)
		seen.Store(0)
		start := time.Now()
		if err := publish(); err != nil {
			b.Fatal(err)
		}
		need := int64((99*n + 99) / 100)
		testwait.Until(b, wctx, "99% of the peers to get it", func() bool { return seen.Load() >= need })
		took := time.Since(start)
		testwait.Until(b, wctx, "every peer to get it", func() bool { return seen.Load() == int64(n) })
		last := received(topic)
		quiet := time.Now()
		testwait.Until(b, wctx, "the copies to stop", func() bool {
			if r := received(topic); r != last {
				last, quiet = r, time.Now()
			}
			return time.Since(quiet) > 50*time.Millisecond
		})
		return took, last - before
	}

	var tickTimes, rawTimes []time.Duration
	var tickCopies, rawCopies uint64
	b.ResetTimer()
	for i := range b.N {
		p := peers[rng.IntN(n)]
		now := time.Now()
		t := Tick{Provider: p.host.ID(), Class: "H100-80GB", Unit: DefaultUnit, Ask: 2_100_000, Available: 8, Seq: uint64(now.UnixNano()), Time: now, Until: now.Add(90 * time.Second)}
		tickWant.Store(t.Seq)
		d, c := spread(&tickSeen, tickTopic, func() error { return p.feed.Publish(ctx, t) })
		tickTimes, tickCopies = append(tickTimes, d), tickCopies+c

		data, _ := t.Marshal()
		data[0], data[1] = byte((i+1)>>8), byte(i+1)
		rawWant.Store(uint64(i + 1))
		d, c = spread(&rawSeen, rawTopic, func() error { return p.raw.Publish(ctx, data) })
		rawTimes, rawCopies = append(rawTimes, d), rawCopies+c
	}
	b.StopTimer()
	median := func(ds []time.Duration) float64 {
		slices.Sort(ds)
		return float64(ds[len(ds)/2].Microseconds()) / 1000
	}
	tickMS, rawMS := median(tickTimes), median(rawTimes)
	b.ReportMetric(tickMS, "ms/99%")
	b.ReportMetric(float64(tickCopies)/float64(b.N*(n-1)), "copies/peer")
	b.ReportMetric(float64(rawCopies)/float64(b.N*(n-1)), "raw-copies/peer")
	b.ReportMetric(tickMS/rawMS, "x-raw")
	for _, p := range peers {
		p.feed.Close()
	}
}
