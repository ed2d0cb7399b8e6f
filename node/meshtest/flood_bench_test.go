package meshtest_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	pubsub "github.com/libp2p/go-libp2p-pubsub"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// BenchmarkFormationUnderFlood measures how long an honest 8-GPU job takes
// to form (submit to formed) on a 50-peer mesh — ten providers of 8 H100s
// in two zones, as in node's BenchmarkClusterFormation — while strangers
// flood the request-for-bids topic with 10,000 well-formed requests for
// the same GPUs: from one identity, and from 100 identities (100 each).
// Each flooder is a libp2p host with a stock GossipSub router on the same
// simulated network, connected to 4 of the mesh's peers, publishing as
// fast as its router takes them. Each iteration starts a fresh flood and
// forms jobs one after another (each cancelled and its GPUs seen free,
// outside the timing) until the flood is sent and at least floodJobs have
// been tried; the no-flood baseline runs first on the same mesh. It
// reports formation p50/p99 of the jobs that formed and p99 over the
// baseline's, the jobs that failed to form, the flood's sending time, the
// bids providers sent the flooders per flood, and how long the process's
// goroutines waited to run once runnable (the Go scheduler's latency,
// p99 and p999 as the upper bounds of runtime/metrics' buckets). The direct- floods send
// the same requests to the providers themselves (RFBProtocol, round
// robin), as a flooder that reads the directory would.
func BenchmarkFormationUnderFlood(b *testing.B) {
	tl := &traceLog{honest: map[string]bool{}, events: map[string][]step{}}
	m := meshtest.Start(b, 50, meshtest.Options{Seed: 50, Private: true, Providers: 10, Executors: []string{"process"}, Config: floodMeshConfig(tl)})
	var flooders atomic.Int64 // identities made so far, for fresh keys and addresses
	floodCases(b, m, tl, func(b *testing.B, ctx context.Context, identities, _ int, direct bool) floodRun {
		f := newFlood(b, ctx, m, identities, &flooders)
		f.direct = direct
		return f
	})
}

// BenchmarkFormationUnderFloodFromAnotherProcess is
// BenchmarkFormationUnderFlood with the flood sent by another process
// (processFlood): the same 50 peers, on loopback TCP rather than the
// simulated network, and the same flooders, each a stock libp2p host of
// its own in a process at the lowest CPU priority, so that their routers
// and signing do not take the CPU of the peers they attack (in one
// process they took about 30% of it). Besides the same metrics it
// reports the flood process's CPU time a flood.
func BenchmarkFormationUnderFloodFromAnotherProcess(b *testing.B) {
	tl := &traceLog{honest: map[string]bool{}, events: map[string][]step{}}
	m := meshtest.Start(b, 50, meshtest.Options{Seed: 50, Private: true, TCP: true, Providers: 10, Executors: []string{"process"}, Config: floodMeshConfig(tl)})
	var flooders atomic.Int64
	floodCases(b, m, tl, func(b *testing.B, ctx context.Context, identities, per int, direct bool) floodRun {
		return newProcessFlood(b, ctx, m, 50, 10, identities, per, direct, &flooders)
	})
}

// floodStderr is what a flood process wrote on stderr, for a failure.
func floodStderr(f floodRun) string {
	if pf, ok := f.(*processFlood); ok {
		return fmt.Sprintf(" (flood process exit %d; its stderr: %s)", pf.cmd.ProcessState.ExitCode(), pf.stderr)
	}
	return ""
}

// floodMeshConfig is the flood benchmarks' mesh: ten providers in two
// zones at prices 1.50 to 2.40, every peer's negotiation steps traced.
func floodMeshConfig(tl *traceLog) func(int, *node.Config) {
	return func(i int, c *node.Config) {
		c.Logger = slog.New(&traceHandler{log: tl, node: i})
		if i < 10 {
			c.Price = fmt.Sprintf("fixed:%d.%d0", 1+(5+i)/10, (5+i)%10)
			c.Region = []string{"eu-west/ams1", "us-east/nyc2"}[i%2]
		}
	}
}

