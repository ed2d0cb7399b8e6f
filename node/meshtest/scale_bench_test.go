package meshtest_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

var (
	scalePeers   = flag.String("scale.peers", "1000", "BenchmarkScale: peer counts, comma-separated (e.g. 1000,3000,10000)")
	scaleLatency = flag.Duration("scale.latency", 20*time.Millisecond, "BenchmarkScale: one-way latency of every simulated link")
	scaleOut     = flag.String("scale.out", "", "BenchmarkScale: append each size's figures as a JSON line to this file (docs/scale.md's table is made from it)")
)

// BenchmarkScale runs whole gpumesh nodes (directory, prices, negotiation)
// in one process on mocknet links of -scale.latency (20 ms) one way, at
// each size of -scale.peers (1,000): one peer in ten a provider of 8 H100s
// (process executor, fixed asks of 2.00 to 2.49 USDC/GPU-h, two zones).
// It measures, once a size (b.N does not change the figures):
//
//   - memory: heap and stacks in use after start, per peer;
//   - at rest: gossip bytes a peer sends a second (ticks, heartbeats,
//     IHAVE/IWANT), and directory records (values and provider records of
//     the H100 index keys) a peer stores;
//   - directory: lookups of "H100" from random peers without GPUs: latency
//     p50/p95/p99, referral hops (mean, max, against log2 N), and the
//     share of the live offers each found;
//   - prices: a provider quotes a new ask; the time until 99% of peers
//     have it on their board, and copies a peer receives of each tick
//     delivered (received ÷ delivered on the price topic);
//   - formation: jobs of 8 and of 64 GPUs submitted one after another from
//     random peers without GPUs: submit-to-formed p50/p99, and negotiation
//     messages sent per formation (a request counts once, however far
//     gossip carries it; every bid, award, answer, confirm and release).
//
// Run it with `make bench-scale` or
// go test -run '^$' -bench Scale -benchtime 1x -timeout 2h ./node/meshtest/ -scale.peers 1000,3000
func BenchmarkScale(b *testing.B) {
	var sizes []int
	for _, f := range strings.Split(*scalePeers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 20 {
			b.Fatalf("-scale.peers: %q is not a count of 20 peers or more", f)
		}
		sizes = append(sizes, n)
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			r, ok := scaleResults[n]
			if !ok {
				r = measureScale(b, n, *scaleLatency)
				scaleResults[n] = r
				if *scaleOut != "" {
					appendJSONLine(b, *scaleOut, r)
				}
			}
			r.report(b)
		})
	}
}

// scaleResults keeps each size's figures for the rest of the process: the
// benchmark may be called more than once a size, and a mesh of thousands
// takes minutes to build.
var scaleResults = map[int]scaleResult{}

// scaleResult is what BenchmarkScale measured at one size.
type scaleResult struct {
	Peers, Providers int
	LatencyMs        float64
	SetupS           float64
	MemMBPerPeer     float64

	RestGossipBps  float64 // bytes a second a peer sends, at rest
	RecordsPerPeer float64
	RecordsMax     int
	LookupP50Ms    float64
	LookupP95Ms    float64
	LookupP99Ms    float64
	LookupHopsMean float64
	LookupHopsMax  int
	Log2N          float64
	OffersFound    float64 // share of live offers a lookup found, mean
	TickTo99Ms     float64 // until 99% of peers have a new ask, mean of the ticks
	TickCopies     float64 // copies received per tick delivered, a peer
	Form8P50Ms     float64
	Form8P99Ms     float64
	Form8Msgs      float64
	Form8Failed    int
	Form64P50Ms    float64
	Form64P99Ms    float64
	Form64Msgs     float64
	Form64Failed   int
}

func (r scaleResult) report(b *testing.B) {
	for _, m := range []struct {
		v    float64
		unit string
	}{
		{r.MemMBPerPeer, "MB/peer"}, {r.RestGossipBps, "rest-gossip-B/s/peer"}, {r.RecordsPerPeer, "records/peer"},
		{r.LookupP50Ms, "lookup-p50-ms"}, {r.LookupP95Ms, "lookup-p95-ms"}, {r.LookupP99Ms, "lookup-p99-ms"},
		{r.LookupHopsMean, "hops-mean"}, {float64(r.LookupHopsMax), "hops-max"}, {r.Log2N, "log2N"}, {r.OffersFound, "offers-found"},
		{r.TickTo99Ms, "tick-99%-ms"}, {r.TickCopies, "tick-copies/peer"},
		{r.Form8P50Ms, "form8-p50-ms"}, {r.Form8P99Ms, "form8-p99-ms"}, {r.Form8Msgs, "form8-msgs"},
		{r.Form64P50Ms, "form64-p50-ms"}, {r.Form64P99Ms, "form64-p99-ms"}, {r.Form64Msgs, "form64-msgs"},
		{float64(r.Form8Failed + r.Form64Failed), "failed-jobs"}, {r.SetupS, "setup-s"},
	} {
		b.ReportMetric(m.v, m.unit)
	}
}

