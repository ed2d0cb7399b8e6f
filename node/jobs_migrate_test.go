package node_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node"
)

// A data dir from before the job store: its jobs.json is moved into the
// store on start, jobs that were running are marked failed, and the file is
// renamed so it is never read twice.
func TestJobsJSONIsMovedIntoTheStore(t *testing.T) {
	dir, err := os.MkdirTemp("", "gm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	created := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	old := []map[string]any{
		{"id": "0123456789abcdef0123456789abcde0", "state": "done", "unit": "USDC:6", "created": created, "updated": created, "spec": map[string]any{"name": "old-done"}},
		{"id": "0123456789abcdef0123456789abcde1", "state": "running", "unit": "USDC:6", "created": created.Add(time.Minute), "updated": created, "spec": map[string]any{"name": "old-running"}},
	}
	data, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "jobs.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := node.New(node.Config{DataDir: dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, NoMDNS: true, NoNAT: true, GPUs: "none"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	jobs := n.Jobs()
	if len(jobs) != 2 || jobs[0].Spec.Name != "old-running" || jobs[1].Spec.Name != "old-done" {
		t.Fatalf("jobs after the move: %+v, want old-running then old-done", jobs)
	}
	if jobs[0].State != node.JobFailed || !strings.Contains(jobs[0].Reason, "stopped while the job ran") {
		t.Errorf("a job running when the peer stopped: %s (%s), want failed with why", jobs[0].State, jobs[0].Reason)
	}
	if jobs[1].State != node.JobDone {
		t.Errorf("a done job: %s, want done", jobs[1].State)
	}
	if _, err := os.Stat(filepath.Join(dir, "jobs.json")); !os.IsNotExist(err) {
		t.Errorf("jobs.json still there after the move: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "jobs.json.migrated")); err != nil {
		t.Errorf("jobs.json.migrated: %v", err)
	}
	page, next, err := n.JobsPage("", 1)
	if err != nil || len(page) != 1 || page[0].Spec.Name != "old-running" || next == "" {
		t.Fatalf("first page of 1: %+v next %q err %v", page, next, err)
	}
	page, next, err = n.JobsPage(next, 1)
	if err != nil || len(page) != 1 || page[0].Spec.Name != "old-done" || next != "" {
		t.Fatalf("second page of 1: %+v next %q err %v", page, next, err)
	}
}

// A jobs.json that cannot be read stops the peer with a message that says
// what to do, and nothing is lost: the file stays as it was.
func TestBadJobsJSONRefusesToStart(t *testing.T) {
	dir, err := os.MkdirTemp("", "gm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "jobs.json"), []byte("[{\"id\": "), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := node.New(node.Config{DataDir: dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, NoMDNS: true, NoNAT: true, GPUs: "none"})
	if err != nil {
		t.Fatal(err)
	}
	err = n.Start(context.Background())
	n.Close()
	if err == nil || !strings.Contains(err.Error(), "move it away") {
		t.Fatalf("start with a broken jobs.json: %v, want an error that says to move it away", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "jobs.json")); string(got) != "[{\"id\": " {
		t.Errorf("jobs.json changed to %q", got)
	}
}
