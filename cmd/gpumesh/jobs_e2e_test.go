package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	gmexec "github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/internal/testdocker"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobnet"
)

// jobSwarm starts providers of 8 mock H100s each, running containers with
// fast heartbeats, and a submitter without GPUs, and waits until the
// submitter finds them all.
func jobSwarm(t testing.TB, providers int) (provs []*gmNode, sub *gmNode) {
	t.Helper()
	common := []string{"--nat=false", "--dht-mode", "server", "--heartbeat", "500ms"}
	for i := range providers {
		args := append(slices.Clone(common), "--gpus", "mock:dgxh100", "--price", "fixed:2.10")
		if i > 0 {
			args = append(args, "--bootstrap", provs[0].bootstrapAddr(t))
		}
		provs = append(provs, startNode(t, fmt.Sprintf("provider-%d", i), dataDir(t), args...))
	}
	sub = startNode(t, "submitter", dataDir(t), append(common, "--bootstrap", provs[0].bootstrapAddr(t))...)
	testwait.For(t, meshWait, "every provider found", func() (bool, string) {
		res, err := findGPUs(sub.data, "--model", "H100")
		if err != nil {
			return false, err.Error()
		}
		return res.Providers == providers, fmt.Sprintf("%d providers", res.Providers)
	})
	return provs, sub
}

// writeJob writes a job spec running script in the test image.
func writeJob(t testing.TB, gpus, perNode int, script, extra string) string {
	t.Helper()
	y := fmt.Sprintf(`name: e2e
image: %s
command: [sh, -c, %q]
resources:
  gpus: %d
  perNode: %d
  gpu: {model: H100}
maxPrice: 2.50
timeout: 5m
%s`, testdocker.Image, script, gpus, perNode, extra)
	path := filepath.Join(t.TempDir(), "job.yaml")
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// removeJobContainers removes what a killed provider could not.
func removeJobContainers(t *testing.T, owner string) {
	cli := testdocker.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", gmexec.LabelOwner+"="+owner))})
	if err != nil {
		t.Log(err)
		return
	}
	for _, c := range list {
		_ = cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
	}
}

func TestTorchrunJobOnDockerEndToEnd(t *testing.T) {
	testdocker.EnsureImage(t)
	provs, sub := jobSwarm(t, 3)

	// Three members of 8 GPUs each; each prints its rank env and leaves a file.
	spec := writeJob(t, 24, 8, `echo "rank=$NODE_RANK nnodes=$NNODES nproc=$NPROC_PER_NODE world=$WORLD_SIZE master=$MASTER_ADDR:$MASTER_PORT gpus=$CUDA_VISIBLE_DEVICES"
echo "result of $NODE_RANK" > "$GPUMESH_OUTPUTS/result.txt"`, "launcher: torchrun")
	out, err := gm(sub.data, "job", "submit", spec, "-f")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	text := string(out)
	if !strings.Contains(text, ": done") || !strings.Contains(text, "exit code: 0") {
		t.Fatalf("no done with exit code 0:\n%s", text)
	}
	var jobs node.JobsPage
	if err := gmJSON(sub.data, &jobs, "job", "ls"); err != nil || len(jobs.Jobs) != 1 {
		t.Fatalf("job ls: %v %v", jobs, err)
	}
	j := jobs.Jobs[0]
	// The members meet at member 0's address on their job's own network.
	for r := range 3 {
		want := fmt.Sprintf("[%d] rank=%d nnodes=3 nproc=8 world=24 master=%s:", r, r, jobnet.Addr(j.ID, 0))
		if !strings.Contains(text, want) {
			t.Fatalf("output lacks %q:\n%s", want, text)
		}
	}

	// Logs again, after the fact; outputs into a folder of the user's.
	logs, err := gm(sub.data, "job", "logs", j.ID)
	if err != nil || !strings.Contains(string(logs), "[1] rank=1") {
		t.Fatalf("job logs: %v\n%s", err, logs)
	}
	dst := t.TempDir()
	if out, err := gm(sub.data, "job", "get", j.ID, "-o", dst); err != nil || !strings.Contains(string(out), "SHA-256 checked") {
		t.Fatalf("job get: %v\n%s", err, out)
	}
	for r := range 3 {
		data, err := os.ReadFile(filepath.Join(dst, fmt.Sprintf("rank-%d", r), "result.txt"))
		if err != nil || string(data) != fmt.Sprintf("result of %d\n", r) {
			t.Fatalf("rank %d's output: %q %v", r, data, err)
		}
	}

	// Receipts: co-signed, kept by the submitter (both) and by each provider.
	var rs []receipt.Signed
	if err := gmJSON(sub.data, &rs, "job", "receipts", j.ID); err != nil || len(rs) != 3 {
		t.Fatalf("submitter's receipts: %d, %v", len(rs), err)
	}
	for _, r := range rs {
		if err := r.Verify(); err != nil {
			t.Fatal(err)
		}
		if r.Receipt.GPUs != 8 || r.Receipt.Consumer != sub.id.SolanaAddress {
			t.Fatalf("receipt %+v", r.Receipt)
		}
	}
	for _, p := range provs {
		testwait.For(t, cliWait, "the provider's countersigned receipt", func() (bool, string) {
			var prs []receipt.Signed
			if err := gmJSON(p.data, &prs, "job", "receipts"); err != nil {
				return false, err.Error()
			}
			return len(prs) == 1 && prs[0].Verify() == nil, fmt.Sprintf("%d receipts", len(prs))
		})
	}

	// A failing job ends `job submit --wait` with its exit code.
	spec = writeJob(t, 8, 8, "echo bye; exit 7", "")
	out, err = gm(sub.data, "job", "submit", spec, "--wait")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("submit --wait of a job exiting 7: %v\n%s", err, out)
	}
}

