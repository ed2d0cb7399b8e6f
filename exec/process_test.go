package exec_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec"
)

// processTask is a task running /bin/sh -c script on this host.
func processTask(t *testing.T, script string) exec.Task {
	return exec.Task{
		Name:    taskName(t),
		Command: []string{"/bin/sh", "-c", script},
		WorkDir: t.TempDir(),
		Outputs: t.TempDir(),
	}
}

// processGone reports whether pid has ended: no such process, or a zombie
// waiting for whoever inherited it to reap it.
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	rest := b[bytes.LastIndexByte(b, ')')+1:]
	f := strings.Fields(string(rest))
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// sysPidfdOpen is pidfd_open(2), the same number on every Linux arch.
const sysPidfdOpen = 434

// waitGone waits up to d for pid to end and says whether it did. A process
// SIGKILLed a moment ago may still be on its way out (its files, pipes
// included, are closed before it becomes a zombie), so the tests wait for
// the exit itself: a pidfd turns readable when the process has ended.
func waitGone(t *testing.T, pid int, d time.Duration) bool {
	t.Helper()
	fd, _, errno := syscall.Syscall(sysPidfdOpen, uintptr(pid), 0, 0)
	if errno == syscall.ESRCH {
		return true
	}
	if errno != 0 { // no pidfds (Linux < 5.3): look now, and once more at the deadline
		if processGone(pid) {
			return true
		}
		<-time.After(d)
		return processGone(pid)
	}
	defer syscall.Close(int(fd))
	deadline := time.Now().Add(d)
	for {
		var set syscall.FdSet
		set.Bits[fd/64] |= 1 << (fd % 64)
		tv := syscall.NsecToTimeval(max(time.Until(deadline), 0).Nanoseconds())
		n, err := syscall.Select(int(fd)+1, &set, nil, nil, &tv)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("select on the pidfd of %d: %v", pid, err)
		}
		return n > 0
	}
}

// readPid reads the pid a task wrote to file.
func readPid(t *testing.T, file string) int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("pid file %s: %q", file, b)
	}
	return pid
}

func TestProcessName(t *testing.T) {
	var p exec.Process
	if p.Name() != "process" {
		t.Errorf("Name() = %q", p.Name())
	}
}

