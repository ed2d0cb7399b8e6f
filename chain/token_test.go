package chain_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/chain/localnet"
)

// testToken is a fresh 6-decimal mint on ln, as a currency named symbol,
// and mints each key's address `each` base units of it.
func testToken(t testing.TB, ln *localnet.Localnet, symbol string, each uint64, keys ...ed25519.PrivateKey) chain.Currency {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mint, err := ln.CreateMint(ctx, 6)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if err := ln.MintTo(ctx, mint, addrOf(k), each); err != nil {
			t.Fatal(err)
		}
	}
	c, err := chain.Token(symbol, mint, 6)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func balanceIn(t testing.TB, ln *localnet.Localnet, c chain.Currency, key ed25519.PrivateKey) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := c.Balance(ctx, ln.URL(), addrOf(key))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestTokenPayMovesTokensAndCheckAcceptsOnlyIt(t *testing.T) {
	ln := startLocalnet(t)
	keys := fundedKeys(t, ln, 3)
	a, b, c := keys[0], keys[1], keys[2]
	usdc := testToken(t, ln, "USDC", 100_000_000, a)
	fake := testToken(t, ln, "FAKE", 100_000_000, a) // same decimals, another mint
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	A, B, C := addrOf(a), addrOf(b), addrOf(c)

	const amount = 1_500_000 // 1.5 USDC
	ref := "job50-0-0-1"
	solBefore := balanceOf(t, ln, a)
	if n := balanceIn(t, ln, usdc, b); n != 0 {
		t.Fatalf("the payee holds %d USDC before any payment", n)
	}
	pay, err := usdc.Pay(ctx, ln.URL(), a, B, amount, ref)
	if err != nil {
		t.Fatal(err)
	}
	got, err := usdc.Check(ctx, ln.URL(), pay.Signature, A, B, amount, ref)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first payment: %+v", got)
	// The first payment made the payee's token account; the payer paid its rent.
	const rent = 2_039_280 // lamports of a 165-byte account
	if got.Amount != amount || got.Mint != usdc.Mint || got.Slot != pay.Slot || got.Fee != chain.PaymentFee || got.Rent != rent || pay.Rent != rent {
		t.Fatalf("Check found %+v, Pay said %+v", got, pay)
	}
	if n := balanceIn(t, ln, usdc, a); n != 100_000_000-amount {
		t.Errorf("payer holds %d USDC units, want %d", n, 100_000_000-amount)
	}
	if n := balanceIn(t, ln, usdc, b); n != amount {
		t.Errorf("payee holds %d USDC units, want %d", n, amount)
	}
	if lost := solBefore - balanceOf(t, ln, a); lost != chain.PaymentFee+rent {
		t.Errorf("payer lost %d lamports, want the %d fee and the %d rent", lost, chain.PaymentFee, rent)
	}
	// A second payment finds the account there: a fee only.
	solBefore = balanceOf(t, ln, a)
	again, err := usdc.Pay(ctx, ln.URL(), a, B, 2*amount, "job50-0-0-2")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := usdc.Check(ctx, ln.URL(), again.Signature, A, B, 2*amount, "job50-0-0-2"); err != nil || got.Rent != 0 || again.Rent != 0 {
		t.Fatalf("second payment: %+v, %v", got, err)
	}
	if lost := solBefore - balanceOf(t, ln, a); lost != chain.PaymentFee {
		t.Errorf("second payment cost %d lamports, want the %d fee", lost, chain.PaymentFee)
	}
	if n := balanceIn(t, ln, usdc, b); n != 3*amount {
		t.Errorf("payee holds %d USDC units, want %d", n, 3*amount)
	}

	// Transfers that are not this payment.
	wrongMint, err := fake.Pay(ctx, ln.URL(), a, B, amount, "job50-0-0-3")
	if err != nil {
		t.Fatal(err)
	}
	inSOL, err := chain.Pay(ctx, ln.URL(), a, B, amount, "job50-0-0-4")
	if err != nil {
		t.Fatal(err)
	}
	two, err := chain.PayOddlyIn(ctx, ln.URL(), usdc, a, B, []uint64{amount}, []string{"job50-0-0-5", "job50-0-0-6"})
	if err != nil {
		t.Fatal(err)
	}
	split, err := chain.PayOddlyIn(ctx, ln.URL(), usdc, a, B, []uint64{amount / 2, amount / 2}, []string{"job50-0-0-7"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		cur           chain.Currency
		sig, from, to string
		amount        uint64
		ref           string
		says          []string
	}{
		{"wrong mint", usdc, wrongMint.Signature, A, B, amount, "job50-0-0-3", []string{"wrong mint", "mint " + fake.Mint, "a payment in USDC moves mint " + usdc.Mint}},
		{"SOL for USDC", usdc, inSOL.Signature, A, B, amount, "job50-0-0-4", []string{"wrong payer or payee", "moves no USDC", "lamports from"}},
		{"USDC for SOL", chain.SOL, pay.Signature, A, B, amount, ref, []string{"wrong payer or payee", "base units of mint " + usdc.Mint}},
		{"wrong payee", usdc, pay.Signature, A, C, amount, ref, []string{"wrong payer or payee", "to " + C + "'s token account"}},
		{"wrong payer", usdc, pay.Signature, C, B, amount, ref, []string{"wrong payer or payee"}},
		{"more than paid", usdc, pay.Signature, A, B, amount + 1, ref, []string{fmt.Sprintf("too little: transaction %s moves %d of %d base units of USDC", pay.Signature, amount, amount+1)}},
		{"wrong ref", usdc, pay.Signature, A, B, amount, "job50-0-0-9", []string{"no memo for ref job50-0-0-9"}},
		{"two memos, the first bill", usdc, two, A, B, amount, "job50-0-0-5", []string{"carries 2 memos: a payment is one transfer with one memo for one bill"}},
		{"two memos, the second bill", usdc, two, A, B, amount, "job50-0-0-6", []string{"carries 2 memos"}},
		{"two transfers", usdc, split, A, B, amount / 2, "job50-0-0-7", []string{"makes 2 transfers"}},
	} {
		_, err := tc.cur.Check(ctx, ln.URL(), tc.sig, tc.from, tc.to, tc.amount, tc.ref)
		wantErr(t, tc.name, err, chain.ErrBadPayment, tc.says...)
		if err != nil {
			t.Logf("%s: %v", tc.name, err)
		}
	}
	// The wrong-mint payment is a payment in its own mint.
	if _, err := fake.Check(ctx, ln.URL(), wrongMint.Signature, A, B, amount, "job50-0-0-3"); err != nil {
		t.Fatal(err)
	}
	if n := balanceIn(t, ln, usdc, b); n != 3*amount+2*amount { // two and split moved amount each
		t.Errorf("payee holds %d USDC units, want %d", n, 5*amount)
	}
}

func TestTokenPayRefusesAnUnderfundedPayerBeforeSending(t *testing.T) {
	ln := startLocalnet(t)
	proxy := newPayProxy(t, ln.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	keys := fundedKeys(t, ln, 2)
	rich, poor := keys[0], keys[1]
	noSOL := newKey(t)
	usdc := testToken(t, ln, "USDC", 5_000_000, rich, noSOL)

	_, err := usdc.Pay(ctx, proxy.srv.URL, poor, addrOf(rich), 1_000_000, "job51-0-0-1")
	wantErr(t, "no tokens", err, chain.ErrUnderfunded,
		fmt.Sprintf("address %s holds 0 USDC (mint %s", addrOf(poor), usdc.Mint), "paying 1 needs 1 more", "fund it")
	t.Logf("no tokens: %v", err)
	_, err = usdc.Pay(ctx, proxy.srv.URL, rich, addrOf(poor), 5_000_001, "job51-0-0-2")
	wantErr(t, "one unit short", err, chain.ErrUnderfunded, "holds 5 USDC", "paying 5.000001 needs 0.000001 more")
	_, err = usdc.Pay(ctx, proxy.srv.URL, noSOL, addrOf(poor), 1_000_000, "job51-0-0-3")
	wantErr(t, "tokens but no SOL", err, chain.ErrUnderfunded, "holds 0 lamports", "the 5000-lamport fee and the 2039280-lamport rent of the payee's new token account")
	t.Logf("no SOL: %v", err)
	if n := proxy.sends.Load(); n != 0 {
		t.Fatalf("%d transactions sent, want none", n)
	}
	if n := balanceIn(t, ln, usdc, rich); n != 5_000_000 {
		t.Fatalf("the payer's tokens moved: %d", n)
	}
	if _, err := chain.Token("USDC", "not-a-mint", 6); err == nil {
		t.Error("a mint that is no address is taken")
	}
}

// BenchmarkTokenPay pays in a token and in SOL on the same localnet (400 ms
// slots), one after another and 16 or 32 at once from one key (a payment
// waits a slot for its confirmation, so the rate is what lands in a slot),
// and reports both with their ratio: the token's extra instructions (the idempotent create
// and TransferChecked) against a System transfer. slots/payment is the
// slots from the call to its confirmation.
func BenchmarkTokenPay(b *testing.B) {
	ln := startLocalnet(b)
	keys := fundedKeys(b, ln, 2)
	payer, payee := keys[0], keys[1]
	usdc := testToken(b, ln, "USDC", 1_000_000_000_000, payer)
	ctx := context.Background()
	slotNow := func() uint64 {
		s, err := chain.Slot(ctx, ln.URL())
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	// The payee's token account exists before timing: every payment is alike.
	if _, err := usdc.Pay(ctx, ln.URL(), payer, addrOf(payee), 1, "bench-setup"); err != nil {
		b.Fatal(err)
	}
	b.Run("sequential", func(b *testing.B) {
		var took [2]time.Duration
		var slots [2]uint64
		i := 0
		for b.Loop() {
			for k, cur := range []chain.Currency{chain.SOL, usdc} {
				s0, t0 := slotNow(), time.Now()
				if _, err := cur.Pay(ctx, ln.URL(), payer, addrOf(payee), 1000, fmt.Sprintf("bench-seq-%d-%d", k, i)); err != nil {
					b.Fatal(err)
				}
				took[k] += time.Since(t0)
				slots[k] += slotNow() - s0
			}
			i++
		}
		b.ReportMetric(float64(took[0].Milliseconds())/float64(i), "ms/sol-payment")
		b.ReportMetric(float64(took[1].Milliseconds())/float64(i), "ms/token-payment")
		b.ReportMetric(float64(slots[0])/float64(i), "slots/sol-payment")
		b.ReportMetric(float64(slots[1])/float64(i), "slots/token-payment")
		b.ReportMetric(float64(took[1])/float64(took[0]), "token/sol")
		b.ReportMetric(0, "ns/op")
	})
	for _, at := range []int{16, 32} {
		b.Run(fmt.Sprintf("concurrent-%d", at), func(b *testing.B) {
			var took [2]time.Duration
			n := 0
			for b.Loop() {
				for k, cur := range []chain.Currency{chain.SOL, usdc} {
					t0 := time.Now()
					var wg sync.WaitGroup
					errs := make([]error, at)
					for j := range at {
						wg.Add(1)
						go func() {
							defer wg.Done()
							_, errs[j] = cur.Pay(ctx, ln.URL(), payer, addrOf(payee), 1000, fmt.Sprintf("bench-conc%d-%d-%d-%d", at, k, n, j))
						}()
					}
					wg.Wait()
					if err := errors.Join(errs...); err != nil {
						b.Fatal(err)
					}
					took[k] += time.Since(t0)
				}
				n++
			}
			b.ReportMetric(float64(at*n)/took[0].Seconds(), "sol-payments/s")
			b.ReportMetric(float64(at*n)/took[1].Seconds(), "token-payments/s")
			b.ReportMetric(took[0].Seconds()/took[1].Seconds(), "token/sol-rate")
			b.ReportMetric(0, "ns/op")
		})
	}
}

func TestCheckMintSaysWhatIsWrongWithAMint(t *testing.T) {
	ln := startLocalnet(t)
	keys := fundedKeys(t, ln, 1)
	usdc := testToken(t, ln, "USDC", 1_000_000, keys[0])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := usdc.CheckMint(ctx, ln.URL()); err != nil {
		t.Fatalf("the mint as made: %v", err)
	}
	if err := chain.SOL.CheckMint(ctx, ""); err != nil {
		t.Fatalf("SOL has no mint to check: %v", err)
	}
	ata, err := usdc.Account(addrOf(keys[0]))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, mint string
		decimals   uint8
		want       string
	}{
		{"decimals", usdc.Mint, 9, "has 6 decimals, and the price unit says 9: start with --price-unit USDC:6"},
		{"no account", addrOf(newKey(t)), 6, "no account at"},
		{"a wallet", addrOf(keys[0]), 6, "is not a token mint"},
		{"a token account", ata, 6, "not an initialized mint"},
	} {
		c, err := chain.Token("USDC", tc.mint, tc.decimals)
		if err != nil {
			t.Fatal(err)
		}
		err = c.CheckMint(ctx, ln.URL())
		if !errors.Is(err, chain.ErrMintMismatch) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want ErrMintMismatch saying %q", tc.name, err, tc.want)
		}
	}
}
