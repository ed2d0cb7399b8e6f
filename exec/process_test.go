package exec_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/internal/testwait"
)

// processTask is a task running /bin/sh -c script on this host.
// tunJoinNet is a task's JoinNet as a provider's job network would do it:
// loopback up, and the job interface, a TUN device, with 10.9.0.2/16.
func tunJoinNet(pid int) error {
	out, err := osexec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "sh", "-c",
		"ip link set lo up && ip tuntap add dev "+exec.JoinNetIface+" mode tun && ip addr add 10.9.0.2/16 dev "+exec.JoinNetIface+" && ip link set "+exec.JoinNetIface+" up").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// startTask runs task in the background and returns once it has started;
// at the test's end the task is stopped and waited for.
func startTask(t *testing.T, task exec.Task) context.Context {
	t.Helper()
	started := make(chan struct{})
	task.Started = func(time.Time) { close(started) }
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	ran := make(chan error, 1)
	go func() {
		_, err := exec.Process{}.Run(ctx, task)
		ran <- err
	}()
	t.Cleanup(func() {
		cancel()
		<-ran
	})
	select {
	case <-started:
	case err := <-ran:
		t.Fatalf("the task ended before it started: %v", err)
	}
	return ctx
}

func processTask(t *testing.T, script string) exec.Task {
	return exec.Task{
		Name:    taskName(t),
		Command: []string{"/bin/sh", "-c", script},
		WorkDir: t.TempDir(),
		Outputs: t.TempDir(),
	}
}

// processState is the state letter of pid in /proc/PID/stat ("R", "S", "T"
// stopped, "Z" zombie...), or "" when there is no such process.
func processState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// processGone reports whether pid has ended: no such process, or a zombie
// waiting for whoever inherited it to reap it.
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	switch processState(pid) {
	case "", "Z", "X":
		return true
	}
	return false
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