// floodRun is one flood of a benchmark iteration.
type floodRun interface {
	// start sends the flood, per requests from each identity; the
	// channel is closed once all are sent.
	start(ctx context.Context, per int) <-chan struct{}
	// close ends the flood: the bids the providers sent the flooders,
	// and how long the flood took to send.
	close() (bids int64, took time.Duration)
}

// floodCases runs the flood benchmarks' cases on m: no flood (the
// baseline, first), then each flood that newFlood makes (identities
// flooders of per requests each; direct: to the providers, not on the
// topic).
func floodCases(b *testing.B, m *meshtest.Mesh, tl *traceLog, newFlood func(b *testing.B, ctx context.Context, identities, per int, direct bool) floodRun) {
	spec, err := jobspec.Parse([]byte("name: honest\ncommand: [sleep, \"3600\"]\nresources: {gpus: 8, gpu: {model: H100}}\nmaxPrice: 2.50\ntimeout: 1h\n"), "yaml")
	if err != nil {
		b.Fatal(err)
	}
	var baseP99 float64
	for _, fl := range []struct {
		name            string
		identities, per int
		direct          bool
	}{
		{"none", 0, 0, false},
		{"one-identity", 1, 10_000, false},
		{"100-identities", 100, 100, false},
		{"direct-one-identity", 1, 10_000, true},
		{"direct-100-identities", 100, 100, true},
	} {
		b.Run("flood="+fl.name, func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			var lat []time.Duration
			var splits []split
			checked0 := validations(m)
			cpu0, wall0, machine0 := cpuTime(), time.Now(), machineBusy()
			var sendTime, floodCPU time.Duration
			var bids int64
			failed := 0
			sched0 := schedLatencies()
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				var f floodRun
				if fl.identities > 0 {
					f = newFlood(b, ctx, fl.identities, fl.per, fl.direct)
				}
				b.StartTimer()
				var sent <-chan struct{}
				if f != nil {
					sent = f.start(ctx, fl.per)
				}
				for i := 0; ; i++ {
					select {
					case <-sent:
						sent = nil
					default:
					}
					if sent == nil && i >= floodJobs {
						break
					}
					start := time.Now()
					took, id, formed := formOne(b, ctx, m, m.Nodes[10+i%40], spec)
					sp := tl.split(id, 10+i%40, start, start.Add(took))
					sp.took = took
					if took > 500*time.Millisecond {
						b.Logf("a slow job's steps (peer:step:kind:ms from submit):%s", sp.steps)
					}
					if !formed {
						failed++
						b.Logf("the failed job's steps: %s", sp)
						continue
					}
					lat = append(lat, took)
					splits = append(splits, sp)
				}
				b.StopTimer()
				if f != nil {
					n, took := f.close()
					if took <= 0 {
						b.Fatalf("the %s flood was not sent to the end%s", fl.name, floodStderr(f))
					}
					sendTime += took
					bids += n
					if pf, ok := f.(*processFlood); ok {
						floodCPU += pf.cpu
					}
				}
				b.StartTimer()
			}
			b.StopTimer()
			slices.Sort(lat)
			q := func(p int) float64 {
				i := min(max((len(lat)*p+99)/100-1, 0), len(lat)-1)
				return float64(lat[i]) / float64(time.Millisecond)
			}
			b.ReportMetric(q(50), "p50-ms")
			b.ReportMetric(q(99), "p99-ms")
			b.ReportMetric(float64(len(lat)), "jobs")
			b.ReportMetric(float64(failed), "failed-jobs")
			cpu, wall := cpuTime()-cpu0, time.Since(wall0)
			b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cpu-cores-busy")
			// What the rest of the machine took meanwhile (other
			// processes than this one and its flood process): on a
			// shared machine, the CPU the mesh did not get.
			if machine := machineBusy() - machine0; machine > 0 {
				b.ReportMetric(max(machine-cpu-floodCPU, 0).Seconds()/wall.Seconds(), "others-cores-busy")
			}
			checked := validations(m)
			var provs, others uint64
			for i := range checked {
				if i < 10 {
					provs += checked[i] - checked0[i]
				} else {
					others += checked[i] - checked0[i]
				}
			}
			b.ReportMetric(float64(provs)/10/float64(b.N), "topic-checks/provider")
			b.ReportMetric(float64(others)/40/float64(b.N), "topic-checks/other-peer")
			reportSplits(b, splits)
			// How long goroutines of the whole process (every peer's, and
			// the flooders' when they share it) waited to run once
			// runnable: a tail that no queue of a peer explains shows here.
			p99, p999 := schedQuantiles(sched0, schedLatencies())
			b.ReportMetric(p99, "sched-p99-ms")
			b.ReportMetric(p999, "sched-p999-ms")
			if len(lat) == 0 {
				b.Fatalf("no honest job formed (%d failed)", failed)
			}
			if fl.identities == 0 {
				baseP99 = q(99)
				return
			}
			if baseP99 > 0 {
				b.ReportMetric(q(99)/baseP99, "p99/no-flood")
			}
			b.ReportMetric(sendTime.Seconds()/float64(b.N), "flood-send-s")
			b.ReportMetric(float64(bids)/float64(b.N), "bids-to-flooders")
			if floodCPU > 0 {
				b.ReportMetric(floodCPU.Seconds()/float64(b.N), "flood-process-cpu-s")
			}
		})
	}
}

