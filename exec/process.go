package exec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	osexec "os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// processDrainTimeout is how long Run waits, once the work's process group is
// gone, for the last of its output: only a process that left the group (a
// daemon that called setsid) can hold the output open that long.
const processDrainTimeout = 2 * time.Second

// defaultPath is the PATH of a task when this peer has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Process runs tasks as plain processes, as User (or this peer's own user
// when nil), each in its own process group with a parent-death signal
// (SIGKILL: the work's first process dies with this peer), and with no
// other isolation: no container, no network isolation (Task.Network is
// ignored: the work has the host's network, unless Task.JoinNet gives it
// its job's own in a namespace of its own), no
// memory or CPU limits (Task.Memory and Task.CPUs are ignored) and the same
// view of the host's GPUs as this peer, bounded only by the
// NVIDIA_VISIBLE_DEVICES and CUDA_VISIBLE_DEVICES it is given. It is for
// trusted private swarms, whose members run each other's code anyway.
// The zero value is ready to use.
type Process struct {
	// User, when set, is the unprivileged account the work runs as (this
	// peer must be root to switch to it), with no supplementary groups; the
	// caller gives it WorkDir and Outputs. nil: this peer's own user.
	User *JobUser
}

var _ Executor = Process{}

// Name is "process".
func (Process) Name() string { return "process" }

// Run runs t.Command in t.WorkDir, with HOME=t.WorkDir and
// GPUMESH_OUTPUTS=t.Outputs. A timeout or a cancelled ctx sends SIGTERM to
// the whole process group, then SIGKILL after StopGrace; when the command
// ends, whatever it left running in its group is killed.
//
// The work's first process gets SIGKILL when this peer dies, but what it
// started lives on: Task.Spawned is told the group before the work goes on,
// so a provider can record it and kill the rest (KillGroup) when it starts
// again.
func (p Process) Run(ctx context.Context, t Task) (Result, error) {
	if len(t.Command) == 0 || t.Command[0] == "" {
		return Result{}, fmt.Errorf("process executor: task %q has no command; the process executor needs one (it has no image entrypoint to fall back on)", t.Name)
	}
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("process executor: task %q was cancelled before it started: %w", t.Name, err)
	}
	outputs := t.Outputs
	if outputs != "" {
		if abs, err := filepath.Abs(outputs); err == nil {
			outputs = abs
		}
	}

	argv := t.Command
	if t.JoinNet != nil {
		argv = joinNetCommand(argv)
	}
	cmd := osexec.Command(argv[0], argv[1:]...)
	cmd.Dir = t.WorkDir
	cmd.Env = processEnv(t, outputs)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if t.JoinNet != nil {
		// A network namespace of its own, empty until JoinNet fills it.
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNET
	}
	if p.User != nil {
		// The kernel clears a parent-death signal when the credentials
		// change; Go sets it after switching user, so it holds.
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: p.User.UID, Gid: p.User.GID, Groups: []uint32{}}
	}

	// Our own pipes, not os/exec's: Wait then returns when the process ends,
	// and the output is drained after the rest of its group is killed, so a
	// background child holding the pipe open cannot hang Run.
	stdout, stderr := orDiscard(t.Stdout), orDiscard(t.Stderr)
	type stream struct {
		r *os.File
		w io.Writer
	}
	var streams []stream
	var childEnds []*os.File
	closeAll := func() {
		for _, f := range childEnds {
			_ = f.Close()
		}
		for _, s := range streams {
			_ = s.r.Close()
		}
	}
	pipe := func(w io.Writer) (*os.File, error) {
		r, pw, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("process executor: making an output pipe for task %q: %w", t.Name, err)
		}
		streams = append(streams, stream{r, w})
		childEnds = append(childEnds, pw)
		return pw, nil
	}
	var err error
	if cmd.Stdout, err = pipe(stdout); err != nil {
		closeAll()
		return Result{}, err
	}
	if sameWriter(stdout, stderr) {
		cmd.Stderr = cmd.Stdout // one pipe, so the two never write at once
	} else if cmd.Stderr, err = pipe(stderr); err != nil {
		closeAll()
		return Result{}, err
	}

	// The parent-death signal fires when the thread that forked the work
	// ends, not this process: the thread that starts it is locked to its
	// goroutine, which lives until the work has ended.
	type spawned struct {
		group ProcessGroup
		err   error
	}
	spawn := make(chan spawned, 1)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			spawn <- spawned{err: err}
			return
		}
		// Not waited for yet, so /proc still has the leader even if it ended.
		g, err := GroupOf(cmd.Process.Pid)
		if err != nil {
			g = ProcessGroup{PGID: cmd.Process.Pid, Boot: bootID()}
		}
		spawn <- spawned{group: g}
		done <- cmd.Wait()
	}()
	sp := <-spawn
	if sp.err != nil {
		closeAll()
		return Result{}, fmt.Errorf("process executor: starting task %q (command %q in %q): %w; check that the command exists on this host and is executable", t.Name, t.Command, t.WorkDir, sp.err)
	}
	pgid := sp.group.PGID
	if t.Spawned != nil {
		if err := t.Spawned(sp.group); err != nil {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-done
			closeAll()
			return Result{}, fmt.Errorf("process executor: task %q stopped before its work began: %w", t.Name, err)
		}
	}
	if t.JoinNet != nil {
		if err := t.JoinNet(pgid); err != nil { // the group's leader is the first process
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-done
			closeAll()
			return Result{}, fmt.Errorf("process executor: task %q: its job network: %w", t.Name, err)
		}
	}
	res := Result{Start: time.Now()}
	for _, f := range childEnds {
		_ = f.Close() // the child has them; EOF comes when the last holder ends
	}
	copied := make(chan struct{}, len(streams))
	for _, s := range streams {
		go func() {
			if _, err := io.Copy(s.w, s.r); err != nil && !errors.Is(err, os.ErrClosed) {
				_, _ = io.Copy(io.Discard, s.r) // a failing writer must not block the work
			}
			copied <- struct{}{}
		}()
	}
	// Known before Started says so: a caller may Exec into it from then.
	running.Store(t.Name, &procTask{pgid: pgid, dir: t.WorkDir, env: cmd.Env, user: p.User, ownNet: t.JoinNet != nil, ttys: map[int]bool{}})
	defer running.Delete(t.Name)
	if t.Started != nil {
		t.Started(res.Start)
	}

	var waitErr error
	waitErr, res.TimedOut, res.Stopped = awaitWork(ctx, t.Timeout, done)
	if res.TimedOut || res.Stopped {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		_ = syscall.Kill(-pgid, syscall.SIGCONT) // a paused task takes its SIGTERM too
		grace := time.NewTimer(StopGrace)
		select {
		case waitErr = <-done:
			grace.Stop()
		case <-grace.C:
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			waitErr = <-done
		}
	}
	res.End = time.Now()
	// The work has ended: nothing it started outlives it.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)

	drain := time.NewTimer(processDrainTimeout)
	defer drain.Stop()
	for range streams {
		select {
		case <-copied:
		case <-drain.C:
			for _, s := range streams {
				_ = s.r.Close() // unblocks the copiers
			}
			drain.Reset(time.Hour)
		}
	}
	for _, s := range streams {
		_ = s.r.Close()
	}

	var exitErr *osexec.ExitError
	if waitErr != nil && !errors.As(waitErr, &exitErr) {
		return res, fmt.Errorf("process executor: waiting for task %q (pid %d): %w", t.Name, pgid, waitErr)
	}
	res.ExitCode = exitCode(cmd.ProcessState)
	return res, nil
}

