package exec_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/internal/testwait"
)

// A subject is one Executor the contract runs against, and what the contract
// needs to know of it. Each executor's test file makes its own.
type subject struct {
	name string
	// zero is a value whose Name works with nothing started.
	zero exec.Executor
	// start gives a ready executor, or skips (fails on CI) the test when its
	// engine is missing.
	start func(t *testing.T) exec.Executor
	// task is a task running `sh -c script`, its folders made.
	task func(t *testing.T, script string) exec.Task
	// outputsSeen is $GPUMESH_OUTPUTS as the task's work sees it.
	outputsSeen func(task exec.Task) string
	// paused says whether the task's work is frozen now. Scripts that pause
	// write their shell's pid ($$) to $GPUMESH_OUTPUTS/pid first.
	paused func(t *testing.T, task exec.Task) bool
	// assertNothingLeft fails t if anything of a task that Run has returned
	// from is left: its container, or a process of its group. A script that
	// starts a background child writes its pid to $GPUMESH_OUTPUTS/child.
	assertNothingLeft func(t *testing.T, task exec.Task)
}

var _ = []exec.Pauser{exec.Process{}, (*exec.Docker)(nil)}

// Every executor keeps this contract (see exec.Executor).
var contract = []struct {
	name  string
	check func(t *testing.T, s subject)
}{
	{"name", contractName},
	{"gpus-env-and-outputs", contractGPUsEnvAndOutputs},
	{"no-gpus", contractNoGPUs},
	{"exit-codes", contractExitCodes},
	{"bad-command", contractBadCommand},
	{"shared-writer", contractSharedWriter},
	{"logs-arrive-as-written", contractLogsArriveAsWritten},
	{"no-output-lost", contractNoOutputLost},
	{"timeout", contractTimeout},
	{"cancel", contractCancel},
	{"cancelled-before-start", contractCancelledBeforeStart},
	{"stubborn-work-is-killed", contractStubbornWorkIsKilled},
	{"leftover-children-do-not-hang-run", contractLeftoverChildren},
	{"pause-resume", contractPauseResume},
	{"cancel-while-paused", contractCancelWhilePaused},
	{"pause-unknown-task", contractPauseUnknownTask},
}

func TestExecutorContract(t *testing.T) {
	// A variable of the peer's that no task may see.
	t.Setenv("GPUMESH_TEST_PEER_SECRET", "leaked")
	for _, s := range []subject{dockerSubject(), processSubject()} {
		t.Run(s.name, func(t *testing.T) {
			for _, c := range contract {
				t.Run(c.name, func(t *testing.T) {
					t.Parallel()
					c.check(t, s)
				})
			}
		})
	}
}

// run runs task to its end, failing t on an error.
func (s subject) run(t *testing.T, ctx context.Context, task exec.Task) exec.Result {
	t.Helper()
	res, err := s.start(t).Run(ctx, task)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// assertChildWasStarted fails t unless the task's script got as far as
// starting its background child (so the leftover check checks something).
func assertChildWasStarted(t *testing.T, task exec.Task) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(task.Outputs, "child")); err != nil {
		t.Fatalf("the task did not start its background child: %v", err)
	}
}

func contractName(t *testing.T, s subject) {
	if got := s.zero.Name(); got != s.name {
		t.Errorf("Name() = %q, want %q", got, s.name)
	}
}