// floodJobs is how many honest jobs an iteration forms at least.
const floodJobs = 10

// formOne submits the job from nd, waits until it has left negotiation,
// and returns how long that took, its ID and whether it formed; then it
// cancels the job and waits until every provider has its GPUs free again.
func formOne(b *testing.B, ctx context.Context, m *meshtest.Mesh, nd *node.Node, spec jobspec.Spec) (time.Duration, string, bool) {
	b.Helper()
	start := time.Now()
	job, err := nd.SubmitJob(ctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	var j node.Job
	testwait.Until(b, ctx, "the honest job to leave negotiation", func() (bool, string) {
		j, _ = nd.Job(job.ID)
		return j.State != node.JobNegotiating, string(j.State)
	})
	took := time.Since(start)
	formed := j.State == node.JobFormed || j.State == node.JobRunning
	if !formed {
		b.Logf("an honest job %s after %v: %s", j.State, took.Round(time.Millisecond), j.Reason)
	}
	b.StopTimer()
	defer b.StartTimer()
	if formed {
		if _, err := nd.CancelJob(ctx, job.ID); err != nil {
			b.Fatal(err)
		}
	}
	testwait.Until(b, ctx, "every provider's GPUs free again", func() (bool, string) {
		for i, p := range m.Nodes[:10] {
			if free, used := p.FreeGPUs()["H100-80GB"], len(p.GPUsInUse()); free != 8 || used != 0 {
				return false, fmt.Sprintf("provider %d: %d of 8 free, %d in use", i, free, used)
			}
		}
		return true, ""
	})
	return took, job.ID, formed
}

// flood is a set of hostile identities on the mesh's network, each a
// libp2p host with a stock GossipSub router on the request-for-bids topic.
type flood struct {
	hosts  []host.Host
	keys   []crypto.PrivKey
	topics []*pubsub.Topic
	direct bool      // send to providers on RFBProtocol, not on the topic
	provs  []peer.ID // the mesh's providers
	cancel context.CancelFunc
	bids   atomic.Int64 // bids the providers sent the flooders
	took   time.Duration
}

// newFlood adds n flooders to m's network, each linked to every peer and
// connected to 4 of them, and waits until each has a topic peer.
func newFlood(b *testing.B, ctx context.Context, m *meshtest.Mesh, n int, made *atomic.Int64) *flood {
	b.Helper()
	fctx, cancel := context.WithCancel(ctx)
	f := &flood{cancel: cancel}
	for _, nd := range m.Nodes[:10] {
		f.provs = append(f.provs, nd.Host().ID())
	}
	topic := gossip.TopicName(meshtest.SwarmOf(50).ID(), gossip.RFBTopic) // the mesh's swarm (Seed 50)
	// The flooders' goroutines (their routers, their sending) carry the
	// label peer=flooder in a CPU profile: on a real network their CPU is
	// their own, here it is the mesh's.
	pprof.Do(fctx, flooderLabels, func(fctx context.Context) {
		for range n {
			k := made.Add(1)
			sk, _, err := crypto.GenerateEd25519Key(rand.Reader)
			if err != nil {
				b.Fatal(err)
			}
			// One address each, in the benchmarking range (198.18.0.0/15):
			// distinct IPs, as a flood from many machines would have.
			addr := ma.StringCast(fmt.Sprintf("/ip4/198.%d.%d.%d/tcp/4021", 18+(k>>16)&1, (k>>8)&0xff, k&0xff))
			h, err := m.Net.AddPeer(sk, addr)
			if err != nil {
				b.Fatal(err)
			}
			h.SetStreamHandler(node.NegotiateProtocol, func(s network.Stream) {
				f.bids.Add(1)
				_, _ = io.Copy(io.Discard, io.LimitReader(s, 64<<10))
				s.Close()
			})
			ps, err := pubsub.NewGossipSub(fctx, h, pubsub.WithFloodPublish(true), pubsub.WithPeerOutboundQueueSize(16384))
			if err != nil {
				b.Fatal(err)
			}
			t, err := ps.Join(topic)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := t.Subscribe(); err != nil {
				b.Fatal(err)
			}
			for _, nd := range m.Nodes {
				if _, err := m.Net.LinkPeers(h.ID(), nd.Host().ID()); err != nil {
					b.Fatal(err)
				}
			}
			for _, nd := range m.Nodes[:10] {
				h.Peerstore().AddAddrs(nd.Host().ID(), nd.Host().Addrs(), time.Hour)
			}
			for j := range 4 {
				nd := m.Nodes[(int(k)*7+j*13)%len(m.Nodes)]
				if err := h.Connect(ctx, peer.AddrInfo{ID: nd.Host().ID(), Addrs: nd.Host().Addrs()}); err != nil {
					b.Fatal(err)
				}
			}
			f.hosts, f.keys, f.topics = append(f.hosts, h), append(f.keys, sk), append(f.topics, t)
		}
	})
	testwait.Until(b, ctx, "every flooder to have a peer on the request topic", func() (bool, string) {
		for i, t := range f.topics {
			if len(t.ListPeers()) == 0 {
				return false, fmt.Sprintf("flooder %d has none", i)
			}
		}
		return true, ""
	})
	return f
}

// start has every flooder publish per requests as fast as its router
// takes them; the channel is closed once all are sent.
func (f *flood) start(ctx context.Context, per int) <-chan struct{} {
	done := make(chan struct{})
	begin := time.Now()
	var wg sync.WaitGroup
	for i, t := range f.topics {
		id := f.hosts[i].ID()
		wg.Add(1)
		go func() {
			defer wg.Done()
			pprof.SetGoroutineLabels(pprof.WithLabels(ctx, flooderLabels))
			for n := range per {
				rfb := gossip.RequestForBids{Submitter: id, Deadline: time.Now().Add(5 * time.Second).UnixMilli(), Needs: gossip.Needs{
					GPUs: 8, Model: "H100", Placement: gossip.Spread, MaxPrice: 2_500_000, Unit: "USDC:6", LeaseSeconds: 3600}}
				_, _ = rand.Read(rfb.Job[:8])
				rfb.Job[8], rfb.Job[9] = byte(n>>8), byte(n)
				if f.direct {
					data, err := node.SealNegotiation(node.Identity{Key: f.keys[i], PeerID: id}, &rfb)
					if err != nil {
						panic(err) // a request made here always encodes
					}
					if s, err := f.hosts[i].NewStream(ctx, f.provs[n%len(f.provs)], node.RFBProtocol); err == nil {
						_, _ = s.Write(data)
						_ = s.Close()
					} else if ctx.Err() != nil {
						return
					}
					continue
				}
				data, err := gossip.MarshalNegotiation(&rfb)
				if err != nil {
					panic(err) // a request made here always encodes
				}
				if t.Publish(ctx, data) != nil {
					return
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		f.took = time.Since(begin)
		close(done)
	}()
	return done
}

// flooderLabels mark the flooders' goroutines in a CPU profile.
var flooderLabels = pprof.Labels("peer", "flooder")

func (f *flood) close() (int64, time.Duration) {
	f.cancel()
	for _, h := range f.hosts {
		h.Close()
	}
	return f.bids.Load(), f.took
}

// traceLog keeps the negotiation steps (node.LevelTrace) of the honest
// jobs: those some peer stored or submitted; a flooder's requests are never
// submitted on a mesh peer, so their steps are not kept.
type traceLog struct {
	mu     sync.Mutex
	honest map[string]bool
	events map[string][]step // by job
}

// step is one negotiation step of a job on a mesh peer.
type step struct {
	node       int
	step, kind string
	at         time.Time
}

// traceHandler hands one mesh peer's trace records to the traceLog.
type traceHandler struct {
	log  *traceLog
	node int
}

func (h *traceHandler) Enabled(_ context.Context, l slog.Level) bool { return l == node.LevelTrace }

func (h *traceHandler) Handle(_ context.Context, r slog.Record) error {
	st := step{node: h.node, at: r.Time}
	var job string
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "job":
			job = a.Value.String()
		case "step":
			st.step = a.Value.String()
		case "kind":
			st.kind = a.Value.String()
		}
		return true
	})
	h.log.mu.Lock()
	defer h.log.mu.Unlock()
	if st.step == "stored" || st.step == "submitted" {
		h.log.honest[job] = true
	}
	if h.log.honest[job] {
		h.log.events[job] = append(h.log.events[job], st)
	}
	return nil
}

func (h *traceHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *traceHandler) WithGroup(string) slog.Handler      { return h }

// split is an honest job's formation split by step, each from the one
// before: the SubmitJob call to its record on disk (store), to its
// negotiation handed to its submitter's loop (hand: the price board
// read), to the loop taking it (enter), to its direct requests past the
// pacer (pace, part of send), to the first request sent (send), to the
// last request (of those bid on before the award) delivered to a
// provider, the most it waited in a provider's queue, to the last bid in
// before the award, to the award sent, to the outcome (end); then to the
// outcome's record begun (rec: a goroutine's start), to the formed record
// on disk (write), and to the benchmark seeing it (seen: its polling).
type split struct {
	steps                                                                             string // every step, for a slow job
	took                                                                              time.Duration
	loop                                                                              time.Duration // submitted to ended, on the submitter's loop
	store, hand, enter, pace, send, deliver, queue, bid, award, end, rec, write, seen time.Duration
}

var splitNames = []string{"store", "hand", "enter", "pace", "send", "deliver", "queue", "bid", "award", "end", "rec", "write", "seen"}

// outside is the part of took that the submitter's loop did not see: from
// the SubmitJob call until its loop took the negotiation, and from its
// outcome until the job's record showed it (the job store's write).
func (s split) outside() time.Duration {
	if s.loop == 0 {
		return 0
	}
	return s.took - s.loop
}

func (s split) parts() []time.Duration {
	return []time.Duration{s.store, s.hand, s.enter, s.pace, s.send, s.deliver, s.queue, s.bid, s.award, s.end, s.rec, s.write, s.seen}
}

func (s split) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "took %v (outside the loop's steps %v):", s.took.Round(time.Millisecond), s.outside().Round(time.Millisecond))
	for i, d := range s.parts() {
		fmt.Fprintf(&b, " %s %v", splitNames[i], d.Round(100*time.Microsecond))
	}
	return b.String()
}

