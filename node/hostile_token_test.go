package node_test

import (
	"context"
	"crypto/ed25519"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/chain/localnet"
	"github.com/gpumesh/gpumesh/internal/testlocalnet"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// Hostile submitters of a swarm that settles in USDC, speaking the real
// job protocol to an honest provider.

// hostileUSDC is a provider of 8 mock H100s paid in USDC (3.6 USDC per
// GPU-hour, a bill every second) on a localnet, and a hostile submitter
// with 1 SOL and 100 USDC there.
func hostileUSDC(t *testing.T, seed uint64) (*node.Node, *meshtest.Adversary, *localnet.Localnet, chain.Currency) {
	t.Helper()
	ln := testlocalnet.Start(t, localnet.Options{})
	usdc := usdcOn(t, ln)
	m := meshtest.Start(t, 1, meshtest.Options{Seed: seed, Private: true, Providers: 1, Price: "fixed:3.6", Executors: []string{"process"}, Config: func(i int, c *node.Config) {
		c.PriceUnit, c.SolanaRPC, c.TokenMint, c.SettleInterval, c.AnchorAge = "USDC:6", ln.URL(), usdc.Mint, time.Second, time.Hour
	}})
	adv := m.AddAdversary(t, 0)
	fund(t, ln, usdc, m.Nodes[0].Info().SolanaAddress, 1_000_000_000, 0)
	fund(t, ln, usdc, adv.ID.SolanaAddress, 1_000_000_000, 100_000_000)
	return m.Nodes[0], adv, ln, usdc
}

// hostileStart reserves one GPU of prov as adv and starts a member,
// paying in mint, that runs script.
func hostileStart(t *testing.T, ctx context.Context, prov *node.Node, adv *meshtest.Adversary, mint, script string) *meshtest.JobStream {
	t.Helper()
	job := meshtest.NewJobID()
	if _, err := adv.Reserve(ctx, prov.Host().ID(), job, "H100-80GB", 1, 4_000_000, "USDC:6"); err != nil {
		t.Fatal(err)
	}
	js, err := adv.OpenJob(ctx, prov.Host().ID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = js.Close() })
	start := &jobwire.StartFrame{Job: job.String(), Members: 1, WorldGPUs: 1, Pays: true, Mint: mint, Spec: solSpec(t, script)}
	if err := js.Send(jobwire.Frame{T: jobwire.KindStart, Start: start}); err != nil {
		t.Fatal(err)
	}
	return js
}

func memberLog(frames []jobwire.Frame) string {
	var logs strings.Builder
	for _, f := range frames {
		if f.T == jobwire.KindLog {
			logs.Write(f.Data)
		}
	}
	return logs.String()
}

// A hostile submitter, speaking the real protocol, answers a bill with the
// signature of a transfer of another token (with the bill's memo, to the
// provider): the provider does not take it as a payment, and the outputs
// are withheld as for a bill not paid.
func TestAWrongMintTransferIsNotAPayment(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	prov, adv, ln, usdc := hostileUSDC(t, 80)
	fake := usdcOn(t, ln)
	fund(t, ln, fake, adv.ID.SolanaAddress, 1_000_000_000, 100_000_000)
	raw, err := adv.ID.Key.Raw()
	if err != nil {
		t.Fatal(err)
	}

	js := hostileStart(t, ctx, prov, adv, usdc.Mint, `echo the result > $GPUMESH_OUTPUTS/result.txt; sleep 0.3`)
	var sent string
	frames, err := js.Until(ctx, func(f jobwire.Frame) bool {
		if f.T == jobwire.KindBill && sent == "" {
			p, err := fake.Pay(ctx, ln.URL(), ed25519.PrivateKey(raw), prov.Info().SolanaAddress, f.Bill.Lamports, f.Bill.Ref)
			if err != nil {
				t.Errorf("pay in the wrong mint: %v", err)
				return true
			}
			sent = p.Signature
			_ = js.Send(jobwire.Frame{T: jobwire.KindPaid, Paid: &jobwire.PaidFrame{Interval: f.Bill.Interval, Signature: p.Signature}})
		}
		return f.T == jobwire.KindReceipt
	})
	if err != nil {
		t.Fatalf("frames %s: %v", kinds(frames), err)
	}
	if sent == "" {
		t.Fatalf("frames %s: no bill came", kinds(frames))
	}
	if log := memberLog(frames); !strings.Contains(log, "payment of interval 1 refused") || !strings.Contains(log, "wrong mint") {
		t.Errorf("the member's log does not say the payment was refused for its mint:\n%s", log)
	}
	got := kinds(frames)
	if strings.Contains(got, "file") || strings.Contains(got, "chunk") {
		t.Fatalf("frames %s: outputs sent for a bill paid in the wrong mint", got)
	}
	exit := frames[len(frames)-2].Exit
	if exit == nil || !strings.Contains(exit.Reason, "outputs are withheld: 1 of its bills are unpaid") {
		t.Fatalf("exit %+v: want the outputs withheld", exit)
	}
	r := frames[len(frames)-1].Receipt.Receipt
	if r.Paid != 0 || len(r.Payments) != 0 {
		t.Errorf("receipt: paid %d in %v", r.Paid, r.Payments)
	}
	// The transfer landed, in its own mint, and no USDC moved.
	if n := tokens(t, ln, fake, prov.Info().SolanaAddress); n == 0 {
		t.Error("the wrong-mint transfer did not land")
	}
	if n := tokens(t, ln, usdc, prov.Info().SolanaAddress); n != 0 {
		t.Errorf("the provider holds %d USDC units", n)
	}
}