// processEnv is a process task's environment: a minimal base (PATH, HOME,
// LANG), then the job's variables, then the ones gpumesh sets.
func processEnv(t Task, outputs string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	home := t.WorkDir
	if home == "" {
		home = os.Getenv("HOME")
	}
	base := map[string]string{"PATH": path, "HOME": home, "LANG": "C.UTF-8"}
	env := make(map[string]string, len(base)+len(t.Env))
	for k, v := range base {
		env[k] = v
	}
	for k, v := range t.Env {
		env[k] = v
	}
	t.Env = env
	return taskEnv(t, outputs)
}

// exitCode is a process's exit status, 128+signal when a signal killed it.
func exitCode(ps *os.ProcessState) int {
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// sameWriter reports whether a and b are the same writer; writers of types
// that cannot be compared are taken as different.
func sameWriter(a, b io.Writer) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// running maps the names of the process tasks running now to their process
// groups, for Pause and Resume.
var running sync.Map

// Pause stops a running task's whole process group (SIGSTOP): it keeps its
// memory and GPUs but does no work until Resume.
func (Process) Pause(_ context.Context, name string) error { return signalTask(name, syscall.SIGSTOP) }

// Resume lets a paused task go on (SIGCONT).
func (Process) Resume(_ context.Context, name string) error { return signalTask(name, syscall.SIGCONT) }

func signalTask(name string, sig syscall.Signal) error {
	v, ok := running.Load(name)
	if !ok {
		return fmt.Errorf("process executor: no task %q is running", name)
	}
	if err := syscall.Kill(-v.(*procTask).pgid, sig); err != nil {
		return fmt.Errorf("process executor: %s task %q: %w", sig, name, err)
	}
	return nil
}
