package node_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/chain/localnet"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/internal/testlocalnet"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// anchoredProvider is one provider of 8 mock H100s asking 3.6 SOL per
// GPU-hour, billing every second and anchoring every receipt at once on a
// localnet, and a hostile submitter holding 1 SOL there.
func anchoredProvider(t *testing.T) (*node.Node, *meshtest.Adversary, *localnet.Localnet) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ln := testlocalnet.Start(t, localnet.Options{})
	m := meshtest.Start(t, 1, meshtest.Options{Seed: 78, Private: true, Providers: 1, Price: "fixed:3.6", Executors: []string{"process"}, Config: func(i int, c *node.Config) {
		c.PriceUnit, c.SolanaRPC, c.SettleInterval = "SOL:9", ln.URL(), time.Second
		c.AnchorBatch, c.AnchorAge = 1, 100*time.Millisecond
	}})
	adv := m.AddAdversary(t, 0)
	for _, addr := range []string{adv.ID.SolanaAddress, m.Nodes[0].Info().SolanaAddress} {
		if err := ln.Airdrop(ctx, addr, 1_000_000_000); err != nil {
			t.Fatal(err)
		}
	}
	return m.Nodes[0], adv, ln
}

// hostileRun reserves one GPU of prov as adv and starts a member that
// writes an output and ends at once; it returns the job and the stream.
func hostileRun(t *testing.T, ctx context.Context, prov *node.Node, adv *meshtest.Adversary) (string, *meshtest.JobStream) {
	t.Helper()
	job := meshtest.NewJobID()
	if _, err := adv.Reserve(ctx, prov.Host().ID(), job, "H100-80GB", 1, 4_000_000_000, "SOL:9"); err != nil {
		t.Fatal(err)
	}
	js, err := adv.OpenJob(ctx, prov.Host().ID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = js.Close() })
	start := &jobwire.StartFrame{Job: job.String(), Members: 1, WorldGPUs: 1, Pays: true,
		Spec: solSpec(t, `echo the result > $GPUMESH_OUTPUTS/result.txt; sleep 0.3`)}
	if err := js.Send(jobwire.Frame{T: jobwire.KindStart, Start: start}); err != nil {
		t.Fatal(err)
	}
	return job.String(), js
}

func kinds(fs []jobwire.Frame) string {
	var ks []string
	for _, f := range fs {
		if f.T != jobwire.KindHeartbeat {
			ks = append(ks, f.T)
		}
	}
	return strings.Join(ks, " ")
}

// anchoredRecord waits until prov has anchored its receipt of job and
// checks the proof as anyone would.
func anchoredRecord(t *testing.T, ctx context.Context, prov *node.Node, ln *localnet.Localnet, job string) receipt.Signed {
	t.Helper()
	key := job + "-0-0"
	testwait.Until(t, ctx, "the receipt anchored", func() (bool, string) {
		st, err := prov.Proofs(job)
		if err != nil || len(st.Proofs) != 1 {
			return false, fmt.Sprintf("%+v, %v", st.Proofs, err)
		}
		return st.Proofs[0].Status == "anchored", st.Proofs[0].Status
	})
	p, err := prov.Proof(key)
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	_, sr, _, err := node.VerifyProof(ctx, ln.URL(), data)
	if err != nil {
		t.Fatalf("the proof of a receipt marked unsigned does not verify: %v", err)
	}
	return sr
}