func contractGPUsEnvAndOutputs(t *testing.T, s subject) {
	e := s.start(t)
	task := s.task(t, `echo "nv=$NVIDIA_VISIBLE_DEVICES"; echo "cuda=$CUDA_VISIBLE_DEVICES"; echo "job=$JOB_VAR"; echo "out=$GPUMESH_OUTPUTS"; echo "secret=$GPUMESH_TEST_PEER_SECRET"; echo hello > "$GPUMESH_OUTPUTS/result.txt"; echo oops >&2`)
	task.GPUs = []string{"GPU-5b3c0d1e-aaaa-1111", "GPU-7f2a9c4b-bbbb-2222"}
	// The job cannot widen its GPUs.
	task.Env = map[string]string{"JOB_VAR": "x y", "NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
	stdout, stderr := newSyncBuf(), newSyncBuf()
	task.Stdout, task.Stderr = stdout, stderr
	var started atomic.Int32
	var startedAt atomic.Value
	task.Started = func(at time.Time) { started.Add(1); startedAt.Store(at) }

	before := time.Now()
	res, err := e.Run(context.Background(), task)
	if err != nil {
		t.Fatal(err)
	}
	want := "nv=GPU-5b3c0d1e-aaaa-1111,GPU-7f2a9c4b-bbbb-2222\ncuda=GPU-5b3c0d1e-aaaa-1111,GPU-7f2a9c4b-bbbb-2222\njob=x y\nout=" + s.outputsSeen(task) + "\nsecret=\n"
	if got := stdout.String(); got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
	if got := stderr.String(); got != "oops\n" {
		t.Errorf("stderr = %q, want %q", got, "oops\n")
	}
	if res.ExitCode != 0 || res.TimedOut || res.Stopped {
		t.Errorf("result = %+v, want exit 0", res)
	}
	if b, err := os.ReadFile(filepath.Join(task.Outputs, "result.txt")); err != nil || string(b) != "hello\n" {
		t.Errorf("output file: %q, %v", b, err)
	}
	if n := started.Load(); n != 1 {
		t.Errorf("Started called %d times, want 1", n)
	}
	if at, _ := startedAt.Load().(time.Time); !at.Equal(res.Start) {
		t.Errorf("Started(%v), Result.Start %v", at, res.Start)
	}
	// An engine's clock is this host's: allow a little for its rounding.
	if res.Start.Before(before.Add(-time.Second)) || res.End.Before(res.Start) || res.End.After(time.Now().Add(time.Second)) {
		t.Errorf("times: start %v end %v (run began %v)", res.Start, res.End, before)
	}
	s.assertNothingLeft(t, task)
}

func contractNoGPUs(t *testing.T, s subject) {
	task := s.task(t, `echo "nv=$NVIDIA_VISIBLE_DEVICES"; echo "cuda=${CUDA_VISIBLE_DEVICES-unset}"`)
	out := newSyncBuf()
	task.Stdout = out
	s.run(t, context.Background(), task)
	if got := out.String(); got != "nv=void\ncuda=\n" {
		t.Errorf("stdout = %q, want NVIDIA_VISIBLE_DEVICES=void and CUDA_VISIBLE_DEVICES set and empty", got)
	}
}

func contractExitCodes(t *testing.T, s subject) {
	for _, tc := range []struct {
		script string
		want   int
	}{
		{"exit 0", 0},
		{"echo bye; exit 3", 3},
		{"kill -9 $$", 128 + 9},
		{"kill -TERM $$", 128 + 15},
	} {
		task := s.task(t, tc.script)
		res := s.run(t, context.Background(), task)
		if res.ExitCode != tc.want || res.TimedOut || res.Stopped {
			t.Errorf("%s: result %+v, want exit %d", tc.script, res, tc.want)
		}
		s.assertNothingLeft(t, task)
	}
}

func contractBadCommand(t *testing.T, s subject) {
	task := s.task(t, "")
	task.Command = []string{"/no/such/program"}
	_, err := s.start(t).Run(context.Background(), task)
	if err == nil || !strings.Contains(err.Error(), task.Name) || !strings.Contains(err.Error(), "/no/such/program") {
		t.Errorf("err = %v, want an error naming the task and the missing program", err)
	}
	s.assertNothingLeft(t, task)
}

// A writer given as both Stdout and Stderr gets both streams. (Their order is
// the process executor's alone: one pipe; see its tests.)
func contractSharedWriter(t *testing.T, s subject) {
	task := s.task(t, `echo a; echo b >&2; echo c`)
	out := newSyncBuf()
	task.Stdout, task.Stderr = out, out
	s.run(t, context.Background(), task)
	got := strings.Fields(out.String())
	slices.Sort(got)
	if !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("output = %q, want a, b and c", out.String())
	}
}

