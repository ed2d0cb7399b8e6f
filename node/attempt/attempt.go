package attempt

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Member run states: the strings of node's MemberRun.State.
const (
	MemberStarting = "starting"
	MemberRunning  = "running"
	MemberExited   = "exited"
	MemberLost     = "lost"   // stopped answering, or never started
	MemberFailed   = "failed" // could not run
)

// Whose fault a member's run ended badly, as Run.Fault: what the
// submitter's record of its providers (node/reputation) counts.
const (
	FaultProvider = "provider" // its provider broke a rule of this peer's (a bill not owed, too much sent)
	FaultLost     = "lost"     // its provider vanished: unreachable, stream gone, silent, never started
)

// How an attempt ends: the first three are node's job states.
const (
	StateDone      = "done"      // every member ended well
	StateFailed    = "failed"    // Reason says why
	StateCancelled = "cancelled" // by the submitter
	StateRetry     = "retry"     // a member was lost: negotiate a cluster again and run attempt+1
)

// Run is one member's part of the attempt, as this peer saw it.
type Run struct {
	Rank     int
	State    string // Member*
	ExitCode int
	Started  time.Time // UTC, the member's clock (its started frame, then its exit frame)
	Ended    time.Time // UTC: its exit frame's, or when this peer saw it lost
	Error    string
	Receipt  string // "countersigned", or why not; "": none yet
	Paid     uint64 // paid to its provider (the Paid steps), in the unit's smallest unit
	Fault    string // Fault*: its provider's fault; "": none (it exited, the job stopped it, or it said it could not run)
}

// Start asks the caller to open a member's stream and send its start
// frame. MasterAddr is Config.MasterAddr where the job has a network of
// its own; otherwise it is empty for member 0: its own address as its
// stream reaches it is the rendezvous address.
type Start struct {
	Rank       int
	MasterAddr string
	MasterPort int
}

// Stop asks the caller to send a member a stop frame.
type Stop struct {
	Rank   int
	Reason string
}

// Payment asks the caller to pay a member's bill: Bill.Amount to the
// member's provider with Bill.Ref as the memo, then to send the member a
// paid frame and step Paid.
type Payment struct {
	Rank int
	Bill Bill
}

// RefusedBill is a bill not paid, and why (the reason is in Notes too).
type RefusedBill struct {
	Rank   int
	Bill   Bill
	Kind   string // why, in a word (Bill*): a metric's label
	Reason string
}

// Why a bill was refused (RefusedBill.Kind).
const (
	BillNotSettling      = "not_settling"       // this peer pays nothing on chain
	BillIntervalZero     = "interval_zero"      // intervals count from 1
	BillDuplicate        = "duplicate_interval" // the interval was billed already
	BillBeforeStart      = "before_start"       // the member's work had not started
	BillAfterExit        = "after_exit"         // it came after the member's exit
	BillAboveLease       = "above_lease"        // more than the lease allows for its time
	BillLongerThanWorked = "longer_than_worked" // more time than this peer saw the member work
)

// Done is how the attempt ended.
type Done struct {
	State    string // State*
	Reason   string // why it failed, was cancelled or is retried; "" when done
	ExitCode *int   // the job's exit code when done (0) or failed; nil otherwise
	Release  []int  // members to tell to release their GPUs: those that did not exit
}

// Ready is what the caller must do: see the package doc for the order.
type Ready struct {
	Start       []Start
	Stop        []Stop
	Close       []int // ranks whose streams to close
	Pay         []Payment
	Refused     []RefusedBill
	Countersign []int    // ranks whose receipt passed CheckReceipt: sign it, keep it, send the signature, step Countersigned
	Decline     []Stop   // members whose receipt this peer will not countersign, and why: tell them (their provider records it)
	Notes       []string // lines for the job's log
	Runs        []Run    // set when a member's run changed: every member's, to save
	Done        *Done    // set once, when the attempt has ended
}

