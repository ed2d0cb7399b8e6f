package node

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/chain/localnet"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/internal/testlocalnet"
	"github.com/gpumesh/gpumesh/internal/testwait"
)

// A provider whose records.log has a torn line in its middle (a disk's
// torn write while it was down) starts, anchors every co-signed receipt
// exactly once on the real Solana runtime, the torn one too (it adds its
// receipts again at each start), and its records.log is empty once they
// are anchored; a restart after that anchors nothing more.
func TestATornRecordsLogStillAnchorsEveryReceiptOnce(t *testing.T) {
	ln := testlocalnet.Start(t, localnet.Options{})
	dir := shortTempDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := func(age time.Duration) *Node {
		t.Helper()
		n := startNode(t, Config{DataDir: dir, SolanaRPC: ln.URL(), AnchorAge: age, GPUs: "none"})
		return n
	}

	// Five receipts co-signed while anchoring waits an hour.
	n := start(time.Hour)
	if err := ln.Airdrop(ctx, n.id.SolanaAddress, 1_000_000_000); err != nil {
		t.Fatal(err)
	}
	provKey, err := n.ed25519Key()
	if err != nil {
		t.Fatal(err)
	}
	_, consKey, _ := ed25519.GenerateKey(rand.Reader)
	var keys []string
	for i := range 5 {
		r := receipt.Receipt{
			Version: receipt.Version, Job: fmt.Sprintf("job%d", i), Provider: n.id.SolanaAddress, Consumer: receipt.Address(consKey),
			Class: "H100-80GB", GPUs: 1, Price: 3600, Unit: "SOL", ResultHash: receipt.ResultHash(0, nil),
			Start: 1_700_000_000_000, End: 1_700_000_001_000, Util: -1,
		}
		r.Meter(1, time.UnixMilli(r.Start), time.UnixMilli(r.End), r.Price)
		sr, err := receipt.Sign(r, provKey)
		if err != nil {
			t.Fatal(err)
		}
		if err := sr.Countersign(consKey); err != nil {
			t.Fatal(err)
		}
		if err := n.saveReceipt(sr); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, r.Key())
	}
	n.Close()

	// Its third line torn.
	logPath := filepath.Join(dir, "anchor", "records.log")
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	if len(lines) < 5 {
		t.Fatalf("records.log has %d lines, want 5:\n%s", len(lines), data)
	}
	lines[2] = append(lines[2][:20:20], '\n')
	if err := os.WriteFile(logPath, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}

	n = start(100 * time.Millisecond)
	testwait.For(t, 60*time.Second, "every receipt anchored", func() (bool, string) {
		st, err := n.Proofs("")
		anchored := 0
		for _, p := range st.Proofs {
			if p.Status == "anchored" {
				anchored++
			}
		}
		return err == nil && anchored == 5 && st.Stats.Batches == 0, fmt.Sprintf("%+v, %v", st, err)
	})
	if st := n.anchor.Stats(); st.Anchored != 5 || st.Txs != 1 || st.Pending != 0 {
		t.Errorf("anchorer %+v: want the 5 receipts anchored once, in one transaction", st)
	}
	for _, k := range keys {
		if _, err := n.Proof(k); err != nil {
			t.Errorf("proof of %s: %v", k, err)
		}
	}
	if info, err := os.Stat(logPath); err != nil || info.Size() != 0 {
		t.Errorf("records.log after anchoring: %v, %v; want it empty", info.Size(), err)
	}
	n.Close()

	n = start(100 * time.Millisecond)
	if st := n.anchor.Stats(); st.Anchored != 5 || st.Pending != 0 || st.Batches != 0 {
		t.Errorf("after another restart: %+v; want the 5 anchored and nothing waiting", st)
	}
}
