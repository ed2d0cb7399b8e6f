package node_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A job cancelled the moment its record says formed (before its run has
// started, or just after) frees its providers' GPUs at once: the cancel
// and the run's start agree on one move out of "formed", and whichever
// comes first the members are released, not held until their
// reservations lapse (the hold is 10 s, a confirmed reservation's start
// deadline a minute). Five times, on real nodes.
func TestACancelRightAfterFormedFreesTheGPUsAtOnce(t *testing.T) {
	m := meshtest.Start(t, 3, h100s(0x5c, 2))
	sub, providers := m.Nodes[2], m.Nodes[:2]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	unstarted := 0
	for i := range 5 {
		job, err := sub.SubmitJob(ctx, jobSpec(t, 16, ""))
		if err != nil {
			t.Fatal(err)
		}
		j := waitJob(t, ctx, sub, job.ID, "to leave negotiation", func(j node.Job) bool { return j.State != node.JobNegotiating })
		if !holds(j) {
			t.Fatalf("job %d: %s (%s), want formed", i, j.State, j.Reason)
		}
		if _, err := sub.CancelJob(ctx, job.ID); err != nil {
			t.Fatal(err)
		}
		if j = waitEnded(t, ctx, sub, job.ID); j.State != node.JobCancelled {
			t.Fatalf("job %d: %s (%s), want cancelled", i, j.State, j.Reason)
		}
		if j.Started.IsZero() {
			unstarted++
		}
		fctx, fcancel := context.WithTimeout(ctx, 8*time.Second) // under the 10 s hold
		waitFree(t, fctx, providers)
		fcancel()
	}
	t.Logf("%d of 5 jobs cancelled before their run started", unstarted)
}

// stepWatch is a log handler that tells when a peer's negotiation of one
// job has ended (its trace step "ended").
type stepWatch struct {
	mu    sync.Mutex
	job   string
	ended chan struct{}
	once  sync.Once
}

func (w *stepWatch) Enabled(_ context.Context, l slog.Level) bool { return l <= node.LevelTrace }
func (w *stepWatch) WithAttrs([]slog.Attr) slog.Handler           { return w }
func (w *stepWatch) WithGroup(string) slog.Handler                { return w }
func (w *stepWatch) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "negotiation step" {
		return nil
	}
	var job, step string
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "job":
			job = a.Value.String()
		case "step":
			step = a.Value.String()
		}
		return true
	})
	w.mu.Lock()
	want := w.job
	w.mu.Unlock()
	if step == "ended" && job != "" && job == want {
		w.once.Do(func() { close(w.ended) })
	}
	return nil
}

func (w *stepWatch) watch(job string) {
	w.mu.Lock()
	w.job = job
	w.mu.Unlock()
}

// While a provider's job store is stalled (its writer held: every
// job-record write waits, as behind a slow disk's sync), the provider's
// own job is cancelled, so that its negotiation ends and its outcome waits
// to be written; another peer's job still forms on the provider's GPUs
// (its negotiation loop answers the request and the award), and the
// cancel is not acknowledged until its record is on disk.
func TestASlowJobStoreDoesNotHoldUpAnotherJobsNegotiation(t *testing.T) {
	w := &stepWatch{ended: make(chan struct{})}
	o := h100s(0x5d, 1)
	o.Config = func(i int, c *node.Config) {
		if i == 0 {
			c.Logger = slog.New(w)
		}
	}
	m := meshtest.Start(t, 2, o)
	prov, other := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The provider's own job asks for GPUs nobody has: it negotiates
	// until its deadline (5 s) unless cancelled.
	spec, err := jobspec.Parse([]byte("name: nobody-has\ncommand: [sleep, \"3600\"]\nresources:\n  gpus: 1\n  gpu: {model: A100}\nmaxPrice: 2.50\ntimeout: 1h\n"), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	own, err := prov.SubmitJob(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	w.watch(own.ID)
	release, err := prov.StallJobStore()
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	cancelled := make(chan error, 1)
	go func() {
		_, err := prov.CancelJob(ctx, own.ID)
		cancelled <- err
	}()
	select {
	case <-w.ended: // its outcome is out of the negotiation, waiting for the store
	case <-ctx.Done():
		t.Fatal("the provider's own negotiation did not end after its cancel")
	}

	start := time.Now()
	job := submit(t, ctx, other, jobSpec(t, 8, ""))
	if !holds(job) || job.Members[0].Provider != prov.Host().ID() {
		t.Fatalf("another peer's job while the provider's job store is stalled: %s (%s), want formed on the provider", job.State, job.Reason)
	}
	t.Logf("another peer's job formed in %v while the provider's job store was stalled", time.Since(start).Round(time.Millisecond))
	select {
	case err := <-cancelled:
		t.Fatalf("the cancel was acknowledged (%v) before its record could be written", err)
	default:
	}

	release()
	select {
	case err := <-cancelled:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("the cancel did not return once the store was released")
	}
	if j, _ := prov.Job(own.ID); j.State != node.JobCancelled {
		t.Fatalf("the provider's own job: %s (%s), want cancelled", j.State, j.Reason)
	}
	if _, err := other.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	waitFree(t, ctx, []*node.Node{prov})
}
