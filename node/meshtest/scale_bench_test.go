package meshtest_test

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/scaledoc"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

var (
	scalePeers   = flag.String("scale.peers", "1000", "BenchmarkScale: peer counts, comma-separated (e.g. 1000,3000,10000)")
	scaleLatency = flag.Duration("scale.latency", 20*time.Millisecond, "BenchmarkScale: one-way latency of every simulated link")
	scaleOut     = flag.String("scale.out", "", "BenchmarkScale: append each size's figures as a JSON line to this file; a scale.md beside it gets its table and plot made anew from the lines (internal/scaledoc)")
	scaleRest    = flag.Duration("scale.rest", 30*time.Second, "BenchmarkScale: the window over which resting gossip is measured (at least one re-send interval of an unchanged ask, so each provider's re-send falls in it: P/0.25 s, 120 s at 300 peers; see gossip.Resend)")
	scaleOnly    = flag.Bool("scale.restonly", false, "BenchmarkScale: measure setup, memory and rest only (no lookups, ticks or formation): for profiling")
	scaleNoCM    = flag.Bool("scale.noconnmgr", false, "BenchmarkScale: simulated nodes without a connection manager (as mocknet's hosts are), for comparison")
	scaleLinkAll = flag.Bool("scale.linkall", false, "BenchmarkScale: link every pair of simulated nodes at start (mocknet's LinkAll, N² links) rather than each pair as it dials, for comparison")
	scaleBitswap = flag.Bool("scale.bitswap", false, "BenchmarkScale: simulated nodes run bitswap (a queue and a goroutine a connection), as a real node does, for comparison")
	scaleNoUpkp  = flag.Bool("scale.noupkeep", false, "BenchmarkScale: skip the DHT upkeep measurement (a refresh of every bucket on every peer, the offers' re-puts and index announcements: minutes at 1,000 peers)")
	scaleNote    = flag.String("scale.note", "", "BenchmarkScale: a note kept with each size's JSON line (e.g. \"measured under load\")")
	scaleWaves   = flag.Int("scale.waves", 10, "BenchmarkScale: start the nodes in this many groups, each meshed before the next starts (meshtest.Options.Waves): the setup's peak, which Go's heap and stacks keep, is then a group's (1: all at once, as before)")
	scaleSetupGC = flag.Int("scale.setupgc", 25, "BenchmarkScale: the GC percent (GOGC) while the mesh starts, the process's own after it (0: the process's own throughout, as before): fewer part-used spans left by the setup")
	scaleProfile = flag.String("scale.profile", "", "BenchmarkScale: write heap and goroutine profiles at rest (after setup, after GC) into this directory as heap-N.pprof, goroutine-N.pprof, and a CPU and a mutex profile of the formations, cpu-formation-N.pprof and mutex-formation-N.pprof")
)

// Lookup round trips (issue 19).
var scaleLookupOnly = flag.Bool("scale.lookuponly", false, "BenchmarkScale: stop after the lookups (no price ticks or formation), and print where each lookup's time went")

var (
	scaleQuickLookup   = flag.Bool("scale.quicklookup", false, "BenchmarkScale: directory lookups return once the peers closest to the index key have answered (dht.LookupOptions.QuickIndexLookup), rather than when the DHT's query ends")
	scaleIdentifyFirst = flag.Bool("scale.identifyfirst", false, "BenchmarkScale: DHT requests, offer fetches and negotiation messages wait for identify on a new connection (dht.LookupOptions.IdentifyFirst, node.Config.IdentifyFirst: as before), for a baseline")
)

// Price re-sends (issue 19): the pacing before gossip.Resend, for a
// baseline measured in the same run.
// scaleFormOnly skips everything between setup and formation.
var scaleFormOnly = flag.Bool("scale.formonly", false, "BenchmarkScale: after setup and the resting window, measure formation only (no upkeep, records, lookups or ticks); writes no JSON line")

// scaleTrace prints every formation's steps, on every peer, from the submit.
var scaleTrace = flag.Bool("scale.trace", false, "BenchmarkScale: print each formation's negotiation steps (node.LevelTrace) on every peer, in ms from the submit, and a split by stage")

// scaleOldAwards compares the award rules before standing-by members.
var scaleOldAwards = flag.Bool("scale.oldawards", false, "BenchmarkScale: every other formation is submitted from a peer with the award rules before standing-by members (node.Config.OldAwardRules), on the same mesh, and reported apart (old-form8-*, old-form64-*): a before and after in one run")

// scaleOldFallback compares the topic fallback counted from the asks.
var scaleOldFallback = flag.Bool("scale.oldfallback", false, "BenchmarkScale: every other formation is submitted from a peer whose direct requests fall back to the topic a wait after they were asked for, not after they left (node.Config.OldFallback), reported apart as -scale.oldawards's are (with both flags, those peers have both old rules)")

// scaleCompare says some formations are submitted by peers with old rules.
// scaleOldWalk compares the search for a count's walk to a provider
// before (dht.LookupOptions.WalkThenFetch).
var scaleOldWalk = flag.Bool("scale.oldwalk", false, "BenchmarkScale: after the searches for 8 GPUs, as many from peers whose walk to a named provider they hold no address of ends before its offer is fetched (dht.LookupOptions.WalkThenFetch), on the same mesh, printed apart: a before and after in one run (the searches measured come from the other peers)")

// scaleNoAskAddrs compares the search for a count with and without the
// addresses a provider's tick lists (node.Config.IgnoreAskAddrs).
var scaleNoAskAddrs = flag.Bool("scale.noaskaddrs", false, "BenchmarkScale: after the searches for 8 GPUs, as many from peers that ignore the addresses a provider's price tick lists (node.Config.IgnoreAskAddrs: a provider they hold no address of is walked to in the DHT first), on the same mesh, printed apart: a before and after in one run (the searches measured come from the other peers; with -scale.oldwalk those peers also walk, then fetch)")

func scaleCompare() bool { return *scaleOldAwards || *scaleOldFallback }

var scaleDualStack = flag.Bool("scale.dualstack", false, "BenchmarkScale: every simulated node has four addresses (IPv4 and IPv6, TCP and QUIC: meshtest.Options.DualStack), as a public dual-stack peer does, which its price ticks list: for resting gossip with real ticks' sizes")

// scaleLeave measures searches for a count after the cheapest providers
// left, saying so (node.Node.Close withdraws their asks) or not.
var (
	scaleLeave    = flag.Int("scale.leave", 0, "BenchmarkScale: after the searches for 8 GPUs, this many of the cheapest providers leave, closing (node.Node.Close: their last ticks withdraw their asks), then as many searches for 8 GPUs again; stops there")
	scaleLeaveDie = flag.Bool("scale.leavedie", false, "BenchmarkScale: with -scale.leave, the providers die instead (meshtest.Mesh.Isolate: cut off the network, nothing said): for a baseline")
)

var scaleFixedResend = flag.Bool("scale.fixedresend", false, "BenchmarkScale: providers re-send unchanged asks every 30 s whatever the board (the pacing before gossip.Resend), for a baseline")

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
	if *scaleVirtual {
		b.Skip("-scale.virtual: the sizes are measured by TestScaleVirtual (a bubble of testing/synctest needs a test)")
	}
	for _, n := range scaleSizes(b) {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			r, ok := scaleResults[n]
			if !ok {
				r = measureScale(b, n, *scaleLatency)
				scaleResults[n] = r
				recordScale(b, r)
			}
			r.report(b)
		})
	}
}

