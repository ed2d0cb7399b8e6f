package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	gmexec "github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/internal/testdocker"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
)

// A provider's machine stays safe and whole: the process executor only in
// a private swarm, its jobs blind to the data dir, and nothing of a job
// left after the provider is killed with -9.

func TestPublicSwarmNodeRefusesTheProcessExecutor(t *testing.T) {
	out, err := gm(dataDir(t), "node", "--listen", "/ip4/127.0.0.1/tcp/0", "--mdns=false", "--executors", "docker,process")
	if err == nil {
		t.Fatalf("a public-swarm node with the process executor started:\n%s", out)
	}
	for _, want := range []string{"only for a private swarm", "gpumesh swarm init", "--swarm-key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal does not say %q: %v", want, err)
		}
	}
}

// A node that is not root cannot run jobs as another user: it offers the
// process executor only when its operator accepts, with
// --jobs-as-node-user, that jobs run as the node's own user.
func TestNonRootNodeOffersProcessesOnlyWhenTold(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run the node as another user")
	}
	nobody, err := gmexec.LookupJobUser("nobody", false)
	if err != nil {
		t.Skip(err)
	}
	home, err := os.MkdirTemp("", "gmnobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	key, err := node.NewSwarmKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "swarm.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{home, filepath.Join(home, "swarm.key")} {
		if err := os.Chown(p, int(nobody.UID), int(nobody.GID)); err != nil {
			t.Fatal(err)
		}
	}
	command := func(extra ...string) *exec.Cmd {
		argv := append([]string{"--data", filepath.Join(home, "data"), "node", "--listen", "/ip4/127.0.0.1/tcp/0", "--mdns=false",
			"--gpus", "none", "--executors", "process", "--job-dir", filepath.Join(home, "jobs")}, extra...)
		cmd := exec.Command(gmBin, argv...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody.UID, Gid: nobody.GID, Groups: []uint32{}}}
		cmd.Env = append(os.Environ(), "HOME="+home)
		return cmd
	}
	out, err := command().CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("a node run as nobody offering processes: %v, want exit code 2\n%s", err, out)
	}
	for _, want := range []string{"public swarm", "not root", "could read its data dir, key.json (its wallet) included", "--jobs-as-node-user"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the refusal does not say %q:\n%s", want, out)
		}
	}

	// In its private swarm and told: it runs, until Ctrl-C.
	cmd := command("--swarm-key", filepath.Join(home, "swarm.key"), "--jobs-as-node-user")
	var buf syncBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	testwait.For(t, startWait, "the node to run", func() (bool, string) {
		select {
		case err := <-done:
			t.Fatalf("the node exited: %v\n%s", err, buf.String())
		default:
		}
		return strings.Contains(buf.String(), "Stop it with Ctrl-C."), buf.String()
	})
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("SIGINT: %v\n%s", err, buf.String())
		}
	case <-time.After(stopWait):
		_ = cmd.Process.Kill()
		t.Fatalf("the node did not stop on SIGINT")
	}
}

// crashSwarm starts a provider of 8 mock H100s offering executors in a
// private swarm, with its process jobs in a folder of the test's, and a
// submitter; it returns them, the provider's flags (to restart it) and its
// job folder.
func crashSwarm(t *testing.T, executors string) (prov, sub *gmNode, provArgs []string, jobs string) {
	t.Helper()
	common := append([]string{"--nat=false", "--dht-mode", "server", "--heartbeat", "500ms"}, privateSwarm(t)...)
	provArgs = append(slices.Clone(common), "--gpus", "mock:dgxh100", "--price", "fixed:2.10", "--executors", executors)
	if strings.Contains(executors, "process") {
		var jobFlags []string
		jobs, jobFlags = jobDir(t)
		provArgs = append(provArgs, jobFlags...)
	}
	prov = startNode(t, "provider", dataDir(t), provArgs...)
	sub = startNode(t, "submitter", dataDir(t), append(common, "--bootstrap", prov.bootstrapAddr(t))...)
	testwait.For(t, meshWait, "the provider found", func() (bool, string) {
		res, err := findGPUs(sub.data, "--model", "H100")
		if err != nil {
			return false, err.Error()
		}
		return res.Providers == 1, fmt.Sprintf("%d providers", res.Providers)
	})
	return prov, sub, provArgs, jobs
}

