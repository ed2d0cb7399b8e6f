package node_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/content"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A job writes a checkpoint; its provider is cut off; the retry on another
// provider starts with the checkpoint restored and GPUMESH_RESUMED=1.
func TestRetryResumesFromTheLastCheckpoint(t *testing.T) {
	m := meshtest.Start(t, 5, h100s(34, 3))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	sub := m.Nodes[4]
	script := `if [ "$GPUMESH_RESUMED" = 1 ]; then
  echo "resumed from step $(cat "$GPUMESH_CHECKPOINT/step")"
  cp "$GPUMESH_CHECKPOINT/step" "$GPUMESH_OUTPUTS/resumed-step"
  exit 0
fi
echo 7 > "$GPUMESH_CHECKPOINT/step.tmp" && mv "$GPUMESH_CHECKPOINT/step.tmp" "$GPUMESH_CHECKPOINT/step"
echo started
exec sleep 3600`
	job, err := sub.SubmitJob(ctx, scriptSpec(t, 8, 8, script, "retries: 1\ncheckpoint: {path: /checkpoints, every: 1s}"))
	if err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, ctx, "the first checkpoint kept by the submitter", func() (bool, string) {
		c, ok := sub.JobCheckpoint(job.ID)
		return ok && c.Files == 1, "none yet"
	})
	j, _ := sub.Job(job.ID)
	var victim int
	for i := range m.Nodes {
		if m.Nodes[i].Host().ID() == j.Members[0].Provider {
			victim = i
		}
	}
	if err := m.Isolate(victim); err != nil {
		t.Fatal(err)
	}
	j = waitEnded(t, ctx, sub, job.ID)
	log := jobLog(t, sub, job.ID)
	if j.State != node.JobDone || j.Attempt != 1 || j.Members[0].Provider == m.Nodes[victim].Host().ID() {
		t.Fatalf("job %s attempt %d (%s), want done on another provider; log:\n%s", j.State, j.Attempt, j.Reason, log)
	}
	if !strings.Contains(log, "[0] resumed from step 7") {
		t.Fatalf("log does not show the resume:\n%s", log)
	}
	got, err := os.ReadFile(filepath.Join(sub.StateDir(), "jobs", j.ID, "outputs", "rank-0", "resumed-step"))
	if err != nil || string(got) != "7\n" {
		t.Fatalf("resumed step %q, %v; want 7", got, err)
	}

	// The checkpoint can be fetched by the submitter's user.
	dir := filepath.Join(t.TempDir(), "ckpt")
	if _, err := sub.GetCheckpoint(ctx, job.ID, dir); err != nil {
		t.Fatal(err)
	}
	if step, err := os.ReadFile(filepath.Join(dir, "step")); err != nil || string(step) != "7\n" {
		t.Fatalf("checkpoint's step %q, %v; want 7", step, err)
	}
}

// A hostile provider, speaking the real job protocol, names a checkpoint
// larger than the submitter keeps: the submitter stops fetching it past
// its limit, cuts the member off, and the job fails naming the limit.
func TestAnOversizeCheckpointCutsItsProviderOff(t *testing.T) {
	o := h100s(42, 1)
	o.Config = func(i int, c *node.Config) {
		if i == 1 {
			c.MaxInputSize = 1 << 20
		}
	}
	m := meshtest.Start(t, 2, o)
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	if err := os.WriteFile(filepath.Join(dir, "model.pt"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := prov.Content().Add(ctx, dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := prov.Content().Grant(ctx, root.CID, sub.Host().ID()); err != nil { // as member 0's provider does
		t.Fatal(err)
	}
	meshtest.ServeJobs(t, prov.Host(), func(js *meshtest.JobStream, st *jobwire.StartFrame) error {
		if err := js.Send(jobwire.Frame{T: jobwire.KindStarted, At: time.Now().UnixMilli()},
			jobwire.Frame{T: jobwire.KindCheckpoint, Ckpt: &jobwire.CheckpointFrame{CID: root.CID.String(), Bytes: 10, Files: 1}}); err != nil {
			return err
		}
		for seq := uint64(1); seq < 600; seq++ { // alive until cut off
			if js.Send(jobwire.Frame{T: jobwire.KindHeartbeat, Seq: seq}) != nil {
				return nil
			}
			time.Sleep(100 * time.Millisecond) // a heartbeat's pace, not a wait for an event
		}
		return nil
	})
	j := runToEnd(t, ctx, sub, scriptSpec(t, 1, 0, "true", "checkpoint: {path: /checkpoints, every: 1s}"))
	if j.State != node.JobFailed || !strings.Contains(j.Reason, "--max-input-size") {
		t.Fatalf("job %s (%s): want failed, its provider past --max-input-size", j.State, j.Reason)
	}
	if _, ok := sub.JobCheckpoint(j.ID); ok {
		t.Fatal("the oversize checkpoint was kept")
	}
	if got := sub.Content().Stats().FetchedBytes; got > 2<<20+content.MaxBlock {
		t.Fatalf("the submitter fetched %d bytes of a checkpoint over its 1 MiB limit", got)
	}
}
