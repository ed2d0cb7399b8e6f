package chain_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/chain"
)

// PaidFor counts a payment of a bill of the receipt named, from its
// consumer to its provider, and nothing else: another receipt's bill, a
// payment between other parties, a signature of no transaction.
func TestPaidForCountsOnlyTheReceiptsOwnPayments(t *testing.T) {
	ln := startLocalnet(t)
	keys := fundedKeys(t, ln, 3)
	consumer, provider, other := keys[0], keys[1], keys[2]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pay, err := chain.Pay(ctx, ln.URL(), consumer, addrOf(provider), 5000, "job7-0-1-3")
	if err != nil {
		t.Fatal(err)
	}
	got, err := chain.SOL.PaidFor(ctx, ln.URL(), pay.Signature, addrOf(consumer), addrOf(provider), "job7-0-1")
	if err != nil || got != 5000 {
		t.Fatalf("PaidFor = %d, %v; want 5000", got, err)
	}
	for _, tt := range []struct {
		name, sig, from, to, key, want string
	}{
		{"another receipt's bill", pay.Signature, addrOf(consumer), addrOf(provider), "job7-0-2", "no single memo of a bill of job7-0-2"},
		{"a prefix of the key", pay.Signature, addrOf(consumer), addrOf(provider), "job7-0", "no single memo"},
		{"another payer", pay.Signature, addrOf(other), addrOf(provider), "job7-0-1", "moves nothing"},
		{"no such transaction", strings.Repeat("1", 64), addrOf(consumer), addrOf(provider), "job7-0-1", "not found on the chain"},
	} {
		if n, err := chain.SOL.PaidFor(ctx, ln.URL(), tt.sig, tt.from, tt.to, tt.key); n != 0 || !errors.Is(err, chain.ErrBadPayment) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %d, %v; want 0 and ErrBadPayment saying %q", tt.name, n, err, tt.want)
		}
	}
}

// In a swarm that settles in a token, PaidFor counts a TransferChecked of
// that token's mint from the consumer into the provider's token account
// with a memo of the receipt's bill, and nothing else: a transfer of
// another mint, SOL; in a SOL swarm the token payment counts nothing.
func TestPaidForCountsTokenPaymentsOnlyInTheSwarmsCurrency(t *testing.T) {
	ln := startLocalnet(t)
	keys := fundedKeys(t, ln, 3)
	consumer, provider, other := keys[0], keys[1], keys[2]
	usdc := testToken(t, ln, "USDC", 100_000_000, consumer)
	fake := testToken(t, ln, "FAKE", 100_000_000, consumer)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	C, P := addrOf(consumer), addrOf(provider)
	pay, err := usdc.Pay(ctx, ln.URL(), consumer, P, 1_500_000, "job8-0-1-2")
	if err != nil {
		t.Fatal(err)
	}
	got, err := usdc.PaidFor(ctx, ln.URL(), pay.Signature, C, P, "job8-0-1")
	if err != nil || got != 1_500_000 {
		t.Fatalf("PaidFor in USDC of a USDC payment = %d, %v; want 1500000", got, err)
	}
	wrongMint, err := fake.Pay(ctx, ln.URL(), consumer, P, 2_000_000, "job8-0-1-3")
	if err != nil {
		t.Fatal(err)
	}
	sol, err := chain.Pay(ctx, ln.URL(), consumer, P, 5000, "job8-0-1-4")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		c    chain.Currency
		sig  string
		from string
		key  string
		want string
	}{
		{"another mint", usdc, wrongMint.Signature, C, "job8-0-1", "wrong mint"},
		{"SOL in a token swarm", usdc, sol.Signature, C, "job8-0-1", "moves no USDC"},
		{"the token in a SOL swarm", chain.SOL, pay.Signature, C, "job8-0-1", "moves nothing"},
		{"another receipt's bill", usdc, pay.Signature, C, "job8-0-2", "no single memo of a bill of job8-0-2"},
		{"another payer", usdc, pay.Signature, addrOf(other), "job8-0-1", "wrong payer or payee"},
	} {
		if n, err := tt.c.PaidFor(ctx, ln.URL(), tt.sig, tt.from, P, tt.key); n != 0 || !errors.Is(err, chain.ErrBadPayment) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %d, %v; want 0 and ErrBadPayment saying %q", tt.name, n, err, tt.want)
		}
	}
}
