package meshtest_test

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

var (
	wanPeers = flag.Int("wan.peers", 20, "BenchmarkWANFormation: peers (one submitter, the rest providers of 8 H100s)")
	wanJobs  = flag.Int("wan.jobs", 10, "BenchmarkWANFormation: 8-GPU jobs formed one after another per iteration")
)

// BenchmarkWANFormation: -wan.peers peers (default 20: 19 providers of 8
// H100s, quoting prices, and a submitter) on simulated links of 0 ms (the
// baseline) and of 25 ms one way (50 ms round trips), in the same run.
// Each iteration forms -wan.jobs 8-GPU jobs (a process each) one after
// another from the submitter and reports, p50 and p95: submit (the API
// call) to formed (every member accepted), and submit to the first
// member running (its process started, as its provider says), in ms and,
// on the slow links, in round trips. Each job's negotiation steps are
// logged (node.LevelTrace) with -test.v.
//
// The links are mocknet's: every write arrives its latency later (the
// streams' protocol negotiation and every message pay it); a new
// connection is made at once and nothing is lost, where a real one costs
// its TCP, security and muxer handshakes (cmd/gpumesh's BenchmarkWANLinks
// runs real processes on netem links where the kernel has netem).
func BenchmarkWANFormation(b *testing.B) {
	spec, err := jobspec.Parse([]byte("name: wan\ncommand: [sleep, \"3600\"]\nresources: {gpus: 8, perNode: 8, gpu: {model: H100}}\nmaxPrice: 2.50\ntimeout: 1h\n"), "yaml")
	if err != nil {
		b.Fatal(err)
	}
	for _, link := range []struct {
		name   string
		oneWay time.Duration
	}{
		{"0ms", 0},
		{"50ms-rtt", 25 * time.Millisecond},
	} {
		b.Run(link.name, func(b *testing.B) {
			tl := &traceLog{honest: map[string]bool{}, events: map[string][]step{}}
			n := *wanPeers
			m := meshtest.Start(b, n, meshtest.Options{Seed: 14, Private: true, Providers: n - 1, Executors: []string{"process"},
				Price: "fixed:2.10", Latency: link.oneWay, Config: func(i int, c *node.Config) {
					c.Logger = slog.New(&traceHandler{log: tl, node: i})
				}})
			sub := m.Nodes[n-1]
			// A submitter that has been up a while: its price board holds
			// every provider's ask.
			testwait.For(b, time.Minute, "every provider's ask on the submitter's board", func() (bool, string) {
				q := sub.Prices("H100-80GB").Classes
				if len(q) == 0 {
					return false, "no quote"
				}
				return q[0].Providers == n-1, fmt.Sprintf("%d providers", q[0].Providers)
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			var formed, running []time.Duration
			var last time.Time
			b.ResetTimer()
			for range b.N {
				for range *wanJobs {
					// At most the rate a peer keeps its own requests
					// under (gossip.RFBLimits.Pace: 4 a second), so no
					// job waits for its pacer.
					if d := time.Until(last.Add(wanSpacing)); d > 0 {
						b.StopTimer()
						t := time.NewTimer(d)
						select {
						case <-t.C:
						case <-ctx.Done():
							b.Fatal(ctx.Err())
						}
						b.StartTimer()
					}
					last = time.Now()
					f, r, id := formAndRun(b, ctx, m, sub, spec)
					formed, running = append(formed, f), append(running, r)
					b.Logf("formed %v, running %v; steps (peer:step:kind:ms): %s", f.Round(time.Millisecond), r.Round(time.Millisecond), tl.steps(id))
				}
			}
			b.StopTimer()
			slices.Sort(formed)
			slices.Sort(running)
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
			for _, x := range []struct {
				name string
				d    []time.Duration
			}{{"formed", formed}, {"running", running}} {
				for _, p := range []int{50, 95} {
					v := pct(x.d, p)
					b.ReportMetric(ms(v), fmt.Sprintf("%s-p%d-ms", x.name, p))
					if link.oneWay > 0 {
						b.ReportMetric(float64(v)/float64(2*link.oneWay), fmt.Sprintf("%s-p%d-rtts", x.name, p))
					}
				}
			}
		})
	}
}

// wanSpacing is the least time between two submissions of the benchmark.
const wanSpacing = 300 * time.Millisecond

// pct is the p-th percentile of sorted durations.
func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(max((len(d)*p+99)/100-1, 0), len(d)-1)]
}

// formAndRun submits the job from sub and returns how long after the call
// it formed and its first member ran, and the job's ID; then it cancels
// the job and waits until every provider has its GPUs free again.
func formAndRun(b *testing.B, ctx context.Context, m *meshtest.Mesh, sub *node.Node, spec jobspec.Spec) (formed, running time.Duration, id string) {
	b.Helper()
	start := time.Now()
	job, err := sub.SubmitJob(ctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	// Checked every millisecond (testwait backs off to 50 ms, too coarse
	// to time a step of a few round trips), within ctx's deadline.
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for formed == 0 || running == 0 {
		select {
		case <-ctx.Done():
			j, _ := sub.Job(job.ID)
			b.Fatalf("job %s: %s %s after %v", job.ID, j.State, j.Reason, time.Since(start))
		case <-tick.C:
		}
		j, _ := sub.Job(job.ID)
		switch j.State {
		case node.JobNegotiating:
			continue
		case node.JobFormed, node.JobRunning:
		default:
			b.Fatalf("job %s %s: %s", job.ID, j.State, j.Reason)
		}
		if formed == 0 {
			formed = time.Since(start)
		}
		for _, r := range j.Runs {
			if r.State == node.MemberRunning && !r.Started.IsZero() && (running == 0 || r.Started.Sub(start) < running) {
				running = max(r.Started.Sub(start), formed)
			}
		}
	}
	b.StopTimer()
	defer b.StartTimer()
	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		b.Fatal(err)
	}
	testwait.Until(b, ctx, "every provider's GPUs free again", func() (bool, string) {
		for i, p := range m.Nodes[:len(m.Nodes)-1] {
			if free, used := p.FreeGPUs()["H100-80GB"], len(p.GPUsInUse()); free != 8 || used != 0 {
				return false, fmt.Sprintf("provider %d: %d of 8 free, %d in use", i, free, used)
			}
		}
		return true, ""
	})
	return formed, running, job.ID
}

// steps is every negotiation step of job, as peer:step:kind:ms from its
// submission, and forgets them.
func (t *traceLog) steps(job string) string {
	t.mu.Lock()
	evs := t.events[job]
	delete(t.events, job)
	delete(t.honest, job)
	t.mu.Unlock()
	var t0 time.Time
	for _, e := range evs {
		if e.step == "submitted" {
			t0 = e.at
			break
		}
	}
	var s strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&s, " %d:%s:%s:%d", e.node, e.step, e.kind, e.at.Sub(t0).Milliseconds())
	}
	return s.String()
}
