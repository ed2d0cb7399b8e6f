package dht_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
)

// BenchmarkLookup searches for a GPU model from random peers of a simulated
// swarm: N libp2p hosts on libp2p's mocknet (in-memory links, no injected
// latency), each running the directory's DHT, one in ten a provider. It
// reports lookup latency p50/p95, the longest referral chain (hops) against
// ceil(log2 N), the fraction of lookups that found every live offer, the
// records each peer stores against (records x replication) / N, and the
// ratio to one plain DHT value lookup measured in the same run.
func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) { benchLookup(b, n) })
	}
}

// BenchmarkLookupDualVsSingle runs the same search from the same peer of two
// swarms of 100 peers on loopback addresses, in turn: the public swarm's
// dual DHT (its LAN half serves them) and one plain DHT (a private swarm's,
// what every swarm ran before the split). It reports each p50 and their
// ratio, and fails a search that misses an H100 provider.
func BenchmarkLookupDualVsSingle(b *testing.B) {
	const n = 100
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dual := cachedSwarm(ctx, b, swarmKind{n: n})
	single := cachedSwarm(ctx, b, swarmKind{n: n, private: true})
	rng := rand.New(rand.NewPCG(5, 6))
	var latDual, latSingle []time.Duration
	b.ResetTimer()
	for range b.N {
		i := rng.IntN(n)
		for _, c := range []struct {
			sw  *benchSwarm
			lat *[]time.Duration
		}{{dual, &latDual}, {single, &latSingle}} {
			start := time.Now()
			res, err := c.sw.peers[i].dir.Find(ctx, dht.Query{Model: "H100"})
			if err != nil {
				b.Fatal(err)
			}
			*c.lat = append(*c.lat, time.Since(start))
			if res.Providers != len(c.sw.h100) {
				b.Fatalf("found %d of %d H100 providers", res.Providers, len(c.sw.h100))
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(pct(latDual, 50), "dual-p50-ms")
	b.ReportMetric(pct(latSingle, 50), "single-p50-ms")
	b.ReportMetric(pct(latDual, 50)/pct(latSingle, 50), "dual/single-p50")
	b.ReportMetric(pct(latDual, 95)/pct(latSingle, 95), "dual/single-p95")
}

type simPeer struct {
	key crypto.PrivKey
	h   host.Host
	dir *dht.Directory
}

func simKey(i int) crypto.PrivKey {
	var seed [8]byte
	binary.BigEndian.PutUint64(seed[:], uint64(i))
	s := sha256.Sum256(seed[:])
	k, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(s[:]))
	if err != nil {
		panic(err)
	}
	return k
}

func startSwarm(b *testing.B, n int, private bool) []*simPeer {
	ctx := context.Background()
	mn := mocknet.New()
	peers := make([]*simPeer, n)
	for i := range n {
		k := simKey(i)
		h, err := mn.AddPeer(k, ma.StringCast(fmt.Sprintf("/ip4/127.%d.%d.%d/tcp/4021", i>>16&0xff, i>>8&0xff, i&0xff)))
		if err != nil {
			b.Fatal(err)
		}
		d, err := dht.New(ctx, h, dht.Config{Swarm: "bench", Mode: dht.ModeServer, Private: private})
		if err != nil {
			b.Fatal(err)
		}
		peers[i] = &simPeer{key: k, h: h, dir: d}
	}
	if err := mn.LinkAll(); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 1; i < n; i++ {
		for _, j := range []int{0, rng.IntN(i), rng.IntN(i)} {
			if err := peers[i].h.Connect(ctx, peer.AddrInfo{ID: peers[j].h.ID(), Addrs: peers[j].h.Addrs()}); err != nil {
				b.Fatal(err)
			}
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			rctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			_ = p.dir.Refresh(rctx)
		}()
	}
	wg.Wait()
	return peers
}

// swarms keeps each simulated swarm for the rest of the process: the
// benchmark runs once with b.N = 1 before the measured run, and a swarm of
// 1,000 takes minutes to build. The process ends right after the benchmarks.
var swarms = map[swarmKind]*benchSwarm{}

// swarmKind is a simulated swarm's size and whether it runs a private
// swarm's one DHT instead of the public swarm's LAN and WAN halves.
type swarmKind struct {
	n       int
	private bool
}

// cachedSwarm builds a swarm of that kind once per process.
func cachedSwarm(ctx context.Context, b *testing.B, kind swarmKind) *benchSwarm {
	sw, ok := swarms[kind]
	if !ok {
		sw = buildSwarm(ctx, b, kind.n, kind.private)
		swarms[kind] = sw
	}
	return sw
}

type benchSwarm struct {
	peers []*simPeer
	h100  []string // sorted peer IDs of the H100 providers
}

func benchLookup(b *testing.B, n int) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	sw := cachedSwarm(ctx, b, swarmKind{n: n})
	peers, h100 := sw.peers, sw.h100

	rng := rand.New(rand.NewPCG(1, 2))
	var lat, base []time.Duration
	maxHops, sumHops, complete := 0, 0, 0
	b.ResetTimer()
	for range b.N {
		p := peers[rng.IntN(n)]
		start := time.Now()
		res, err := p.dir.Find(ctx, dht.Query{Model: "H100"})
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		maxHops = max(maxHops, res.Hops)
		sumHops += res.Hops
		var got []string
		for _, m := range res.Matches {
			got = append(got, m.Offer.Provider.String())
		}
		slices.Sort(got)
		if slices.Equal(got, h100) {
			complete++
		}
		// Baseline: one plain DHT value lookup (one provider's offer).
		target := peers[10*rng.IntN(n/10)].h.ID()
		start = time.Now()
		if _, err := p.dir.Offer(ctx, target); err != nil {
			b.Fatal(err)
		}
		base = append(base, time.Since(start))
	}
	b.StopTimer()

	keySet := map[string]bool{}
	for _, g := range []dht.GPUOffer{{Class: "H100-80GB", Model: "H100", VRAMGB: 80}, {Class: "A100-40GB", Model: "A100", VRAMGB: 40}} {
		for _, k := range dht.IndexKeys(g) {
			keySet[k] = true
		}
	}
	var keys []string
	for k := range keySet {
		keys = append(keys, k)
	}
	total, most := 0, 0
	for _, p := range peers {
		v, pr, err := p.dir.Records(ctx, keys)
		if err != nil {
			b.Fatal(err)
		}
		total += v + pr
		most = max(most, v+pr)
	}
	// Each provider stores 1 offer and announces its index keys (9 for an
	// H100-80GB, 7 for an A100-40GB), each on the 20 closest peers.
	const replication = 20
	perProvider := 1 + float64(len(dht.IndexKeys(dht.GPUOffer{Model: "H100", VRAMGB: 80}))+len(dht.IndexKeys(dht.GPUOffer{Model: "A100", VRAMGB: 40})))/2
	expected := float64(n/10) * perProvider * replication / float64(n)

	b.ReportMetric(pct(lat, 50), "p50-ms")
	b.ReportMetric(pct(lat, 95), "p95-ms")
	b.ReportMetric(pct(base, 50), "getvalue-p50-ms")
	b.ReportMetric(pct(lat, 50)/pct(base, 50), "p50/getvalue")
	b.ReportMetric(float64(sumHops)/float64(b.N), "hops-mean")
	b.ReportMetric(float64(maxHops), "hops-max")
	b.ReportMetric(math.Ceil(math.Log2(float64(n))), "log2N")
	b.ReportMetric(float64(complete)/float64(b.N), "found-all")
	b.ReportMetric(float64(total)/float64(n), "records/peer")
	b.ReportMetric(expected, "expected-records/peer")
	b.ReportMetric(float64(most), "records-max")
}

// buildSwarm starts n peers and has one in ten publish an offer of 8 GPUs:
// H100s, every other one A100s.
func buildSwarm(ctx context.Context, b *testing.B, n int, private bool) *benchSwarm {
	setup := time.Now()
	peers := startSwarm(b, n, private)
	b.Logf("%d peers up and refreshed in %v", n, time.Since(setup))
	var h100 []string
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i += 10 {
		g := dht.GPUOffer{Class: "H100-80GB", Model: "H100", VRAMGB: 80, Compute: "9.0", Available: 8, Total: 8, Price: 2_000_000 + uint64(i)}
		if i%20 == 0 {
			g = dht.GPUOffer{Class: "A100-40GB", Model: "A100", VRAMGB: 40, Compute: "8.0", Available: 8, Total: 8, Price: 1_000_000 + uint64(i)}
		} else {
			h100 = append(h100, peers[i].h.ID().String())
		}
		p := peers[i]
		o := &dht.Offer{Provider: p.h.ID(), GPUs: []dht.GPUOffer{g}, Seq: 1, Expires: time.Now().Add(time.Hour).Unix()}
		sealed, err := dht.SealOffer(o, p.key)
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- p.dir.Publish(ctx, sealed, true)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	slices.Sort(h100)
	b.Logf("%d providers published", n/10)
	return &benchSwarm{peers: peers, h100: h100}
}

// pct is the p-th percentile of ds, in milliseconds.
func pct(ds []time.Duration, p int) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := min(max((len(s)*p+99)/100-1, 0), len(s)-1)
	return float64(s[i]) / float64(time.Millisecond)
}