// scaleVirtual runs the sizes in virtual time.
var scaleVirtual = flag.Bool("scale.virtual", false, "TestScaleVirtual: measure each size of -scale.peers as BenchmarkScale does, but inside a bubble of testing/synctest, in virtual time: time passes only when every goroutine of the mesh waits, so the figures are the protocol's on -scale.latency links however long the one process's CPU takes (the wall time is the CPU's)")

// TestScaleVirtual is BenchmarkScale in virtual time (-scale.virtual):
// the mesh runs in a bubble of testing/synctest, whose clock moves only
// when every goroutine in it is blocked on a channel, a lock's condition
// or a timer. The simulated links' latency, every timeout and every
// figure in ms or per second are then of that clock: a mesh too large
// for this machine's two cores in real time (3,000 peers: every node's
// periodic work alone is more than the cores have, and the setup's dials
// time out) is measured as if each peer had a core of its own; the
// process's CPU sets only how long the run takes (SetupS is that, wall
// seconds; SetupVirtualS the bubble's).
//
// One difference from BenchmarkScale: a job's process runs `true`, not
// `sleep 3600`. A goroutine waiting on a child process (or on a pipe
// from it) is not one the bubble can wait out, so its clock would stand
// still for as long as the process ran; each job therefore ends at once
// and its providers are free for the next job (in real time they stay
// busy with it).
//
// go test -run '^TestScaleVirtual$' -timeout 3h ./node/meshtest/ -scale.virtual -scale.peers 3000 -scale.out ../../docs/scale.jsonl
func TestScaleVirtual(t *testing.T) {
	if !*scaleVirtual {
		t.Skip("a scale run in virtual time: set -scale.virtual (and -scale.peers)")
	}
	for _, n := range scaleSizes(t) {
		t.Run(fmt.Sprintf("peers=%d", n), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				// Recorded in the bubble, before the mesh is closed by
				// the test's cleanup: a close that hung would lose it.
				recordScale(t, measureScale(t, n, *scaleLatency))
			})
		})
	}
}

// scaleWaveGap is meshtest.Options.WaveGap, in virtual time only: there
// a wave of nodes joins in under a second of the bubble's clock, less
// than the connection managers' grace (10 s); in real time a wave took
// 30 to 90 s at 1,000 peers.
var scaleWaveGap = flag.Duration("scale.wavegap", 15*time.Second, "TestScaleVirtual: each wave of nodes runs this long, once meshed, before the next starts (meshtest.Options.WaveGap), on the bubble's clock (0: none)")

func waveGap() time.Duration {
	if *scaleVirtual {
		return *scaleWaveGap
	}
	return 0
}

// restWindow is -scale.rest; in virtual time, unless the flag is given,
// one re-send interval of an unchanged ask with every provider's quote on
// the board (gossip.Resend: 400 s at 100 providers), at least 30 s. A
// mesh set up in virtual time is a few minutes old on its clock, younger
// than one interval, so a 30 s window would fall between the providers'
// re-sends and hold only heartbeats (2 B/s a peer at 1,000 peers, against
// 209 in real time, whose setup alone lasts longer than an interval).
func restWindow(providers int) time.Duration {
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "scale.rest" })
	if !*scaleVirtual || given {
		return *scaleRest
	}
	return max(*scaleRest, gossip.DefaultResend.Interval(providers))
}

