package chain

import (
	"context"
	"errors"
	"fmt"
	"strings"

	solana "github.com/gagliardetto/solana-go"
	"github.com/gagliardetto/solana-go/rpc"
)

// PaidFor is what one payment transaction shows a consumer paid a provider
// for the receipt named key (<job>-<attempt>-<rank>): the lamports of the
// System transfers from `from` to `to` among its top-level instructions,
// in a successful transaction whose one memo is the PaymentMemo of a bill
// of that receipt (ref <key>-<interval>). A third party checks the
// payments a receipt lists this way, not knowing their bills. One
// getTransaction call; an error wrapping ErrBadPayment says which check
// failed.
func PaidFor(ctx context.Context, rpcURL, signature, from, to, key string) (uint64, error) {
	sig, err := solana.SignatureFromBase58(signature)
	if err != nil {
		return 0, fmt.Errorf("%w: %q is not a transaction signature: %v", ErrBadPayment, signature, err)
	}
	payer, err := parseAddress("payer", from)
	if err != nil {
		return 0, err
	}
	payee, err := parseAddress("payee", to)
	if err != nil {
		return 0, err
	}
	zero := uint64(0)
	res, err := rpc.New(rpcURL).GetTransaction(ctx, sig, &rpc.GetTransactionOpts{
		Encoding: solana.EncodingBase64, Commitment: rpc.CommitmentConfirmed, MaxSupportedTransactionVersion: &zero,
	})
	if errors.Is(err, rpc.ErrNotFound) || (err == nil && (res == nil || res.Transaction == nil)) {
		return 0, fmt.Errorf("%w: transaction %s is not on the chain behind %s", ErrBadPayment, signature, rpcURL)
	}
	if err != nil {
		return 0, fmt.Errorf("asking %s for transaction %s: %w", rpcURL, signature, err)
	}
	if res.Meta != nil && res.Meta.Err != nil {
		return 0, fmt.Errorf("%w: transaction %s failed on chain", ErrBadPayment, signature)
	}
	tx, err := res.Transaction.GetTransaction()
	if err != nil {
		return 0, fmt.Errorf("%w: transaction %s cannot be read: %v", ErrBadPayment, signature, err)
	}
	keys := tx.Message.AccountKeys
	prefix := PaymentMemo(key + "-")
	var sum uint64
	memos, ours := 0, false
	for _, ix := range tx.Message.Instructions {
		if int(ix.ProgramIDIndex) >= len(keys) {
			continue
		}
		switch prog := keys[ix.ProgramIDIndex]; {
		case prog.Equals(solana.MemoProgramID):
			memos++
			rest, ok := strings.CutPrefix(string(ix.Data), prefix)
			ours = ours || (ok && rest != "" && strings.Trim(rest, "0123456789") == "")
		case prog.Equals(solana.SystemProgramID):
			n, ok := parseTransfer(ix.Data)
			if !ok || len(ix.Accounts) < 2 || int(ix.Accounts[0]) >= len(keys) || int(ix.Accounts[1]) >= len(keys) {
				continue
			}
			if keys[ix.Accounts[0]].Equals(payer) && keys[ix.Accounts[1]].Equals(payee) && sum+n >= sum {
				sum += n
			}
		}
	}
	switch {
	case !ours || memos != 1:
		return 0, fmt.Errorf("%w: transaction %s carries no single memo of a bill of %s", ErrBadPayment, signature, key)
	case sum == 0:
		return 0, fmt.Errorf("%w: transaction %s moves nothing from %s to %s", ErrBadPayment, signature, from, to)
	}
	return sum, nil
}
