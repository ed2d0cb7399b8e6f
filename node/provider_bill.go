package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node/jobwire"
)

// Settlement: in a swarm whose price unit is SOL (--price-unit SOL:9), or
// an SPL token whose mint the peers name (--price-unit USDC:6 --token-mint
// MINT), and whose peers reach Solana (--solana-rpc), a job pays as it runs. Every
// interval (--settle-interval, default a minute) each member's provider
// bills the GPU time of the interval just ended; the submitter pays it at
// once by a transfer whose memo names the job, member and interval, and
// says so; the provider checks the payment on chain. A bill not paid within
// a quarter of an interval pauses the work (its memory and GPUs are kept,
// paused time is not billed) with a notice in the job's log; paid, it goes
// on; still unpaid an interval later, the member stops with the reason. So
// a provider is never owed more than about one interval, and a consumer
// who is late loses no work until the stop. The last bill, at the end,
// covers the rest, and comes before the member's outputs and exit: the
// outputs go to the submitter only once every bill is paid, so a submitter
// that takes the outputs and leaves owes nothing; one that does not pay
// the last bill (within paymentWait) gets no outputs, and the exit says
// why. The member's receipt records what was paid and the payment
// transactions.

// Settlement defaults.
const (
	DefaultSettleInterval = time.Minute
	minSettleGrace        = time.Second
	paymentWait           = 30 * time.Second // the submitter's payment of one bill
	lastBillWait          = 10 * time.Second // the least time the last bill waits for its payment (the outputs wait with it)
	lamportsPerSignature  = 5000
)

// settles reports whether this peer pays and is paid on chain as jobs run.
func (n *Node) settles() bool {
	return n.cfg.SolanaRPC != "" && (n.cfg.TokenMint != "" || n.PriceUnit().Token == "SOL" && n.PriceUnit().Decimals == 9)
}

// currency is what this peer's payments move: the token of --token-mint,
// else SOL.
func (n *Node) currency() chain.Currency {
	if n.cfg.TokenMint == "" {
		return chain.SOL
	}
	u := n.PriceUnit()
	return chain.Currency{Symbol: u.Token, Mint: n.cfg.TokenMint, Decimals: u.Decimals}
}

// checkMint refuses to start with a --token-mint that the chain says is
// not a mint of the price unit's decimals (every payment in it would fail);
// an RPC that cannot be asked now only gets a warning, since payments say
// what is wrong when they are tried.
func (n *Node) checkMint(ctx context.Context) error {
	if n.cfg.TokenMint == "" || n.cfg.SolanaRPC == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := n.currency().CheckMint(ctx, n.cfg.SolanaRPC)
	if errors.Is(err, chain.ErrMintMismatch) {
		return fmt.Errorf("--token-mint: %w", err)
	}
	if err != nil {
		n.log.Warn("token mint not checked", "mint", n.cfg.TokenMint, "err", err)
	}
	return nil
}

// paidIn says why a member's start is refused: its submitter does not pay
// in this provider's currency.
func (n *Node) paidIn(cur chain.Currency, st jobwire.StartFrame) string {
	if cur.IsSOL() {
		if st.Pays {
			return fmt.Sprintf("this provider is paid in SOL, and the submitter pays in the token of mint %s: every peer of a swarm settles in one currency", st.Mint)
		}
		return fmt.Sprintf("this provider is paid in SOL as jobs run (a bill every %s): the submitting peer needs --solana-rpc URL and SOL at its address", n.settleInterval())
	}
	switch {
	case !st.Pays:
		return fmt.Sprintf("this provider is paid in %s (mint %s) as jobs run (a bill every %s): the submitting peer needs --solana-rpc URL, --token-mint %s and %s at its address",
			cur.Symbol, cur.Mint, n.settleInterval(), cur.Mint, cur.Symbol)
	case st.Mint == "":
		return fmt.Sprintf("this provider is paid in %s (mint %s), and the submitter pays in SOL: start it with --token-mint %s", cur.Symbol, cur.Mint, cur.Mint)
	}
	return fmt.Sprintf("this provider is paid in %s of mint %s, and the submitter pays in mint %s: every peer of a swarm settles in one token", cur.Symbol, cur.Mint, st.Mint)
}

