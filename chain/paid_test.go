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
	got, err := chain.PaidFor(ctx, ln.URL(), pay.Signature, addrOf(consumer), addrOf(provider), "job7-0-1")
	if err != nil || got != 5000 {
		t.Fatalf("PaidFor = %d, %v; want 5000", got, err)
	}
	for _, tt := range []struct {
		name, sig, from, to, key, want string
	}{
		{"another receipt's bill", pay.Signature, addrOf(consumer), addrOf(provider), "job7-0-2", "no single memo of a bill of job7-0-2"},
		{"a prefix of the key", pay.Signature, addrOf(consumer), addrOf(provider), "job7-0", "no single memo"},
		{"another payer", pay.Signature, addrOf(other), addrOf(provider), "job7-0-1", "moves nothing"},
		{"no such transaction", strings.Repeat("1", 64), addrOf(consumer), addrOf(provider), "job7-0-1", "not on the chain"},
	} {
		if n, err := chain.PaidFor(ctx, ln.URL(), tt.sig, tt.from, tt.to, tt.key); n != 0 || !errors.Is(err, chain.ErrBadPayment) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %d, %v; want 0 and ErrBadPayment saying %q", tt.name, n, err, tt.want)
		}
	}
}