func contractLogsArriveAsWritten(t *testing.T, s subject) {
	task := s.task(t, "echo first; sleep 30; echo never")
	out := newSyncBuf()
	task.Stdout = out
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := goRun(ctx, s.start(t), task)
	select {
	case <-out.first:
	case r := <-done:
		t.Fatalf("Run ended (%+v, %v) before any output was seen", r.res, r.err)
	case <-time.After(25 * time.Second):
		t.Fatal("no output within 25s of a task that prints at once")
	}
	select {
	case r := <-done:
		t.Fatalf("the task ended (%+v, %v): output came only at its end", r.res, r.err)
	default:
	}
	cancel()
	r := await(t, done, time.Minute, "Run's return after cancel")
	if r.err != nil || !r.res.Stopped {
		t.Errorf("result = %+v, %v", r.res, r.err)
	}
	if got := out.String(); got != "first\n" {
		t.Errorf("stdout = %q", got)
	}
	s.assertNothingLeft(t, task)
}

// Short work that writes a lot and ends at once loses none of it.
func contractNoOutputLost(t *testing.T, s subject) {
	e := s.start(t)
	for i := range 3 {
		task := s.task(t, `i=0; while [ $i -lt 2000 ]; do echo "line $i"; i=$((i+1)); done; echo done >&2`)
		out, errOut := newSyncBuf(), newSyncBuf()
		task.Stdout, task.Stderr = out, errOut
		if _, err := e.Run(context.Background(), task); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(lines) != 2000 || lines[0] != "line 0" || lines[1999] != "line 1999" {
			t.Errorf("run %d: %d lines of stdout, want 2000", i, len(lines))
		}
		if errOut.String() != "done\n" {
			t.Errorf("run %d: stderr %q", i, errOut.String())
		}
	}
	task := s.task(t, "echo quick")
	out := newSyncBuf()
	task.Stdout = out
	if _, err := e.Run(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	if out.String() != "quick\n" {
		t.Errorf("stdout = %q", out.String())
	}
}

func contractTimeout(t *testing.T, s subject) {
	task := s.task(t, `sleep 300 & echo $! > "$GPUMESH_OUTPUTS/child"; sleep 60`)
	task.Timeout = time.Second
	begin := time.Now()
	res := s.run(t, context.Background(), task)
	if el := time.Since(begin); el > 30*time.Second {
		t.Errorf("Run took %v for a 1s timeout", el)
	}
	if !res.TimedOut || res.Stopped || res.ExitCode != 128+15 {
		t.Errorf("result = %+v, want timed out by SIGTERM (143)", res)
	}
	assertChildWasStarted(t, task)
	s.assertNothingLeft(t, task)
}

func contractCancel(t *testing.T, s subject) {
	task := s.task(t, `sleep 300 & echo $! > "$GPUMESH_OUTPUTS/child"; echo ready; wait`)
	out := newSyncBuf()
	task.Stdout = out
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := goRun(ctx, s.start(t), task)
	await(t, out.first, time.Minute, "the task's first output")
	cancel()
	r := await(t, done, time.Minute, "Run's return after cancel")
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !r.res.Stopped || r.res.TimedOut || r.res.ExitCode != 128+15 {
		t.Errorf("result = %+v, want stopped by SIGTERM (143)", r.res)
	}
	assertChildWasStarted(t, task)
	s.assertNothingLeft(t, task)
}

func contractCancelledBeforeStart(t *testing.T, s subject) {
	e := s.start(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	task := s.task(t, "echo no")
	var started atomic.Bool
	task.Started = func(time.Time) { started.Store(true) }
	if _, err := e.Run(ctx, task); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if started.Load() {
		t.Error("a cancelled task started")
	}
	s.assertNothingLeft(t, task)
}

// Work that ignores SIGTERM is killed StopGrace later.
func contractStubbornWorkIsKilled(t *testing.T, s subject) {
	if testing.Short() {
		t.Skip("waits StopGrace")
	}
	task := s.task(t, `trap "" TERM; echo ready; while :; do sleep 1; done`)
	out := newSyncBuf()
	task.Stdout = out
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := goRun(ctx, s.start(t), task)
	await(t, out.first, time.Minute, "the task's first output")
	cancel()
	r := await(t, done, exec.StopGrace+time.Minute, "Run's return after cancel")
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !r.res.Stopped || r.res.ExitCode != 128+9 {
		t.Errorf("result = %+v, want stopped by SIGKILL (137)", r.res)
	}
	s.assertNothingLeft(t, task)
}

// Work that ends at once but leaves a child holding its stdout: Run returns,
// with all the output, and the child is gone.
func contractLeftoverChildren(t *testing.T, s subject) {
	task := s.task(t, `sleep 300 & echo $! > "$GPUMESH_OUTPUTS/child"; echo bye`)
	out := newSyncBuf()
	task.Stdout = out
	r := await(t, goRun(context.Background(), s.start(t), task), 30*time.Second, "Run's return")
	if r.err != nil || r.res.ExitCode != 0 {
		t.Fatalf("result = %+v, %v", r.res, r.err)
	}
	if out.String() != "bye\n" {
		t.Errorf("stdout = %q", out.String())
	}
	assertChildWasStarted(t, task)
	s.assertNothingLeft(t, task)
}

// pausableTask is a task that says "ready", then waits for a line on the
// FIFO $GPUMESH_OUTPUTS/go, says "done" and ends.
func pausableTask(t *testing.T, s subject) (exec.Task, *syncBuf) {
	t.Helper()
	task := s.task(t, `echo $$ > "$GPUMESH_OUTPUTS/pid"; echo ready; read x < "$GPUMESH_OUTPUTS/go"; echo done`)
	if err := syscall.Mkfifo(filepath.Join(task.Outputs, "go"), 0o666); err != nil {
		t.Fatal(err)
	}
	out := newSyncBuf()
	task.Stdout = out
	return task, out
}

// letGo writes the line a pausableTask waits for, waiting at most d for the
// task to open its end.
func letGo(t *testing.T, task exec.Task, d time.Duration) {
	t.Helper()
	fifo := filepath.Join(task.Outputs, "go")
	wrote := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0) // blocks until the task opens it
		if err == nil {
			_, err = f.WriteString("go\n")
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		wrote <- err
	}()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(d):
		// Unblock the writer before failing.
		if f, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			_ = f.Close()
		}
		t.Fatalf("the task did not read its FIFO within %v", d)
	}
}