// validateToken checks --token-mint against the price unit and the RPC.
func (c *Config) validateToken(bad func(flag, format string, args ...any)) {
	if c.TokenMint == "" {
		return
	}
	if _, err := chain.Token("", c.TokenMint, 0); err != nil {
		bad("token-mint", "--token-mint: %w", err)
		return
	}
	if u, err := gossip.ParseUnit(c.PriceUnit); err == nil && u.Token == "SOL" {
		bad("token-mint", "--token-mint %s with --price-unit %s: SOL has no mint; drop --token-mint, or price in the token (--price-unit USDC:6)", c.TokenMint, u)
	}
	if c.SolanaRPC == "" {
		bad("token-mint", "--token-mint %s needs --solana-rpc URL: jobs are paid on chain", c.TokenMint)
	}
}

func (n *Node) settleInterval() time.Duration {
	if n.cfg.SettleInterval > 0 {
		return n.cfg.SettleInterval
	}
	return DefaultSettleInterval
}

// biller is a provider's settlement of one member's run.
type biller struct {
	n        *Node
	task     string
	job      string // <job>-<attempt>-<rank>
	consumer string // Solana address
	price    uint64 // per GPU-hour, in the price unit's smallest unit (lamports for SOL)
	gpus     uint32
	interval time.Duration
	grace    time.Duration
	pauser   exec.Pauser // nil: the executor cannot pause (the work is stopped instead)
	send     func(jobwire.Frame) error
	note     func(string)
	stop     func(reason string)

	mu          sync.Mutex
	started     bool
	billedUntil int64 // unix ms: running time up to here is billed (the receipt's millisecond clock)
	pausedAt    int64 // unix ms; 0: running
	paused      int64 // ms
	next        int
	unpaid      map[int]jobwire.BillFrame
	due         map[int]time.Time
	paid        uint64
	payments    []string
	settled     chan struct{} // closed and replaced when a bill is paid
}

func (n *Node) newBiller(task, job, consumer string, price uint64, gpus uint32, pauser exec.Pauser) *biller {
	interval := n.settleInterval()
	return &biller{
		n: n, task: task, job: job, consumer: consumer, price: price, gpus: gpus,
		interval: interval, grace: max(interval/4, minSettleGrace), pauser: pauser,
		unpaid: map[int]jobwire.BillFrame{}, due: map[int]time.Time{}, settled: make(chan struct{}), next: 1,
	}
}

// begin starts the meter at the work's start; it is called before run, at
// once, so that work shorter than a goroutine's start is billed too.
func (b *biller) begin(start time.Time) {
	b.mu.Lock()
	b.started, b.billedUntil = true, start.UnixMilli()
	b.mu.Unlock()
}

// run bills every interval and enforces payment until ctx ends.
func (b *biller) run(ctx context.Context, start time.Time) {
	tick := time.NewTicker(min(b.grace, b.interval) / 2)
	defer tick.Stop()
	nextBill := start.Add(b.interval)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if !now.Before(nextBill) {
				b.bill(now)
				nextBill = nextBill.Add(b.interval)
			}
			b.enforce(ctx, now)
		}
	}
}

// bill sends the bill of the running time not yet billed.
func (b *biller) bill(now time.Time) {
	b.mu.Lock()
	until := now.UnixMilli()
	if b.pausedAt != 0 {
		until = b.pausedAt
	}
	ms := uint64(max(until-b.billedUntil, 0))
	if ms == 0 {
		b.mu.Unlock()
		return
	}
	k := b.next
	bf := jobwire.BillFrame{Interval: k, Lamports: receipt.Amount(b.price, uint64(b.gpus)*ms), Ref: fmt.Sprintf("%s-%d", b.job, k), Millis: ms}
	b.next++
	b.billedUntil += int64(ms)
	if bf.Lamports > 0 {
		b.unpaid[k] = bf
		b.due[k] = now.Add(b.grace)
	}
	b.mu.Unlock()
	if bf.Lamports > 0 {
		_ = b.send(jobwire.Frame{T: jobwire.KindBill, Bill: &bf})
	}
}

