package chain

import (
	"context"
	"fmt"
	"strings"
)

// PaidFor is what one payment transaction shows a consumer paid a provider
// in c for the receipt named key (<job>-<attempt>-<rank>): the sum of its
// top-level transfers of c from `from` to `to` (read as Check reads them:
// in SOL System transfers; in a token the SPL Token transfers authorized
// by `from` into `to`'s associated token account of c's mint, a transfer
// of another mint or of SOL counting nothing), in a successful transaction
// whose one memo is the PaymentMemo of a bill of that receipt (ref
// <key>-<interval>). A third party checks the payments a receipt lists this
// way, not knowing their bills. One getTransaction call; an error wrapping
// ErrBadPayment says which check failed.
func (c Currency) PaidFor(ctx context.Context, rpcURL, signature, from, to, key string) (uint64, error) {
	p := Payment{Signature: signature, From: from, To: to, Mint: c.Mint}
	s, err := c.read(ctx, rpcURL, &p)
	if err != nil {
		return 0, err
	}
	prefix := PaymentMemo(key + "-")
	ours := false
	for _, m := range s.memos {
		rest, ok := strings.CutPrefix(m, prefix)
		ours = ours || (ok && rest != "" && strings.Trim(rest, "0123456789") == "")
	}
	if !ours || len(s.memos) != 1 {
		return 0, fmt.Errorf("%w: transaction %s carries no single memo of a bill of %s", ErrBadPayment, signature, key)
	}
	if err := s.moved(c, &p); err != nil {
		return 0, err
	}
	return p.Amount, nil
}
