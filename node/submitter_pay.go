package node

import (
	"context"
	"fmt"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node/attempt"
	"github.com/gpumesh/gpumesh/node/jobwire"
)

// checkFunds refuses a job the submitter cannot pay the first interval of.
func (n *Node) checkFunds(ctx context.Context, gpus int, maxPrice uint64) error {
	if !n.settles() {
		return nil
	}
	interval := DefaultSettleInterval
	need := receipt.Amount(maxPrice, uint64(gpus)*uint64(interval.Milliseconds())) + uint64(gpus)*lamportsPerSignature
	bal, err := chain.Balance(ctx, n.cfg.SolanaRPC, n.id.SolanaAddress)
	if err != nil {
		return fmt.Errorf("job not submitted: jobs here are paid on chain and the balance of %s could not be read: %w", n.id.SolanaAddress, err)
	}
	if bal < need {
		u := n.PriceUnit()
		return fmt.Errorf("job not submitted: your address %s holds %s SOL; the first %s of %d GPUs at up to %s SOL/GPU-h needs %s SOL with fees: fund it",
			n.id.SolanaAddress, u.Format(bal), interval, gpus, u.Format(maxPrice), u.Format(need))
	}
	return nil
}

// payBill pays a member's bill that the run attempt allowed: the amount to
// the member's provider, in a transfer whose memo is the bill's reference;
// then it tells the member. It returns the payment's signature.
func (n *Node) payBill(ctx context.Context, jl *jobLog, m gossip.Member, name string, c *memberConn, b attempt.Bill) (string, error) {
	key, err := n.ed25519Key()
	if err != nil {
		return "", err
	}
	u := n.PriceUnit()
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), paymentWait)
	defer cancel()
	pay, err := chain.Pay(pctx, n.cfg.SolanaRPC, key, solanaAddress(m.Provider), b.Amount, b.Ref)
	if err != nil {
		jl.note(fmt.Sprintf("could not pay bill %d of %s (%s SOL): %v", b.Interval, name, u.Format(b.Amount), err))
		return "", err
	}
	jl.note(fmt.Sprintf("paid %s %s SOL for interval %d (transaction %s)", name, u.Format(b.Amount), b.Interval, pay.Signature))
	if c != nil {
		_ = c.fw.Write(jobwire.Frame{T: jobwire.KindPaid, Paid: &jobwire.PaidFrame{Interval: b.Interval, Signature: pay.Signature}})
	}
	return pay.Signature, nil
}