// processJob writes a job spec that runs script as a process.
func processJob(t *testing.T, script string, env map[string]string) string {
	t.Helper()
	y := fmt.Sprintf("name: e2e\ncommand: [sh, -c, %q]\nresources: {gpus: 8, gpu: {model: H100}}\nmaxPrice: 2.50\ntimeout: 5m\n", script)
	if len(env) > 0 {
		y += "env:\n"
		for k, v := range env {
			y += fmt.Sprintf("  %s: %q\n", k, v)
		}
	}
	path := filepath.Join(t.TempDir(), "job.yaml")
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestProcessJobCannotReadTheDataDir(t *testing.T) {
	prov, sub, _, _ := crashSwarm(t, "process")
	key, err := os.ReadFile(filepath.Join(prov.data, "key.json"))
	if err != nil {
		t.Fatal(err)
	}
	spec := processJob(t, `cat "$DATA/key.json" > "$GPUMESH_OUTPUTS/key.json"; c=$?; echo "cat=$c"
ls -a "$DATA"; echo "ls=$?"; ls ../..; echo "up=$?"; exit $c`, map[string]string{"DATA": prov.data})
	out, err := gm(sub.data, "job", "submit", spec, "-f")
	text := string(out)
	t.Logf("the job's output:\n%s", text)
	if err == nil {
		t.Fatalf("a job that read key.json exited 0")
	}
	if bytes.Contains(out, key[:16]) || strings.Contains(text, "api.token") || strings.Contains(text, "receipts") {
		t.Fatalf("the job saw the data dir:\n%s", text)
	}
	for _, want := range []string{"Permission denied", "cat=1", "exit code: 1"} {
		if !strings.Contains(text, want) {
			t.Errorf("the job's output lacks %q", want)
		}
	}
	if strings.Contains(text, "ls=0") {
		t.Errorf("the job listed the data dir")
	}
	// Its outputs came back: key.json among them, and empty.
	var jobs node.JobsPage
	if err := gmJSON(sub.data, &jobs, "job", "ls"); err != nil || len(jobs.Jobs) != 1 {
		t.Fatalf("job ls: %+v %v", jobs, err)
	}
	dst := t.TempDir()
	if out, err := gm(sub.data, "job", "get", jobs.Jobs[0].ID, "-o", dst); err != nil {
		t.Fatalf("job get: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "rank-0", "key.json")); err != nil || len(b) != 0 {
		t.Errorf("the job's key.json output: %d bytes, %v; want an empty file", len(b), err)
	}
	if fi, err := os.Stat(prov.data); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// runningJob submits spec and waits until its one member runs.
func runningJob(t *testing.T, sub *gmNode, spec string) node.Job {
	t.Helper()
	var j node.Job
	if err := gmJSON(sub.data, &j, "job", "submit", spec); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, cliWait, "the member to run", func() (bool, string) {
		if err := gmJSON(sub.data, &j, "job", "status", j.ID); err != nil {
			return false, err.Error()
		}
		return len(j.Runs) == 1 && j.Runs[0].State == node.MemberRunning, string(j.State)
	})
	return j
}

// killProvider kills the provider with SIGKILL and waits until the
// submitter's job has failed; it returns the job.
func killProvider(t *testing.T, prov, sub *gmNode, j node.Job) node.Job {
	t.Helper()
	if err := prov.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-prov.done
	testwait.For(t, cliWait, "the submitter's job to fail", func() (bool, string) {
		if err := gmJSON(sub.data, &j, "job", "status", j.ID); err != nil {
			return false, err.Error()
		}
		return j.State == node.JobFailed, string(j.State)
	})
	t.Logf("the submitter's job: %s", j.Reason)
	if !strings.Contains(j.Reason, "member 0") || !strings.Contains(j.Reason, "stopped answering (its stream closed)") {
		t.Errorf("reason %q: want the member that stopped answering", j.Reason)
	}
	return j
}

// assertRestartedClean checks a restarted provider: no task record left,
// the member recorded as ended with what was done, every GPU free.
func assertRestartedClean(t *testing.T, prov, sub *gmNode, j node.Job, want string) {
	t.Helper()
	if recs, _ := filepath.Glob(filepath.Join(prov.data, "tasks", "*.json")); len(recs) != 0 {
		t.Errorf("task records left after the restart: %v", recs)
	}
	var local node.LocalGPUs
	testwait.For(t, cliWait, "every GPU offered again", func() (bool, string) {
		if err := gmJSON(prov.data, &local, "gpus", "local"); err != nil {
			return false, err.Error()
		}
		return local.Offer != nil && local.Offer.AvailableGPUs() == 8, fmt.Sprintf("offer %+v", local.Offer)
	})
	testwait.For(t, meshWait, "the submitter to find the 8 GPUs free", func() (bool, string) {
		res, err := findGPUs(sub.data, "--model", "H100")
		if err != nil {
			return false, err.Error()
		}
		return len(res.Matches) == 1 && res.Matches[0].GPU.Available == 8, fmt.Sprintf("%+v", res.Matches)
	})
	if len(local.InUse) != 0 {
		t.Errorf("GPUs in use after the restart: %v", local.InUse)
	}
	if len(local.Ended) != 1 || local.Ended[0].Job != j.ID || local.Ended[0].GPUs != 8 || !strings.Contains(local.Ended[0].Reason, want) {
		t.Fatalf("ended members %+v: want job %s's, saying %q", local.Ended, j.ID, want)
	}
	t.Logf("the provider's record: %s", local.Ended[0].Reason)
	out, err := gm(prov.data, "gpus", "local")
	if err != nil || !strings.Contains(string(out), "in use:  0 of 8 GPUs") || !strings.Contains(string(out), "ended at restart") {
		t.Errorf("gpus local: %v\n%s", err, out)
	}
}

func TestProviderKilledMidProcessJobLeavesNothing(t *testing.T) {
	prov, sub, provArgs, jobs := crashSwarm(t, "process")
	spec := processJob(t, `sleep 300 & echo "pids $$ $!"; wait`, nil)
	j := runningJob(t, sub, spec)
	var leader, child int
	testwait.For(t, cliWait, "the job's pids in its log", func() (bool, string) {
		out, err := gm(sub.data, "job", "logs", j.ID)
		if err != nil {
			return false, err.Error()
		}
		for _, line := range strings.Split(string(out), "\n") {
			if _, err := fmt.Sscanf(line, "[0] pids %d %d", &leader, &child); err == nil {
				return true, ""
			}
		}
		return false, string(out)
	})
	if recs, _ := filepath.Glob(filepath.Join(prov.data, "tasks", "*.json")); len(recs) != 1 {
		t.Fatalf("task records while the job runs: %v, want 1", recs)
	}
	if ents, _ := os.ReadDir(jobs); len(ents) != 1 {
		t.Fatalf("job folders while the job runs: %d, want 1", len(ents))
	}
	t.Cleanup(func() { _ = syscall.Kill(child, syscall.SIGKILL) }) // should the test fail half-way

	killProvider(t, prov, sub, j)
	// The parent-death signal took the job's first process; what it
	// started lives on until the provider is back.
	testwait.For(t, 10*time.Second, "the job's first process to die with its provider", func() (bool, string) {
		return !alive(leader), fmt.Sprintf("pid %d", leader)
	})
	if !alive(child) {
		t.Fatalf("the job's background process %d died before the provider restarted: the test shows nothing", child)
	}

	prov2 := startNode(t, "provider again", prov.data, append(provArgs, "--bootstrap", sub.bootstrapAddr(t))...)
	if alive(child) {
		t.Errorf("the job's background process %d survived the provider's restart", child)
	}
	if ents, _ := os.ReadDir(jobs); len(ents) != 0 {
		t.Errorf("job folders left after the restart: %d", len(ents))
	}
	assertRestartedClean(t, prov2, sub, j, "killed the 1 process it had left, removed its folder, freed its 8 GPUs")
}

func TestProviderKilledMidDockerJobLeavesNothing(t *testing.T) {
	testdocker.EnsureImage(t)
	prov, sub, provArgs, _ := crashSwarm(t, "docker")
	cli := testdocker.Client(t)
	owned := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", gmexec.LabelOwner+"="+prov.id.PeerID))})
		if err != nil {
			t.Fatal(err)
		}
		return len(list)
	}
	t.Cleanup(func() { removeJobContainers(t, prov.id.PeerID) })
	j := runningJob(t, sub, writeJob(t, 8, 8, `echo up; exec sleep 300`, ""))
	if n := owned(); n != 1 {
		t.Fatalf("%d containers of the provider's while the job runs, want 1", n)
	}
	killProvider(t, prov, sub, j)
	if n := owned(); n != 1 {
		t.Fatalf("%d containers after the provider was killed, want its 1 still there: the test shows nothing", n)
	}

	prov2 := startNode(t, "provider again", prov.data, append(provArgs, "--bootstrap", sub.bootstrapAddr(t))...)
	if n := owned(); n != 0 {
		t.Errorf("%d containers left after the provider's restart", n)
	}
	if ents, _ := os.ReadDir(filepath.Join(prov.data, "runs")); len(ents) != 0 {
		t.Errorf("run folders left after the restart: %d", len(ents))
	}
	assertRestartedClean(t, prov2, sub, j, "removed its container, removed its folder, freed its 8 GPUs")
}