// split reads job's steps (submitted on mesh peer sub, whose SubmitJob
// was called at start, and seen formed at seen) and forgets them.
func (t *traceLog) split(job string, sub int, start, seen time.Time) split {
	t.mu.Lock()
	evs := t.events[job]
	delete(t.events, job)
	delete(t.honest, job)
	t.mu.Unlock()
	var stored, handed, submitted, paced, sent, award, end, recording, recorded time.Time
	queued := map[int]time.Time{}
	var lastQueued, lastBid time.Time
	var queueWait time.Duration
	first := func(t *time.Time, at time.Time) {
		if t.IsZero() {
			*t = at
		}
	}
	for _, e := range evs {
		if e.node != sub {
			continue
		}
		switch {
		case e.step == "stored":
			first(&stored, e.at)
		case e.step == "handed":
			first(&handed, e.at)
		case e.step == "submitted":
			first(&submitted, e.at)
		case e.step == "paced":
			first(&paced, e.at)
		case e.step == "sent" && e.kind == "request":
			first(&sent, e.at)
		case e.step == "sent" && e.kind == "award":
			first(&award, e.at)
		case e.step == "ended":
			first(&end, e.at)
		case e.step == "recording":
			first(&recording, e.at)
		case e.step == "recorded":
			first(&recorded, e.at)
		}
	}
	for _, e := range evs {
		if !award.IsZero() && e.at.After(award) {
			continue
		}
		switch {
		case e.node != sub && e.step == "queued":
			queued[e.node] = e.at
			if e.at.After(lastQueued) {
				lastQueued = e.at
			}
		case e.node != sub && e.step == "answered":
			if q, ok := queued[e.node]; ok {
				queueWait = max(queueWait, e.at.Sub(q))
			}
		case e.node == sub && e.step == "received" && e.kind == "bid":
			if e.at.After(lastBid) {
				lastBid = e.at
			}
		}
	}
	d := func(a, b time.Time) time.Duration {
		if a.IsZero() || b.IsZero() {
			return 0
		}
		return b.Sub(a)
	}
	var all strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&all, " %d:%s:%s:%d", e.node, e.step, e.kind, e.at.Sub(start).Milliseconds())
	}
	return split{steps: all.String(), loop: d(submitted, end), store: d(start, stored), hand: d(stored, handed), enter: d(handed, submitted), pace: d(submitted, paced),
		send: d(submitted, sent), deliver: d(sent, lastQueued), queue: queueWait, bid: d(lastQueued, lastBid), award: d(lastBid, award),
		end: d(award, end), rec: d(end, recording), write: d(recording, recorded), seen: d(recorded, seen)}
}