func TestProviderKilledMidJob(t *testing.T) {
	testdocker.EnsureImage(t)
	provs, sub := jobSwarm(t, 1)
	spec := writeJob(t, 8, 8, `echo up; exec sleep 300`, "")
	var j node.Job
	if err := gmJSON(sub.data, &j, "job", "submit", spec); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, cliWait, "the member to run", func() (bool, string) {
		if err := gmJSON(sub.data, &j, "job", "status", j.ID); err != nil {
			return false, err.Error()
		}
		return j.State == node.JobRunning && len(j.Runs) == 1 && j.Runs[0].State == node.MemberRunning, string(j.State)
	})
	t.Cleanup(func() { removeJobContainers(t, provs[0].id.PeerID) })

	// Frozen, not dead: the connection stays up, the heartbeats stop.
	if err := provs[0].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	testwait.For(t, cliWait, "the job to fail", func() (bool, string) {
		if err := gmJSON(sub.data, &j, "job", "status", j.ID); err != nil {
			return false, err.Error()
		}
		return j.State == node.JobFailed, string(j.State)
	})
	noticed := time.Since(stopped)
	t.Logf("a frozen provider was noticed in %v: %s", noticed, j.Reason)
	if !strings.Contains(j.Reason, "stopped answering") || !strings.Contains(j.Reason, "retries: 0") {
		t.Fatalf("reason: %s", j.Reason)
	}
	_ = provs[0].cmd.Process.Kill()
	_ = provs[0].cmd.Process.Signal(syscall.SIGCONT)
	<-provs[0].done
}

func TestCancelAndTimeoutStopContainers(t *testing.T) {
	testdocker.EnsureImage(t)
	provs, sub := jobSwarm(t, 1)
	cli := testdocker.Client(t)
	owned := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", gmexec.LabelOwner+"="+provs[0].id.PeerID))})
		if err != nil {
			t.Fatal(err)
		}
		return len(list)
	}

	// A timeout of 2 s stops a container that would sleep 300 s.
	spec := writeJob(t, 8, 8, "exec sleep 300", "")
	data, _ := os.ReadFile(spec)
	if err := os.WriteFile(spec, []byte(strings.Replace(string(data), "timeout: 5m", "timeout: 2s", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := gm(sub.data, "job", "submit", spec, "--wait")
	if err == nil || !strings.Contains(string(out), "timed out after 2s") {
		t.Fatalf("a job past its timeout: %v\n%s", err, out)
	}
	t.Logf("timed out and stopped in %v", time.Since(start))

	// Cancel stops the running container, and it is removed.
	spec = writeJob(t, 8, 8, "echo up; exec sleep 300", "")
	var j node.Job
	if err := gmJSON(sub.data, &j, "job", "submit", spec); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, cliWait, "the container to run", func() (bool, string) {
		if err := gmJSON(sub.data, &j, "job", "status", j.ID); err != nil {
			return false, err.Error()
		}
		return len(j.Runs) == 1 && j.Runs[0].State == node.MemberRunning && owned() == 1, string(j.State)
	})
	out, err = gm(sub.data, "job", "cancel", j.ID)
	if err != nil || !strings.Contains(string(out), "cancelled") {
		t.Fatalf("cancel: %v\n%s", err, out)
	}
	if n := owned(); n != 0 {
		t.Fatalf("%d containers left after cancel", n)
	}
}