// A provider paid in USDC refuses a member whose submitter pays in SOL, or
// in another mint, at its start, saying why.
func TestAProviderRefusesAStartPaidInAnotherCurrency(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ln := testlocalnet.Start(t, localnet.Options{})
	usdc := usdcOn(t, ln)
	m := meshtest.Start(t, 1, meshtest.Options{Seed: 81, Private: true, Providers: 1, Price: "fixed:3.6", Executors: []string{"process"}, Config: func(i int, c *node.Config) {
		c.PriceUnit, c.SolanaRPC, c.TokenMint, c.AnchorAge = "USDC:6", ln.URL(), usdc.Mint, time.Hour
	}})
	prov := m.Nodes[0]
	adv := m.AddAdversary(t, 0)
	for _, tc := range []struct {
		pays bool
		mint string
		says string
	}{
		{false, "", "the submitting peer needs --solana-rpc URL, --token-mint " + usdc.Mint},
		{true, "", "the submitter pays in SOL: start it with --token-mint " + usdc.Mint},
		{true, adv.ID.SolanaAddress, "the submitter pays in mint " + adv.ID.SolanaAddress},
	} {
		job := meshtest.NewJobID()
		if _, err := adv.Reserve(ctx, prov.Host().ID(), job, "H100-80GB", 1, 4_000_000, "USDC:6"); err != nil {
			t.Fatal(err)
		}
		js, err := adv.OpenJob(ctx, prov.Host().ID())
		if err != nil {
			t.Fatal(err)
		}
		start := &jobwire.StartFrame{Job: job.String(), Members: 1, WorldGPUs: 1, Pays: tc.pays, Mint: tc.mint, Spec: solSpec(t, "echo never")}
		if err := js.Send(jobwire.Frame{T: jobwire.KindStart, Start: start}); err != nil {
			t.Fatal(err)
		}
		frames, err := js.Until(ctx, func(f jobwire.Frame) bool { return f.T == jobwire.KindError })
		_ = js.Close()
		if err != nil {
			t.Fatalf("pays %v mint %q: frames %s: %v", tc.pays, tc.mint, kinds(frames), err)
		}
		if reason := frames[len(frames)-1].Reason; !strings.Contains(reason, tc.says) {
			t.Errorf("pays %v mint %q: refused with %q, want it to say %q", tc.pays, tc.mint, reason, tc.says)
		}
	}
}

// A hostile submitter that pays its first bill and shows that payment's
// signature for the next one has paid one bill: the provider remembers the
// signatures it took, and withholds the outputs of the bill left unpaid.
func TestOnePaymentPaysOneBill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	prov, adv, ln, usdc := hostileUSDC(t, 82)
	raw, err := adv.ID.Key.Raw()
	if err != nil {
		t.Fatal(err)
	}
	js := hostileStart(t, ctx, prov, adv, usdc.Mint, `echo the result > $GPUMESH_OUTPUTS/result.txt; sleep 1.6`)
	var first string
	bills := 0
	frames, err := js.Until(ctx, func(f jobwire.Frame) bool {
		if f.T == jobwire.KindBill {
			bills++
			if first == "" {
				p, err := usdc.Pay(ctx, ln.URL(), ed25519.PrivateKey(raw), prov.Info().SolanaAddress, f.Bill.Lamports, f.Bill.Ref)
				if err != nil {
					t.Errorf("pay: %v", err)
					return true
				}
				first = p.Signature
			}
			_ = js.Send(jobwire.Frame{T: jobwire.KindPaid, Paid: &jobwire.PaidFrame{Interval: f.Bill.Interval, Signature: first}})
		}
		return f.T == jobwire.KindReceipt
	})
	if err != nil {
		t.Fatalf("frames %s: %v", kinds(frames), err)
	}
	if bills < 2 {
		t.Fatalf("frames %s: %d bills, want two or more", kinds(frames), bills)
	}
	if log := memberLog(frames); !strings.Contains(log, "payment of interval 2 refused: transaction "+first+" paid an earlier bill") {
		t.Errorf("the member's log does not say the signature was used:\n%s", log)
	}
	if got := kinds(frames); strings.Contains(got, "file") {
		t.Fatalf("frames %s: outputs sent with a bill unpaid", got)
	}
	r := frames[len(frames)-1].Receipt.Receipt
	if len(r.Payments) != 1 || r.Payments[0] != first {
		t.Fatalf("receipt payments %v, want the one payment %s", r.Payments, first)
	}
	if got := tokens(t, ln, usdc, prov.Info().SolanaAddress); got != r.Paid {
		t.Fatalf("the provider holds %d USDC units, its receipt says %d were paid", got, r.Paid)
	}
}