// reportSplits reports the p99 of each step of the jobs' formation, and
// logs the slowest job's split.
func reportSplits(b *testing.B, splits []split) {
	if len(splits) == 0 {
		return
	}
	slices.SortFunc(splits, func(x, y split) int { return int(x.took - y.took) })
	i := min(max((len(splits)*99+99)/100-1, 0), len(splits)-1)
	for k, name := range splitNames {
		ds := make([]time.Duration, len(splits))
		for j, s := range splits {
			ds[j] = s.parts()[k]
		}
		slices.Sort(ds)
		b.ReportMetric(float64(ds[i])/float64(time.Millisecond), name+"-p99-ms")
	}
	out := make([]time.Duration, len(splits))
	for j, s := range splits {
		out[j] = s.outside()
	}
	slices.Sort(out)
	b.ReportMetric(float64(out[i])/float64(time.Millisecond), "outside-p99-ms")
	b.Logf("slowest: %s", splits[len(splits)-1])
	b.Logf("p99 job: %s", splits[i])
}

// validations is each mesh peer's count of the topic's requests validated.
func validations(m *meshtest.Mesh) []uint64 {
	out := make([]uint64, len(m.Nodes))
	for i, nd := range m.Nodes {
		out[i] = nd.RFBValidations()
	}
	return out
}

