package attempt

import (
	"fmt"
	"math/bits"
	"strings"
	"time"
)

// bill decides whether to pay a member's bill: a stranger's bill is bounded
// by what this peer measured (see the package doc).
func (a *Attempt) bill(m *member, b Bill, now time.Time) {
	r := m.run.Rank
	refuse := func(kind, why string) {
		a.ready.Refused = append(a.ready.Refused, RefusedBill{Rank: r, Bill: b, Kind: kind, Reason: why})
		a.note(why)
	}
	if !a.cfg.Settles {
		refuse(BillNotSettling, fmt.Sprintf("%s sent a bill of %s, but this peer pays nothing on chain (no --solana-rpc, or neither --token-mint nor the unit SOL:9)",
			a.name(r), a.money(b.Amount)))
		return
	}
	refused := fmt.Sprintf("bill %d of %s refused: ", b.Interval, a.name(r))
	// The rest are the provider's fault: the bill is refused and a member
	// still at work is stopped with the job.
	fault := refuse
	refuse = func(kind, why string) {
		fault(kind, why)
		a.overbilled(m, fmt.Sprintf("bill %d: %s", b.Interval, strings.TrimPrefix(why, refused)), now)
	}
	if b.Interval < 1 {
		refuse(BillIntervalZero, refused+"intervals count from 1")
		return
	}
	if m.intervals[b.Interval] {
		refuse(BillDuplicate, refused+fmt.Sprintf("interval %d was billed already", b.Interval))
		return
	}
	m.intervals[b.Interval] = true
	if m.startedSeen.IsZero() {
		refuse(BillBeforeStart, refused+"the member's work has not started")
		return
	}
	if m.exited {
		refuse(BillAfterExit, refused+"it came after the member's exit (a member's last bill comes before its exit and outputs)")
		return
	}
	if most := amount(m.Price, m.GPUs, b.Millis); b.Amount > most {
		refuse(BillAboveLease, refused+fmt.Sprintf("%s for %d GPUs over %d ms at %s/GPU-h is more than the %s the lease allows",
			a.money(b.Amount), m.GPUs, b.Millis, a.money(m.Price), a.money(most)))
		return
	}
	end := now
	if !m.workEnd.IsZero() {
		end = m.workEnd
	}
	worked := max(end.Sub(m.startedSeen), 0)
	allowed := uint64((worked + a.cfg.BillSlack) / time.Millisecond)
	total, carry := bits.Add64(m.billed, b.Millis, 0)
	if carry != 0 || total > allowed {
		if carry != 0 {
			total = ^uint64(0)
		}
		refuse(BillLongerThanWorked, refused+fmt.Sprintf("its bills come to %s of work, but this peer saw the member work %s (%s of slack allowed)",
			msDuration(total), worked.Round(time.Millisecond), a.cfg.BillSlack))
		return
	}
	m.billed = total
	a.ready.Pay = append(a.ready.Pay, Payment{Rank: r, Bill: b})
}

// overbilled stops the job of a member whose provider billed what this
// peer does not owe. A member that has exited keeps its exit: its work is
// done, only the bill is refused.
func (a *Attempt) overbilled(m *member, why string, now time.Time) {
	a.providerFault(m, "its provider billed what it is not owed", why, FaultProvider, now)
}

// providerFault stops a member whose provider broke a rule of this peer's
// (what is said, then why). The provider is at fault, so the job fails
// rather than being retried (a retry could form on the same provider).
// fault is what the provider's record counts (Fault*, or "").
func (a *Attempt) providerFault(m *member, what, why, fault string, now time.Time) {
	if !a.alive(m) {
		return
	}
	r := m.run.Rank
	m.run.State, m.run.Error, m.run.Fault = MemberFailed, what+": "+why, fault
	m.run.Ended = now.UTC()
	if m.workEnd.IsZero() {
		m.workEnd = now
	}
	m.closed = true // its stream closed: the provider stops the work
	a.ready.Close = append(a.ready.Close, r)
	a.fail(fmt.Sprintf("%s was stopped: %s (%s)", a.name(r), what, why), now)
	a.dirty = true
}

// money writes an amount with its unit.
func (a *Attempt) money(v uint64) string {
	if a.cfg.Unit == "" {
		return a.cfg.FormatAmount(v)
	}
	return a.cfg.FormatAmount(v) + " " + a.cfg.Unit
}
