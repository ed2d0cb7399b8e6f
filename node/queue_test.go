package node_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/internal/testdocker"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobqueue"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// queueMesh is one provider of 8 H100s (process executor, private swarm)
// and two peers without GPUs; the last is the submitter, which keeps at
// most two jobs queued and never tries again without news (its backoff is
// an hour): whatever forms a queued job here, an offer that changed did.
func queueMesh(t *testing.T) *meshtest.Mesh {
	o := h100s(17, 1)
	o.Config = func(i int, c *node.Config) {
		c.MaxQueued = 2
		c.QueueTiming = jobqueue.Config{Backoff: time.Hour}
	}
	return meshtest.Start(t, 3, o)
}

func waitQueued(t *testing.T, ctx context.Context, nd *node.Node, id string) node.Job {
	t.Helper()
	return waitJob(t, ctx, nd, id, "to be queued", func(j node.Job) bool { return j.State != node.JobNegotiating })
}

func TestAQueuedJobWaitsFormsOnNewsAndEnds(t *testing.T) {
	m := queueMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sub := m.Nodes[2]

	// 16 GPUs on a swarm of 8: queued, with the numbers of why.
	job, err := sub.SubmitJob(ctx, jobSpec(t, 16, "queue: 2m"))
	if err != nil {
		t.Fatal(err)
	}
	j := waitQueued(t, ctx, sub, job.ID)
	if j.State != node.JobQueued || !strings.Contains(j.Reason, "need 16") {
		t.Fatalf("job %s (%s), want queued saying it needs 16", j.State, j.Reason)
	}
	if left := time.Until(j.QueuedUntil); left < time.Minute || left > 2*time.Minute {
		t.Fatalf("queued until %v (%v from now), want about 2m", j.QueuedUntil, left)
	}
	if s, ok := sub.QueueStatus(job.ID); !ok || s.Position != 1 {
		t.Fatalf("queue status %+v, %v: want position 1", s, ok)
	}

	// A second provider joins: its offer forms the job.
	joined := time.Now()
	p2 := m.Add(t, true)
	j = waitJob(t, ctx, sub, job.ID, "to form on the new offer", holds)
	took := time.Since(joined)
	t.Logf("formed %v after the second provider joined (%d tries)", took.Round(time.Millisecond), j.Tries)
	if total, _ := gpusOf(j); total != 16 || len(j.Members) != 2 || j.Tries < 1 {
		t.Fatalf("cluster %+v after %d tries, want 16 GPUs on both providers after a try", j.Members, j.Tries)
	}
	if took > 30*time.Second {
		t.Fatalf("formed %v after the offer, want within seconds", took)
	}
	if _, ok := sub.QueueStatus(job.ID); ok {
		t.Fatal("a formed job is still in the queue")
	}
	waitJob(t, ctx, sub, job.ID, "to run", func(j node.Job) bool { return j.State == node.JobRunning })
	providers := []*node.Node{m.Nodes[0], p2}

	// GPUs freed are news: a job queued behind the first forms once it is
	// cancelled.
	second, err := sub.SubmitJob(ctx, jobSpec(t, 8, "queue: 2m"))
	if err != nil {
		t.Fatal(err)
	}
	if j := waitQueued(t, ctx, sub, second.ID); j.State != node.JobQueued {
		t.Fatalf("second job %s (%s), want queued while the first holds every GPU", j.State, j.Reason)
	}
	// A queued job is cancelled: it leaves the queue at once.
	third, err := sub.SubmitJob(ctx, jobSpec(t, 32, "queue: 2m"))
	if err != nil {
		t.Fatal(err)
	}
	waitQueued(t, ctx, sub, third.ID)
	if s, ok := sub.QueueStatus(third.ID); !ok || s.Position != 2 {
		t.Fatalf("queue status %+v, %v: want position 2", s, ok)
	}
	// Two jobs with a queue wait: one more is refused, saying why.
	if _, err := sub.SubmitJob(ctx, jobSpec(t, 8, "queue: 2m")); !errors.Is(err, node.ErrQueueFull) || !strings.Contains(err.Error(), "--max-queued") {
		t.Fatalf("a third queued job: %v, want refused naming --max-queued", err)
	}
	j3, err := sub.CancelJob(ctx, third.ID)
	if err != nil {
		t.Fatal(err)
	}
	if j3.State != node.JobCancelled {
		t.Fatalf("cancelled queued job: %s (%s)", j3.State, j3.Reason)
	}
	if _, ok := sub.QueueStatus(third.ID); ok {
		t.Fatal("a cancelled job is still in the queue")
	}

	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	j = waitJob(t, ctx, sub, second.ID, "to form on the GPUs freed", holds)
	if _, err := sub.CancelJob(ctx, second.ID); err != nil {
		t.Fatal(err)
	}
	waitFree(t, ctx, providers)

	// The queue time ends: the job fails with the reason it waited for.
	fourth, err := sub.SubmitJob(ctx, jobSpec(t, 32, "queue: 3s"))
	if err != nil {
		t.Fatal(err)
	}
	j4 := waitEnded(t, ctx, sub, fourth.ID)
	if j4.State != node.JobFailed || !strings.Contains(j4.Reason, "no cluster formed in the 3s it could wait") || !strings.Contains(j4.Reason, "need 32") {
		t.Fatalf("job whose queue ended: %s (%s), want failed with the last reason", j4.State, j4.Reason)
	}
}