// processSubject is the process executor, for the contract.
func processSubject() subject {
	return subject{
		name:        "process",
		zero:        exec.Process{},
		start:       func(*testing.T) exec.Executor { return exec.Process{} },
		task:        processTask,
		outputsSeen: func(task exec.Task) string { return task.Outputs },
		paused: func(t *testing.T, task exec.Task) bool {
			return processState(readPid(t, filepath.Join(task.Outputs, "pid"))) == "T"
		},
		// Nothing of the task's process group is left: its shell, nor the
		// background child it started.
		assertNothingLeft: func(t *testing.T, task exec.Task) {
			t.Helper()
			for _, f := range []string{"pid", "child"} {
				file := filepath.Join(task.Outputs, f)
				if _, err := os.Stat(file); err != nil {
					continue
				}
				if pid := readPid(t, file); !waitGone(t, pid, 10*time.Second) {
					t.Errorf("process %d of the task (%s) outlived it", pid, f)
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		},
	}
}

func TestProcessRunsInItsWorkDir(t *testing.T) {
	task := processTask(t, `echo "home=$HOME"; echo "pwd=$(pwd)"`)
	out := newSyncBuf()
	task.Stdout = out
	if _, err := (exec.Process{}).Run(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	wd, _ := filepath.EvalSymlinks(task.WorkDir)
	if got, want := out.String(), "home="+task.WorkDir+"\npwd="+wd+"\n"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
}

// One writer for both streams gets one pipe: the lines keep their order.
func TestProcessSharedWriterKeepsTheOrder(t *testing.T) {
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

func TestProcessNeedsACommand(t *testing.T) {
	task := processTask(t, "")
	task.Command = nil
	_, err := exec.Process{}.Run(context.Background(), task)
	if err == nil || !strings.Contains(err.Error(), "needs") {
		t.Errorf("err = %v, want one saying the process executor needs a command", err)
	}
}

// jobUserDirs makes a work and an outputs folder that the job user owns, in
// a folder it may enter, and returns them with the user.
func jobUserDirs(t *testing.T) (exec.JobUser, string, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running work as another user needs root")
	}
	u, err := exec.LookupJobUser(exec.DefaultJobUser, true)
	if err != nil {
		t.Fatal(err)
	}
	base, err := os.MkdirTemp("", "gpumesh-jobuser-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o711); err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, d := range []string{"work", "outputs"} {
		p := filepath.Join(base, d)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, int(u.UID), int(u.GID)); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, p)
	}
	return u, dirs[0], dirs[1]
}

// Work run as the job user reads nothing of its owner's: not a key file,
// not even the listing of the folder that holds it.
func TestProcessAsJobUserCannotReadTheOwnersFiles(t *testing.T) {
	u, work, outputs := jobUserDirs(t)
	secret := t.TempDir() // 0700, root's
	if err := os.WriteFile(filepath.Join(secret, "key.json"), []byte("[1,2,3]"), 0o600); err != nil {
		t.Fatal(err)
	}
	task := exec.Task{
		Name:    taskName(t),
		Command: []string{"/bin/sh", "-c", `id -u; cat "$SECRET/key.json"; echo "cat=$?"; ls "$SECRET"; echo "ls=$?"; echo ok > "$GPUMESH_OUTPUTS/out"`},
		Env:     map[string]string{"SECRET": secret},
		WorkDir: work, Outputs: outputs,
	}
	out := newSyncBuf()
	task.Stdout, task.Stderr = out, out
	res, err := exec.Process{User: &u}.Run(context.Background(), task)
	if err != nil {
		t.Fatal(err)
	}
	got := out.String()
	if !strings.HasPrefix(got, strconv.Itoa(int(u.UID))+"\n") {
		t.Errorf("the work ran as %q, want uid %d", strings.SplitN(got, "\n", 2)[0], u.UID)
	}
	if strings.Contains(got, "[1,2,3]") || !strings.Contains(got, "Permission denied") || strings.Contains(got, "cat=0") || strings.Contains(got, "ls=0") {
		t.Errorf("the job user read the owner's folder:\n%s", got)
	}
	if res.ExitCode != 0 {
		t.Errorf("exit code %d, want 0", res.ExitCode)
	}
	if b, err := os.ReadFile(filepath.Join(outputs, "out")); err != nil || string(b) != "ok\n" {
		t.Errorf("its own outputs: %q, %v", b, err)
	}
}

// What a task leaves behind when its provider dies (a background child
// of its killed first process) is found again by the recorded group and
// killed; a group whose ID names another process now is left alone.
func TestKillGroupKillsWhatATaskLeft(t *testing.T) {
	task := processTask(t, `sleep 300 & echo $! > "$GPUMESH_OUTPUTS/child"; echo $$ > "$GPUMESH_OUTPUTS/pid"; wait`)
	groups := make(chan exec.ProcessGroup, 1)
	task.Spawned = func(g exec.ProcessGroup) error { groups <- g; return nil }
	ran := make(chan exec.Result, 1)
	go func() {
		res, err := exec.Process{}.Run(context.Background(), task)
		if err != nil {
			t.Error(err)
		}
		ran <- res
	}()
	g := <-groups
	if g.PGID <= 1 || g.Start == 0 || g.Boot == "" {
		t.Fatalf("group %+v: want its ID, start time and boot", g)
	}
	child := filepath.Join(task.Outputs, "child")
	testwait.For(t, 10*time.Second, "the task's child", func() (bool, string) {
		b, err := os.ReadFile(child)
		return err == nil && len(b) > 0 && b[len(b)-1] == '\n', fmt.Sprint(err)
	})
	pid := readPid(t, child)

	// Another start time: the ID is someone else's; nothing is killed.
	if n, err := exec.KillGroup(exec.ProcessGroup{PGID: g.PGID, Start: g.Start + 1, Boot: g.Boot}, time.Second); n != 0 || err != nil {
		t.Fatalf("KillGroup of a reused ID killed %d (%v), want 0", n, err)
	}
	// Another boot: nothing of it can be left.
	if n, err := exec.KillGroup(exec.ProcessGroup{PGID: g.PGID, Start: g.Start, Boot: "another-boot"}, time.Second); n != 0 || err != nil {
		t.Fatalf("KillGroup of another boot killed %d (%v), want 0", n, err)
	}
	if processGone(pid) {
		t.Fatal("the child died of a KillGroup that named another group")
	}

	n, err := exec.KillGroup(g, 10*time.Second)
	if err != nil || n != 2 {
		t.Fatalf("KillGroup = %d, %v; want the shell and its child, 2", n, err)
	}
	if !waitGone(t, pid, 10*time.Second) {
		t.Fatalf("child %d outlived KillGroup", pid)
	}
	if res := <-ran; res.ExitCode != 128+int(syscall.SIGKILL) {
		t.Errorf("exit code %d, want %d (SIGKILL)", res.ExitCode, 128+int(syscall.SIGKILL))
	}
}

// A task whose group could not be recorded does not run on.
func TestProcessStopsWhenSpawnedFails(t *testing.T) {
	task := processTask(t, `echo $$ > "$GPUMESH_OUTPUTS/pid"; exec sleep 300`)
	var pgid int
	task.Spawned = func(g exec.ProcessGroup) error { pgid = g.PGID; return errors.New("disk full") }
	_, err := exec.Process{}.Run(context.Background(), task)
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("err = %v, want the Spawned error", err)
	}
	if !waitGone(t, pgid, 10*time.Second) {
		t.Fatalf("the task's process %d runs on", pgid)
	}
}

