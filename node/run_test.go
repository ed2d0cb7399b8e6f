package node_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// scriptSpec is a job running a shell script with the process executor.
func scriptSpec(t *testing.T, gpus, perNode int, script, extra string) jobspec.Spec {
	t.Helper()
	y := fmt.Sprintf(`name: run-test
command: [sh, -c, %q]
resources:
  gpus: %d
  perNode: %d
  gpu: {model: H100}
maxPrice: 2.50
timeout: 1h
%s`, script, gpus, perNode, extra)
	s, err := jobspec.Parse([]byte(y), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// runToEnd submits a job and waits for it to end.
func runToEnd(t *testing.T, ctx context.Context, nd *node.Node, spec jobspec.Spec) node.Job {
	t.Helper()
	job, err := nd.SubmitJob(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	return waitEnded(t, ctx, nd, job.ID)
}

// jobLog reads a job's log as the API serves it.
func jobLog(t *testing.T, nd *node.Node, id string) string {
	t.Helper()
	var sb strings.Builder
	if err := nd.WriteLog(context.Background(), &sb, id, false); err != nil {
		t.Fatal(err)
	}
	return sb.String()
}

func TestJobRunsLogsOutputsAndCosignedReceipts(t *testing.T) {
	m := meshtest.Start(t, 4, h100s(6, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	provider, submitter := m.Nodes[0], m.Nodes[3]
	spec := scriptSpec(t, 2, 0, `echo "hello from $GPUMESH_RANK"; echo oops >&2
printf 'model weights' > "$GPUMESH_OUTPUTS/model.bin"
mkdir -p "$GPUMESH_OUTPUTS/sub" && echo "$CUDA_VISIBLE_DEVICES" > "$GPUMESH_OUTPUTS/sub/gpus.txt"`, "")
	j := runToEnd(t, ctx, submitter, spec)
	if j.State != node.JobDone || j.ExitCode == nil || *j.ExitCode != 0 {
		t.Fatalf("job %s (%s), exit %v, want done with 0", j.State, j.Reason, j.ExitCode)
	}
	log := jobLog(t, submitter, j.ID)
	for _, want := range []string{"[0] hello from 0\n", "[0] oops\n"} {
		if !strings.Contains(log, want) {
			t.Fatalf("log lacks %q:\n%s", want, log)
		}
	}

	// Outputs came back whole, with their hashes.
	run := j.Runs[0]
	if len(run.Outputs) != 2 {
		t.Fatalf("outputs %+v, want model.bin and sub/gpus.txt", run.Outputs)
	}
	dir := filepath.Join(submitter.StateDir(), "jobs", j.ID, "outputs", "rank-0")
	for _, o := range run.Outputs {
		data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(o.Path)))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if hex.EncodeToString(sum[:]) != o.SHA256 || int64(len(data)) != o.Size {
			t.Fatalf("output %s: %d bytes, hash mismatch", o.Path, len(data))
		}
	}
	// The work saw exactly its two leased GPUs.
	gpus, _ := os.ReadFile(filepath.Join(dir, "sub", "gpus.txt"))
	uuids := strings.Split(strings.TrimSpace(string(gpus)), ",")
	inv := map[string]bool{}
	for _, g := range provider.LocalGPUs().Inventory.GPUs {
		inv[g.UUID] = true
	}
	if len(uuids) != 2 || !inv[uuids[0]] || !inv[uuids[1]] || uuids[0] == uuids[1] {
		t.Fatalf("CUDA_VISIBLE_DEVICES=%s, want two of the provider's GPU UUIDs", gpus)
	}

	// Both sides keep the receipt, signed by both; it bills what ran.
	for _, nd := range []*node.Node{provider, submitter} {
		var rs []receipt.Signed
		testwait.Until(t, ctx, "a countersigned receipt", func() (bool, string) {
			var err error
			rs, err = nd.Receipts(j.ID)
			return err == nil && len(rs) == 1 && len(rs[0].ConsumerSig) > 0, fmt.Sprintf("%d receipts, %v", len(rs), err)
		})
		r := rs[0]
		if err := r.Verify(); err != nil {
			t.Fatal(err)
		}
		if r.Receipt.GPUs != 2 || r.Receipt.Price != 2_100_000 || r.Receipt.Amount != receipt.Amount(2_100_000, r.Receipt.GPUMillis) ||
			r.Receipt.ResultHash != receipt.ResultHash(0, run.Outputs) || r.Receipt.Provider != provider.Info().SolanaAddress ||
			r.Receipt.Consumer != submitter.Info().SolanaAddress {
			t.Fatalf("receipt %+v does not match the run", r.Receipt)
		}
	}
	if run.Receipt != "countersigned" {
		t.Fatalf("member's receipt: %s", run.Receipt)
	}
	// The GPUs are free again.
	waitFree(t, ctx, []*node.Node{provider})
}

func TestTorchrunMembersGetTheirRanks(t *testing.T) {
	m := meshtest.Start(t, 5, h100s(6, 3))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	spec := scriptSpec(t, 24, 8, `echo "rank=$NODE_RANK nnodes=$NNODES nproc=$NPROC_PER_NODE world=$WORLD_SIZE master=$MASTER_ADDR:$MASTER_PORT pet=$PET_NODE_RANK/$PET_NNODES"`, "launcher: torchrun")
	j := runToEnd(t, ctx, m.Nodes[4], spec)
	if j.State != node.JobDone {
		t.Fatalf("job %s: %s", j.State, j.Reason)
	}
	log := jobLog(t, m.Nodes[4], j.ID)
	var lines []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "rank=") {
			lines = append(lines, l)
		}
	}
	sort.Strings(lines)
	if len(lines) != 3 {
		t.Fatalf("want a line from each of 3 members:\n%s", log)
	}
	master := ""
	for r, l := range lines {
		prefix := fmt.Sprintf("[%d] rank=%d nnodes=3 nproc=8 world=24 master=", r, r)
		if !strings.HasPrefix(l, prefix) || !strings.HasSuffix(l, fmt.Sprintf(" pet=%d/3", r)) {
			t.Fatalf("line %q, want %q...", l, prefix)
		}
		addr := strings.Fields(strings.TrimPrefix(l, prefix))[0]
		if master == "" {
			master = addr
		}
		if addr != master || strings.HasSuffix(addr, ":0") || strings.HasPrefix(addr, ":") {
			t.Fatalf("members disagree on the master or it is empty: %q vs %q", addr, master)
		}
	}
}

func TestJobExitCodeAndTimeout(t *testing.T) {
	m := meshtest.Start(t, 3, h100s(6, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	j := runToEnd(t, ctx, m.Nodes[2], scriptSpec(t, 1, 0, "echo failing; exit 3", ""))
	if j.State != node.JobFailed || j.ExitCode == nil || *j.ExitCode != 3 || !strings.Contains(j.Reason, "exited with code 3") {
		t.Fatalf("job %s (%s), exit %v, want failed with 3", j.State, j.Reason, j.ExitCode)
	}
	start := time.Now()
	spec := scriptSpec(t, 1, 0, "sleep 300", "")
	spec.Timeout = "1s"
	j = runToEnd(t, ctx, m.Nodes[2], spec)
	if j.State != node.JobFailed || !strings.Contains(j.Reason, "timed out after 1s") {
		t.Fatalf("job %s (%s), want failed: timed out", j.State, j.Reason)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("a 1 s timeout took %v", took)
	}
}

func TestCancelStopsEveryMember(t *testing.T) {
	m := meshtest.Start(t, 4, h100s(6, 2))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sub := m.Nodes[3]
	job, err := sub.SubmitJob(ctx, scriptSpec(t, 16, 8, `echo "pid $$"; exec sleep 300`, ""))
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	testwait.Until(t, ctx, "both members to print their pids", func() (bool, string) {
		j, _ := sub.Job(job.ID)
		if j.State != node.JobRunning {
			return false, fmt.Sprintf("job %s", j.State)
		}
		pids = pids[:0]
		for _, l := range strings.Split(jobLog(t, sub, job.ID), "\n") {
			var rank, pid int
			if _, err := fmt.Sscanf(l, "[%d] pid %d", &rank, &pid); err == nil {
				pids = append(pids, pid)
			}
		}
		return len(pids) == 2, fmt.Sprintf("pids %v", pids)
	})
	j, err := sub.CancelJob(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if j.State != node.JobCancelled {
		t.Fatalf("after cancel: %s (%s)", j.State, j.Reason)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Fatalf("member process %d still runs after cancel", pid)
		}
	}
	waitFree(t, ctx, m.Nodes[:2])
}

func TestLostMemberFailsOrIsReplaced(t *testing.T) {
	m := meshtest.Start(t, 5, h100s(6, 3))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sub := m.Nodes[4]
	// The script ends once a marker file exists: the test says when. The
	// job user must see it: not in the test's own folder (closed to others).
	shared, err := os.MkdirTemp("", "gm-marker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	if err := os.Chmod(shared, 0o711); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(shared, "go")
	script := fmt.Sprintf(`echo started; while [ ! -e %s ]; do sleep 0.05; done; echo finished`, marker)

	for _, retries := range []int{0, 1} {
		job, err := sub.SubmitJob(ctx, scriptSpec(t, 8, 8, script, fmt.Sprintf("retries: %d", retries)))
		if err != nil {
			t.Fatal(err)
		}
		j := waitJob(t, ctx, sub, job.ID, "to start its member", func(j node.Job) bool {
			return j.State == node.JobRunning && len(j.Runs) == 1 && j.Runs[0].State == node.MemberRunning
		})
		var victim int
		for i := range m.Nodes {
			if m.Nodes[i].Host().ID() == j.Members[0].Provider {
				victim = i
			}
		}
		lostAt := time.Now()
		if err := m.Isolate(victim); err != nil {
			t.Fatal(err)
		}
		if retries == 0 {
			j = waitEnded(t, ctx, sub, job.ID)
			if j.State != node.JobFailed || !strings.Contains(j.Reason, "stopped answering") || !strings.Contains(j.Reason, "retries: 0") {
				t.Fatalf("job %s: %s, want failed: a member stopped answering, no retries", j.State, j.Reason)
			}
			t.Logf("lost member noticed and the job failed in %v: %s", time.Since(lostAt), j.Reason)
			continue
		}
		// Retried on another provider: let the new member finish.
		waitJob(t, ctx, sub, job.ID, "to run again elsewhere", func(j node.Job) bool {
			return j.Attempt == 1 && j.State == node.JobRunning && len(j.Runs) == 1 && j.Runs[0].State == node.MemberRunning
		})
		t.Logf("replaced in %v", time.Since(lostAt))
		if err := os.WriteFile(marker, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		j = waitEnded(t, ctx, sub, job.ID)
		if j.State != node.JobDone || j.Attempt != 1 || j.Members[0].Provider == m.Nodes[victim].Host().ID() {
			t.Fatalf("job %s attempt %d: %s", j.State, j.Attempt, j.Reason)
		}
		if log := jobLog(t, sub, job.ID); !strings.Contains(log, "retrying (attempt 2 of 2") || !strings.Contains(log, "[0] finished") {
			t.Fatalf("log does not tell of the retry:\n%s", log)
		}
	}
}

func TestSubmitterStoppingStopsItsJobs(t *testing.T) {
	m := meshtest.Start(t, 3, h100s(6, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sub, provider := m.Nodes[2], m.Nodes[0]
	job, err := sub.SubmitJob(ctx, scriptSpec(t, 4, 0, "exec sleep 300", ""))
	if err != nil {
		t.Fatal(err)
	}
	waitJob(t, ctx, sub, job.ID, "to run its member", func(j node.Job) bool {
		return len(j.Runs) == 1 && j.Runs[0].State == node.MemberRunning
	})
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if j, _ := sub.Job(job.ID); j.State != node.JobFailed || !strings.Contains(j.Reason, "this peer stopped") {
		t.Fatalf("after the submitter stopped: %s (%s)", j.State, j.Reason)
	}
	waitFree(t, ctx, []*node.Node{provider})
	// The provider kept its receipt for the work done, signed by itself.
	rs, err := provider.Receipts(job.ID)
	if err != nil || len(rs) != 1 || rs[0].VerifyProvider() != nil {
		t.Fatalf("provider's receipts: %+v %v", rs, err)
	}
}
