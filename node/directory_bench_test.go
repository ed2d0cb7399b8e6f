package node_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// BenchmarkDirectoryLookup searches for a GPU model from random peers of a
// simulated swarm (meshtest: real nodes on libp2p's mocknet, no injected
// latency) in which one peer in ten is a provider. It reports lookup latency
// p50/p95, the longest referral chain (hops) against ceil(log2 N), whether
// every live offer was found, the directory records each peer stores against
// (records x replication) / N, and the ratio to one plain DHT value lookup
// measured in the same run.
func BenchmarkDirectoryLookup(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			benchLookup(b, n)
		})
	}
}

func benchLookup(b *testing.B, n int) {
	providers := n / 10
	m := meshtest.Start(b, n, meshtest.Options{Seed: 7, Config: func(i int, c *node.Config) {
		if i%10 == 0 {
			c.GPUs = "mock:dgxh100"
			if i%20 == 0 {
				c.GPUs = "mock:dgxa100"
			}
		}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := m.WaitMeshed(ctx, 8); err != nil {
		b.Fatal(err)
	}
	meshed := time.Now()
	b.Logf("%d peers meshed", n)
	var h100 []string
	for i := 0; i < n; i += 10 {
		m.Nodes[i].OffersChanged()
		if i%20 != 0 {
			h100 = append(h100, m.Nodes[i].Identity().PeerID.String())
		}
	}
	slices.Sort(h100)
	for i := 0; i < n; i += 10 {
		for {
			l := m.Nodes[i].LocalGPUs()
			if l.PublishedAt.After(meshed) && l.Error == "" {
				break
			}
			select {
			case <-ctx.Done():
				b.Fatalf("provider %d never published: %s", i, l.Error)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}

	b.Logf("%d providers published in %v", providers, time.Since(meshed))
	rng := rand.New(rand.NewPCG(1, 2))
	var lat, base []time.Duration
	maxHops, sumHops, complete := 0, 0, 0
	b.ResetTimer()
	for range b.N {
		nd := m.Nodes[rng.IntN(n)]
		start := time.Now()
		res, err := nd.FindGPUs(ctx, dht.Query{Model: "H100"})
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		maxHops = max(maxHops, res.Hops)
		sumHops += res.Hops
		if slices.Equal(providersOf(res), h100) {
			complete++
		}
		// Baseline: one plain DHT value lookup (one provider's offer).
		p := m.Nodes[10*(1+rng.IntN(providers-1))].Identity().PeerID
		start = time.Now()
		if _, err := nd.Directory().Offer(ctx, p); err != nil {
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
	values, provs := 0, 0
	maxRecords := 0
	for _, nd := range m.Nodes {
		v, p, err := nd.Directory().Records(ctx, keys)
		if err != nil {
			b.Fatal(err)
		}
		values += v
		provs += p
		maxRecords = max(maxRecords, v+p)
	}
	// Each provider stores 1 offer and announces 9 index keys (any, class,
	// model, and the memory buckets up to its VRAM), on 20 peers each.
	const replication = 20
	indexKeys := (len(dht.IndexKeys(dht.GPUOffer{Class: "H100-80GB", Model: "H100", VRAMGB: 80})) +
		len(dht.IndexKeys(dht.GPUOffer{Class: "A100-40GB", Model: "A100", VRAMGB: 40}))) / 2
	expected := float64(providers*(1+indexKeys)*replication) / float64(n)

	b.ReportMetric(pct(lat, 50), "p50-ms")
	b.ReportMetric(pct(lat, 95), "p95-ms")
	b.ReportMetric(pct(base, 50), "getvalue-p50-ms")
	b.ReportMetric(pct(lat, 50)/pct(base, 50), "p50-ratio-to-getvalue")
	b.ReportMetric(float64(sumHops)/float64(b.N), "hops-mean")
	b.ReportMetric(float64(maxHops), "hops-max")
	b.ReportMetric(math.Ceil(math.Log2(float64(n))), "log2N")
	b.ReportMetric(float64(complete)/float64(b.N), "found-all-fraction")
	b.ReportMetric(float64(values+provs)/float64(n), "records/peer")
	b.ReportMetric(expected, "expected-records/peer")
	b.ReportMetric(float64(maxRecords), "records-max-peer")
}

// pct is the p-th percentile of ds, in milliseconds.
func pct(ds []time.Duration, p int) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	i = min(max(i-1, 0), len(s)-1)
	return float64(s[i]) / float64(time.Millisecond)
}