func contractPauseResume(t *testing.T, s subject) {
	e := s.start(t)
	p := e.(exec.Pauser)
	task, out := pausableTask(t, s)
	done := goRun(context.Background(), e, task)
	await(t, out.first, time.Minute, "the task's first output")
	ctx := context.Background()
	if err := p.Pause(ctx, task.Name); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 30*time.Second, "the pause", func() bool { return s.paused(t, task) })
	if err := p.Resume(ctx, task.Name); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 30*time.Second, "the resume", func() bool { return !s.paused(t, task) })
	letGo(t, task, 30*time.Second)
	r := await(t, done, time.Minute, "Run's return")
	if r.err != nil || r.res.ExitCode != 0 || r.res.Stopped || r.res.TimedOut {
		t.Errorf("result = %+v, %v, want exit 0", r.res, r.err)
	}
	if got := out.String(); got != "ready\ndone\n" {
		t.Errorf("stdout = %q", got)
	}
	s.assertNothingLeft(t, task)
}

// A paused task still stops when its ctx is cancelled: it takes its SIGTERM.
func contractCancelWhilePaused(t *testing.T, s subject) {
	e := s.start(t)
	task, out := pausableTask(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := goRun(ctx, e, task)
	await(t, out.first, time.Minute, "the task's first output")
	if err := e.(exec.Pauser).Pause(context.Background(), task.Name); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 30*time.Second, "the pause", func() bool { return s.paused(t, task) })
	cancel()
	r := await(t, done, exec.StopGrace+time.Minute, "Run's return after cancel")
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !r.res.Stopped || r.res.ExitCode != 128+15 {
		t.Errorf("result = %+v, want stopped by SIGTERM (143)", r.res)
	}
	s.assertNothingLeft(t, task)
}

func contractPauseUnknownTask(t *testing.T, s subject) {
	p := s.start(t).(exec.Pauser)
	name := taskName(t)
	if err := p.Pause(context.Background(), name); err == nil {
		t.Errorf("Pause of no task %q: no error", name)
	}
	if err := p.Resume(context.Background(), name); err == nil {
		t.Errorf("Resume of no task %q: no error", name)
	}
}