// Empty reports whether there is nothing to do.
func (r *Ready) Empty() bool {
	return len(r.Start) == 0 && len(r.Stop) == 0 && len(r.Close) == 0 && len(r.Pay) == 0 &&
		len(r.Refused) == 0 && len(r.Countersign) == 0 && len(r.Decline) == 0 && len(r.Notes) == 0 && r.Runs == nil && r.Done == nil
}

func (r *Ready) merge(o Ready) {
	r.Start = append(r.Start, o.Start...)
	r.Stop = append(r.Stop, o.Stop...)
	r.Close = append(r.Close, o.Close...)
	r.Pay = append(r.Pay, o.Pay...)
	r.Refused = append(r.Refused, o.Refused...)
	r.Countersign = append(r.Countersign, o.Countersign...)
	r.Decline = append(r.Decline, o.Decline...)
	r.Notes = append(r.Notes, o.Notes...)
	if o.Runs != nil {
		r.Runs = o.Runs
	}
	if o.Done != nil {
		r.Done = o.Done
	}
}

// Errors of Step: the event was ignored.
var (
	ErrDone        = errors.New("attempt: the attempt has ended")
	ErrUnknownRank = errors.New("attempt: no such member")
	ErrUnexpected  = errors.New("attempt: unexpected event")
)

// member is a member's state.
type member struct {
	Member
	run         Run
	startAt     time.Time // when its Start was decided; zero: not yet
	opened      bool      // its stream is open
	addr        string    // its address, once opened
	ended       bool      // its stream ended, or could not be opened
	closed      bool      // its stream was closed by a decision
	lastSeen    time.Time // when it last showed it is alive (a fresh frame: see fresh)
	beat        uint64    // the highest heartbeat number seen
	listened    bool      // its ready frame arrived
	receipted   bool      // its receipt frame arrived
	startedSeen time.Time // when its started frame arrived; zero: not yet
	workEnd     time.Time // when its exit frame arrived or it was found lost; zero: not yet
	exited      bool
	resultHash  string            // from its exit frame
	intervals   map[int]bool      // intervals billed
	billed      uint64            // ms of the bills accepted
	paid        map[string]uint64 // payments: signature → amount
	signing     bool              // a Countersign is outstanding
}

// interruption is what ended the attempt from outside its members.
type interruption int

const (
	notInterrupted interruption = iota
	byCancel
	byPeerStop
	byTimeout
)

// Attempt is the submitter's side of one run attempt of a job. It is not
// safe for concurrent use: one goroutine owns it.
type Attempt struct {
	cfg       Config
	ms        []*member
	deadline  time.Time // the job's deadline; zero: none
	pending   int       // members started whose streams have not ended
	signing   int       // outstanding Countersigns
	restSent  bool      // the members after 0 were started (rendezvous)
	stopping  bool
	stopAt    time.Time // when to close every stream; zero: not set
	failure   string    // why the job failed, first cause
	exitCode  *int
	lost      []int
	interrupt interruption
	done      *Done
	dirty     bool  // runs changed since the last Ready
	ready     Ready // decided, not handed out
	out       Ready // handed out by Ready, not acknowledged
}

// New starts an attempt at now: Ready then holds the first Start (member 0,
// or every member without a rendezvous).
func New(cfg Config, now time.Time) (*Attempt, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	a := &Attempt{cfg: cfg}
	world := 0
	for i, m := range cfg.Members {
		world += int(m.GPUs)
		a.ms = append(a.ms, &member{
			Member:    m,
			run:       Run{Rank: i, State: MemberStarting},
			intervals: map[int]bool{},
			paid:      map[string]uint64{},
		})
	}
	if cfg.Timeout > 0 {
		a.deadline = now.Add(cfg.Timeout + cfg.StopWait + cfg.StartTimeout)
	}
	a.dirty = true
	a.note(fmt.Sprintf("attempt %d: running on %d members (%d GPUs)", cfg.Attempt+1, len(cfg.Members), world))
	if len(cfg.Members) > 1 && cfg.MasterAddr == "" {
		var hosts []string
		for i, m := range a.ms {
			if m.HostNet {
				hosts = append(hosts, a.name(i))
			}
		}
		if len(hosts) > 0 {
			a.note(fmt.Sprintf("the members meet on the host network (provider cannot make job networks: %s)", strings.Join(hosts, ", ")))
		}
	}
	a.start(0, cfg.MasterAddr, 0, now)
	if !cfg.Rendezvous {
		for r := 1; r < len(a.ms); r++ {
			a.start(r, cfg.MasterAddr, 0, now)
		}
	}
	a.restSent = !cfg.Rendezvous || len(a.ms) == 1
	return a, nil
}

