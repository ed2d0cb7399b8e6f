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

// checkFunds refuses a job the submitter cannot pay the first interval of:
// in SOL, the amount and a fee a GPU; in a token, the amount in tokens and
// the fees in SOL. It runs before any negotiation, so nothing is leased.
func (n *Node) checkFunds(ctx context.Context, gpus int, maxPrice uint64) error {
	if !n.settles() {
		return nil
	}
	interval := DefaultSettleInterval
	amount := receipt.Amount(maxPrice, uint64(gpus)*uint64(interval.Milliseconds()))
	fees := uint64(gpus) * lamportsPerSignature
	u, cur := n.PriceUnit(), n.currency()
	if cur.IsSOL() {
		bal, err := chain.Balance(ctx, n.cfg.SolanaRPC, n.id.SolanaAddress)
		if err != nil {
			return fmt.Errorf("job not submitted: jobs here are paid on chain and the balance of %s could not be read: %w", n.id.SolanaAddress, err)
		}
		if need := amount + fees; bal < need {
			return fmt.Errorf("job not submitted: your address %s holds %s SOL; the first %s of %d GPUs at up to %s SOL/GPU-h needs %s SOL with fees: fund it",
				n.id.SolanaAddress, u.Format(bal), interval, gpus, u.Format(maxPrice), u.Format(need))
		}
		return nil
	}
	tokens, err := cur.Balance(ctx, n.cfg.SolanaRPC, n.id.SolanaAddress)
	if err != nil {
		return fmt.Errorf("job not submitted: jobs here are paid in %s on chain and the %s balance of %s could not be read: %w", u.Token, u.Token, n.id.SolanaAddress, err)
	}
	if tokens < amount {
		return fmt.Errorf("job not submitted: your address %s holds %s %s (mint %s); the first %s of %d GPUs at up to %s %s/GPU-h needs %s %s: send %s to it",
			n.id.SolanaAddress, u.Format(tokens), u.Token, cur.Mint, interval, gpus, u.Format(maxPrice), u.Token, u.Format(amount), u.Token, u.Token)
	}
	lamports, err := chain.Balance(ctx, n.cfg.SolanaRPC, n.id.SolanaAddress)
	if err != nil {
		return fmt.Errorf("job not submitted: jobs here are paid on chain and the SOL balance of %s (for fees) could not be read: %w", n.id.SolanaAddress, err)
	}
	if lamports < fees {
		return fmt.Errorf("job not submitted: your address %s holds %s SOL; the payments' fees for the first %s of %d GPUs need %s SOL (and a new provider's token account about 0.002 SOL of rent): fund it with SOL",
			n.id.SolanaAddress, chain.SOL.Format(lamports), interval, gpus, chain.SOL.Format(fees))
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
	pay, err := n.currency().Pay(pctx, n.cfg.SolanaRPC, key, solanaAddress(m.Provider), b.Amount, b.Ref)
	if err != nil {
		jl.note(fmt.Sprintf("could not pay bill %d of %s (%s %s): %v", b.Interval, name, u.Format(b.Amount), u.Token, err))
		return "", err
	}
	jl.note(fmt.Sprintf("paid %s %s %s for interval %d (transaction %s)", name, u.Format(b.Amount), u.Token, b.Interval, pay.Signature))
	if c != nil {
		_ = c.fw.Write(jobwire.Frame{T: jobwire.KindPaid, Paid: &jobwire.PaidFrame{Interval: b.Interval, Signature: pay.Signature}})
	}
	return pay.Signature, nil
}

// payMint is the mint a start frame says this submitter pays in: its
// token's, or "" for SOL or when it does not pay.
func (n *Node) payMint(cfg attempt.Config) string {
	if !cfg.Settles {
		return ""
	}
	return n.currency().Mint
}
