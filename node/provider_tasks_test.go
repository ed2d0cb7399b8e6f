package node

import (
	"encoding/json"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec"
)

// writeRecord leaves a task record in the data dir as a crash would.
func writeRecord(t *testing.T, data string, rec taskRecord) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(data, tasksDir), 0o700); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(rec)
	if err := os.WriteFile(filepath.Join(data, tasksDir, rec.Task+".json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A start ends what the records say a crash left: the process group is
// killed, the folder removed, the member kept as ended; a record naming a
// folder outside this peer's job folder removes nothing; a broken one is
// dropped. The ended records outlive another restart.
func TestStartEndsTheWorkACrashLeft(t *testing.T) {
	data, jobs := shortTempDir(t), shortTempDir(t)
	if err := os.Chmod(jobs, 0o711); err != nil {
		t.Fatal(err)
	}
	// A task's group as a killed provider leaves it: a shell and its child.
	sh := osexec.Command("/bin/sh", "-c", "sleep 300 & wait")
	sh.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sh.Wait() }()
	t.Cleanup(func() { _ = syscall.Kill(-sh.Process.Pid, syscall.SIGKILL) })
	g, err := exec.GroupOf(sh.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	// A terminal exec in it, as job exec -t leaves it: a session of its
	// own, out of the task's group.
	tty := osexec.Command("/bin/sh", "-c", "sleep 300 & wait")
	tty.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := tty.Start(); err != nil {
		t.Fatal(err)
	}
	ttyWaited := make(chan error, 1)
	go func() { ttyWaited <- tty.Wait() }()
	t.Cleanup(func() { _ = syscall.Kill(-tty.Process.Pid, syscall.SIGKILL) })
	tg, err := exec.GroupOf(tty.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(jobs, "gpumesh-a-0-0")
	if err := os.MkdirAll(filepath.Join(run, "work"), 0o700); err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	writeRecord(t, data, taskRecord{Task: "gpumesh-a-0-0", Job: "a", Executor: "process", RunDir: run,
		GPUs: []string{"GPU-1", "GPU-2"}, Group: &g, Execs: []exec.ProcessGroup{tg}, Created: time.Now().UTC()})
	writeRecord(t, data, taskRecord{Task: "gpumesh-b-0-1", Job: "b", Rank: 1, Executor: "process", RunDir: outside, GPUs: []string{"GPU-3"}})
	if err := os.WriteFile(filepath.Join(data, tasksDir, "broken.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}

	cfg := Config{DataDir: data, GPUs: "none", Executors: []string{"process"}, Swarm: privateSwarm, JobDir: jobs, JobsAsNodeUser: os.Geteuid() != 0}
	n := startNode(t, cfg)
	select {
	case err := <-waited:
		if ws, ok := sh.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Errorf("the task's shell ended with %v, want SIGKILL", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the task's shell outlived the start")
	}
	select {
	case <-ttyWaited:
	case <-time.After(10 * time.Second):
		t.Fatal("the terminal exec's shell outlived the start")
	}
	for _, g := range []exec.ProcessGroup{g, tg} {
		if k, err := exec.KillGroup(g, time.Second); k != 0 || err != nil {
			t.Errorf("%d processes of group %d left after the start (%v)", k, g.PGID, err)
		}
	}
	if _, err := os.Stat(run); !os.IsNotExist(err) {
		t.Errorf("the task's folder is still there (%v)", err)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("a folder outside the job folder was removed: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(data, tasksDir, "*.json")); len(left) != 0 {
		t.Errorf("records left: %v", left)
	}
	ended := n.EndedTasks()
	if len(ended) != 2 {
		t.Fatalf("ended %+v, want 2", ended)
	}
	byJob := map[string]EndedTask{}
	for _, e := range ended {
		byJob[e.Job] = e
	}
	for job, want := range map[string]string{
		"a": "killed the 4 processes it had left, removed its folder, freed its 2 GPUs",
		"b": "its work had not started, left its folder " + outside + ", which is not in this peer's job folder now",
	} {
		if !strings.Contains(byJob[job].Reason, want) {
			t.Errorf("job %s ended with %q, want %q in it", job, byJob[job].Reason, want)
		}
	}
	if fi, err := os.Stat(data); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
	n.Close()

	n = startNode(t, cfg)
	if got := n.EndedTasks(); len(got) != 2 || got[0].Job == got[1].Job || !got[0].Ended.After(got[1].Ended) && !got[0].Ended.Equal(got[1].Ended) {
		t.Errorf("after another restart the ended members are %+v, want both of %+v, newest first", got, ended)
	}
}