func measureScale(b *testing.B, n int, latency time.Duration) scaleResult {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	providers := max(n/10, 8)
	r := scaleResult{Peers: n, Providers: providers, LatencyMs: float64(latency) / float64(time.Millisecond), Log2N: math.Ceil(math.Log2(float64(n)))}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	setup := time.Now()
	m := meshtest.Start(b, n, meshtest.Options{Seed: uint64(n), Private: true, Providers: providers, Executors: []string{"process"}, Latency: latency,
		Config: func(i int, c *node.Config) {
			if i < providers {
				c.Price = fmt.Sprintf("fixed:2.%02d", i%50)
				c.Region = []string{"eu-west/ams1", "us-east/nyc2"}[i%2]
			}
		}})
	r.SetupS = time.Since(setup).Seconds()
	b.Logf("%d peers up in %.0f s", n, r.SetupS)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	inUse := func(s runtime.MemStats) float64 { return float64(s.HeapInuse + s.StackInuse) }
	r.MemMBPerPeer = (inUse(after) - inUse(before)) / float64(n) / (1 << 20)
	provs, others := m.Nodes[:providers], m.Nodes[providers:]
	rng := rand.New(rand.NewPCG(uint64(n), 19))

	// Every provider's offer in the directory before anything is measured.
	testwait.Until(b, ctx, "a lookup to find every provider", func() (bool, string) {
		res, err := others[0].FindGPUs(ctx, dht.Query{Model: "H100"})
		return err == nil && res.Providers == providers, fmt.Sprintf("%d of %d (%v)", res.Providers, providers, err)
	})

	// At rest: gossip a peer sends a second, over a window.
	const window = 10 * time.Second
	sent := func() uint64 {
		var s uint64
		for _, nd := range m.Nodes {
			out, _ := nd.Gossip().Bytes()
			s += out
		}
		return s
	}
	s0, t0 := sent(), time.Now()
	wait(ctx, window)
	r.RestGossipBps = float64(sent()-s0) / time.Since(t0).Seconds() / float64(n)

	// Directory records a peer stores: the H100 offers' index keys.
	keys := dht.IndexKeys(dht.GPUOffer{Class: "H100-80GB", Model: "H100", VRAMGB: 80})
	total := 0
	for _, nd := range m.Nodes {
		v, p, err := nd.Directory().Records(ctx, keys)
		if err != nil {
			b.Fatal(err)
		}
		total += v + p
		r.RecordsMax = max(r.RecordsMax, v+p)
	}
	r.RecordsPerPeer = float64(total) / float64(n)

	// Directory lookups.
	var lat []time.Duration
	var found float64
	hops := 0
	const lookups = 40
	for range lookups {
		nd := others[rng.IntN(len(others))]
		start := time.Now()
		res, err := nd.FindGPUs(ctx, dht.Query{Model: "H100"})
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		hops += res.Hops
		r.LookupHopsMax = max(r.LookupHopsMax, res.Hops)
		found += float64(res.Providers) / float64(providers)
	}
	r.LookupP50Ms, r.LookupP95Ms, r.LookupP99Ms = pctMs(lat, 50), pctMs(lat, 95), pctMs(lat, 99)
	r.LookupHopsMean = float64(hops) / lookups
	r.OffersFound = found / lookups

	// Price ticks: a provider quotes a new ask; every peer's board gets it.
	const ticks = 5
	var reach []time.Duration
	recv := func() (rc, dl uint64) {
		for _, nd := range m.Nodes {
			st := nd.Gossip().Stats(nd.Gossip().Topic(gossip.PricesTopic))
			rc, dl = rc+st.Received, dl+st.Delivered
		}
		return rc, dl
	}
	rc0, dl0 := recv()
	for k := range ticks {
		p := provs[rng.IntN(len(provs))]
		ask := uint64(3_000_000 + k*10_000 + rng.IntN(1000))
		var got atomic.Int64
		arrived := make([]time.Duration, n)
		var mu sync.Mutex
		start := time.Now()
		var stops []func()
		for i, nd := range m.Nodes {
			if nd == p {
				continue
			}
			stops = append(stops, nd.WatchPrices(func(t gossip.Tick) {
				if t.Provider == p.Host().ID() && t.Ask == ask {
					mu.Lock()
					if arrived[i] == 0 {
						arrived[i] = time.Since(start)
						got.Add(1)
					}
					mu.Unlock()
				}
			}))
		}
		if err := p.Quote(ctx, "H100-80GB", ask, 8); err != nil {
			b.Fatal(err)
		}
		need := int64(math.Ceil(0.99 * float64(n-1)))
		testwait.Until(b, ctx, "99% of peers to get the tick", func() (bool, string) {
			return got.Load() >= need, fmt.Sprintf("%d of %d", got.Load(), need)
		})
		for _, s := range stops {
			s()
		}
		mu.Lock()
		var ts []time.Duration
		for _, a := range arrived {
			if a > 0 {
				ts = append(ts, a)
			}
		}
		mu.Unlock()
		slices.Sort(ts)
		reach = append(reach, ts[need-1])
	}
	rc1, dl1 := recv()
	r.TickCopies = float64(rc1-rc0) / float64(max(dl1-dl0, 1))
	var sum time.Duration
	for _, d := range reach {
		sum += d
	}
	r.TickTo99Ms = float64(sum) / float64(len(reach)) / float64(time.Millisecond)
	// The providers' own policy takes their asks back (fixed: the same).

	// Formation.
	msgs := func() uint64 {
		var s uint64
		for _, nd := range m.Nodes {
			s += nd.NegotiationMessages()
		}
		return s
	}
	form := func(gpus, jobs int) (p50, p99, perJob float64, failed int) {
		spec, err := jobspec.Parse([]byte(fmt.Sprintf("name: scale\ncommand: [sleep, \"3600\"]\nresources: {gpus: %d, gpu: {model: H100}}\nmaxPrice: 2.50\ntimeout: 1h\n", gpus)), "yaml")
		if err != nil {
			b.Fatal(err)
		}
		var lat []time.Duration
		var total uint64
		for range jobs {
			nd := others[rng.IntN(len(others))]
			m0 := msgs()
			start := time.Now()
			job, err := nd.SubmitJob(ctx, spec)
			if err != nil {
				b.Fatal(err)
			}
			var j node.Job
			testwait.Until(b, ctx, "the job to leave negotiation", func() (bool, string) {
				j, _ = nd.Job(job.ID)
				return j.State != node.JobNegotiating, string(j.State)
			})
			took := time.Since(start)
			total += msgs() - m0
			if j.State != node.JobFormed && j.State != node.JobRunning {
				b.Logf("a %d-GPU job %s after %v: %s", gpus, j.State, took.Round(time.Millisecond), j.Reason)
				failed++
				continue
			}
			lat = append(lat, took)
			if _, err := nd.CancelJob(ctx, job.ID); err != nil {
				b.Fatal(err)
			}
			testwait.Until(b, ctx, "every provider's GPUs free again", func() (bool, string) {
				for i, p := range provs {
					if free, used := p.FreeGPUs()["H100-80GB"], len(p.GPUsInUse()); free != 8 || used != 0 {
						return false, fmt.Sprintf("provider %d: %d of 8 free, %d in use", i, free, used)
					}
				}
				return true, ""
			})
		}
		if len(lat) == 0 {
			b.Fatalf("no %d-GPU job formed", gpus)
		}
		return pctMs(lat, 50), pctMs(lat, 99), float64(total) / float64(jobs), failed
	}
	r.Form8P50Ms, r.Form8P99Ms, r.Form8Msgs, r.Form8Failed = form(8, 20)
	r.Form64P50Ms, r.Form64P99Ms, r.Form64Msgs, r.Form64Failed = form(64, 8)
	return r
}

// wait waits d or until ctx ends.
func wait(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func pctMs(lat []time.Duration, p int) float64 {
	s := slices.Clone(lat)
	slices.Sort(s)
	i := min(max((len(s)*p+99)/100-1, 0), len(s)-1)
	return float64(s[i]) / float64(time.Millisecond)
}

func appendJSONLine(b *testing.B, path string, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(append(data, '\n')); err != nil {
		b.Fatal(err)
	}
}