func TestARestartedSubmitterKeepsItsQueuedJob(t *testing.T) {
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
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := start()
	// Stopped while it negotiates (alone, nobody bids): it waits again
	// after the restart.
	job, err := n.SubmitJob(ctx, jobSpec(t, 8, "queue: 10m"))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n = start()
	defer n.Close()
	j, ok := n.Job(job.ID)
	if !ok || j.State != node.JobQueued || !strings.Contains(j.Reason, "stopped while negotiating") {
		t.Fatalf("after restart: %+v, want queued again", j)
	}
	// It tries again on its own (the offers are news to a restarted peer)
	// and keeps waiting with the try's reason.
	j = waitJob(t, ctx, n, job.ID, "to try again", func(j node.Job) bool {
		return j.Tries >= 1 && !strings.Contains(j.Reason, "stopped while negotiating")
	})
	if j.State != node.JobQueued || !strings.Contains(j.Reason, "no provider") {
		t.Fatalf("after a try: %s (%s), want queued saying no provider bid", j.State, j.Reason)
	}
	// Queued across a second restart, and cancelled there.
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n = start()
	defer n.Close()
	if j, _ := n.Job(job.ID); j.State != node.JobQueued {
		t.Fatalf("after a second restart: %s, want queued", j.State)
	}
	if j, err := n.CancelJob(ctx, job.ID); err != nil || j.State != node.JobCancelled {
		t.Fatalf("cancel after the restart: %v, %+v", err, j)
	}
}

func keepAliveSpec(t *testing.T, image string) jobspec.Spec {
	t.Helper()
	y := "name: shell\nkeepAlive: true\nresources: {gpus: 2, gpu: {model: H100}}\nmaxPrice: 2.50\ntimeout: 1h\n"
	if image != "" {
		y += "image: " + image + "\n"
	}
	s, err := jobspec.Parse([]byte(y), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// keepAliveUntilCancelled runs a keepAlive job on m's provider 0 from
// node sub: it runs, with nothing of its own to end it, until it is
// cancelled, and is billed for the time it ran.
func keepAliveUntilCancelled(t *testing.T, m *meshtest.Mesh, sub *node.Node, spec jobspec.Spec) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	job, err := sub.SubmitJob(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	j := waitJob(t, ctx, sub, job.ID, "to run its member", func(j node.Job) bool {
		return j.State.Ended() || (j.State == node.JobRunning && len(j.Runs) == 1 && j.Runs[0].State == node.MemberRunning)
	})
	if j.State != node.JobRunning {
		t.Fatalf("keepAlive job %s (%s), want running", j.State, j.Reason)
	}
	// Up for 3 s more (three heartbeats): still running, as nothing of its
	// own ends it; every change of the job in that time is looked at.
	hold := time.NewTimer(3 * time.Second)
	defer hold.Stop()
	for up := true; up; {
		moved := sub.JobMoved()
		if j, _ = sub.Job(job.ID); j.State != node.JobRunning {
			t.Fatalf("keepAlive job ended on its own: %s (%s)", j.State, j.Reason)
		}
		select {
		case <-moved:
		case <-hold.C:
			up = false
		}
	}
	if c, err := sub.CancelJob(ctx, job.ID); err != nil || c.State != node.JobCancelled {
		t.Fatalf("cancel: %v, %+v", err, c)
	}
	var rs []receipt.Signed
	testwait.Until(t, ctx, "a countersigned receipt of the session", func() (bool, string) {
		rs, err = sub.Receipts(job.ID)
		return err == nil && len(rs) == 1 && len(rs[0].ConsumerSig) > 0, fmt.Sprintf("%d receipts, %v", len(rs), err)
	})
	r := rs[0].Receipt
	if r.GPUMillis < 2*3000 || r.Amount == 0 || r.Amount != receipt.Amount(r.Price, r.GPUMillis) {
		t.Fatalf("receipt bills %d GPU-ms for %d, want at least 2 GPUs for 3 s, at its price", r.GPUMillis, r.Amount)
	}
	waitFree(t, ctx, m.Nodes[:1])
}

func TestAKeepAliveSessionRunsUntilCancelledAndIsBilled(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(18, 1))
	t.Run("keepAlive", func(t *testing.T) { keepAliveUntilCancelled(t, m, m.Nodes[1], keepAliveSpec(t, "")) })
	t.Run("sleep infinity", func(t *testing.T) {
		spec := keepAliveSpec(t, "")
		spec.KeepAlive, spec.Command = false, []string{"sleep", "infinity"}
		keepAliveUntilCancelled(t, m, m.Nodes[1], spec)
	})
}

// A keepAlive container keeps the image's shell idle: up until cancelled,
// and billed.
func TestAKeepAliveContainerRunsUntilCancelledAndIsBilled(t *testing.T) {
	img := testdocker.EnsureImage(t)
	m := meshtest.Start(t, 2, meshtest.Options{Seed: 19, Providers: 1, Price: "fixed:2.10"})
	keepAliveUntilCancelled(t, m, m.Nodes[1], keepAliveSpec(t, img))
}