// A submitter that does not pay the last bill gets no outputs: its
// member's exit says they are withheld. Its receipt, never countersigned,
// is anchored by the provider with the provider's signed word of why, and
// the proof verifies as that.
func TestOutputsWaitForTheLastBill(t *testing.T) {
	prov, adv, ln := anchoredProvider(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	job, js := hostileRun(t, ctx, prov, adv)
	frames, err := js.Until(ctx, func(f jobwire.Frame) bool { return f.T == jobwire.KindReceipt })
	if err != nil {
		t.Fatalf("frames %s: %v", kinds(frames), err)
	}
	got := kinds(frames)
	if !strings.Contains(got, "bill") || strings.Contains(got, "file") || strings.Contains(got, "chunk") ||
		strings.Index(got, "bill") > strings.Index(got, "exit") {
		t.Fatalf("frames %s: want the last bill before the exit, and no outputs for a bill not paid", got)
	}
	exit := frames[len(frames)-2].Exit
	if exit == nil || !strings.Contains(exit.Reason, "outputs are withheld: 1 of its bills are unpaid") {
		t.Fatalf("exit %+v: want the reason to say the outputs are withheld", exit)
	}
	_ = js.Close() // walks away without countersigning
	sr := anchoredRecord(t, ctx, prov, ln, job)
	if len(sr.ConsumerSig) != 0 || sr.Unsigned == nil || sr.Unsigned.Reason != "the consumer left before countersigning" {
		t.Fatalf("anchored receipt: consumer signature %x, unsigned %+v", sr.ConsumerSig, sr.Unsigned)
	}
	if sr.Receipt.Paid != 0 || sr.Receipt.Consumer != adv.ID.SolanaAddress {
		t.Errorf("receipt: paid %d by %s", sr.Receipt.Paid, sr.Receipt.Consumer)
	}
}

// A submitter that pays the last bill gets the outputs after it, and owes
// nothing when it then drops the stream without countersigning: the
// receipt it walked away from is paid in full, and anchored with the
// provider's signed word that the consumer left.
func TestASubmitterThatLeavesWithTheOutputsOwesNothing(t *testing.T) {
	prov, adv, ln := anchoredProvider(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	raw, err := adv.ID.Key.Raw()
	if err != nil {
		t.Fatal(err)
	}
	provBefore := balance(t, ln, prov.Info().SolanaAddress)
	job, js := hostileRun(t, ctx, prov, adv)
	paid := false
	frames, err := js.Until(ctx, func(f jobwire.Frame) bool {
		if f.T == jobwire.KindBill {
			if paid {
				t.Errorf("a second bill: %+v", f.Bill)
				return true
			}
			paid = true
			p, err := chain.Pay(ctx, ln.URL(), ed25519.PrivateKey(raw), prov.Info().SolanaAddress, f.Bill.Lamports, f.Bill.Ref)
			if err != nil {
				t.Errorf("pay: %v", err)
				return true
			}
			_ = js.Send(jobwire.Frame{T: jobwire.KindPaid, Paid: &jobwire.PaidFrame{Interval: f.Bill.Interval, Signature: p.Signature}})
		}
		return f.T == jobwire.KindReceipt
	})
	if err != nil {
		t.Fatalf("frames %s: %v", kinds(frames), err)
	}
	got := kinds(frames)
	if !strings.HasSuffix(got, "bill file chunk exit receipt") {
		t.Fatalf("frames %s: want the last bill, then (paid) the output, the exit and the receipt", got)
	}
	_ = js.Close()
	sr := anchoredRecord(t, ctx, prov, ln, job)
	r := sr.Receipt
	if sr.Unsigned == nil || !strings.Contains(sr.Unsigned.Reason, "left before countersigning") {
		t.Fatalf("anchored receipt: unsigned %+v", sr.Unsigned)
	}
	if r.Paid < r.Amount || len(r.Payments) != 1 {
		t.Fatalf("receipt: amount %d, paid %d in %v: the submitter left owing", r.Amount, r.Paid, r.Payments)
	}
	st, err := prov.Proofs(job)
	if err != nil {
		t.Fatal(err)
	}
	// The provider pays the anchoring's fees.
	if gained := balance(t, ln, prov.Info().SolanaAddress) + st.Stats.Fees - provBefore; gained != r.Paid {
		t.Fatalf("the provider gained %d lamports (%d in anchoring fees aside), the receipt says %d were paid", gained, st.Stats.Fees, r.Paid)
	}
}