func TestProcessRunsATaskWithItsGPUsEnvAndOutputs(t *testing.T) {
	t.Setenv("GPUMESH_TEST_PEER_SECRET", "leaked")
	task := processTask(t, `echo "nv=$NVIDIA_VISIBLE_DEVICES"; echo "cuda=$CUDA_VISIBLE_DEVICES"; echo "job=$JOB_VAR"; echo "out=$GPUMESH_OUTPUTS"; echo "home=$HOME"; echo "pwd=$(pwd)"; echo "secret=$GPUMESH_TEST_PEER_SECRET"; echo hello > "$GPUMESH_OUTPUTS/result.txt"; echo oops >&2`)
	task.GPUs = []string{"GPU-5b3c0d1e-aaaa-1111", "GPU-7f2a9c4b-bbbb-2222"}
	task.Env = map[string]string{"JOB_VAR": "x y", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
	stdout, stderr := newSyncBuf(), newSyncBuf()
	task.Stdout, task.Stderr = stdout, stderr
	var started atomic.Int32
	task.Started = func(time.Time) { started.Add(1) }

	res, err := exec.Process{}.Run(context.Background(), task)
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := filepath.EvalSymlinks(task.WorkDir)
	want := "nv=GPU-5b3c0d1e-aaaa-1111,GPU-7f2a9c4b-bbbb-2222\ncuda=GPU-5b3c0d1e-aaaa-1111,GPU-7f2a9c4b-bbbb-2222\njob=x y\nout=" + task.Outputs + "\nhome=" + task.WorkDir + "\npwd=" + wd + "\nsecret=\n"
	if got := stdout.String(); got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
	if got := stderr.String(); got != "oops\n" {
		t.Errorf("stderr = %q", got)
	}
	if res.ExitCode != 0 || res.TimedOut || res.Stopped || res.End.Before(res.Start) || res.Start.IsZero() {
		t.Errorf("result = %+v", res)
	}
	if b, err := os.ReadFile(filepath.Join(task.Outputs, "result.txt")); err != nil || string(b) != "hello\n" {
		t.Errorf("output file: %q, %v", b, err)
	}
	if n := started.Load(); n != 1 {
		t.Errorf("Started called %d times", n)
	}
}

func TestProcessNoGPUs(t *testing.T) {
	task := processTask(t, `echo "nv=$NVIDIA_VISIBLE_DEVICES"; echo "cuda=${CUDA_VISIBLE_DEVICES-unset}"`)
	out := newSyncBuf()
	task.Stdout = out
	if _, err := (exec.Process{}).Run(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "nv=void\ncuda=\n" {
		t.Errorf("stdout = %q", got)
	}
}

func TestProcessSharedWriterGetsBothStreams(t *testing.T) {
	task := processTask(t, `echo a; echo b >&2; echo c`)
	out := newSyncBuf()
	task.Stdout, task.Stderr = out, out
	if _, err := (exec.Process{}).Run(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "a\nb\nc\n" {
		t.Errorf("output = %q", got)
	}
}

func TestProcessExitCodes(t *testing.T) {
	for _, tc := range []struct {
		script string
		want   int
	}{
		{"exit 0", 0},
		{"exit 3", 3},
		{"kill -9 $$", 128 + 9},
		{"kill -TERM $$", 128 + 15},
	} {
		res, err := exec.Process{}.Run(context.Background(), processTask(t, tc.script))
		if err != nil {
			t.Fatalf("%s: %v", tc.script, err)
		}
		if res.ExitCode != tc.want || res.TimedOut || res.Stopped {
			t.Errorf("%s: result %+v, want exit %d", tc.script, res, tc.want)
		}
	}
}

func TestProcessNeedsACommand(t *testing.T) {
	task := processTask(t, "")
	task.Command = nil
	_, err := exec.Process{}.Run(context.Background(), task)
	if err == nil || !strings.Contains(err.Error(), "needs") {
		t.Errorf("err = %v, want one saying the process executor needs a command", err)
	}
	task.Command = []string{"/no/such/program"}
	if _, err = (exec.Process{}).Run(context.Background(), task); err == nil || !strings.Contains(err.Error(), "/no/such/program") {
		t.Errorf("err = %v, want one naming the missing program", err)
	}
}

func TestProcessTimeoutKillsTheGroup(t *testing.T) {
	task := processTask(t, `sleep 300 & echo $! > "$GPUMESH_OUTPUTS/child"; sleep 60`)
	task.Timeout = 300 * time.Millisecond
	begin := time.Now()
	res, err := exec.Process{}.Run(context.Background(), task)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(begin); el > 30*time.Second {
		t.Errorf("Run took %v for a 300ms timeout", el)
	}
	if !res.TimedOut || res.Stopped || res.ExitCode != 128+15 {
		t.Errorf("result = %+v, want timed out by SIGTERM (143)", res)
	}
	if pid := readPid(t, filepath.Join(task.Outputs, "child")); !waitGone(t, pid, 10*time.Second) {
		t.Errorf("the task's background child %d outlived it", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func TestProcessCancelKillsTheGroup(t *testing.T) {
	task := processTask(t, `sleep 300 & echo $! > "$GPUMESH_OUTPUTS/child"; echo ready; wait`)
	out := newSyncBuf()
	task.Stdout = out
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := goRun(ctx, exec.Process{}, task)
	await(t, out.first, time.Minute, "the task's first output")
	cancel()
	r := await(t, done, time.Minute, "Run's return after cancel")
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !r.res.Stopped || r.res.TimedOut || r.res.ExitCode != 128+15 {
		t.Errorf("result = %+v, want stopped by SIGTERM (143)", r.res)
	}
	if pid := readPid(t, filepath.Join(task.Outputs, "child")); !waitGone(t, pid, 10*time.Second) {
		t.Errorf("the task's background child %d outlived it", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func TestProcessStubbornWorkIsKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("waits StopGrace")
	}
	task := processTask(t, `trap "" TERM; echo ready; while :; do sleep 1; done`)
	out := newSyncBuf()
	task.Stdout = out
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := goRun(ctx, exec.Process{}, task)
	await(t, out.first, time.Minute, "the task's first output")
	cancel()
	r := await(t, done, exec.StopGrace+time.Minute, "Run's return after cancel")
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !r.res.Stopped || r.res.ExitCode != 128+9 {
		t.Errorf("result = %+v, want stopped by SIGKILL (137)", r.res)
	}
}

func TestProcessLeftoverChildrenDoNotHangRun(t *testing.T) {
	// The command ends at once but leaves a child holding its stdout.
	task := processTask(t, `sleep 300 & echo $! > "$GPUMESH_OUTPUTS/child"; echo bye`)
	out := newSyncBuf()
	task.Stdout = out
	done := goRun(context.Background(), exec.Process{}, task)
	r := await(t, done, 30*time.Second, "Run's return")
	if r.err != nil || r.res.ExitCode != 0 {
		t.Fatalf("result = %+v, %v", r.res, r.err)
	}
	if out.String() != "bye\n" {
		t.Errorf("stdout = %q", out.String())
	}
	if pid := readPid(t, filepath.Join(task.Outputs, "child")); !waitGone(t, pid, 10*time.Second) {
		t.Errorf("the task's background child %d outlived it", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func TestProcessLogsArriveAsWritten(t *testing.T) {
	task := processTask(t, "echo first; sleep 30; echo never")
	out := newSyncBuf()
	task.Stdout = out
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := goRun(ctx, exec.Process{}, task)
	select {
	case <-out.first:
	case r := <-done:
		t.Fatalf("Run ended (%+v, %v) before any output was seen", r.res, r.err)
	case <-time.After(25 * time.Second):
		t.Fatal("no output within 25s of a task that prints at once")
	}
	cancel()
	r := await(t, done, time.Minute, "Run's return after cancel")
	if r.err != nil || !r.res.Stopped {
		t.Errorf("result = %+v, %v", r.res, r.err)
	}
	if got := out.String(); got != "first\n" {
		t.Errorf("stdout = %q", got)
	}
}

func TestProcessCancelledBeforeStart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	task := processTask(t, "echo no")
	var started atomic.Bool
	task.Started = func(time.Time) { started.Store(true) }
	if _, err := (exec.Process{}).Run(ctx, task); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if started.Load() {
		t.Error("a cancelled task started")
	}
}
