package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/gossip"
)

// Settlement: in a swarm whose price unit is SOL (--price-unit SOL:9) and
// whose peers reach Solana (--solana-rpc), a job pays as it runs. Every
// interval (--settle-interval, default a minute) each member's provider
// bills the GPU time of the interval just ended; the submitter pays it at
// once by a transfer whose memo names the job, member and interval, and
// says so; the provider checks the payment on chain. A bill not paid within
// a quarter of an interval pauses the work (its memory and GPUs are kept,
// paused time is not billed) with a notice in the job's log; paid, it goes
// on; still unpaid an interval later, the member stops with the reason. So
// a provider is never owed more than about one interval, and a consumer
// who is late loses no work until the stop. The last bill, at the end,
// covers the rest; the member's receipt records what was paid and the
// payment transactions.

// Settlement defaults.
const (
	DefaultSettleInterval = time.Minute
	minSettleGrace        = time.Second
	paymentWait           = 30 * time.Second // the submitter's payment of one bill
	lamportsPerSignature  = 5000
)

// settles reports whether this peer pays and is paid on chain as jobs run.
func (n *Node) settles() bool {
	return n.cfg.SolanaRPC != "" && n.PriceUnit().Token == "SOL" && n.PriceUnit().Decimals == 9
}

func (n *Node) settleInterval() time.Duration {
	if n.cfg.SettleInterval > 0 {
		return n.cfg.SettleInterval
	}
	return DefaultSettleInterval
}

// billFrame asks the submitter to pay for one interval of a member's work.
type billFrame struct {
	Interval int    `json:"interval"` // from 1
	Lamports uint64 `json:"lamports"`
	Ref      string `json:"ref"` // <job>-<attempt>-<rank>-<interval>: the payment's memo
	Millis   uint64 `json:"millis"`
}

// paidFrame says a bill was paid.
type paidFrame struct {
	Interval  int    `json:"interval"`
	Signature string `json:"signature"`
}

// checkFunds refuses a job the submitter cannot pay the first interval of.
func (n *Node) checkFunds(ctx context.Context, gpus int, maxPrice uint64) error {
	if !n.settles() {
		return nil
	}
	interval := DefaultSettleInterval
	need := exec.Amount(maxPrice, uint64(gpus)*uint64(interval.Milliseconds())) + uint64(gpus)*lamportsPerSignature
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

// biller is a provider's settlement of one member's run.
type biller struct {
	n        *Node
	task     string
	job      string // <job>-<attempt>-<rank>
	consumer string // Solana address
	price    uint64 // lamports per GPU-hour
	gpus     uint32
	interval time.Duration
	grace    time.Duration
	pauser   exec.Pauser // nil: the executor cannot pause (the work is stopped instead)
	send     func(frame) error
	note     func(string)
	stop     func(reason string)

	mu          sync.Mutex
	started     bool
	billedUntil int64 // unix ms: running time up to here is billed (the receipt's millisecond clock)
	pausedAt    int64 // unix ms; 0: running
	paused      int64 // ms
	next        int
	unpaid      map[int]billFrame
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
		unpaid: map[int]billFrame{}, due: map[int]time.Time{}, settled: make(chan struct{}), next: 1,
	}
}

// run bills every interval and enforces payment until ctx ends.
func (b *biller) run(ctx context.Context, start time.Time) {
	b.mu.Lock()
	b.started, b.billedUntil = true, start.UnixMilli()
	b.mu.Unlock()
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
	bf := billFrame{Interval: k, Lamports: exec.Amount(b.price, uint64(b.gpus)*ms), Ref: fmt.Sprintf("%s-%d", b.job, k), Millis: ms}
	b.next++
	b.billedUntil += int64(ms)
	if bf.Lamports > 0 {
		b.unpaid[k] = bf
		b.due[k] = now.Add(b.grace)
	}
	b.mu.Unlock()
	if bf.Lamports > 0 {
		_ = b.send(frame{T: frameBill, Bill: &bf})
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
	switch {
	case overdue && pausedAt == 0:
		if b.pauser == nil {
			b.stop(fmt.Sprintf("interval %d (%s SOL) not paid within %s", oldest, u.Format(bf.Lamports), b.grace))
			return
		}
		if err := b.pauser.Pause(ctx, b.task); err != nil {
			b.stop(fmt.Sprintf("interval %d not paid, and the work could not be paused: %v", oldest, err))
			return
		}
		b.mu.Lock()
		b.pausedAt = now.UnixMilli()
		b.mu.Unlock()
		b.note(fmt.Sprintf("paused: interval %d (%s SOL) not paid within %s; the work stops at %s unless it is paid",
			oldest, u.Format(bf.Lamports), b.grace, now.Add(b.interval).UTC().Format(time.TimeOnly)))
	case overdue && now.Sub(time.UnixMilli(pausedAt)) > b.interval:
		b.stop(fmt.Sprintf("interval %d (%s SOL) still not paid %s after the work was paused", oldest, u.Format(bf.Lamports), b.interval))
	}
}

// paidFor takes the submitter's word that a bill is paid and checks it on
// chain; a paid bill lets paused work go on.
func (b *biller) paidFor(ctx context.Context, p paidFrame) {
	b.mu.Lock()
	bf, ok := b.unpaid[p.Interval]
	b.mu.Unlock()
	if !ok {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, paymentWait)
	defer cancel()
	pay, err := chain.CheckPayment(cctx, b.n.cfg.SolanaRPC, p.Signature, b.consumer, b.n.id.SolanaAddress, bf.Lamports, bf.Ref)
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
	b.paid += pay.Lamports
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

// finish bills what is left at the end and, with wait, waits (bounded) for
// every bill to be paid; it returns the paid total, the payments and the
// paused time.
func (b *biller) finish(ctx context.Context, end time.Time, gone <-chan struct{}, wait bool) (uint64, []string, time.Duration) {
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
	deadline := time.After(paymentWait)
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
	return b.paid, append([]string(nil), b.payments...), time.Duration(b.paused) * time.Millisecond
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
func (p *payer) bill(ctx context.Context, rank int, c *memberConn, b billFrame) {
	m := p.members[rank]
	u := p.n.PriceUnit()
	if !p.n.settles() {
		p.jl.note(fmt.Sprintf("%s sent a bill of %s %s, but this peer pays nothing on chain (no --solana-rpc, or the unit is not SOL)", p.names(rank), u.Format(b.Lamports), u.Token))
		return
	}
	if most := exec.Amount(m.Price, uint64(m.GPUs)*b.Millis); b.Lamports > most {
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
			_ = c.fw.write(frame{T: framePaid, Paid: &paidFrame{Interval: b.Interval, Signature: pay.Signature}})
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
