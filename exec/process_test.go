package exec_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
