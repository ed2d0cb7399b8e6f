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
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// Settlement in USDC: the same bills, memos and checks as in SOL, paid by
// SPL token transfers on the localnet (real LiteSVM, the real SPL Token and
// Associated Token Account programs).

// rentOfTokenAccount is the lamports a 165-byte token account holds to be
// rent-exempt: what the first payment to a provider costs its payer.
const rentOfTokenAccount = 2_039_280

// usdcOn makes a 6-decimal test mint on ln, as the currency USDC.
func usdcOn(t *testing.T, ln *localnet.Localnet) chain.Currency {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mint, err := ln.CreateMint(ctx, 6)
	if err != nil {
		t.Fatal(err)
	}
	c, err := chain.Token("USDC", mint, 6)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fund gives an address lamports and base units of a token.
func fund(t *testing.T, ln *localnet.Localnet, c chain.Currency, addr string, lamports, tokens uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ln.Airdrop(ctx, addr, lamports); err != nil {
		t.Fatal(err)
	}
	if tokens > 0 {
		if err := ln.MintTo(ctx, c.Mint, addr, tokens); err != nil {
			t.Fatal(err)
		}
	}
}

func tokens(t *testing.T, ln *localnet.Localnet, c chain.Currency, addr string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := c.Balance(ctx, ln.URL(), addr)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// usdcMesh is solMesh in USDC: a provider of 8 mock H100s asking 3.6 USDC
// per GPU-hour (1,000 base units a GPU-second), billing every second, and a
// submitter, both with --price-unit USDC:6 --token-mint; each gets 1 SOL
// for fees, and the submitter `subTokens` base units of USDC.
func usdcMesh(t *testing.T, subTokens uint64) (*meshtest.Mesh, *localnet.Localnet, chain.Currency) {
	t.Helper()
	ln := testlocalnet.Start(t, localnet.Options{})
	usdc := usdcOn(t, ln)
	m := meshtest.Start(t, 2, meshtest.Options{Seed: 79, Providers: 1, Price: "fixed:3.6", Executors: []string{"process"}, Private: true, Config: func(i int, c *node.Config) {
		c.PriceUnit, c.SolanaRPC, c.TokenMint, c.AnchorAge = "USDC:6", ln.URL(), usdc.Mint, time.Hour
		if i == 0 {
			c.SettleInterval = time.Second
		}
	}})
	fund(t, ln, usdc, m.Nodes[0].Info().SolanaAddress, 1_000_000_000, 0)
	fund(t, ln, usdc, m.Nodes[1].Info().SolanaAddress, 1_000_000_000, subTokens)
	return m, ln, usdc
}

func TestJobsPayInUSDCAsTheyRun(t *testing.T) {
	m, ln, usdc := usdcMesh(t, 50_000_000) // 50 USDC
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	provAddr, subAddr := prov.Info().SolanaAddress, sub.Info().SolanaAddress
	provSOL, subSOL := balance(t, ln, provAddr), balance(t, ln, subAddr)
	if n := tokens(t, ln, usdc, provAddr); n != 0 {
		t.Fatalf("the provider holds %d USDC units before the job", n)
	}

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
	if r.Unit != "USDC:6" || len(r.Payments) < 2 || r.Paid < r.Amount || r.Paid != j.Runs[0].Paid {
		t.Fatalf("receipt: unit %s, amount %d, paid %d in %d payments; the submitter paid %d", r.Unit, r.Amount, r.Paid, len(r.Payments), j.Runs[0].Paid)
	}
	if r.Paid-r.Amount > receipt.Amount(r.Price, uint64(r.GPUs)*500) {
		t.Fatalf("paid %d for an amount of %d", r.Paid, r.Amount)
	}
	// Exact balances: the tokens moved are what the receipt says was paid;
	// the submitter's SOL paid a fee a payment and the rent of the
	// provider's new token account (made by the first payment); the
	// provider's SOL did not move (it anchors nothing within the hour).
	if got := tokens(t, ln, usdc, provAddr); got != r.Paid {
		t.Errorf("the provider holds %d USDC units, the receipt says %d were paid", got, r.Paid)
	}
	if got := tokens(t, ln, usdc, subAddr); got != 50_000_000-r.Paid {
		t.Errorf("the submitter holds %d USDC units, want 50 USDC less the %d paid", got, r.Paid)
	}
	if lost, want := subSOL-balance(t, ln, subAddr), 5000*uint64(len(r.Payments))+rentOfTokenAccount; lost != want {
		t.Errorf("the submitter lost %d lamports, want %d: %d fees and the provider's token account's rent", lost, want, len(r.Payments))
	}
	if got := balance(t, ln, provAddr); got != provSOL {
		t.Errorf("the provider's lamports went from %d to %d", provSOL, got)
	}
	// Each payment is a token transfer to the provider's token account,
	// checked as anyone would.
	for i, sig := range r.Payments {
		ref := fmt.Sprintf("%s-%d-%d-%d", j.ID, r.Attempt, r.Rank, i+1)
		if _, err := usdc.Check(ctx, ln.URL(), sig, subAddr, provAddr, 1, ref); err != nil {
			t.Errorf("payment %d: %v", i+1, err)
		}
	}
	t.Logf("%.3f GPU-seconds: %s USDC billed in %d payments, receipt amount %s", r.GPUSeconds(), usdc.Format(r.Paid), len(r.Payments), usdc.Format(r.Amount))
}

func TestUnpaidUSDCWorkIsPausedThenStopped(t *testing.T) {
	m, ln, usdc := usdcMesh(t, 10_000_000)
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
	// The submitter's tokens leave: the next bill cannot be paid.
	raw, err := meshtest.Key(79, 1).Key.Raw()
	if err != nil {
		t.Fatal(err)
	}
	_, sink, _ := ed25519.GenerateKey(rand.Reader)
	left := tokens(t, ln, usdc, sub.Info().SolanaAddress)
	if _, err := usdc.Pay(ctx, ln.URL(), ed25519.PrivateKey(raw[:64]), base58.Encode(sink.Public().(ed25519.PublicKey)), left, "drain"); err != nil {
		t.Fatal(err)
	}
	j := waitEnded(t, ctx, sub, job.ID)
	log := jobLog(t, sub, job.ID)
	if j.State != node.JobFailed || !strings.Contains(j.Reason, "USDC) still not paid") {
		t.Fatalf("job %s: %s\n%s", j.State, j.Reason, log)
	}
	for _, want := range []string{"could not pay bill", "holds 0 USDC", "gpumesh: paused: interval", "gpumesh: stopping the work:"} {
		if !strings.Contains(log, want) {
			t.Fatalf("log lacks %q:\n%s", want, log)
		}
	}
	rs, err := prov.Receipts(job.ID)
	if err != nil || len(rs) != 1 {
		t.Fatalf("receipts %v %v", rs, err)
	}
	r := rs[0].Receipt
	if r.PausedMillis == 0 || r.Paid == 0 {
		t.Fatalf("receipt: paused %d ms, paid %d", r.PausedMillis, r.Paid)
	}
	if got := tokens(t, ln, usdc, prov.Info().SolanaAddress); got != r.Paid {
		t.Fatalf("the provider holds %d USDC units, its receipt says %d were paid", got, r.Paid)
	}
	t.Logf("%s", j.Reason)
}

func TestASubmitterWithoutTokensIsRefusedBeforeNegotiating(t *testing.T) {
	m, ln, usdc := usdcMesh(t, 0) // SOL for fees, no USDC
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := sub.SubmitJob(ctx, solSpec(t, "echo never"))
	if err == nil {
		t.Fatal("a submitter without USDC submitted a job")
	}
	for _, want := range []string{"job not submitted", "holds 0.00 USDC (mint " + usdc.Mint + ")", "needs 0.066667 USDC", "send USDC to it"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	t.Logf("refused: %v", err)
	if js := sub.Jobs(); len(js) != 0 {
		t.Errorf("the refused submission left jobs: %+v", js)
	}
	if n := tokens(t, ln, usdc, prov.Info().SolanaAddress); n != 0 {
		t.Errorf("the provider holds %d USDC units", n)
	}
	// One unit less than the first minute at the max price (4 USDC/GPU-h:
	// 0.066667 USDC, rounded up) is refused too; enough passes.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	if err := ln.MintTo(ctx2, usdc.Mint, sub.Info().SolanaAddress, 66_666); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.SubmitJob(ctx, solSpec(t, "echo never")); err == nil || !strings.Contains(err.Error(), "holds 0.066666 USDC") {
		t.Fatalf("one unit short: %v", err)
	}
	if err := ln.MintTo(ctx2, usdc.Mint, sub.Info().SolanaAddress, 1); err != nil {
		t.Fatal(err)
	}
	j, err := sub.SubmitJob(ctx, solSpec(t, "echo paid"))
	if err != nil {
		t.Fatalf("with the first minute's 0.066667 USDC: %v", err)
	}
	_, _ = sub.CancelJob(ctx, j.ID)
}

func TestAPeerRefusesToStartWithAMintOfOtherDecimals(t *testing.T) {
	ln := testlocalnet.Start(t, localnet.Options{})
	usdc := usdcOn(t, ln) // 6 decimals
	n, err := node.New(node.Config{DataDir: t.TempDir(), Listen: []string{"/ip4/127.0.0.1/tcp/0"}, NoMDNS: true, NoNAT: true, GPUs: "none",
		PriceUnit: "USDC:9", SolanaRPC: ln.URL(), TokenMint: usdc.Mint})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = n.Start(ctx)
	if err == nil || !strings.Contains(err.Error(), "has 6 decimals, and the price unit says 9: start with --price-unit USDC:6") {
		t.Fatalf("started with a 6-decimal mint priced in USDC:9: %v", err)
	}
}
