package node

import (
	"context"
	"fmt"
	"sync"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/gossip"
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

// payer is the submitter's settlement of one run: it pays each member's
// bills as they come and remembers what it paid.
type payer struct {
	n       *Node
	jl      *jobLog
	members []gossip.Member
	names   func(int) string
	wg      sync.WaitGroup

	mu   sync.Mutex
	paid []map[string]uint64 // per rank: payment signature → lamports
}

func newPayer(n *Node, jl *jobLog, members []gossip.Member, names func(int) string) *payer {
	p := &payer{n: n, jl: jl, members: members, names: names, paid: make([]map[string]uint64, len(members))}
	for i := range p.paid {
		p.paid[i] = map[string]uint64{}
	}
	return p
}

// bill pays a member's bill in the background, if it is what the lease
// allows for the time billed.
func (p *payer) bill(ctx context.Context, rank int, c *memberConn, b jobwire.BillFrame) {
	m := p.members[rank]
	u := p.n.PriceUnit()
	if !p.n.settles() {
		p.jl.note(fmt.Sprintf("%s sent a bill of %s %s, but this peer pays nothing on chain (no --solana-rpc, or the unit is not SOL)", p.names(rank), u.Format(b.Lamports), u.Token))
		return
	}
	if most := receipt.Amount(m.Price, uint64(m.GPUs)*b.Millis); b.Lamports > most {
		p.jl.note(fmt.Sprintf("bill %d of %s refused: %s SOL for %d GPUs over %d ms at %s SOL/GPU-h is more than the %s SOL the lease allows",
			b.Interval, p.names(rank), u.Format(b.Lamports), m.GPUs, b.Millis, u.Format(m.Price), u.Format(most)))
		return
	}
	key, err := p.n.ed25519Key()
	if err != nil {
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), paymentWait)
		defer cancel()
		pay, err := chain.Pay(pctx, p.n.cfg.SolanaRPC, key, solanaAddress(m.Provider), b.Lamports, b.Ref)
		if err != nil {
			p.jl.note(fmt.Sprintf("could not pay bill %d of %s (%s SOL): %v", b.Interval, p.names(rank), u.Format(b.Lamports), err))
			return
		}
		p.mu.Lock()
		p.paid[rank][pay.Signature] = pay.Lamports
		p.mu.Unlock()
		p.jl.note(fmt.Sprintf("paid %s %s SOL for interval %d (transaction %s)", p.names(rank), u.Format(b.Lamports), b.Interval, pay.Signature))
		if c != nil {
			_ = c.fw.Write(jobwire.Frame{T: jobwire.KindPaid, Paid: &jobwire.PaidFrame{Interval: b.Interval, Signature: pay.Signature}})
		}
	}()
}

// total is what was paid to a member.
func (p *payer) total(rank int) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var t uint64
	for _, v := range p.paid[rank] {
		t += v
	}
	return t
}

// signatures are the payments made to a member.
func (p *payer) signatures(rank int) map[string]uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]uint64, len(p.paid[rank]))
	for k, v := range p.paid[rank] {
		out[k] = v
	}
	return out
}

func (p *payer) wait() { p.wg.Wait() }
