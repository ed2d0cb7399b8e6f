package exec_test

import (
	"fmt"
	"regexp"
	"strconv"
	"syscall"
	"testing"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/internal/testwait"
)

// A shell under a terminal with job control puts a background job in a
// process group of its own, still in the shell's session: when the
// command ends, that job goes with it, and the group recorded for a
// restart after a crash (Spawned) is the whole session.
func TestATerminalExecTakesItsBackgroundJobsWithIt(t *testing.T) {
	task := processTask(t, `sleep 600`)
	ctx := startTask(t, task)

	screen := &testwait.Output{}
	var spawned exec.ProcessGroup
	code, err := exec.Process{}.Exec(ctx, task.Name, exec.ExecSpec{
		Command: []string{"/bin/sh", "-c", `set -m; sleep 300 & echo "bg=$! pgid=$(cut -d' ' -f5 /proc/$!/stat)"`},
		TTY:     true, Stdout: screen,
		Spawned: func(g exec.ProcessGroup) error { spawned = g; return nil },
	})
	if err != nil || code != 0 {
		t.Fatalf("exec: %d, %v; it wrote %q", code, err, screen.String())
	}
	if !spawned.Session || spawned.PGID <= 1 {
		t.Errorf("the recorded group %+v, want the command's session", spawned)
	}
	m := regexp.MustCompile(`bg=(\d+) pgid=\s*(\d+)`).FindStringSubmatch(screen.String())
	if m == nil {
		t.Fatalf("the shell wrote %q, want its background job's pid and group", screen.String())
	}
	bg, _ := strconv.Atoi(m[1])
	defer syscall.Kill(bg, syscall.SIGKILL) // if the test fails, not left behind
	if m[2] == strconv.Itoa(spawned.PGID) {
		t.Skipf("this shell kept its background job in its own group %s: nothing to show", m[2])
	}
	testwait.Until(t, ctx, "the background job gone with its shell", func() (bool, string) {
		st := processState(bg)
		return st == "" || st == "Z", fmt.Sprintf("pid %d in state %q", bg, st)
	})
}