// cpuTime is the CPU time this process (every peer, the flooders too) has
// used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineBusy is the CPU time the whole machine has been busy (not idle,
// not waiting for I/O) since boot, from /proc/stat; 0 where it cannot be
// read.
func machineBusy() time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0
		}
		if i != 3 && i != 4 && i < 8 { // idle, iowait; guest time is counted in user already
			busy += n
		}
	}
	return time.Duration(busy) * time.Second / 100 // USER_HZ is 100 on Linux
}

// schedLatencies is the process's scheduler latencies so far: how long
// goroutines waited to run once runnable.
func schedLatencies() *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return &metrics.Float64Histogram{}
	}
	return s[0].Value.Float64Histogram()
}

// schedQuantiles is the p99 and p999, in ms, of the latencies between two
// samples: the upper bound of the bucket each falls in.
func schedQuantiles(before, after *metrics.Float64Histogram) (p99, p999 float64) {
	counts := slices.Clone(after.Counts)
	var total uint64
	for i := range counts {
		if i < len(before.Counts) {
			counts[i] -= before.Counts[i]
		}
		total += counts[i]
	}
	q := func(p float64) float64 {
		var c uint64
		for i, n := range counts {
			c += n
			if float64(c) >= p*float64(total) {
				return after.Buckets[i+1] * 1e3
			}
		}
		return 0
	}
	if total == 0 {
		return 0, 0
	}
	return q(.99), q(.999)
}