// Runs are the members' runs now.
func (a *Attempt) Runs() []Run {
	runs := make([]Run, len(a.ms))
	for i, m := range a.ms {
		runs[i] = m.run
	}
	return runs
}

// Outcome is how the attempt ended; nil while it runs.
func (a *Attempt) Outcome() *Done { return a.done }

// HasReady reports whether Ready has something to do.
func (a *Attempt) HasReady() bool {
	return a.dirty || !a.ready.Empty() || !a.out.Empty()
}

// Ready returns every decision not yet acknowledged by Advance.
func (a *Attempt) Ready() Ready {
	if a.dirty {
		a.ready.Runs = a.Runs()
		a.dirty = false
	}
	a.out.merge(a.ready)
	a.ready = Ready{}
	r := a.out
	r.Start, r.Stop, r.Close = slices.Clone(r.Start), slices.Clone(r.Stop), slices.Clone(r.Close)
	r.Pay, r.Refused, r.Countersign = slices.Clone(r.Pay), slices.Clone(r.Refused), slices.Clone(r.Countersign)
	r.Decline = slices.Clone(r.Decline)
	r.Notes = slices.Clone(r.Notes)
	return r
}

// Advance acknowledges what the last Ready returned: the caller has acted
// on it.
func (a *Attempt) Advance() { a.out = Ready{} }