// scaleSizes is -scale.peers.
func scaleSizes(tb testing.TB) []int {
	var sizes []int
	for _, f := range strings.Split(*scalePeers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 20 {
			tb.Fatalf("-scale.peers: %q is not a count of 20 peers or more", f)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// recordScale appends r to -scale.out, if set, and remakes the figures of
// the scale.md beside it.
func recordScale(tb testing.TB, r scaleResult) {
	if *scaleOut == "" || *scaleOnly || *scaleFormOnly {
		return
	}
	appendJSONLine(tb, *scaleOut, r)
	if md := filepath.Join(filepath.Dir(*scaleOut), "scale.md"); fileExists(md) {
		if err := scaledoc.Update(*scaleOut, md); err != nil {
			tb.Logf("the figures are in %s, but %s was not updated: %v", *scaleOut, md, err)
		}
	}
}

// Connection manager watermarks of the simulated nodes: lower than a real
// node's (64 and 256, node/host.go) so that 1,000 whole nodes fit in one
// process (a connection costs ~70 KB in mocknet: its streams' goroutines
// and pipes). With mocknet's default, none, every node ends up connected
// to nearly every other (91 of 99 at 100 peers, 202 of 299 at 300), and
// memory per peer grows with N. The low mark counts only connections the
// manager may close: GossipSub's mesh peers (up to 12 a topic) are kept
// besides.
const scaleConnLow, scaleConnHigh = 16, 32

// scaleResults keeps each size's figures for the rest of the process: the
// benchmark may be called more than once a size, and a mesh of thousands
// takes minutes to build.
var scaleResults = map[int]scaleResult{}

// scaleResult is what BenchmarkScale measured at one size.
type scaleResult struct {
	// The figures docs/scale.md shows (its table and plots are made from
	// them: internal/scaledoc); the rest of the line is for reading.
	scaledoc.Run
	Providers  int
	HeapMBPeer float64 // of MemMBPerPeer: heap in use
	// SetupVirtualS is the setup's time on the bubble's clock
	// (-scale.virtual; SetupS is then wall seconds).
	SetupVirtualS float64 `json:",omitempty"`
	StackMBPeer   float64 // of MemMBPerPeer: goroutine stacks
	// Of HeapMBPeer, what live objects take at the last GC (the rest is
	// free slots in spans that still hold some object: fragmentation);
	// of StackMBPeer, what the goroutines use of their stacks (the bytes
	// the last GC scanned).
	HeapLiveMBPeer, StackUsedMBPeer float64

	GoroutinesPeer   float64 // goroutines per peer at rest
	ConnsPeer        float64 // open connections per peer at rest (mean)
	ConnsMax         int
	StreamsPeer      float64 // open streams per peer at rest (mean)
	RSSMB, PeakRSSMB float64 // the process's resident memory at rest, and its peak so far (Linux; 0 elsewhere)
	RestWindowS      float64
	// RestCPUMsPeer is the process's CPU (user and system) over the rest
	// window, ms a second a peer: one process on C cores holds at most
	// C·1,000 ÷ it peers at rest, with nothing left for lookups, ticks
	// or formation (Linux; 0 elsewhere).
	RestCPUMsPeer float64 `json:",omitempty"`
	// RestParts is RestGossipBps by part: "topic:<name>" (messages of that
	// topic, every copy a peer sends), "ihave", "iwant", "graft", "prune",
	// "idontwant", "subscriptions", "framing"; bytes a second per peer.
	RestParts map[string]float64 `json:",omitempty"`
	// RestProtocols is what a peer writes on streams at rest, by
	// protocol (the swarm's ID written <swarm>), bytes a second: GossipSub
	// (its RPCs with their length prefixes), the DHT, gpumesh's own.
	RestProtocols map[string]float64 `json:",omitempty"`
	// RestDHTRequests is the DHT requests a peer serves a second at
	// rest, by type (FIND_NODE, GET_VALUE, ...).
	RestDHTRequests map[string]float64 `json:",omitempty"`
	// RestFindNodes is the FIND_NODE requests of RestDHTRequests by what
	// the asker was doing (dht.Directory.FindNodes: check, self, refresh,
	// offer, index, peer).
	RestFindNodes map[string]float64 `json:",omitempty"`

	// The DHT's upkeep at rest, each task run once on purpose and its
	// bytes (every protocol of the DHT, both ways' writes) counted, per
	// peer (÷ N, providers' tasks too): a refresh of every bucket on
	// every peer; each provider's offer re-put (every 5 minutes, half an
	// offer's life); each provider's index announcements (every 30
	// minutes). UpkeepBps is what they cost a peer a second at the
	// periods the code has; UpkeepBps10m with kad-dht's own refresh
	// period (10 minutes) instead of dht.DefaultRefreshPeriod.
	UpkeepRefreshKB, UpkeepOfferKB, UpkeepIndexKB float64
	UpkeepBps, UpkeepBps10m                       float64
	// UpkeepFindNodes is the FIND_NODE a peer served in each task, by
	// what the asker was doing: "refresh:check", "offer:self", ...
	UpkeepFindNodes map[string]float64 `json:",omitempty"`

	// With -scale.oldawards: the same figures of the jobs submitted by
	// peers with the award rules before (node.Config.OldAwardRules).
	OldForm8P50Ms, OldForm8P99Ms, OldForm8Msgs    float64 `json:",omitempty"`
	OldForm64P50Ms, OldForm64P99Ms, OldForm64Msgs float64 `json:",omitempty"`
	OldFailed                                     int     `json:",omitempty"`
	// Jobs whose request went on the topic (its direct requests fell
	// back), of the Form8/Form64 jobs and, with a comparison, the old ones.
	Form8OnTopic, Form64OnTopic       int
	OldForm8OnTopic, OldForm64OnTopic int `json:",omitempty"`
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
		{r.GoroutinesPeer, "goroutines/peer"}, {r.ConnsPeer, "conns/peer"}, {r.StreamsPeer, "streams/peer"},
	} {
		b.ReportMetric(m.v, m.unit)
	}
	if scaleCompare() {
		for _, m := range []struct {
			v    float64
			unit string
		}{
			{r.OldForm8P50Ms, "old-form8-p50-ms"}, {r.OldForm8P99Ms, "old-form8-p99-ms"}, {r.OldForm8Msgs, "old-form8-msgs"},
			{r.OldForm64P50Ms, "old-form64-p50-ms"}, {r.OldForm64P99Ms, "old-form64-p99-ms"}, {r.OldForm64Msgs, "old-form64-msgs"},
			{float64(r.OldFailed), "old-failed-jobs"},
		} {
			b.ReportMetric(m.v, m.unit)
		}
	}
}

func measureScale(b testing.TB, n int, latency time.Duration) scaleResult {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	providers := max(n/10, 8)
	r := scaleResult{Run: scaledoc.Run{Note: *scaleNote, Peers: n, LatencyMs: float64(latency) / float64(time.Millisecond), Log2N: math.Ceil(math.Log2(float64(n)))}, Providers: providers}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	live0, stackUsed0 := memUsed()
	g0 := runtime.NumGoroutine()
	restoreGC := func() {}
	setup, wall0 := time.Now(), wallNow()
	say := func(format string, args ...any) {
		if *scaleVirtual {
			fmt.Fprintf(os.Stderr, "scale %d: %5.0fs (wall %5.0fs)  %s\n", n, time.Since(setup).Seconds(), wallNow().Sub(wall0).Seconds(), fmt.Sprintf(format, args...))
			return
		}
		fmt.Fprintf(os.Stderr, "scale %d: %5.0fs  %s\n", n, time.Since(setup).Seconds(), fmt.Sprintf(format, args...))
	}
	if *scaleVirtual {
		r.Clock = "virtual"
	}
	tl := &traceLog{honest: map[string]bool{}, events: map[string][]step{}}
	if *scaleSetupGC > 0 {
		old := debug.SetGCPercent(*scaleSetupGC)
		restoreGC = sync.OnceFunc(func() { debug.SetGCPercent(old) })
		defer restoreGC()
	}
	m := meshtest.Start(b, n, meshtest.Options{Waves: *scaleWaves, Seed: uint64(n), Private: true, Providers: providers, Executors: []string{"process"}, Latency: latency,
		Progress: say, ConnLow: scaleConnLow, ConnHigh: scaleConnHigh * ifThen(*scaleNoCM, 0, 1), CountProtocols: true,
		LinkOnDial: !*scaleLinkAll, WaveGap: waveGap(), DualStack: *scaleDualStack,
		Config: func(i int, c *node.Config) {
			c.NoBlockExchange = !*scaleBitswap
			if *scaleTrace {
				c.Logger = slog.New(&traceHandler{log: tl, node: i})
			}
			c.OldAwardRules = *scaleOldAwards && oldRules(i)
			c.OldFallback = *scaleOldFallback && oldRules(i)
			c.IgnoreAskAddrs = *scaleNoAskAddrs && oldRules(i)
			c.DirectoryLookup = dht.LookupOptions{QuickIndexLookup: *scaleQuickLookup, IdentifyFirst: *scaleIdentifyFirst, WalkThenFetch: *scaleOldWalk && oldRules(i)}
			c.IdentifyFirst = *scaleIdentifyFirst
			if *scaleFixedResend {
				c.PriceResend = gossip.Resend{Floor: 30 * time.Second, Cap: 30 * time.Second}
			}
			if i < providers {
				c.Price = fmt.Sprintf("fixed:2.%02d", i%50)
				c.Region = []string{"eu-west/ams1", "us-east/nyc2"}[i%2]
			}
		}})
	r.SetupS = time.Since(setup).Seconds()
	if *scaleVirtual {
		r.SetupVirtualS, r.SetupS = r.SetupS, wallNow().Sub(wall0).Seconds()
	}
	restoreGC()
	say("%d peers up", n)
	provs, others := m.Nodes[:providers], m.Nodes[providers:]
	rng := rand.New(rand.NewPCG(uint64(n), 19))

	// Every provider's offer in the directory before anything is measured.
	// (A provider whose index announcements landed on the few peers of a
	// young table is found again only when it re-announces: the wait says
	// which are missing, and gives up after findAllTimeout.)
	waitSaying(b, ctx, say, findAllTimeout, "a lookup to find every provider", func() (bool, string) {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		res, err := others[0].FindGPUs(lctx, dht.Query{Model: "H100"})
		if err == nil && res.Providers == providers {
			return true, ""
		}
		found := map[string]bool{}
		for _, m := range res.Matches {
			found[m.Offer.Provider.String()] = true
		}
		var missing []string
		for i, p := range provs {
			if !found[p.Host().ID().String()] {
				l := p.LocalGPUs()
				missing = append(missing, fmt.Sprintf("%d (published %s ago, error %q, %d DHT peers)", i,
					time.Since(l.PublishedAt).Round(time.Second), l.Error, p.Directory().RoutingTableSize()))
				if len(missing) == 5 {
					break
				}
			}
		}
		return false, fmt.Sprintf("%d of %d found (err %v); missing: %s", res.Providers, providers, err, strings.Join(missing, ", "))
	})

	// At rest: gossip a peer sends a second, over a window of at least a
	// price heartbeat, by part.
	sent := func() (total uint64, parts map[string]uint64) {
		parts = map[string]uint64{}
		for _, nd := range m.Nodes {
			out, _ := nd.Gossip().Bytes()
			total += out
			p := nd.Gossip().Sent()
			for topic, v := range p.Topics {
				parts["topic:"+topicShort(topic)] += v
			}
			for k, v := range map[string]uint64{"ihave": p.IHave, "iwant": p.IWant, "graft": p.Graft, "prune": p.Prune,
				"idontwant": p.IDontWant, "subscriptions": p.Subscriptions, "framing": p.Framing} {
				parts[k] += v
			}
		}
		return total, parts
	}
	rest := restWindow(providers)
	say("at rest for %v", rest)
	s0, p0 := sent()
	b0 := m.SentByProtocol()
	dhtRequests := func() map[string]uint64 {
		out := map[string]uint64{}
		for _, nd := range m.Nodes {
			for k, v := range nd.Directory().Requests() {
				out[k] += v
			}
		}
		return out
	}
	findNodes := func() map[string]uint64 {
		out := map[string]uint64{}
		for _, nd := range m.Nodes {
			for k, v := range nd.Directory().FindNodes() {
				out[k] += v
			}
		}
		return out
	}
	q0, f0 := dhtRequests(), findNodes()
	cpu0 := cpuTime()
	t0 := time.Now()
	restTimeline(ctx, m, rest, say, findNodes)
	s1, p1 := sent()
	b1 := m.SentByProtocol()
	q1, f1 := dhtRequests(), findNodes()
	secs := time.Since(t0).Seconds()
	r.RestWindowS = secs
	if cpu1 := cpuTime(); cpu1 > 0 {
		r.RestCPUMsPeer = (cpu1 - cpu0).Seconds() * 1000 / secs / float64(n)
		say("CPU at rest %.3f ms a second a peer (%.0f%% of a core for %d peers)", r.RestCPUMsPeer, r.RestCPUMsPeer*float64(n)/10, n)
	}
	r.RestGossipBps = float64(s1-s0) / secs / float64(n)
	r.RestParts = map[string]float64{}
	var partsLine []string
	for k, v := range p1 {
		if d := float64(v-p0[k]) / secs / float64(n); d > 0 {
			r.RestParts[k] = d
			partsLine = append(partsLine, fmt.Sprintf("%s %.0f", k, d))
		}
	}
	slices.Sort(partsLine)
	say("resting gossip %.0f B/s a peer: %s", r.RestGossipBps, strings.Join(partsLine, ", "))
	r.RestProtocols = map[string]float64{}
	swarm := m.Nodes[0].Info().Swarm
	partsLine = partsLine[:0]
	for p, v := range b1 {
		if d := float64(v-b0[p]) / secs / float64(n); d > 0 {
			name := strings.ReplaceAll(string(p), swarm, "<swarm>")
			r.RestProtocols[name] = d
			partsLine = append(partsLine, fmt.Sprintf("%s %.0f", name, d))
		}
	}
	slices.Sort(partsLine)
	say("at rest on streams, B/s a peer by protocol: %s", strings.Join(partsLine, ", "))
	r.RestDHTRequests = map[string]float64{}
	partsLine = partsLine[:0]
	for k, v := range q1 {
		if d := float64(v-q0[k]) / secs / float64(n); d > 0 {
			r.RestDHTRequests[k] = d
			partsLine = append(partsLine, fmt.Sprintf("%s %.2f", k, d))
		}
	}
	slices.Sort(partsLine)
	say("at rest, DHT requests a peer serves a second, by type: %s", strings.Join(partsLine, ", "))
	r.RestFindNodes = map[string]float64{}
	partsLine = partsLine[:0]
	for k, v := range f1 {
		if d := float64(v-f0[k]) / secs / float64(n); d > 0 {
			r.RestFindNodes[k] = d
			partsLine = append(partsLine, fmt.Sprintf("%s %.3f", k, d))
		}
	}
	slices.Sort(partsLine)
	say("at rest, FIND_NODE a peer serves a second, by what the asker does: %s", strings.Join(partsLine, ", "))
	// Memory, goroutines and connections at rest (after the connection
	// managers' grace period and first trims).
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	inUse := func(s runtime.MemStats) float64 { return float64(s.HeapInuse + s.StackInuse) }
	r.MemMBPerPeer = (inUse(after) - inUse(before)) / float64(n) / (1 << 20)
	r.HeapMBPeer = (float64(after.HeapInuse) - float64(before.HeapInuse)) / float64(n) / (1 << 20)
	r.StackMBPeer = (float64(after.StackInuse) - float64(before.StackInuse)) / float64(n) / (1 << 20)
	r.GoroutinesPeer = float64(runtime.NumGoroutine()-g0) / float64(n)
	live1, stackUsed1 := memUsed()
	r.HeapLiveMBPeer = (live1 - live0) / float64(n) / (1 << 20)
	r.StackUsedMBPeer = (stackUsed1 - stackUsed0) / float64(n) / (1 << 20)
	conns, streams := 0, 0
	byProto := map[string]int{}
	for _, nd := range m.Nodes {
		cs := nd.Host().Network().Conns()
		conns += len(cs)
		r.ConnsMax = max(r.ConnsMax, len(cs))
		for _, c := range cs {
			for _, st := range c.GetStreams() {
				streams++
				byProto[string(st.Protocol())]++
			}
		}
	}
	r.ConnsPeer, r.StreamsPeer = float64(conns)/float64(n), float64(streams)/float64(n)
	var protos []string
	for p, c := range byProto {
		protos = append(protos, fmt.Sprintf("%s %.1f", cmp.Or(p, "(none yet)"), float64(c)/float64(n)))
	}
	slices.Sort(protos)
	say("streams a peer by protocol: %s", strings.Join(protos, ", "))
	r.RSSMB, r.PeakRSSMB = procMB("VmRSS"), procMB("VmHWM")
	say("%.1f MB (heap %.1f, stacks %.1f), %.0f goroutines, %.1f connections (max %d), %.1f streams a peer; process RSS %.0f MB (peak %.0f)", r.MemMBPerPeer, r.HeapMBPeer, r.StackMBPeer, r.GoroutinesPeer, r.ConnsPeer, r.ConnsMax, r.StreamsPeer, r.RSSMB, r.PeakRSSMB)
	say("of which live objects %.1f MB a peer (the rest of the heap in use: free slots in spans that hold some), stacks used %.1f MB", r.HeapLiveMBPeer, r.StackUsedMBPeer)
	if *scaleProfile != "" {
		writeProfiles(b, *scaleProfile, n)
	}
	if *scaleFormOnly {
		measureFormation(b, ctx, m, provs, others, rng, tl, &r, say)
		return r
	}
	if !*scaleNoUpkp {
		measureUpkeep(ctx, b, m, provs, &r, say)
	}
	if *scaleOnly {
		return r
	}

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
	say("%d lookups", 40)
	var lat []time.Duration
	var found float64
	hops := 0
	const lookups = 40
	var tm lookupTimings
	for range lookups {
		nd := others[rng.IntN(len(others))]
		dials := countDials(nd)
		start := time.Now()
		res, err := nd.FindGPUs(ctx, dht.Query{Model: "H100"})
		took := time.Since(start)
		dials.stop()
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, took)
		hops += res.Hops
		r.LookupHopsMax = max(r.LookupHopsMax, res.Hops)
		found += float64(res.Providers) / float64(providers)
		tm.add(res, took, dials.n.Load())
	}
	r.LookupP50Ms, r.LookupP95Ms, r.LookupP99Ms = pctMs(lat, 50), pctMs(lat, 95), pctMs(lat, 99)
	r.LookupHopsMean = float64(hops) / lookups
	r.OffersFound = found / lookups
	say("lookups: p50/p95/p99 %.0f/%.0f/%.0f ms, %.2f hops, %.3f of the offers found", r.LookupP50Ms, r.LookupP95Ms, r.LookupP99Ms, r.LookupHopsMean, r.OffersFound)
	tm.say(say)

	// Lookups for a count: among the price board's cheapest providers
	// first (node.FindGPUs), the index when they fall short.
	say("%d lookups for 8 GPUs", lookups)
	newWalk, oldWalk := others, []*node.Node(nil)
	asBefore := *scaleOldWalk || *scaleNoAskAddrs
	if asBefore {
		newWalk, oldWalk = nil, nil
		for _, nd := range others {
			if oldRules(slices.Index(m.Nodes, nd)) {
				oldWalk = append(oldWalk, nd)
			} else {
				newWalk = append(newWalk, nd)
			}
		}
	}
	var c8, old8 countSearches // with -scale.oldwalk or -scale.noaskaddrs, one of each in turn
	for range int(lookups) {
		c8.search(b, ctx, rng, newWalk)
		if asBefore {
			old8.search(b, ctx, rng, oldWalk)
		}
	}
	r.Lookup8P50Ms, r.Lookup8P95Ms, r.Lookup8P99Ms = pctMs(c8.lat, 50), pctMs(c8.lat, 95), pctMs(c8.lat, 99)
	r.Lookup8Named = float64(c8.named) / lookups
	c8.say(say, "")
	switch {
	case *scaleOldWalk && *scaleNoAskAddrs:
		old8.say(say, " (no tick addresses; walk, then fetch: as before)")
	case *scaleOldWalk:
		old8.say(say, " (walk, then fetch: as before)")
	case *scaleNoAskAddrs:
		old8.say(say, " (tick addresses ignored: walk first, as before)")
	}
	if *scaleLeave > 0 {
		measureLeave(b, ctx, m, provs, others, rng, say)
		return r
	}
	if *scaleLookupOnly {
		return r
	}

	// Price ticks: a provider quotes a new ask; every peer's board gets it.
	say("price ticks")
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
		waitSaying(b, ctx, say, time.Minute, "99% of peers to get the tick", func() (bool, string) {
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

	measureFormation(b, ctx, m, provs, others, rng, tl, &r, say)
	say("done")
	return r
}

// memUsed is the heap's live bytes and the goroutines' stack bytes that
// the last GC marked and scanned.
func memUsed() (heapLive, stackUsed float64) {
	ss := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}}
	metrics.Read(ss)
	for i, s := range ss {
		if s.Value.Kind() != metrics.KindUint64 {
			continue
		}
		if i == 0 {
			heapLive = float64(s.Value.Uint64())
		} else {
			stackUsed = float64(s.Value.Uint64())
		}
	}
	return heapLive, stackUsed
}

// procMB is a memory figure of this process from /proc/self/status
// ("VmRSS", "VmHWM") in MB, 0 where there is none.
func procMB(field string) float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err == nil {
				return kb / 1024
			}
		}
	}
	return 0
}