// enforce pauses the work when a bill is overdue and stops it when it
// stays unpaid for an interval more.
func (b *biller) enforce(ctx context.Context, now time.Time) {
	b.mu.Lock()
	overdue, oldest := false, 0
	for k, d := range b.due {
		if now.After(d) && (oldest == 0 || k < oldest) {
			overdue, oldest = true, k
		}
	}
	pausedAt := b.pausedAt
	bf := b.unpaid[oldest]
	b.mu.Unlock()
	u := b.n.PriceUnit()
	sym := u.Token
	switch {
	case overdue && pausedAt == 0:
		if b.pauser == nil {
			b.stop(fmt.Sprintf("interval %d (%s %s) not paid within %s", oldest, u.Format(bf.Lamports), sym, b.grace))
			return
		}
		if err := b.pauser.Pause(ctx, b.task); err != nil {
			b.stop(fmt.Sprintf("interval %d not paid, and the work could not be paused: %v", oldest, err))
			return
		}
		b.mu.Lock()
		b.pausedAt = now.UnixMilli()
		b.mu.Unlock()
		b.note(fmt.Sprintf("paused: interval %d (%s %s) not paid within %s; the work stops at %s unless it is paid",
			oldest, u.Format(bf.Lamports), sym, b.grace, now.Add(b.interval).UTC().Format(time.TimeOnly)))
	case overdue && now.Sub(time.UnixMilli(pausedAt)) > b.interval:
		b.stop(fmt.Sprintf("interval %d (%s %s) still not paid %s after the work was paused", oldest, u.Format(bf.Lamports), sym, b.interval))
	}
}

// paidFor takes the submitter's word that a bill is paid and checks it on
// chain; a paid bill lets paused work go on.
func (b *biller) paidFor(ctx context.Context, p jobwire.PaidFrame) {
	b.mu.Lock()
	bf, ok := b.unpaid[p.Interval]
	used := slices.Contains(b.payments, p.Signature)
	b.mu.Unlock()
	if !ok {
		return
	}
	if used { // one payment pays one bill (its one memo says which)
		b.note(fmt.Sprintf("payment of interval %d refused: transaction %s paid an earlier bill", p.Interval, p.Signature))
		return
	}
	cctx, cancel := context.WithTimeout(ctx, paymentWait)
	defer cancel()
	pay, err := b.n.currency().Check(cctx, b.n.cfg.SolanaRPC, p.Signature, b.consumer, b.n.id.SolanaAddress, bf.Lamports, bf.Ref)
	if err != nil {
		b.note(fmt.Sprintf("payment of interval %d refused: %v", p.Interval, err))
		return
	}
	b.mu.Lock()
	if _, still := b.unpaid[p.Interval]; !still {
		b.mu.Unlock()
		return
	}
	delete(b.unpaid, p.Interval)
	delete(b.due, p.Interval)
	b.paid += pay.Amount
	b.payments = append(b.payments, p.Signature)
	resume := b.pausedAt != 0 && len(b.unpaid) == 0
	if resume {
		d := max(time.Now().UnixMilli()-b.pausedAt, 0)
		b.paused += d
		b.billedUntil += d // paused time is not billed
		b.pausedAt = 0
	}
	close(b.settled)
	b.settled = make(chan struct{})
	b.mu.Unlock()
	if resume && b.pauser != nil {
		if err := b.pauser.Resume(ctx, b.task); err != nil {
			b.stop(fmt.Sprintf("the work could not be resumed: %v", err))
			return
		}
		b.note(fmt.Sprintf("resumed: interval %d paid", p.Interval))
	}
}

// settlement is how a member's run was paid, once its work has ended.
type settlement struct {
	paid     uint64        // confirmed payments, in the price unit's smallest unit
	payments []string      // their transactions
	paused   time.Duration // time the work was paused for a late payment
	unpaid   int           // bills not paid
}

// finish bills what is left at the end and, with wait, waits (bounded) for
// every bill to be paid. It runs before the member's outputs and exit go
// out: a submitter gets the outputs only once it has paid the last bill.
func (b *biller) finish(ctx context.Context, end time.Time, gone <-chan struct{}, wait bool) settlement {
	b.mu.Lock()
	started := b.started
	if b.pausedAt != 0 { // paused to the end: that time is not billed
		d := max(end.UnixMilli()-b.pausedAt, 0)
		b.paused += d
		b.billedUntil += d
		b.pausedAt = 0
	}
	b.mu.Unlock()
	if started {
		b.bill(end)
	}
	// The last bill gets what a bill gets while the work runs (the grace,
	// then an interval more), and at least lastBillWait.
	deadline := time.After(max(b.grace+b.interval, lastBillWait))
wait:
	for wait {
		b.mu.Lock()
		left, settled := len(b.unpaid), b.settled
		b.mu.Unlock()
		if left == 0 {
			break
		}
		select {
		case <-settled:
		case <-deadline:
			b.note(fmt.Sprintf("%d bills unpaid at the end of the work", left))
			break wait
		case <-gone:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return settlement{
		paid: b.paid, payments: append([]string(nil), b.payments...),
		paused: time.Duration(b.paused) * time.Millisecond, unpaid: len(b.unpaid),
	}
}