// Wake is the next time at which Tick may change something; zero when the
// attempt has ended or nothing is timed.
func (a *Attempt) Wake() time.Time {
	if a.done != nil {
		return time.Time{}
	}
	w := a.deadline
	if a.stopping {
		w = earliest(w, a.stopAt)
	}
	lostAfter := a.lostAfter()
	for _, m := range a.ms {
		if m.opened && a.alive(m) {
			w = earliest(w, m.lastSeen.Add(lostAfter+time.Nanosecond))
		}
		if a.lingering(m) {
			w = earliest(w, m.workEnd.Add(a.cfg.StopWait))
		}
		if !a.stopping && a.cfg.StartWithin > 0 && a.waitingStart(m) {
			w = earliest(w, m.startAt.Add(a.cfg.StartWithin))
		}
	}
	return w
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

func (a *Attempt) lostAfter() time.Duration {
	return a.cfg.Heartbeat * time.Duration(a.cfg.LostAfterBeats)
}

// alive reports whether a member is still expected to answer: its stream
// is up and it has not ended its part.
func (a *Attempt) alive(m *member) bool {
	return !m.ended && !m.closed && (m.run.State == MemberStarting || m.run.State == MemberRunning)
}

// waitingStart reports whether a member was asked to start and has not.
func (a *Attempt) waitingStart(m *member) bool {
	return !m.startAt.IsZero() && !m.ended && m.run.State == MemberStarting
}

// Step takes one event at now.
func (a *Attempt) Step(ev Event, now time.Time) error {
	if a.done != nil {
		return ErrDone
	}
	err := a.step(ev, now)
	a.maybeDone()
	return err
}

func (a *Attempt) step(ev Event, now time.Time) error {
	switch e := ev.(type) {
	case Cancelled:
		a.interrupted(byCancel, or(e.Reason, "cancelled by the submitter"), now)
		return nil
	case PeerStopping:
		a.interrupted(byPeerStop, or(e.Reason, "this peer is stopping"), now)
		return nil
	case Opened:
		m, err := a.member(e.Rank)
		if err != nil {
			return err
		}
		if m.startAt.IsZero() || m.opened || m.ended {
			return fmt.Errorf("%w: opened %d, which was not being started", ErrUnexpected, e.Rank)
		}
		a.opened(m, e, now)
		return nil
	case Paid:
		m, err := a.member(e.Rank)
		if err != nil {
			return err
		}
		if m.startAt.IsZero() {
			return fmt.Errorf("%w: a payment to member %d, which was not started", ErrUnexpected, e.Rank)
		}
		m.paid[e.Signature] = e.Amount
		var t uint64
		for _, v := range m.paid {
			t += v
		}
		m.run.Paid = t
		a.dirty = true
		return nil
	case Countersigned:
		m, err := a.member(e.Rank)
		if err != nil {
			return err
		}
		if !m.signing {
			return fmt.Errorf("%w: countersigned %d, which was not asked", ErrUnexpected, e.Rank)
		}
		m.signing = false
		a.signing--
		m.run.Receipt = "countersigned"
		if e.Err != "" {
			m.run.Receipt = e.Err
			a.note(fmt.Sprintf("receipt of %s refused: %s", a.name(e.Rank), e.Err))
			a.ready.Decline = append(a.ready.Decline, Stop{Rank: e.Rank, Reason: "receipt not countersigned: " + e.Err})
		}
		a.dirty = true
		return nil
	}

	// The rest come over a member's stream.
	rank, ok := rankOf(ev)
	if !ok {
		return fmt.Errorf("%w: %T", ErrUnexpected, ev)
	}
	m, err := a.member(rank)
	if err != nil {
		return err
	}
	if !m.opened || m.ended {
		return fmt.Errorf("%w: %T of member %d, whose stream is not open", ErrUnexpected, ev, rank)
	}
	if a.fresh(m, ev) {
		m.lastSeen = now
	}
	switch e := ev.(type) {
	case StreamEnded:
		a.streamEnded(m, e.Err, now)
	case Listening:
		m.listened = true
		if rank == 0 && a.cfg.Rendezvous && !a.stopping && !a.restSent {
			a.restSent = true
			addr := m.addr
			if a.cfg.MasterAddr != "" {
				addr = a.cfg.MasterAddr
			}
			for r := 1; r < len(a.ms); r++ {
				a.start(r, addr, e.Port, now)
			}
		}
	case Started:
		if m.run.State == MemberStarting {
			m.run.State, m.run.Started = MemberRunning, time.UnixMilli(e.At).UTC()
			m.startedSeen = now
			a.dirty = true
		}
	case Heard:
		m.beat = max(m.beat, e.Beat)
	case Errored:
		if m.run.State == MemberStarting || m.run.State == MemberRunning {
			m.run.State, m.run.Error = MemberFailed, e.Reason
			a.fail(fmt.Sprintf("%s could not run the job: %s", a.name(rank), e.Reason), now)
			a.dirty = true
		}
	case Exited:
		if m.run.State == MemberStarting || m.run.State == MemberRunning {
			a.exited(m, e, now)
		}
	case Billed:
		a.bill(m, e.Bill, now)
	case Receipted:
		a.receipted(m, e, now)
	case Overran:
		a.overran(m, e.Reason, now)
	}
	return nil
}

// fresh reports whether a frame of a member shows that it is alive: a
// heartbeat numbered above every earlier one, or the first of a frame that
// moves its run on (ready, started, exit, receipt). Repeats of any frame,
// logs, output data and bills do not: a member whose work has hung cannot
// stay alive by replaying frames or by talking.
func (a *Attempt) fresh(m *member, ev Event) bool {
	switch e := ev.(type) {
	case Heard:
		return e.Beat > m.beat
	case Listening:
		return !m.listened
	case Started:
		return m.run.State == MemberStarting
	case Exited:
		return !m.exited
	case Receipted:
		return !m.receipted
	}
	return false
}

// lingering reports whether a member has exited and its stream is still
// open: it has StopWait from its exit to send its receipt and end.
func (a *Attempt) lingering(m *member) bool {
	return m.exited && m.opened && !m.ended && !m.closed && !m.signing
}

// overran stops the job of a member whose provider sent more than this
// peer keeps: like a bill it is not owed, the provider's fault for this
// job. Its record does not count it: the job's own output may be what
// was too much.
func (a *Attempt) overran(m *member, why string, now time.Time) {
	a.providerFault(m, "its provider sent more than this peer keeps of a job", why, "", now)
}

func rankOf(ev Event) (int, bool) {
	switch e := ev.(type) {
	case StreamEnded:
		return e.Rank, true
	case Listening:
		return e.Rank, true
	case Started:
		return e.Rank, true
	case Heard:
		return e.Rank, true
	case Errored:
		return e.Rank, true
	case Exited:
		return e.Rank, true
	case Billed:
		return e.Rank, true
	case Receipted:
		return e.Rank, true
	case Overran:
		return e.Rank, true
	}
	return 0, false
}

func (a *Attempt) member(rank int) (*member, error) {
	if rank < 0 || rank >= len(a.ms) {
		return nil, fmt.Errorf("%w: rank %d of %d members", ErrUnknownRank, rank, len(a.ms))
	}
	return a.ms[rank], nil
}

func (a *Attempt) opened(m *member, e Opened, now time.Time) {
	r := m.run.Rank
	if e.Err != "" {
		m.ended = true
		a.pending--
		if m.run.State == MemberStarting && a.stopping {
			// Cut by our own stop (a cancel, this peer stopping, another
			// member's failure): not its provider's doing.
			m.run.State, m.run.Error = MemberFailed, "not reached before the job stopped: "+e.Err
			a.dirty = true
			return
		}
		if m.run.State == MemberStarting {
			m.run.State, m.run.Error, m.run.Fault = MemberFailed, e.Err, FaultLost
			a.fail(fmt.Sprintf("%s could not be reached: %s", a.name(r), e.Err), now)
			a.dirty = true
		}
		return
	}
	m.opened, m.addr, m.lastSeen = true, e.Addr, now
	if a.stopping {
		a.ready.Stop = append(a.ready.Stop, Stop{Rank: r, Reason: "the job is stopping"})
		if a.stopAt.IsZero() { // the streams were closed already: this one too, in time
			a.stopAt = now.Add(a.cfg.StopWait)
		}
	}
}

func (a *Attempt) streamEnded(m *member, why string, now time.Time) {
	r := m.run.Rank
	m.ended = true
	a.pending--
	if m.run.State == MemberStarting || m.run.State == MemberRunning {
		m.run.State, m.run.Error = MemberLost, "its stream ended: "+why
		m.run.Ended = now.UTC()
		m.workEnd = now
		if !a.stopping { // gone on its own, not stopped by us
			m.run.Fault = FaultLost
			a.lost = append(a.lost, r)
			a.note(a.name(r) + " is gone: " + why)
			a.fail(a.name(r)+" stopped answering (its stream closed)", now)
		}
		a.dirty = true
	}
	if m.run.Receipt == "" && !m.signing && m.run.State == MemberExited {
		m.run.Receipt = "missing: the member left before sending one"
		a.dirty = true
	}
}

func (a *Attempt) exited(m *member, x Exited, now time.Time) {
	r := m.run.Rank
	m.exited, m.workEnd = true, now
	m.run.State, m.run.ExitCode = MemberExited, x.Code
	m.run.Started, m.run.Ended = time.UnixMilli(x.Start).UTC(), time.UnixMilli(x.End).UTC()
	m.resultHash = x.ResultHash
	a.note(fmt.Sprintf("%s exited with code %d", a.name(r), x.Code))
	switch {
	case x.Reason != "":
		a.fail(fmt.Sprintf("%s stopped the work: %s", a.name(r), x.Reason), now)
	case x.TimedOut:
		a.fail(a.timedOut(), now)
	case x.Code != 0 && !a.stopping:
		code := x.Code
		a.exitCode = &code
		a.fail(fmt.Sprintf("%s exited with code %d", a.name(r), x.Code), now)
	case r == 0 && a.cfg.EndsWithRankZero:
		a.stopAll("member 0 (the head) has ended", now)
	}
	a.dirty = true
}

func (a *Attempt) receipted(m *member, e Receipted, now time.Time) {
	r := m.run.Rank
	m.receipted = true
	if m.signing || m.run.Receipt != "" {
		return // one receipt a member
	}
	why := CheckReceipt(e.Receipt, Expect{
		Job: a.cfg.Job, Attempt: a.cfg.Attempt, Rank: r,
		Provider: m.Provider, Consumer: a.cfg.Consumer,
		Class: m.Class, GPUs: m.GPUs, Price: m.Price,
		Exited: m.exited, ExitCode: m.run.ExitCode, ResultHash: m.resultHash,
		Started: m.run.Started, Payments: m.paid, CheckpointReceived: e.CheckpointReceived,
	}, now)
	if why == "" {
		m.signing = true
		a.signing++
		a.ready.Countersign = append(a.ready.Countersign, r)
		return
	}
	m.run.Receipt = why
	a.note(fmt.Sprintf("receipt of %s refused: %s", a.name(r), why))
	a.ready.Decline = append(a.ready.Decline, Stop{Rank: r, Reason: "receipt refused: " + why})
	a.dirty = true
}

// Tick moves the attempt on at now: members lost or never started, the
// job's deadline, the end of the stop wait.
func (a *Attempt) Tick(now time.Time) {
	if a.done != nil {
		return
	}
	lostAfter := a.lostAfter()
	for r, m := range a.ms {
		if m.opened && a.alive(m) && now.Sub(m.lastSeen) > lostAfter {
			silent := now.Sub(m.lastSeen).Round(time.Millisecond)
			m.run.State, m.run.Error, m.run.Fault = MemberLost, fmt.Sprintf("no heartbeat for %s", silent), FaultLost
			m.run.Ended, m.workEnd = now.UTC(), now
			a.lost = append(a.lost, r)
			m.closed = true
			a.ready.Close = append(a.ready.Close, r)
			a.note(fmt.Sprintf("%s stopped answering: no heartbeat for %s", a.name(r), silent))
			a.fail(fmt.Sprintf("%s stopped answering (no heartbeat for %s)", a.name(r), lostAfter), now)
			a.dirty = true
		}
	}
	for r, m := range a.ms {
		if a.lingering(m) && !now.Before(m.workEnd.Add(a.cfg.StopWait)) {
			m.closed = true
			a.ready.Close = append(a.ready.Close, r)
			a.note(fmt.Sprintf("%s exited %s ago and has not ended its stream: closed", a.name(r), a.cfg.StopWait))
		}
	}
	if !a.stopping && a.cfg.StartWithin > 0 {
		for r, m := range a.ms {
			if a.waitingStart(m) && !now.Before(m.startAt.Add(a.cfg.StartWithin)) {
				m.run.State, m.run.Error, m.run.Fault = MemberLost, fmt.Sprintf("never started: not running %s after its start", a.cfg.StartWithin), FaultLost
				m.run.Ended, m.workEnd = now.UTC(), now
				a.lost = append(a.lost, r)
				a.note(fmt.Sprintf("%s never started: no started frame %s after its start", a.name(r), a.cfg.StartWithin))
				a.fail(fmt.Sprintf("%s never started (not running %s after its start)", a.name(r), a.cfg.StartWithin), now)
				a.dirty = true
			}
		}
	}
	if !a.deadline.IsZero() && !now.Before(a.deadline) {
		a.interrupted(byTimeout, "", now)
	}
	if a.stopping && !a.stopAt.IsZero() && !now.Before(a.stopAt) {
		a.stopAt = time.Time{}
		for r, m := range a.ms {
			if m.opened && !m.ended && !m.closed {
				m.closed = true
				a.ready.Close = append(a.ready.Close, r)
			}
		}
	}
	a.maybeDone()
}

// start decides to start a member.
func (a *Attempt) start(rank int, addr string, port int, now time.Time) {
	m := a.ms[rank]
	if !m.startAt.IsZero() {
		return // never twice
	}
	m.startAt = now
	a.pending++
	a.ready.Start = append(a.ready.Start, Start{Rank: rank, MasterAddr: addr, MasterPort: port})
}

// interrupted ends the job from outside: the first cause counts.
func (a *Attempt) interrupted(by interruption, why string, now time.Time) {
	if a.interrupt != notInterrupted {
		return
	}
	a.interrupt = by
	if by == byTimeout {
		a.fail(a.timedOut(), now)
		return
	}
	a.stopAll(why, now)
}

func (a *Attempt) timedOut() string {
	return fmt.Sprintf("timed out after %s (the spec's timeout)", a.cfg.TimeoutText)
}

// stopAll stops every member whose stream is open and whose work has not
// ended, once.
func (a *Attempt) stopAll(why string, now time.Time) {
	if a.stopping {
		return
	}
	a.stopping = true
	a.note("stopping every member: " + why)
	for r, m := range a.ms {
		if m.opened && !m.ended && !m.closed && !m.exited {
			a.ready.Stop = append(a.ready.Stop, Stop{Rank: r, Reason: why})
		}
	}
	a.stopAt = now.Add(a.cfg.StopWait)
}

// fail records the job's first failure and stops every member.
func (a *Attempt) fail(why string, now time.Time) {
	if a.failure == "" {
		a.failure = why
	}
	a.stopAll(why, now)
}

// maybeDone ends the attempt once every stream started has ended and every
// countersignature asked for has been reported.
func (a *Attempt) maybeDone() {
	if a.done != nil || a.pending > 0 || a.signing > 0 {
		return
	}
	if !a.restSent && a.failure == "" && a.interrupt == notInterrupted {
		// Member 0 of a rendezvous ended well without the others: only a
		// member that skips its ready frame can do that.
		a.failure = fmt.Sprintf("%s ended before the other members could start", a.name(0))
	}
	d := &Done{}
	switch {
	case a.interrupt == byCancel:
		d.State, d.Reason = StateCancelled, "cancelled by the submitter; every member was stopped"
	case len(a.lost) > 0 && a.cfg.Attempt < a.cfg.Retries:
		d.State = StateRetry
		d.Reason = fmt.Sprintf("%s was lost; retrying (attempt %d of %d, the spec's retries: %d) on a cluster negotiated again, with the spares of the market",
			a.name(a.lost[0]), a.cfg.Attempt+2, a.cfg.Retries+1, a.cfg.Retries)
		a.note(d.Reason)
	case a.failure == "" && a.interrupt == byPeerStop:
		d.State, d.Reason = StateFailed, "this peer stopped while the job ran; every member was stopped"
	case a.failure != "":
		d.State, d.Reason = StateFailed, a.failure
		if len(a.lost) > 0 {
			d.Reason += fmt.Sprintf("; not retried (the spec's retries: %d)", a.cfg.Retries)
		}
		d.ExitCode = a.exitCode
		if d.ExitCode == nil {
			one := 1
			d.ExitCode = &one
		}
	default:
		zero := 0
		d.State, d.ExitCode = StateDone, &zero
	}
	for r, m := range a.ms {
		if m.run.State != MemberExited {
			d.Release = append(d.Release, r)
		}
	}
	a.done = d
	a.ready.Done = d
	a.dirty = true
}

func (a *Attempt) note(line string) { a.ready.Notes = append(a.ready.Notes, line) }

// name is how messages name a member: "member 1 (12D3…abcdef)".
func (a *Attempt) name(rank int) string {
	if n := a.ms[rank].Name; n != "" {
		return fmt.Sprintf("member %d (%s)", rank, n)
	}
	return fmt.Sprintf("member %d", rank)
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
