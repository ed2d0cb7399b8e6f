package node_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mr-tron/base58"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/chain/localnet"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/internal/testlocalnet"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// solMesh is a provider of 8 mock H100s asking 3.6 SOL per GPU-hour (1 SOL
// = 10^9 lamports, so 1,000,000 lamports a GPU-second), billing every
// second, and a submitter, both paying on the localnet; each address gets
// `fund` lamports.
func solMesh(t *testing.T, fund uint64) (*meshtest.Mesh, *localnet.Localnet) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ln := testlocalnet.Start(t, localnet.Options{})
	m := meshtest.Start(t, 2, meshtest.Options{Seed: 77, Providers: 1, Price: "fixed:3.6", Executors: []string{"process"}, Private: true, Config: func(i int, c *node.Config) {
		c.PriceUnit, c.SolanaRPC, c.AnchorAge = "SOL:9", ln.URL(), time.Hour
		if i == 0 {
			c.SettleInterval = time.Second
		}
	}})
	for _, nd := range m.Nodes {
		if err := ln.Airdrop(ctx, nd.Info().SolanaAddress, fund); err != nil {
			t.Fatal(err)
		}
	}
	return m, ln
}

func solSpec(t *testing.T, script string) jobspec.Spec {
	t.Helper()
	s, err := jobspec.Parse([]byte(`name: paid
command: [sh, -c, "`+script+`"]
resources: {gpus: 1, gpu: {model: H100}}
maxPrice: 4
timeout: 5m
`), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func balance(t *testing.T, ln *localnet.Localnet, addr string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := chain.Balance(ctx, ln.URL(), addr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestJobsPayAsTheyRun(t *testing.T) {
	m, ln := solMesh(t, 2_000_000_000)
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	provBefore, subBefore := balance(t, ln, prov.Info().SolanaAddress), balance(t, ln, sub.Info().SolanaAddress)

	j := runToEnd(t, ctx, sub, solSpec(t, "sleep 2.5"))
	if j.State != node.JobDone {
		t.Fatalf("job %s: %s\n%s", j.State, j.Reason, jobLog(t, sub, j.ID))
	}
	var rs []receipt.Signed
	testwait.Until(t, ctx, "the co-signed receipt", func() (bool, string) {
		var err error
		rs, err = prov.Receipts(j.ID)
		return err == nil && len(rs) == 1 && len(rs[0].ConsumerSig) > 0, fmt.Sprintf("%d receipts, %v", len(rs), err)
	})
	r := rs[0].Receipt
	if len(r.Payments) < 2 || r.Paid < r.Amount || r.Paid != j.Runs[0].Paid {
		t.Fatalf("receipt: amount %d, paid %d in %d payments; the submitter paid %d", r.Amount, r.Paid, len(r.Payments), j.Runs[0].Paid)
	}
	// Each bill is rounded up (and the last interval's may end a moment
	// after the work's clock stopped), so what was paid is the amount or a
	// little more, never less.
	if r.Paid-r.Amount > receipt.Amount(r.Price, uint64(r.GPUs)*500) {
		t.Fatalf("paid %d for an amount of %d", r.Paid, r.Amount)
	}
	provAfter, subAfter := balance(t, ln, prov.Info().SolanaAddress), balance(t, ln, sub.Info().SolanaAddress)
	if provAfter-provBefore != r.Paid {
		t.Fatalf("the provider gained %d lamports, the receipt says %d were paid", provAfter-provBefore, r.Paid)
	}
	if fees := subBefore - subAfter - r.Paid; fees != 5000*uint64(len(r.Payments)) {
		t.Fatalf("the submitter lost %d lamports beyond the %d paid, want %d in fees", fees, r.Paid, 5000*len(r.Payments))
	}
	t.Logf("%.3f GPU-seconds: %d lamports billed in %d payments, receipt amount %d", r.GPUSeconds(), r.Paid, len(r.Payments), r.Amount)
}

func TestUnpaidWorkIsPausedThenStopped(t *testing.T) {
	m, ln := solMesh(t, 500_000_000)
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	job, err := sub.SubmitJob(ctx, solSpec(t, "echo working; exec sleep 300"))
	if err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, ctx, "the first bill paid", func() bool {
		return strings.Contains(jobLog(t, sub, job.ID), "paid member 0")
	})
	// The submitter's money leaves: the next bill cannot be paid.
	key := meshtest.Key(77, 1)
	raw, err := key.Key.Raw()
	if err != nil {
		t.Fatal(err)
	}
	sk := ed25519.PrivateKey(raw[:64])
	_, sink, _ := ed25519.GenerateKey(rand.Reader)
	left := balance(t, ln, sub.Info().SolanaAddress)
	if _, err := chain.Pay(ctx, ln.URL(), sk, base58.Encode(sink.Public().(ed25519.PublicKey)), left-5000-900_000, "drain"); err != nil {
		t.Fatal(err)
	}
	j := waitEnded(t, ctx, sub, job.ID)
	log := jobLog(t, sub, job.ID)
	if j.State != node.JobFailed || !strings.Contains(j.Reason, "not paid") {
		t.Fatalf("job %s: %s\n%s", j.State, j.Reason, log)
	}
	for _, want := range []string{"could not pay bill", "gpumesh: paused: interval", "gpumesh: stopping the work:"} {
		if !strings.Contains(log, want) {
			t.Fatalf("log lacks %q:\n%s", want, log)
		}
	}
	// The provider's receipt bills the time worked, not the time paused.
	rs, err := prov.Receipts(job.ID)
	if err != nil || len(rs) != 1 {
		t.Fatalf("receipts %v %v", rs, err)
	}
	if r := rs[0].Receipt; r.PausedMillis == 0 || r.Paid == 0 {
		t.Fatalf("receipt: paused %d ms, paid %d", r.PausedMillis, r.Paid)
	}
	t.Logf("%s", j.Reason)
}