// A process task with JoinNet runs in a network namespace of its own,
// empty but for what JoinNet adds to it, and its command runs only once
// the job interface is up.
func TestProcessJoinNetRunsInANamespaceOfItsOwn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a network namespace for a process needs root")
	}
	task := processTask(t, `tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' '`)
	task.JoinNet = tunJoinNet
	var out bytes.Buffer
	task.Stdout = &out
	res, err := exec.Process{}.Run(context.Background(), task)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("run: %+v, %v", res, err)
	}
	if got, want := strings.TrimSpace(out.String()), exec.JoinNetIface+" lo"; got != want {
		t.Errorf("the work saw interfaces %q, want %q", got, want)
	}

	task = processTask(t, `echo ran`)
	task.JoinNet = func(int) error { return errors.New("no interface today") }
	out.Reset()
	task.Stdout = &out
	if _, err := (exec.Process{}).Run(context.Background(), task); err == nil || !strings.Contains(err.Error(), "no interface today") {
		t.Errorf("a failing JoinNet: %v, want its error", err)
	}
	if strings.Contains(out.String(), "ran") {
		t.Error("the work ran without its job network")
	}
}

// A command run beside a process task with JoinNet (job exec) runs in the
// task's network namespace, and a port forwarded to it reaches a server
// listening there, not the host's.
func TestProcessExecAndDialPortEnterTheJobNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a network namespace for a process needs root")
	}
	if _, err := osexec.LookPath("busybox"); err != nil {
		t.Skip("no busybox for nc")
	}
	task := processTask(t, `busybox nc -l -p 7123 >got; cat got`)
	task.JoinNet = tunJoinNet
	started := make(chan struct{})
	task.Started = func(time.Time) { close(started) }
	var out bytes.Buffer
	task.Stdout = &out
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ran := make(chan error, 1)
	go func() {
		res, err := exec.Process{}.Run(ctx, task)
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("exit %d", res.ExitCode)
		}
		ran <- err
	}()
	select {
	case <-started:
	case err := <-ran:
		t.Fatalf("the task ended before it started: %v", err)
	}

	var seen bytes.Buffer
	code, err := exec.Process{}.Exec(ctx, task.Name, exec.ExecSpec{
		Command: []string{"/bin/sh", "-c", `tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' '`},
		Stdout:  &seen})
	if err != nil || code != 0 {
		t.Fatalf("exec: %d, %v", code, err)
	}
	if got, want := strings.TrimSpace(seen.String()), exec.JoinNetIface+" lo"; got != want {
		t.Errorf("an exec saw interfaces %q, want the task's own %q", got, want)
	}

	// The server listens on the namespace's loopback: the host's has no
	// such port, so only a dial inside the namespace reaches it.
	var c interface {
		Write([]byte) (int, error)
		Close() error
	}
	testwait.Until(t, ctx, "the task's server to listen in its namespace", func() (bool, string) {
		conn, err := exec.Process{}.DialPort(ctx, task.Name, 7123)
		if errors.Is(err, exec.ErrNotRunning) {
			t.Fatalf("the task ended: %v; it wrote %q", <-ran, out.String())
		}
		if err != nil {
			return false, err.Error()
		}
		c = conn
		return true, ""
	})
	if _, err := c.Write([]byte("through the namespace\n")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-ran; err != nil {
		t.Fatalf("run: %v", err)
	}
	if got := strings.TrimSpace(out.String()); got != "through the namespace" {
		t.Errorf("the task's server got %q", got)
	}
}
