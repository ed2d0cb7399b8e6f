package node_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/jobstore"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// h100s are the options of a mesh whose first `providers` peers offer 8x
// H100-80GB each at 2.10 USDC/GPU-h and run jobs with the process executor
// (in a private swarm, which that executor needs);
// the rest have no GPUs. (Heartbeats keep their default: under the race
// detector on two busy cores a few hundred milliseconds of silence happens.)
func h100s(seed uint64, providers int) meshtest.Options {
	return meshtest.Options{Seed: seed, Providers: providers, Price: "fixed:2.10", Executors: []string{"process"}, Private: true}
}

// clusterMesh starts n peers; the first four are h100s (jobs run sleep
// 3600: a formed cluster holds its GPUs until cancelled), two in
// eu-west/ams1 and two in us-east/nyc2.
func clusterMesh(t *testing.T, n int) *meshtest.Mesh {
	o := h100s(9, 4)
	o.Config = func(i int, c *node.Config) {
		if i < 4 {
			c.Region = []string{"eu-west/ams1", "us-east/nyc2"}[i/2]
		}
	}
	return meshtest.Start(t, n, o)
}

func jobSpec(t testing.TB, gpus int, extra string) jobspec.Spec {
	t.Helper()
	price := "2.50"
	if p, ok := strings.CutPrefix(extra, "maxPrice: "); ok {
		price, extra = p, ""
	}
	y := fmt.Sprintf(`name: test-job
command: [sleep, "3600"]
resources:
  gpus: %d
  gpu: {model: H100}
maxPrice: %s
timeout: 1h
%s`, gpus, price, extra)
	s, err := jobspec.Parse([]byte(y), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// submit submits a job and waits for it to leave negotiation.
func submit(t testing.TB, ctx context.Context, nd *node.Node, spec jobspec.Spec) node.Job {
	t.Helper()
	job, err := nd.SubmitJob(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	return waitJob(t, ctx, nd, job.ID, "to leave negotiation", func(j node.Job) bool { return j.State != node.JobNegotiating })
}

// waitJob waits on nd's job-change notification until job id satisfies ok,
// and returns it; it fails t with the job's last state when ctx ends first.
func waitJob(t testing.TB, ctx context.Context, nd *node.Node, id, what string, ok func(node.Job) bool) node.Job {
	t.Helper()
	for {
		moved := nd.JobMoved() // before the read: no change is missed
		j, found := nd.Job(id)
		if found && ok(j) {
			return j
		}
		select {
		case <-moved:
		case <-ctx.Done():
			t.Fatalf("gave up waiting for job %s %s: %v; last seen: %s (%s)", id, what, ctx.Err(), j.State, j.Reason)
		}
	}
}

// waitEnded waits until job id is done, failed or cancelled.
func waitEnded(t testing.TB, ctx context.Context, nd *node.Node, id string) node.Job {
	t.Helper()
	return waitJob(t, ctx, nd, id, "to end", func(j node.Job) bool {
		return j.State == node.JobDone || j.State == node.JobFailed || j.State == node.JobCancelled
	})
}

// waitFree waits until every provider has its 8 H100s free and none in use.
func waitFree(t testing.TB, ctx context.Context, providers []*node.Node) {
	t.Helper()
	testwait.Until(t, ctx, "every provider's GPUs free again", func() (bool, string) {
		for i, p := range providers {
			if free, used := p.FreeGPUs()[h100], len(p.GPUsInUse()); free != 8 || used != 0 {
				return false, fmt.Sprintf("provider %d: %d of 8 free, %d in use", i, free, used)
			}
		}
		return true, ""
	})
}

// holds reports whether a job's cluster formed and holds its GPUs: formed,
// or running (the members run sleep).
func holds(j node.Job) bool { return j.State == node.JobFormed || j.State == node.JobRunning }

func gpusOf(j node.Job) (total int, zones map[string]bool) {
	zones = map[string]bool{}
	for _, m := range j.Members {
		total += int(m.GPUs)
		zones[m.Zone] = true
	}
	return total, zones
}

func TestClustersFormFromAnyPeer(t *testing.T) {
	m := clusterMesh(t, 12)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	submitter := m.Nodes[11] // no GPUs

	for _, tc := range []struct {
		name  string
		gpus  int
		extra string
		zones int // at most
	}{
		{"one GPU", 1, "", 1},
		{"eight GPUs", 8, "", 1},
		{"sixteen colocated", 16, "placement: colocated", 1},
		{"thirty-two spread", 32, "placement: spread", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := submit(t, ctx, submitter, jobSpec(t, tc.gpus, tc.extra))
			if !holds(j) {
				t.Fatalf("job %s: %s (%s), want formed", j.ID, j.State, j.Reason)
			}
			total, zones := gpusOf(j)
			if total != tc.gpus || len(zones) > tc.zones {
				t.Fatalf("cluster of %d GPUs over %d zones %v, want %d over at most %d", total, len(zones), zones, tc.gpus, tc.zones)
			}
			for _, mb := range j.Members {
				if mb.Price != 2_100_000 {
					t.Fatalf("member %s at %d, want the ask 2.10", mb.Provider, mb.Price)
				}
			}
			// Cancelling releases every member's GPUs.
			if _, err := submitter.CancelJob(ctx, j.ID); err != nil {
				t.Fatal(err)
			}
			waitFree(t, ctx, m.Nodes[:4])
		})
	}
}

func TestImpossibleClustersFailFastWithTheReason(t *testing.T) {
	m := clusterMesh(t, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	submitter := m.Nodes[9]
	for _, tc := range []struct {
		gpus  int
		extra string
		want  string
	}{
		{64, "", "need 64"},
		// Providers asking more than the max do not bid at all; the
		// directory says what there is and what it costs.
		{8, "maxPrice: 2.00", "the cheapest at 2.10 USDC/GPU-h, above the max 2.00"},
		{24, "placement: colocated", "colocation impossible"},
	} {
		spec := jobSpec(t, tc.gpus, "")
		if tc.extra != "" {
			spec = jobSpec(t, tc.gpus, tc.extra)
		}
		start := time.Now()
		j := submit(t, ctx, submitter, spec)
		t.Logf("%d GPUs %q: %s", tc.gpus, tc.extra, j.Reason)
		if j.State != node.JobFailed || !strings.Contains(j.Reason, tc.want) {
			t.Fatalf("%d GPUs %q: %s (%s), want failed saying %q", tc.gpus, tc.extra, j.State, j.Reason, tc.want)
		}
		// At most the negotiation window (5 s) when no bid comes; at once
		// when bids show the cluster cannot form.
		if took := time.Since(start); took > 7*time.Second {
			t.Fatalf("failing took %v", took)
		}
	}
}

func TestRacingSubmittersNeverShareAGPU(t *testing.T) {
	m := clusterMesh(t, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Three submitters each want 24 of the 32 GPUs: at most one can have them.
	var jobs []string
	subs := []*node.Node{m.Nodes[7], m.Nodes[8], m.Nodes[9]}
	for _, s := range subs {
		j, err := s.SubmitJob(ctx, jobSpec(t, 24, ""))
		if err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, j.ID)
	}
	held := map[string]int{}
	formed := 0
	for i, s := range subs {
		j := waitJob(t, ctx, s, jobs[i], "to end its race", func(j node.Job) bool { return j.State != node.JobNegotiating })
		if holds(j) {
			formed++
			for _, mb := range j.Members {
				held[mb.Provider.String()] += int(mb.GPUs)
			}
		}
	}
	if formed != 1 {
		t.Fatalf("%d of 3 racing jobs formed, want exactly 1", formed)
	}
	for p, g := range held {
		if g > 8 {
			t.Fatalf("provider %s leased %d GPUs of 8", p, g)
		}
	}
}

func TestJobsSurviveARestartOfTheSubmitter(t *testing.T) {
	dir, err := os.MkdirTemp("", "gm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	start := func() *node.Node {
		n, err := node.New(node.Config{DataDir: dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, NoMDNS: true, NoNAT: true, GPUs: "none"})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := start()
	// Alone, nobody bids: the job fails at its deadline, and is on disk at once.
	job, err := n.SubmitJob(ctx, jobSpec(t, 8, ""))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := jobstore.Open(filepath.Join(dir, "jobs.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := st.Get(job.ID); !ok || err != nil {
		t.Fatalf("job acknowledged but not in the job store: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	n = start()
	defer n.Close()
	j, ok := n.Job(job.ID)
	if !ok {
		t.Fatalf("job %s lost in the restart", job.ID)
	}
	if j.State != node.JobFailed || !strings.Contains(j.Reason, "stopped while negotiating") || j.Spec.Name != "test-job" {
		t.Fatalf("after restart: %+v, want failed because the peer stopped", j)
	}
	if got := n.Jobs(); len(got) != 1 {
		t.Fatalf("%d jobs after restart, want 1", len(got))
	}
}

// A job that asks for the internet is not run cut off by providers that
// give jobs none: they do not bid, and the failure says what to look for.
func TestAJobAskingForEgressFailsSayingNoProviderGivesIt(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(141, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	spec := jobSpec(t, 8, "image: gpumesh-no-such-image:1\nimageFrom: registry\nnetwork: {egress: true}")
	j := submit(t, ctx, m.Nodes[1], spec)
	if j.State != node.JobFailed || !strings.Contains(j.Reason, "--job-egress") {
		t.Fatalf("job %s (%s), want failed naming --job-egress", j.State, j.Reason)
	}
	t.Logf("reason: %s", j.Reason)
}

// A job no provider bids on says why when the directory knows: its
// providers quote no price (started without --price: a new user's first
// provider, with only the flags it needs to offer its GPUs).
func TestAJobNobodyBidsOnSaysWhyTheDirectorysProvidersDidNot(t *testing.T) {
	m := meshtest.Start(t, 2, meshtest.Options{Seed: 0x71, Providers: 1, Executors: []string{"process"}, Private: true}) // no Price
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sub := m.Nodes[1]
	// The directory must list the provider's offer first, or the reason
	// would be that it lists nothing.
	testwait.Until(t, ctx, "the provider's offer in the directory", func() (bool, string) {
		res, err := sub.FindGPUs(ctx, dht.Query{Model: "H100"})
		return err == nil && res.GPUs > 0, fmt.Sprintf("%d GPUs, %v", res.GPUs, err)
	})
	j := submit(t, ctx, sub, jobSpec(t, 8, ""))
	const want = "none quoting a price in USDC:6 (a provider bids only once started with --price)"
	if j.State != node.JobFailed || !strings.Contains(j.Reason, want) {
		t.Fatalf("%s (%s), want failed saying %q", j.State, j.Reason, want)
	}
}
