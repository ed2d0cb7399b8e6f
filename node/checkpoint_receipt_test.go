package node_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A checkpointing job's receipt says how many checkpoint bytes its
// provider sent, and that number is the one the submitter read (every
// byte it fetched in the job: its checkpoints, on bulk streams), signed
// by both.
func TestAReceiptCarriesTheCheckpointBytesTheSubmitterRead(t *testing.T) {
	o := h100s(44, 1)
	o.Config = func(i int, c *node.Config) {
		if i == 1 {
			c.Explorer = "127.0.0.1:0"
		}
	}
	m := meshtest.Start(t, 2, o)
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// A checkpoint, a sync, then a second file: the last sync at the exit
	// sends only the new blocks.
	script := `head -c 1048576 /dev/urandom > "$GPUMESH_CHECKPOINT/a"
sleep 2
head -c 524288 /dev/urandom > "$GPUMESH_CHECKPOINT/b"`
	j := runToEnd(t, ctx, sub, scriptSpec(t, 1, 0, script, "checkpoint: {path: /checkpoints, every: 1s}"))
	if j.State != node.JobDone {
		t.Fatalf("job %s (%s), want done; log:\n%s", j.State, j.Reason, jobLog(t, sub, j.ID))
	}
	if c, ok := sub.JobCheckpoint(j.ID); !ok || c.Files != 2 {
		t.Fatalf("checkpoint %+v, %v: want the last one, of 2 files", c, ok)
	}
	read := sub.Content().Stats().FetchedBytes // the job has no inputs: all of it is checkpoints
	if read < 1536<<10 {
		t.Fatalf("the submitter fetched %d bytes, want the checkpoints' 1.5 MiB at least", read)
	}
	for who, nd := range map[string]*node.Node{"submitter": sub, "provider": prov} {
		var rs []receipt.Signed
		testwait.Until(t, ctx, who+"'s countersigned receipt", func() (bool, string) {
			rs, _ = nd.Receipts(j.ID)
			return len(rs) == 1 && len(rs[0].ConsumerSig) > 0, fmt.Sprintf("%d receipts", len(rs))
		})
		r := rs[0]
		if err := r.Verify(); err != nil {
			t.Fatalf("%s's receipt: %v", who, err)
		}
		if got := r.Receipt.CheckpointBytes; got != uint64(read) {
			t.Fatalf("%s's receipt says %d checkpoint bytes, the submitter read %d", who, got, read)
		}
	}
	// The explorer shows them.
	resp, err := http.Get("http://" + sub.ExplorerAddr() + "/explorer/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st node.ExplorerState
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if len(st.Receipts) != 1 || st.Receipts[0].CheckpointBytes != uint64(read) {
		t.Fatalf("explorer receipts %+v, want one of %d checkpoint bytes", st.Receipts, read)
	}
}

// A hostile provider, speaking the real job protocol, sends a checkpoint
// and then a receipt that says it sent more checkpoint bytes than the
// submitter read: the submitter refuses to countersign it, saying both
// numbers.
func TestAReceiptClaimingMoreCheckpointBytesThanReadIsRefused(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(45, 1))
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	raw, err := meshtest.Key(45, 0).Key.Raw()
	if err != nil {
		t.Fatal(err)
	}
	key := ed25519.PrivateKey(raw[:64])
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "model.pt"), make([]byte, 300<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := prov.Content().Add(ctx, dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := prov.Content().Grant(ctx, root.CID, sub.Host().ID()); err != nil {
		t.Fatal(err)
	}
	heard := make(chan string, 1)
	meshtest.ServeJobs(t, prov.Host(), func(js *meshtest.JobStream, st *jobwire.StartFrame) error {
		start := time.Now()
		if err := js.Send(jobwire.Frame{T: jobwire.KindStarted, At: start.UnixMilli()},
			jobwire.Frame{T: jobwire.KindCheckpoint, Ckpt: &jobwire.CheckpointFrame{CID: root.CID.String(), Bytes: root.Bytes, Files: 1}}); err != nil {
			return err
		}
		err := testwait.Poll(ctx, func() (bool, string) { _, ok := sub.JobCheckpoint(st.Job); return ok, "" })
		if err != nil {
			return fmt.Errorf("the submitter never kept the checkpoint: %v", err)
		}
		end := time.Now()
		if err := js.Send(jobwire.Frame{T: jobwire.KindExit, Exit: &jobwire.ExitFrame{Start: start.UnixMilli(), End: end.UnixMilli()}}); err != nil {
			return err
		}
		r := receipt.Receipt{
			Version: receipt.Version, Job: st.Job, Provider: receipt.Address(key), Consumer: sub.Info().SolanaAddress,
			Class: "H100-80GB", Unit: "USDC:6", ResultHash: receipt.ResultHash(0, nil), Util: -1,
			CheckpointBytes: 10 << 20, // ten times what it sent
		}
		r.Meter(1, start, end, 2_100_000)
		sr, err := receipt.Sign(r, key)
		if err != nil {
			return err
		}
		if err := js.Send(jobwire.Frame{T: jobwire.KindReceipt, Receipt: &sr}); err != nil {
			return err
		}
		fs, err := js.Until(ctx, func(f jobwire.Frame) bool { return f.T == jobwire.KindError || f.T == jobwire.KindCountersign })
		if err != nil {
			return fmt.Errorf("no answer to the receipt: %v", err)
		}
		heard <- fs[len(fs)-1].T + ": " + fs[len(fs)-1].Reason
		return nil
	})
	j := runToEnd(t, ctx, sub, scriptSpec(t, 1, 0, "true", "checkpoint: {path: /checkpoints, every: 1s}"))
	read := sub.Content().Stats().FetchedBytes
	if read == 0 || read > 10<<20 {
		t.Fatalf("the submitter fetched %d bytes of the checkpoint", read)
	}
	want := fmt.Sprintf("it says %d checkpoint bytes were sent, this peer received %d", 10<<20, read)
	if len(j.Runs) != 1 || j.Runs[0].Receipt != want {
		t.Fatalf("runs %+v: want the receipt refused: %s", j.Runs, want)
	}
	select {
	case got := <-heard:
		if !strings.HasSuffix(got, want) || !strings.HasPrefix(got, "error: ") {
			t.Fatalf("the provider heard %q", got)
		}
	case <-ctx.Done():
		t.Fatal("the hostile provider heard no answer to its receipt")
	}
}
