package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/chain/localnet"
	"github.com/gpumesh/gpumesh/internal/testlocalnet"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
)

func TestJobReceiptAnchoredAndItsProofVerifiedAnywhere(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ln := testlocalnet.Start(t, localnet.Options{})

	common := append([]string{"--nat=false", "--dht-mode", "server"}, privateSwarm(t)...)
	_, jobFlags := jobDir(t)
	prov := startNode(t, "provider", dataDir(t), append(append(slices.Clone(common), jobFlags...), "--gpus", "mock:dgxh100", "--price", "fixed:2.10",
		"--executors", "process", "--solana-rpc", ln.URL(), "--anchor-age", "200ms")...)
	if err := ln.Airdrop(ctx, prov.id.SolanaAddress, 1_000_000_000); err != nil {
		t.Fatal(err)
	}
	sub := startNode(t, "submitter", dataDir(t), append(common, "--bootstrap", prov.bootstrapAddr(t))...)
	testwait.For(t, meshWait, "the provider found", func() (bool, string) {
		res, err := findGPUs(sub.data, "--model", "H100")
		if err != nil {
			return false, err.Error()
		}
		return res.Providers == 1, ""
	})
	spec := filepath.Join(t.TempDir(), "job.yaml")
	if err := os.WriteFile(spec, []byte(`name: proof-e2e
command: [sh, -c, "echo trained > $GPUMESH_OUTPUTS/model.txt"]
resources: {gpus: 2, gpu: {model: H100}}
maxPrice: 2.50
timeout: 5m
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := gm(sub.data, "job", "submit", spec, "--wait"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var jobs node.JobsPage
	if err := gmJSON(sub.data, &jobs, "job", "ls"); err != nil || len(jobs.Jobs) != 1 {
		t.Fatalf("jobs: %v %v", jobs, err)
	}
	id := jobs.Jobs[0].ID

	// The provider anchors the co-signed receipt; its proof comes out as a file.
	dir := t.TempDir()
	testwait.For(t, meshWait, "the receipt anchored", func() (bool, string) {
		var st node.AnchorStatus
		if err := gmJSON(prov.data, &st, "proof", "ls"); err != nil {
			return false, err.Error()
		}
		return len(st.Proofs) == 1 && st.Proofs[0].Status == "anchored", strings.TrimSpace(st.Stats.Error)
	})
	out, err := gm(prov.data, "proof", "get", id, "-o", dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	file := strings.TrimSpace(string(out))

	// Anyone verifies it: no data dir, no mesh, one RPC.
	out, err = gm(t.TempDir(), "proof", "verify", file, "--solana-rpc", ln.URL())
	if err != nil || !strings.Contains(string(out), ": OK: job "+id+" member 0, 2 H100-80GB GPUs") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	t.Logf("gpumesh proof verify:\n%s", out)

	// A receipt with a changed amount fails, saying why.
	var p map[string]any
	data, _ := os.ReadFile(file)
	if err := json.Unmarshal(data, &p); err != nil {
		t.Fatal(err)
	}
	p["receipt"].(map[string]any)["receipt"].(map[string]any)["amount"] = 1
	bad := filepath.Join(dir, "tampered.json")
	data, _ = json.Marshal(p)
	if err := os.WriteFile(bad, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = gm(t.TempDir(), "proof", "verify", bad, "--solana-rpc", ln.URL())
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "FAILED") || !strings.Contains(string(out), "amount") {
		t.Fatalf("a tampered receipt: %v\n%s", err, out)
	}
	t.Logf("tampered:\n%s", out)
}