func ifThen[T any](c bool, a, b T) T {
	if c {
		return a
	}
	return b
}

// topicShort is a topic's name without the swarm: "/gpumesh/<swarm>/prices/1" -> "prices".
func topicShort(t string) string {
	parts := strings.Split(t, "/")
	if len(parts) == 5 {
		return parts[3]
	}
	return t
}

// writeProfiles writes the heap (after GC) and goroutine profiles of the
// process into dir as heap-n.pprof and goroutine-n.pprof.
func writeProfiles(b testing.TB, dir string, n int) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	for _, p := range []string{"heap", "goroutine"} {
		writeProfile(b, dir, fmt.Sprintf("%s-%d.pprof", p, n), p)
	}
}

// writeProfile writes the runtime profile of that name into dir/file.
func writeProfile(b testing.TB, dir, file, name string) {
	f, err := os.Create(filepath.Join(dir, file))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

// measureUpkeep runs each of the DHT's periodic tasks once on purpose, at
// rest, and counts what it costs a peer (see scaleResult.UpkeepRefreshKB).
func measureUpkeep(ctx context.Context, b testing.TB, m *meshtest.Mesh, provs []*node.Node, r *scaleResult, say func(string, ...any)) {
	n := float64(len(m.Nodes))
	r.UpkeepFindNodes = map[string]float64{}
	dhtBytes := func() (v uint64) {
		for p, c := range m.SentByProtocol() {
			if strings.Contains(string(p), "/kad/") {
				v += c
			}
		}
		return v
	}
	findNodes := func() map[string]uint64 {
		out := map[string]uint64{}
		for _, nd := range m.Nodes {
			for k, v := range nd.Directory().FindNodes() {
				out[k] += v
			}
		}
		return out
	}
	// settle waits until the DHT has written nothing for 2 s (the checks
	// of peers a task's lookups newly connected to come after it), at
	// most 30 s.
	settle := func() {
		deadline := time.Now().Add(30 * time.Second)
		last, quiet := dhtBytes(), time.Now()
		for time.Since(quiet) < 2*time.Second && time.Now().Before(deadline) && ctx.Err() == nil {
			wait(ctx, 250*time.Millisecond)
			if v := dhtBytes(); v != last {
				last, quiet = v, time.Now()
			}
		}
	}
	task := func(name string, run func()) float64 {
		settle()
		b0, f0, t0 := dhtBytes(), findNodes(), time.Now()
		run()
		settle()
		b1, f1 := dhtBytes(), findNodes()
		kb := float64(b1-b0) / n / 1024
		var kinds []string
		for k, v := range f1 {
			if d := float64(v-f0[k]) / n; d > 0 {
				r.UpkeepFindNodes[name+":"+k] = d
				kinds = append(kinds, fmt.Sprintf("%s %.1f", k, d))
			}
		}
		slices.Sort(kinds)
		say("upkeep, %s: %.1f KB a peer in %.0f s; FIND_NODE served a peer: %s", name, kb, time.Since(t0).Seconds(), strings.Join(kinds, ", "))
		return kb
	}
	parallel := func(nodes []*node.Node, what string, f func(context.Context, *node.Node) error) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 32)
		var failed atomic.Int64
		for _, nd := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				tctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
				defer cancel()
				if err := f(tctx, nd); err != nil {
					failed.Add(1)
				}
			}()
		}
		wg.Wait()
		if k := failed.Load(); k > 0 {
			say("upkeep, %s: %d of %d failed", what, k, len(nodes))
		}
	}
	r.UpkeepRefreshKB = task("refresh", func() {
		parallel(m.Nodes, "refresh", func(ctx context.Context, nd *node.Node) error { return nd.Directory().RefreshAll(ctx) })
	})
	// An offer re-put: what the provider's publish loop does every half
	// offer life (its index announcements are not due).
	r.UpkeepOfferKB = task("offer", func() {
		since := map[*node.Node]time.Time{}
		for _, p := range provs {
			since[p] = p.LocalGPUs().PublishedAt
			p.OffersChanged()
		}
		waitSaying(b, ctx, say, 2*time.Minute, "every provider to re-put its offer", func() (bool, string) {
			for i, p := range provs {
				if !p.LocalGPUs().PublishedAt.After(since[p]) {
					return false, fmt.Sprintf("provider %d has not", i)
				}
			}
			return true, ""
		})
	})
	// The offer and every index announcement at once, as on the
	// publish loop's 30-minute round; the index part is that less the
	// offer re-put.
	both := task("offer+index", func() {
		parallel(provs, "index announcements", func(ctx context.Context, p *node.Node) error {
			o := *p.LocalGPUs().Offer
			o.Seq++
			sealed, err := dht.SealOffer(&o, p.Identity().Key)
			if err != nil {
				return err
			}
			return p.Directory().Publish(ctx, sealed, true)
		})
	})
	r.UpkeepIndexKB = max(both-r.UpkeepOfferKB, 0)
	const offerEvery, indexEvery = node.DefaultOfferTTL / 2, 30 * time.Minute
	rate := func(refresh time.Duration) float64 {
		return 1024 * (r.UpkeepRefreshKB/refresh.Seconds() + r.UpkeepOfferKB/offerEvery.Seconds() + r.UpkeepIndexKB/indexEvery.Seconds())
	}
	r.UpkeepBps, r.UpkeepBps10m = rate(dht.DefaultRefreshPeriod), rate(10*time.Minute)
	say("upkeep: %.0f B/s a peer with a refresh every %v (%.0f with one every 10m): refresh %.0f, offers %.0f, index %.0f",
		r.UpkeepBps, dht.DefaultRefreshPeriod, r.UpkeepBps10m, 1024*r.UpkeepRefreshKB/dht.DefaultRefreshPeriod.Seconds(),
		1024*r.UpkeepOfferKB/offerEvery.Seconds(), 1024*r.UpkeepIndexKB/indexEvery.Seconds())
}

// findAllTimeout bounds the wait for a lookup to find every provider's
// offer before anything is measured: the publish loop's first retries and
// re-announcements come within a minute or two.
const findAllTimeout = 5 * time.Minute

// waitSaying waits until cond holds, at most timeout (and while ctx
// lasts), saying every 15 s what it waits for and what it saw last, and
// fails b naming both when it gives up, even while a check is still
// running: a wait of the harness never hangs silently.
func waitSaying(b testing.TB, ctx context.Context, say func(string, ...any), timeout time.Duration, what string, cond func() (bool, string)) {
	b.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start, lastSaid := time.Now(), time.Now()
	err := meshtest.PollBounded(ctx, func(at *meshtest.Step) (bool, string) {
		at.Set("checking whether %s", what)
		ok, seen := cond()
		if !ok && time.Since(lastSaid) >= 15*time.Second {
			say("still waiting %v for %s: %s", time.Since(start).Round(time.Second), what, seen)
			lastSaid = time.Now()
		}
		return ok, seen
	})
	if err != nil {
		b.Fatalf("gave up after %v waiting for %s: %v", time.Since(start).Round(time.Second), what, err)
	}
}

// restTimeline waits out the resting window d (or until ctx ends), saying
// every tenth of it (at most every 30 s) what the DHT wrote a peer a second
// and the FIND_NODEs a peer served a second by kind, so a start-up
// transient shows apart from the steady state.
func restTimeline(ctx context.Context, m *meshtest.Mesh, d time.Duration, say func(string, ...any), findNodes func() map[string]uint64) {
	n := float64(len(m.Nodes))
	step := min(max(d/10, 5*time.Second), 30*time.Second)
	end := time.Now().Add(d)
	dhtBytes := func() (v uint64) {
		for p, b := range m.SentByProtocol() {
			if strings.Contains(string(p), "/kad/") {
				v += b
			}
		}
		return v
	}
	prevB, prevF, prevT := dhtBytes(), findNodes(), time.Now()
	for ctx.Err() == nil && time.Until(end) > 0 {
		wait(ctx, min(step, time.Until(end)))
		b, f, now := dhtBytes(), findNodes(), time.Now()
		secs := now.Sub(prevT).Seconds()
		var kinds []string
		for k, v := range f {
			if dv := float64(v-prevF[k]) / secs / n; dv > 0 {
				kinds = append(kinds, fmt.Sprintf("%s %.2f", k, dv))
			}
		}
		slices.Sort(kinds)
		say("  rest +%3.0fs: DHT %5.0f B/s a peer; FIND_NODE served a second a peer: %s", time.Until(end).Seconds()*-1+d.Seconds(), float64(b-prevB)/secs/n, strings.Join(kinds, ", "))
		prevB, prevF, prevT = b, f, now
	}
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

// countSearches is what searches for 8 GPUs measured.
type countSearches struct {
	lat, walked              []time.Duration // every search's time; those of the searches that walked to a provider
	named, walks, namedAsked int
	unanswered               int // named providers that gave no offer
	gone                     map[peer.ID]bool
	goneFound                int // offers found of the gone providers
	secondRound              int // named searches that asked the next cheapest after some did not answer
}

// search runs a search for 8 H100s from a random peer of from.
func (c *countSearches) search(b testing.TB, ctx context.Context, rng *rand.Rand, from []*node.Node) {
	nd := from[rng.IntN(len(from))]
	start := time.Now()
	res, err := nd.FindGPUs(ctx, dht.Query{Model: "H100", Count: 8, Unit: nd.PriceUnit().String()})
	took := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if !res.Enough {
		b.Fatalf("a lookup for 8 H100s found %d GPUs from %d providers", res.GPUs, res.Providers)
	}
	c.lat = append(c.lat, took)
	if res.Timing.PeerWalks > 0 {
		c.walked = append(c.walked, took)
	}
	if res.Named {
		c.named++
		c.walks += res.Timing.PeerWalks
		c.namedAsked += res.Indexed
	}
	c.unanswered += len(res.Unanswered)
	if res.Named && len(res.Unanswered) > 0 {
		c.secondRound++
	}
	for _, m := range res.Matches {
		if c.gone[m.Offer.Provider] {
			c.goneFound++
		}
	}
}

func (c countSearches) say(say func(string, ...any), what string) {
	say("lookups for 8 GPUs%s: p50/p95/p99 %.0f/%.0f/%.0f ms; %d of %d among the board's cheapest (%.1f providers asked, %.1f of them found by a DHT walk first)",
		what, pctMs(c.lat, 50), pctMs(c.lat, 95), pctMs(c.lat, 99), c.named, len(c.lat), float64(c.namedAsked)/float64(max(c.named, 1)), float64(c.walks)/float64(max(c.named, 1)))
	if c.unanswered > 0 || c.gone != nil {
		say("lookups for 8 GPUs%s: %d providers named gave no offer; %d answered by the next cheapest; %d offers of the providers gone found", what, c.unanswered, c.secondRound, c.goneFound)
	}
	if len(c.walked) > 0 {
		say("lookups for 8 GPUs%s that walked to a provider: %d, p50/max %.0f/%.0f ms", what, len(c.walked), pctMs(c.walked, 50), pctMs(c.walked, 100))
	}
}

// wallNow is the machine's clock, which a bubble of testing/synctest
// does not replace (its time.Now is the bubble's).
func wallNow() time.Time {
	var tv syscall.Timeval
	if err := syscall.Gettimeofday(&tv); err != nil {
		return time.Time{}
	}
	return time.Unix(tv.Unix())
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func appendJSONLine(b testing.TB, path string, v any) {
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

// measureFormation forms 8- and 64-GPU jobs one after another from random
// peers without GPUs (see BenchmarkScale), each cancelled and its GPUs
// seen free again before the next.
func measureFormation(b testing.TB, ctx context.Context, m *meshtest.Mesh, provs, others []*node.Node, rng *rand.Rand, tl *traceLog, r *scaleResult, say func(string, ...any)) {
	msgs := func() uint64 {
		var s uint64
		for _, nd := range m.Nodes {
			s += nd.NegotiationMessages()
		}
		return s
	}
	type stats struct {
		p50, p99, perJob float64
		failed, onTopic  int
	}
	// form forms jobs one after another; with -scale.oldawards, as many
	// again alternating with them from peers with the old rules
	// (-scale.oldawards, -scale.oldfallback).
	form := func(gpus, jobs int) (cur, old stats) {
		// In virtual time the process ends at once: the bubble's clock
		// stands still while a goroutine waits on a child process.
		command := `[sleep, "3600"]`
		if *scaleVirtual {
			command = `["true"]`
		}
		spec, err := jobspec.Parse([]byte(fmt.Sprintf("name: scale\ncommand: %s\nresources: {gpus: %d, gpu: {model: H100}}\nmaxPrice: 2.50\ntimeout: 1h\n", command, gpus)), "yaml")
		if err != nil {
			b.Fatal(err)
		}
		var lat [2][]time.Duration
		var total [2]uint64
		var failed, tried, onTopic [2]int
		rounds := 1
		if scaleCompare() {
			rounds = 2
		}
		for k := range jobs * rounds {
			rules := k % rounds // 1: the old rules
			var nd *node.Node
			for {
				nd = others[rng.IntN(len(others))]
				if oldRules(slices.Index(m.Nodes, nd)) == (rules == 1) || rounds == 1 {
					break
				}
			}
			tried[rules]++
			m0, t0 := msgs(), nd.TopicRequests()
			start := time.Now()
			job, err := nd.SubmitJob(ctx, spec)
			if err != nil {
				b.Fatal(err)
			}
			var j node.Job
			waitSaying(b, ctx, say, 2*time.Minute, "the job to leave negotiation", func() (bool, string) {
				j, _ = nd.Job(job.ID)
				return j.State != node.JobNegotiating, string(j.State)
			})
			took := time.Since(start)
			total[rules] += msgs() - m0
			if nd.TopicRequests() > t0 {
				onTopic[rules]++
			}
			if *scaleTrace {
				sub := slices.Index(m.Nodes, nd)
				say("  %d-GPU job%s %s: %v %s", gpus, map[int]string{0: "", 1: " (old rules)"}[rules], j.State, took.Round(time.Millisecond), timeline(tl.take(job.ID), sub, providers(m, provs)))
			}
			if j.State != node.JobFormed && j.State != node.JobRunning {
				b.Logf("a %d-GPU job %s after %v: %s", gpus, j.State, took.Round(time.Millisecond), j.Reason)
				failed[rules]++
				continue
			}
			lat[rules] = append(lat[rules], took)
			if _, err := nd.CancelJob(ctx, job.ID); err != nil {
				b.Fatal(err)
			}
			waitSaying(b, ctx, say, time.Minute, "every provider's GPUs free again", func() (bool, string) {
				for i, p := range provs {
					if free, used := p.FreeGPUs()["H100-80GB"], len(p.GPUsInUse()); free != 8 || used != 0 {
						return false, fmt.Sprintf("provider %d: %d of 8 free, %d in use", i, free, used)
					}
				}
				return true, ""
			})
		}
		if len(lat[0]) == 0 {
			b.Fatalf("no %d-GPU job formed", gpus)
		}
		st := func(r int) stats {
			if len(lat[r]) == 0 {
				return stats{failed: failed[r], onTopic: onTopic[r]}
			}
			return stats{pctMs(lat[r], 50), pctMs(lat[r], 99), float64(total[r]) / float64(max(tried[r], 1)), failed[r], onTopic[r]}
		}
		return st(0), st(1)
	}
	if *scaleProfile != "" {
		// The formations' CPU: what the process does while jobs form.
		f, err := os.Create(filepath.Join(*scaleProfile, fmt.Sprintf("cpu-formation-%d.pprof", len(m.Nodes))))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer pprof.StopCPUProfile()
		// And where goroutines waited on each other's locks.
		runtime.SetMutexProfileFraction(20)
		defer func() {
			runtime.SetMutexProfileFraction(0)
			writeProfile(b, *scaleProfile, fmt.Sprintf("mutex-formation-%d.pprof", len(m.Nodes)), "mutex")
		}()
	}
	say("8-GPU formations")
	cur, old := form(8, 20)
	r.Form8P50Ms, r.Form8P99Ms, r.Form8Msgs, r.Form8Failed = cur.p50, cur.p99, cur.perJob, cur.failed
	r.OldForm8P50Ms, r.OldForm8P99Ms, r.OldForm8Msgs, r.OldFailed = old.p50, old.p99, old.perJob, old.failed
	r.Form8OnTopic, r.OldForm8OnTopic = cur.onTopic, old.onTopic
	say("64-GPU formations")
	cur, old = form(64, 8)
	r.Form64P50Ms, r.Form64P99Ms, r.Form64Msgs, r.Form64Failed = cur.p50, cur.p99, cur.perJob, cur.failed
	r.OldForm64P50Ms, r.OldForm64P99Ms, r.OldForm64Msgs = old.p50, old.p99, old.perJob
	r.OldFailed += old.failed
	r.Form64OnTopic, r.OldForm64OnTopic = cur.onTopic, old.onTopic
	if scaleCompare() {
		say("8-GPU p50/p99 %.0f/%.0f ms (old rules %.0f/%.0f), 64-GPU %.0f/%.0f ms (old rules %.0f/%.0f), failed %d (old rules %d), on the topic: 8-GPU %d (old rules %d), 64-GPU %d (old rules %d)",
			r.Form8P50Ms, r.Form8P99Ms, r.OldForm8P50Ms, r.OldForm8P99Ms, r.Form64P50Ms, r.Form64P99Ms, r.OldForm64P50Ms, r.OldForm64P99Ms,
			r.Form8Failed+r.Form64Failed, r.OldFailed, r.Form8OnTopic, r.OldForm8OnTopic, r.Form64OnTopic, r.OldForm64OnTopic)
	} else {
		say("on the topic: %d of the 8-GPU jobs, %d of the 64-GPU jobs", r.Form8OnTopic, r.Form64OnTopic)
	}
	say("done")
}

// oldRules says whether mesh peer i submits by the old rules under
// -scale.oldawards or -scale.oldfallback: every odd one.
func oldRules(i int) bool { return i%2 == 1 }

// providers maps a provider's mesh index to its index among provs.
func providers(m *meshtest.Mesh, provs []*node.Node) map[int]int {
	out := map[int]int{}
	for i, p := range provs {
		out[slices.Index(m.Nodes, p)] = i
	}
	return out
}

// take returns job's steps and forgets them.
func (t *traceLog) take(job string) []step {
	t.mu.Lock()
	defer t.mu.Unlock()
	evs := t.events[job]
	delete(t.events, job)
	delete(t.honest, job)
	return evs
}

// timeline writes a formation's steps in ms from the submit: S is the
// submitter, pN provider N, then the step and its kind or note; and before
// them a split by stage: the submitter's loop took the job (loop), first
// ask sent, the directory's candidates, first and last bid received, the
// award sent, last answer received, the outcome.
func timeline(evs []step, sub int, provIdx map[int]int) string {
	var t0 time.Time
	for _, e := range evs {
		if e.node == sub && e.step == "submitted" {
			t0 = e.at
			break
		}
	}
	if t0.IsZero() {
		return "(no trace)"
	}
	at := map[string]time.Duration{}
	first := func(k string, d time.Duration) {
		if _, ok := at[k]; !ok {
			at[k] = d
		}
	}
	var b strings.Builder
	for _, e := range evs {
		d := e.at.Sub(t0)
		who := "S"
		if e.node != sub {
			if i, ok := provIdx[e.node]; ok {
				who = fmt.Sprintf("p%d", i)
			} else {
				who = fmt.Sprintf("n%d", e.node)
			}
		}
		if e.node == sub {
			switch {
			case e.step == "ask":
				first("ask", d)
			case e.step == "candidates":
				first("dir", d)
			case e.step == "broadcast":
				first("topic", d)
			case e.step == "received" && e.kind == "bid":
				first("bid1", d)
				at["bidN"] = d
			case e.step == "awarding":
				first("award", d)
			case e.step == "received" && e.kind == "answer":
				at["answer"] = d
			case e.step == "ended":
				first("ended", d)
			}
		}
		kind := e.kind
		if len(kind) > 24 {
			kind = kind[:24]
		}
		fmt.Fprintf(&b, " %s:%s:%s:%d", who, strings.ReplaceAll(e.step, " ", "_"), strings.ReplaceAll(kind, " ", "_"), d.Milliseconds())
	}
	var split []string
	for _, k := range []string{"ask", "dir", "topic", "bid1", "bidN", "award", "answer", "ended"} {
		if d, ok := at[k]; ok {
			split = append(split, fmt.Sprintf("%s %d", k, d.Milliseconds()))
		}
	}
	return "[" + strings.Join(split, ", ") + "]" + b.String()
}

// lookupTimings adds up where lookups' time went (dht.FindTiming), for
// -scale.lookuponly.
type lookupTimings struct {
	n                                                     int
	total, first, last, end, offer, reqTime, open, read   time.Duration
	reqs, fetches, fetchDialed, dials, providers, queried int
}

func (t *lookupTimings) add(res dht.FindResult, took time.Duration, dials int64) {
	x := res.Timing
	t.n++
	t.total += took
	t.first += x.FirstProvider
	t.last += x.LastProvider
	t.end += x.LookupEnd
	t.offer += x.LastOffer
	t.reqs += x.Requests
	t.reqTime += x.RequestTime
	t.fetches += x.Fetches
	t.open += x.FetchOpen
	t.read += x.FetchRead
	t.fetchDialed += x.FetchDialed
	t.dials += int(dials)
	t.providers += res.Providers
	t.queried += res.Queried
}

func (t *lookupTimings) say(say func(string, ...any)) {
	if t.n == 0 {
		return
	}
	ms := func(d time.Duration, k int) float64 {
		return float64(d) / float64(max(k, 1)) / float64(time.Millisecond)
	}
	n := float64(t.n)
	say("lookup, mean: %.0f ms in all; first provider at %.0f ms, last new one at %.0f, lookup ended at %.0f, last offer at %.0f",
		ms(t.total, t.n), ms(t.first, t.n), ms(t.last, t.n), ms(t.end, t.n), ms(t.offer, t.n))
	say("lookup, mean: %.1f DHT requests of %.0f ms each; %.1f offer fetches: open %.0f ms + read %.0f ms, %.1f of them dialed; %.1f connections dialed a lookup; %.1f providers",
		float64(t.reqs)/n, ms(t.reqTime, t.reqs), float64(t.fetches)/n, ms(t.open, t.fetches), ms(t.read, t.fetches), float64(t.fetchDialed)/n, float64(t.dials)/n, float64(t.providers)/n)
}

// dialCounter counts the connections a host opens.
type dialCounter struct {
	n  atomic.Int64
	nd *node.Node
	nf *network.NotifyBundle
}

func countDials(nd *node.Node) *dialCounter {
	c := &dialCounter{nd: nd}
	c.nf = &network.NotifyBundle{ConnectedF: func(_ network.Network, cn network.Conn) {
		if cn.Stat().Direction == network.DirOutbound {
			c.n.Add(1)
		}
	}}
	nd.Host().Network().Notify(c.nf)
	return c
}

func (c *dialCounter) stop() { c.nd.Host().Network().StopNotify(c.nf) }

// measureLeave has the -scale.leave cheapest providers leave, closing or
// dying (-scale.leavedie), waits until the mesh has heard of it (99% of
// peers have the withdrawals; every connection to the dead is gone), and
// searches for 8 GPUs again.
func measureLeave(b testing.TB, ctx context.Context, m *meshtest.Mesh, provs, others []*node.Node, rng *rand.Rand, say func(string, ...any)) {
	const class = "H100-80GB"
	ask := func(nd *node.Node) uint64 { a, _ := nd.Ask(class); return a }
	cheap := slices.Clone(provs)
	slices.SortFunc(cheap, func(x, y *node.Node) int {
		return cmp.Or(cmp.Compare(ask(x), ask(y)), cmp.Compare(x.Host().ID(), y.Host().ID()))
	})
	leavers := cheap[:min(*scaleLeave, len(cheap)-2)]
	how := ifThen(*scaleLeaveDie, "die (cut off the network, nothing said)", "close")
	say("%d cheapest providers %s", len(leavers), how)
	gone := map[peer.ID]bool{}
	for _, nd := range leavers {
		gone[nd.Host().ID()] = true
	}
	var withdrawn, heardAt atomic.Int64
	var stops []func()
	need := int64(math.Ceil(0.99 * float64((len(m.Nodes)-len(leavers))*len(leavers))))
	start := time.Now()
	for _, nd := range m.Nodes {
		if gone[nd.Host().ID()] {
			continue
		}
		var mu sync.Mutex
		heard := map[peer.ID]bool{}
		stops = append(stops, nd.WatchPrices(func(t gossip.Tick) {
			if gone[t.Provider] && t.Available == 0 {
				mu.Lock()
				if !heard[t.Provider] {
					heard[t.Provider] = true
					if withdrawn.Add(1) == need {
						heardAt.Store(int64(time.Since(start)))
					}
				}
				mu.Unlock()
			}
		}))
	}
	var wg sync.WaitGroup
	for _, nd := range leavers {
		wg.Go(func() {
			if *scaleLeaveDie {
				_ = m.Isolate(slices.Index(m.Nodes, nd))
			} else {
				_ = nd.Close()
			}
		})
	}
	wg.Wait()
	say("left in %.0f ms", float64(time.Since(start))/float64(time.Millisecond))
	stayed := len(m.Nodes) - len(leavers)
	if *scaleLeaveDie {
		waitSaying(b, ctx, say, time.Minute, "every connection to the dead providers to close", func() (bool, string) {
			open := 0
			for _, nd := range m.Nodes {
				if gone[nd.Host().ID()] {
					continue
				}
				for p := range gone {
					if nd.Host().Network().Connectedness(p) == network.Connected {
						open++
					}
				}
			}
			return open == 0, fmt.Sprintf("%d open", open)
		})
	} else {
		waitSaying(b, ctx, say, time.Minute, "99% of peers to hear each withdrawal", func() (bool, string) {
			return withdrawn.Load() >= need, fmt.Sprintf("%d of %d", withdrawn.Load(), need)
		})
	}
	if !*scaleLeaveDie {
		say("99%% of peers' boards had the withdrawals %.0f ms after the providers began to close (%d of %d)", float64(heardAt.Load())/float64(time.Millisecond), withdrawn.Load(), stayed*len(leavers))
	}
	for _, s := range stops {
		s()
	}
	c := countSearches{gone: gone}
	for range 40 {
		c.search(b, ctx, rng, others)
	}
	c.say(say, " after the cheapest providers "+ifThen(*scaleLeaveDie, "died", "closed"))
}
