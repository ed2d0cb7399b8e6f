package gossip

// Cluster negotiation: how N GPUs from several providers become one cluster
// for a job, with no coordinator and no GPU promised to two jobs.
//
// # Protocol
//
//	submitter                                   providers
//	RequestForBids  --(direct to the providers named, or the rfb topic)-->  each: Reservations.Bid
//	                <--(direct stream)--------   Bid (reserves nothing)
//	Select; Award to every member at once ---->  Reservations.Award: reserve
//	                <--------------------------  Acceptance (held until HoldUntil) or Refusal
//	refusal/no answer: award a replacement from the spares, or Release all
//	all accepted: Confirm to every member ---->  reservation held until the lease expires
//	cancel / failure: Release ----------------->  reservation dropped
//
// Both sides are pure state machines in the manner of etcd's raft: no I/O,
// no goroutines, no clock. Time is an argument (Step(msg, now), Tick(now));
// what to send comes out of Ready. Negotiation is the submitter's side, one
// per job; Reservations is a provider's side, one per peer. Select is the
// choice of members, a plain function.
//
// # Rules
//
//   - Closing: bids are collected until a cluster can form. From the first
//     moment one can (Select succeeds), the submitter waits at most Grace
//     (20 ms by default) for cheaper bids, then awards; it awards at once if
//     every provider it expected (Expect, the directory's count of
//     providers of the class) has bid; and when they all have bid and no
//     cluster can form, it fails once ExpectWait (250 ms) has passed since
//     the request, not at the deadline. It never waits out a fixed window: a
//     cheap, feasible set closes in Grace (a set with a provider whose score
//     is below an unknown provider's waits DoubtWait, 2 s: see Ranking). At the deadline it awards what it
//     has, or fails with the reason.
//   - Selection: the cheapest set meeting the needs (see Select): bids can
//     be taken in part unless PerNode is set, in which case every member
//     gives exactly PerNode GPUs; colocated means one zone.
//   - Job networks: the members of a job of several meet on a network of
//     its own, which a provider that is not root cannot make. In a private
//     swarm such a provider bids as any other, its bids marked HostNet, and
//     a cluster with one such member runs every member on the host
//     network (HostNetwork): never a mix. In the public swarm it bids only
//     on jobs it takes whole, and a HostNet bid is refused.
//   - Gang award: every member is awarded at once. A provider reserves on
//     the award and holds the reservation until HoldUntil; only a Confirm,
//     sent once every member has accepted, holds it for the lease. So a
//     half-formed cluster holds GPUs at most until HoldUntil even if the
//     submitter vanishes.
//   - Asked and awarded last: a provider in Ranking.Last (it refused, or
//     did not answer, an award of this submitter's lately) is chosen only
//     when no cluster forms from the other bids, whatever the weight, and
//     a set with it waits DoubtWait for other bids.
//   - Replacement: a Refusal, or no answer within AwardTimeout, removes the
//     member when a replacement can be chosen. A silent one's award
//     stands meanwhile when its replacements are all new providers: if it
//     accepts before any of them has, it is a member again and they are
//     released (a late answer is not thrown away for a new round trip that
//     may be as slow); else it is released once one of them accepts or the
//     negotiation ends (a replacement that tops a member up releases the
//     silent one at once). A silent member that none can replace is
//     waited for until AwardGiveUp (it may be slow, not gone: its
//     reservation holds until HoldUntil), and only then released and the
//     negotiation failed. The missing GPUs are
//     chosen from the remaining live bids under the same rules (for
//     colocated, in the zone of the members left), counting what members
//     bid beyond their award: such a member gets a new Award for its new
//     total (a top-up), and its answer to the old one is ignored as stale.
//     A Refusal always means the provider holds nothing for the job, a
//     refused top-up included. Who refused and who was silent is in the
//     Outcome (Refused, Silent): the submitter's evidence. If none can make the GPUs up,
//     every member awarded so far gets a Release and the negotiation fails:
//     all or nothing.
//   - An Acceptance from a provider that is no longer a member (it was
//     replaced, or the negotiation ended) is answered with a Release.
//   - Failure reasons carry numbers: "no provider of class H100-80GB bid",
//     "24 GPUs available at or below 2.50 USDC/GPU-h, need 32", "only
//     fragments of at most 4 GPUs, perNode 8", "colocation impossible: no
//     zone has 32 GPUs (best eu-west/ams1 with 16)".
//   - Provider side: a provider bids whenever it has a free GPU of a matching
//     class at or below the max price, fewer than perNode included (the
//     submitter cannot use those, but can say that only fragments exist).
//     A bid reserves nothing; an award reserves atomically if
//     the GPUs are free, else it is refused, so of two submitters racing for
//     the same GPUs one gets a Refusal and replaces. An award is idempotent.
//     Unconfirmed reservations lapse at HoldUntil, confirmed ones when their
//     lease expires (Reservations.Tick).
//
// # Left for the node
//
// The node owns one goroutine per Negotiation (or one for all) that feeds
// Step with decoded messages whose signer it has checked against Author(),
// calls Tick at Wake(), feeds a Direct negotiation its Candidates (see
// negotiation_direct.go), sends what Ready returns (Ask: the request to
// each provider named, on a stream of its own; RequestForBids on
// /gpumesh/<swarm>/rfb/1 through an RFBValidator; the rest on
// /gpumesh/negotiate/1.0.0 streams: a provider's answer to a request goes to
// its submitter by peer ID, connected or found in the DHT, never to an
// address someone named), persists jobs and outcomes,
// and keeps its Reservations behind one owner. A Confirm that finds its
// reservation lapsed (Reservations.Confirm fails: the gang took longer than
// the hold) must be reported to the submitter, whose cluster has formed by
// then: the exec layer replaces that member from Outcome.Spares. Measured
// RTT for colocation, job specs (YAML), persistence, the CLI and the
// benchmarks are not here.

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// NegotiationConfig tunes a Negotiation. The zero value takes every default.
type NegotiationConfig struct {
	Grace        time.Duration // wait for cheaper bids once a cluster can form; 0: 20 ms; negative: none
	Expect       int           // providers expected to bid; once that many have, close at once; 0: unknown
	ExpectWait   time.Duration // with Expect, fail an impossible request after this rather than at the deadline; 0: 250 ms
	AwardTimeout time.Duration // a member silent this long after its award is replaced; 0: 2 s
	AwardGiveUp  time.Duration // a silent member that no bid can replace is waited for this long after its award, then the negotiation fails; 0: 8 s (under a provider's 10 s Hold)
	// OldAwardRules: a silent member is released at AwardTimeout, with
	// no member standing by, and the negotiation fails then if no bid can
	// replace it (the rules before; for a benchmark's comparison).
	OldAwardRules bool
	MaxBids       int           // bids kept; more are ignored; 0: 1024
	Ranking       Ranking       // providers' scores and their weight against price (SelectRanked); zero: price alone
	DoubtWait     time.Duration // a set with a provider scored below an unknown one waits this for other bids, unless every expected provider has bid; 0: 2 s
	// Direct asks the providers that Candidates names (Ready.Ask) rather
	// than broadcasting the request; the topic is a fallback (see
	// negotiation_direct.go).
	Direct       bool
	Fanout       int           // with Direct, providers asked at most; 0: 32
	MinAsk       int           // with Direct, providers asked at least (when named); 0: 3
	FallbackWait time.Duration // with Direct, no cluster possible this long after the request: broadcast it too; 0: 1 s
	// SendReports: with Direct, the node reports when each asked
	// provider's request left (Negotiation.Sent), and the fallback waits
	// FallbackWait after the requests went out rather than after they were
	// asked for (at most one more FallbackWait; see negotiation_direct.go).
	SendReports bool
	// Reasks: with Direct, once the request went on the topic, rounds of
	// asking the named providers again directly, one each FallbackWait
	// while no cluster can form; 0: 2, negative: none; at most
	// MaxAskedAgain-1 (providers count more as new requests).
	Reasks int
	// Private: the swarm is private, so a bid marked HostNet (its
	// provider cannot make job networks) is taken, and a cluster with
	// such a member runs on the host network (HostNetwork). In the public
	// swarm such a bid is refused: no honest provider sends one there.
	Private bool
}

func (c NegotiationConfig) withDefaults() NegotiationConfig {
	if c.Grace == 0 {
		c.Grace = 20 * time.Millisecond
	}
	c.Grace = max(c.Grace, 0)
	if c.ExpectWait <= 0 {
		c.ExpectWait = 250 * time.Millisecond
	}
	if c.AwardTimeout <= 0 {
		c.AwardTimeout = 2 * time.Second
	}
	if c.AwardGiveUp <= 0 {
		c.AwardGiveUp = 8 * time.Second
	}
	c.AwardGiveUp = max(c.AwardGiveUp, c.AwardTimeout)
	if c.OldAwardRules {
		c.AwardGiveUp = c.AwardTimeout
	}
	if c.MaxBids <= 0 {
		c.MaxBids = 1024
	}
	if c.DoubtWait <= 0 {
		c.DoubtWait = 2 * time.Second
	}
	if c.Fanout <= 0 {
		c.Fanout = 32
	}
	if c.MinAsk <= 0 {
		c.MinAsk = 3
	}
	c.MinAsk = min(c.MinAsk, c.Fanout)
	if c.FallbackWait <= 0 {
		c.FallbackWait = time.Second
	}
	if c.Reasks == 0 {
		c.Reasks = 2
	}
	// Within what providers take as asks again (MaxAskedAgain, one of
	// them beside the fallback): more would count as new requests.
	c.Reasks = min(max(c.Reasks, 0), MaxAskedAgain-1)
	return c
}

// Phase is where a negotiation stands.
type Phase int

const (
	Collecting Phase = iota // taking bids
	Awarding                // awards out, waiting for every member to accept
	Formed                  // every member accepted and was confirmed
	Failed                  // no cluster; nothing is held
)

func (p Phase) String() string {
	switch p {
	case Collecting:
		return "collecting"
	case Awarding:
		return "awarding"
	case Formed:
		return "formed"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("phase(%d)", int(p))
}

// Outcome is how a negotiation ended.
type Outcome struct {
	Formed  bool
	Members []Member // when formed
	Cost    uint64   // per hour, sum of GPUs times price, when formed
	Spares  []Bid    // runner-up bids, ranked, when formed: hot spares for exec
	Reason  string   // when failed, with numbers
	Err     error    // when failed by Select: wraps ErrNoCluster, and ErrNoBids if no bid was for the GPUs asked for
	// Contended: failed after a provider refused or took back an award
	// for GPUs it had bid, as when another submitter's award reached it
	// first. Of submitters racing for the same GPUs every one may lose
	// so (each holding part of the cluster when the refusals come), and
	// all of them release: a try a moment later, at a random delay, finds
	// the GPUs free.
	Contended bool
	// Refused is the providers that refused or took back an award of
	// this negotiation, each once, whether it then formed or not: the
	// submitter's evidence of who bids and then does not hold (see
	// node/reputation's Refused).
	Refused []peer.ID
	// Silent is the providers that neither accepted nor refused an award
	// of this negotiation within AwardTimeout, each once: evidence like
	// Refused (a provider that bids and then keeps the submitter waiting
	// costs it a round trip and the timeout), but no sign of a race.
	Silent []peer.ID
}

// Ready is what the caller must do: send the messages and note the outcome.
type Ready struct {
	RequestForBids *RequestForBids // broadcast on the swarm's rfb topic
	Ask            []peer.ID       // send the request (Negotiation.Request) to each of these providers directly
	Awards         []Award
	Confirms       []Confirm
	Releases       []Release
	Outcome        *Outcome // set once, when the negotiation ends
}

// Empty reports whether there is nothing to do.
func (r *Ready) Empty() bool {
	return r.RequestForBids == nil && len(r.Ask) == 0 && len(r.Awards) == 0 && len(r.Confirms) == 0 &&
		len(r.Releases) == 0 && r.Outcome == nil
}

// Errors of Step. Each wraps ErrBadNegotiation where the message itself is
// at fault.
var (
	ErrOtherJob   = errors.New("message of another job")
	ErrNotForUs   = errors.New("not a message a submitter takes")
	ErrUnexpected = errors.New("unexpected message")
)

// member is an awarded provider.
type member struct {
	Member
	bid      Bid // its bid: it may be topped up to the bid's GPUs
	awarded  time.Time
	accepted bool
	// unreplaced: silent past AwardTimeout with no bid to replace it;
	// waited for until AwardGiveUp.
	unreplaced bool
	cover      []peer.ID // of a member standing by: the providers awarded in its place
}

// Negotiation is the submitter's side of one job's negotiation. It is not
// safe for concurrent use: one goroutine owns it.
type Negotiation struct {
	rfb      RequestForBids
	cfg      NegotiationConfig
	phase    Phase
	bids     []Bid // live bids, one per provider, in arrival order
	out      bool  // bid slice full
	gone     map[peer.ID]bool
	feasible time.Time     // when a cluster first could form; zero: not yet
	grace    time.Duration // the wait from feasible for the set chosen now (Grace, or longer: see doubtful)
	started  time.Time     // when the request went out
	members  []*member
	late     []*member // silent members replaced whose awards still stand (standBy)
	spares   []Bid
	ready    Ready

	// Of a Direct negotiation (negotiation_direct.go):
	cands     []candidate // providers named so far, asked or not
	final     bool        // the directory has answered
	broadcast bool        // the request went on the topic as well
	reasks    int         // rounds of asking again since the topic (Reasks)
	lastAsk   time.Time   // when the request last went out (the topic, or a round of asking again)
	sending   int         // with SendReports: asks before the topic the node has not reported sent or failed
	lastOut   time.Time   // with SendReports: when the last request reported sent left

	refused  bool      // a member refused or took back its award
	refusers []peer.ID // who did, each once (Outcome.Refused)
	silent   []peer.ID // members that did not answer their award, each once (Outcome.Silent)
}

// NewNegotiation starts a negotiation for a request; Ready then holds the
// request to broadcast, unless the negotiation is Direct (it then waits
// for Candidates).
func NewNegotiation(rfb RequestForBids, cfg NegotiationConfig, now time.Time) (*Negotiation, error) {
	if err := rfb.Check(); err != nil {
		return nil, err
	}
	if !now.Before(rfb.DeadlineTime()) {
		return nil, badNeg("deadline %s is not after now", rfb.DeadlineTime().UTC().Format(time.RFC3339Nano))
	}
	n := &Negotiation{rfb: rfb, cfg: cfg.withDefaults(), gone: map[peer.ID]bool{}, started: now}
	if !n.cfg.Direct {
		req := rfb
		n.ready.RequestForBids = &req
	}
	return n, nil
}

// Expect tells a negotiation, at time now, how many providers the
// directory found for its class, when that answer comes after the request
// went out (the request need not wait for the directory): from then on it
// closes as if NegotiationConfig.Expect had said so from the start. It does
// nothing once bidding has closed, for a count of 0 or less, or for a
// Direct negotiation (whose asked providers are the ones it expects).
func (n *Negotiation) Expect(providers int, now time.Time) {
	if n.phase != Collecting || providers <= 0 || n.cfg.Direct {
		return
	}
	n.cfg.Expect = providers
	n.maybeClose(now)
}

// Phase is where the negotiation stands.
func (n *Negotiation) Phase() Phase { return n.phase }

// Job is the negotiation's job.
func (n *Negotiation) Job() JobID { return n.rfb.Job }

// Members are the awarded providers now (accepted or not).
func (n *Negotiation) Members() []Member {
	ms := make([]Member, len(n.members))
	for i, m := range n.members {
		ms[i] = m.Member
	}
	return ms
}

// Ready returns what to do since the last call and forgets it: the caller
// must act on it before it steps the negotiation again.
func (n *Negotiation) Ready() Ready {
	r := n.ready
	n.ready = Ready{}
	return r
}

// Wake is the next time at which Tick may change something; zero when the
// negotiation has ended.
func (n *Negotiation) Wake() time.Time {
	switch n.phase {
	case Collecting:
		d := n.rfb.DeadlineTime()
		if !n.feasible.IsZero() {
			d = earliest(d, n.feasible.Add(n.grace))
		}
		if n.cfg.Expect > 0 && len(n.bids) >= n.cfg.Expect && n.feasible.IsZero() {
			d = earliest(d, n.started.Add(n.cfg.ExpectWait))
		}
		return earliest(d, n.directWake())
	case Awarding:
		var w time.Time
		for _, m := range n.members {
			switch {
			case m.accepted:
			case m.unreplaced:
				w = earliest(w, m.awarded.Add(n.cfg.AwardGiveUp))
			default:
				w = earliest(w, m.awarded.Add(n.cfg.AwardTimeout))
			}
		}
		return w
	}
	return time.Time{}
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// Step takes one message from a provider. Messages of an ended negotiation
// are dropped, except an Acceptance, which is answered with a Release.
func (n *Negotiation) Step(msg Message, now time.Time) error {
	if err := msg.Check(); err != nil {
		return err
	}
	if msg.JobID() != n.rfb.Job {
		return fmt.Errorf("%w: %s, this is %s", ErrOtherJob, msg.JobID(), n.rfb.Job)
	}
	switch m := msg.(type) {
	case *Bid:
		return n.stepBid(*m, now)
	case *Acceptance:
		return n.stepAccept(*m, now)
	case *Refusal:
		return n.stepRefuse(*m, now)
	}
	return fmt.Errorf("%w: %T", ErrNotForUs, msg)
}

// Tick moves the negotiation on at time now: closes the bidding, fails at
// the deadline, replaces members that did not answer.
func (n *Negotiation) Tick(now time.Time) {
	switch n.phase {
	case Collecting:
		n.maybeClose(now)
	case Awarding:
		for _, m := range slices.Clone(n.members) {
			if n.phase != Awarding {
				return
			}
			if m.accepted || now.Before(m.awarded.Add(n.cfg.AwardTimeout)) {
				continue
			}
			// Silent: replaced if a bid can make its GPUs up; else waited
			// for (slow is not gone) until AwardGiveUp, then failed.
			if _, err := n.replacement(m, now); err != nil && now.Before(m.awarded.Add(n.cfg.AwardGiveUp)) {
				m.unreplaced = true
				continue
			}
			if chosen, err := n.replacement(m, now); err == nil && !n.cfg.OldAwardRules && n.fresh(chosen) {
				n.standBy(m, chosen, now)
				continue
			}
			n.markSilent(m.Provider)
			n.release(m.Provider, "no answer to the award")
			n.replace(m, fmt.Sprintf("provider %s did not answer in %v", m.Provider, now.Sub(m.awarded).Round(time.Millisecond)), now)
		}
	}
}

// fresh reports whether every one of chosen is a provider not yet a
// member (no top-up): their awards can be taken back whole.
func (n *Negotiation) fresh(chosen []Member) bool {
	for _, c := range chosen {
		if n.isMember(c.Provider) {
			return false
		}
	}
	return true
}

// standBy replaces silent member m by chosen (awarded now) but keeps m's
// award standing: if m accepts before any of them has, it takes its place
// back and they are released (a slow answer is not thrown away for a new
// round trip that may be as slow); otherwise it is released when one of
// them accepts first or the negotiation ends.
func (n *Negotiation) standBy(m *member, chosen []Member, now time.Time) {
	n.gone[m.Provider] = true
	n.members = slices.DeleteFunc(n.members, func(x *member) bool { return x == m })
	m.cover = m.cover[:0]
	for _, c := range chosen {
		m.cover = append(m.cover, c.Provider)
		n.award(c, now)
	}
	n.late = append(n.late, m)
}

// lateAccept takes an acceptance from a member standing by (see standBy):
// it is a member again if none of the members that replaced it has
// accepted, else it is released. false: a is not from one standing by.
func (n *Negotiation) lateAccept(a Acceptance) bool {
	i := slices.IndexFunc(n.late, func(l *member) bool { return l.Provider == a.Provider })
	if i < 0 {
		return false
	}
	l := n.late[i]
	n.late = slices.Delete(n.late, i, i+1)
	back := a.GPUs == l.GPUs
	for _, p := range l.cover {
		if c := n.member(p); c == nil || c.accepted {
			back = false
		}
	}
	if !back {
		n.release(l.Provider, "replaced after no answer to the award")
		return true
	}
	for _, p := range l.cover {
		n.gone[p] = true
		n.members = slices.DeleteFunc(n.members, func(x *member) bool { return x.Provider == p })
		n.ready.Awards = slices.DeleteFunc(n.ready.Awards, func(x Award) bool { return x.Provider == p })
		n.release(p, "the member it stood in for answered first")
	}
	delete(n.gone, l.Provider)
	l.accepted, l.cover = true, nil
	n.members = append(n.members, l)
	return true
}

// markSilent names p in the outcome's Silent: its award went unanswered
// until it was released (one that answers late, even after its
// replacement, answered and is not named).
func (n *Negotiation) markSilent(p peer.ID) {
	if !slices.Contains(n.silent, p) {
		n.silent = append(n.silent, p)
	}
}

// releaseLate releases every member standing by, none of which has
// answered: the negotiation ended.
func (n *Negotiation) releaseLate() {
	for _, l := range n.late {
		n.markSilent(l.Provider)
		n.release(l.Provider, "replaced after no answer to the award")
	}
	n.late = nil
}

// Cancel ends the negotiation: every member gets a Release.
func (n *Negotiation) Cancel(reason string) {
	n.refused = false
	n.fail("cancelled: " + reason)
}

func (n *Negotiation) stepBid(b Bid, now time.Time) error {
	if n.phase == Formed || n.phase == Failed {
		return nil
	}
	if b.Expires <= now.UnixMilli() {
		return fmt.Errorf("%w: bid of %s expired", ErrUnexpected, b.Provider)
	}
	if n.phase == Collecting && !now.Before(n.rfb.DeadlineTime()) {
		n.maybeClose(now)
		return fmt.Errorf("%w: bid of %s after the deadline", ErrUnexpected, b.Provider)
	}
	if n.gone[b.Provider] || n.isMember(b.Provider) {
		return nil
	}
	if b.HostNet && !n.cfg.Private {
		return badNeg("bid of %s for the host network in the public swarm, where members meet only on a job network", b.Provider)
	}
	if i := slices.IndexFunc(n.bids, func(x Bid) bool { return x.Provider == b.Provider }); i >= 0 {
		n.bids[i] = b
	} else if len(n.bids) >= n.cfg.MaxBids {
		return fmt.Errorf("%w: %d bids already, bid of %s dropped", ErrUnexpected, len(n.bids), b.Provider)
	} else {
		n.bids = append(n.bids, b)
	}
	if n.phase == Collecting {
		n.maybeClose(now)
	}
	return nil
}

// live is the bids not expired at now.
func (n *Negotiation) live(now time.Time) []Bid {
	ms := now.UnixMilli()
	n.bids = slices.DeleteFunc(n.bids, func(b Bid) bool { return b.Expires <= ms })
	return n.bids
}

func (n *Negotiation) maybeClose(now time.Time) {
	bids := n.live(now)
	chosen, _, err := SelectRanked(bids, n.rfb.Needs, n.cfg.Ranking)
	late := !now.Before(n.rfb.DeadlineTime())
	if err != nil {
		n.feasible = time.Time{}
		// Every provider expected has bid and no cluster can form: more
		// waiting will not help, once bids have had ExpectWait to arrive
		// (a directory that undercounts must not fail a job early).
		if !late && !n.directClose(now) {
			return // asked more, or went to the topic
		}
		allIn := n.cfg.Expect > 0 && len(bids) >= n.cfg.Expect && !now.Before(n.started.Add(n.cfg.ExpectWait))
		if late || allIn {
			n.fail(err.Error())
			n.ready.Outcome.Err = err
		}
		return
	}
	if n.feasible.IsZero() {
		n.feasible = now
	}
	all := n.cfg.Expect > 0 && len(bids) >= n.cfg.Expect
	n.grace = n.cfg.Grace
	if n.doubtful(chosen) {
		n.grace = max(n.cfg.Grace, n.cfg.DoubtWait)
	}
	if late || all || !now.Before(n.feasible.Add(n.grace)) {
		n.phase = Awarding
		for _, c := range chosen {
			n.award(c, now)
		}
	}
}

// doubtful reports whether a chosen set has a member whose score is below
// that of a provider nobody has seen (Ranking.Unknown), or one awarded
// last (Ranking.Last): such a set waits
// DoubtWait rather than Grace for other bids (less if every provider
// expected bids first), so a provider known to fail is not chosen only
// because its bid came first.
func (n *Negotiation) doubtful(chosen []Member) bool {
	for _, c := range chosen {
		if n.cfg.Ranking.Last[c.Provider] {
			return true
		}
		if s, ok := n.cfg.Ranking.Scores[c.Provider]; ok && s < n.cfg.Ranking.Unknown {
			return true
		}
	}
	return false
}

// award sends an award for c: to a new member, or a top-up of an existing
// one, whose award then covers its new total.
func (n *Negotiation) award(c Member, now time.Time) {
	m := n.member(c.Provider)
	if m != nil {
		m.GPUs += c.GPUs
		m.awarded, m.accepted = now, false
		n.ready.Awards = slices.DeleteFunc(n.ready.Awards, func(a Award) bool { return a.Provider == c.Provider })
		c = m.Member
	} else {
		m = &member{Member: c, bid: Bid{Provider: c.Provider, Class: c.Class, GPUs: c.GPUs, Price: c.Price}, awarded: now}
		if i := slices.IndexFunc(n.bids, func(b Bid) bool { return b.Provider == c.Provider }); i >= 0 {
			m.bid = n.bids[i]
			n.bids = slices.Delete(n.bids, i, i+1)
		}
		n.members = append(n.members, m)
	}
	n.ready.Awards = append(n.ready.Awards, Award{
		Job:          n.rfb.Job,
		Submitter:    n.rfb.Submitter,
		Provider:     c.Provider,
		Class:        c.Class,
		GPUs:         c.GPUs,
		Price:        c.Price,
		LeaseExpires: now.Add(time.Duration(n.rfb.Needs.LeaseSeconds) * time.Second).UnixMilli(),
		Gang:         n.rfb.Job,
		GangSize:     0, // set below, once the round's members are known
	})
	size := uint32(len(n.members))
	for i := range n.ready.Awards {
		n.ready.Awards[i].GangSize = size
	}
}

func (n *Negotiation) isMember(p peer.ID) bool { return n.member(p) != nil }

func (n *Negotiation) member(p peer.ID) *member {
	for _, m := range n.members {
		if m.Provider == p {
			return m
		}
	}
	return nil
}

func (n *Negotiation) stepAccept(a Acceptance, now time.Time) error {
	if n.phase == Awarding && n.lateAccept(a) {
		return n.maybeFormed(now)
	}
	m := n.member(a.Provider)
	if n.phase != Awarding || m == nil {
		// Not (or no longer) a member: whatever it reserved must go.
		if n.phase != Formed || m == nil {
			n.release(a.Provider, "not a member of the cluster")
		}
		return nil
	}
	if a.GPUs != m.GPUs {
		// The answer to an earlier award of this member, before a top-up:
		// the answer to the latest is on its way, or the award times out.
		return nil
	}
	m.accepted = true
	return n.maybeFormed(now)
}

// maybeFormed ends the negotiation formed once every member has accepted.
func (n *Negotiation) maybeFormed(now time.Time) error {
	for _, m := range n.members {
		if !m.accepted {
			return nil
		}
	}
	n.releaseLate()
	n.phase = Formed
	o := &Outcome{Formed: true, Members: n.Members(), Cost: TotalCost(n.Members()), Refused: slices.Clone(n.refusers), Silent: slices.Clone(n.silent)}
	o.Spares = spareBids(usableBids(n.live(now), n.rfb.Needs, n.cfg.Ranking), o.Members, n.rfb.Needs)
	for _, m := range n.members {
		n.ready.Confirms = append(n.ready.Confirms, Confirm{Job: n.rfb.Job, Submitter: n.rfb.Submitter, Provider: m.Provider})
	}
	n.ready.Outcome = o
	return nil
}

func (n *Negotiation) stepRefuse(r Refusal, now time.Time) error {
	if i := slices.IndexFunc(n.late, func(l *member) bool { return l.Provider == r.Provider }); i >= 0 {
		// Standing by, it refused: it holds nothing; it was replaced already.
		n.late = slices.Delete(n.late, i, i+1)
		n.refusedBy(r.Provider)
		return nil
	}
	m := n.member(r.Provider)
	if n.phase != Awarding || m == nil || m.accepted {
		if m != nil && m.accepted && n.phase == Awarding {
			// It took the award back: drop it like a refusal.
			n.refusedBy(r.Provider)
			n.replace(m, fmt.Sprintf("provider %s withdrew: %s", r.Provider, r.Reason), now)
		}
		return nil
	}
	n.refusedBy(r.Provider)
	n.replace(m, fmt.Sprintf("provider %s refused: %s", r.Provider, r.Reason), now)
	return nil
}

// refusedBy notes that member p refused or took back its award.
func (n *Negotiation) refusedBy(p peer.ID) {
	n.refused = true
	if !slices.Contains(n.refusers, p) {
		n.refusers = append(n.refusers, p)
	}
}

// replace drops member gone and awards its GPUs to the best remaining
// bids, or fails the whole negotiation.
func (n *Negotiation) replace(gone *member, why string, now time.Time) {
	n.gone[gone.Provider] = true
	n.members = slices.DeleteFunc(n.members, func(m *member) bool { return m == gone })
	chosen, err := n.replacement(gone, now)
	if err != nil {
		reason := why + "; no replacement: " + err.Error()
		if n.rfb.Needs.Placement == Colocated && len(n.members) > 0 {
			reason += " in zone " + zoneName(zoneKey(&Bid{Zone: n.members[0].Zone, Provider: n.members[0].Provider}))
		}
		n.fail(reason)
		return
	}
	for _, c := range chosen {
		n.award(c, now)
	}
}

// replacement chooses, from the live bids and what the other members bid
// beyond their award, who would make up gone's GPUs; it changes nothing.
func (n *Negotiation) replacement(gone *member, now time.Time) ([]Member, error) {
	others := slices.DeleteFunc(slices.Clone(n.members), func(m *member) bool { return m == gone })
	needs := n.rfb.Needs
	needs.GPUs = gone.GPUs
	needs.PerNode = min(needs.PerNode, needs.GPUs)
	bids := slices.Clone(n.live(now))
	if needs.PerNode == 0 {
		// What members bid beyond their award can make up the loss too.
		for _, m := range others {
			if m.bid.GPUs > m.GPUs {
				rest := m.bid
				rest.GPUs -= m.GPUs
				bids = append(bids, rest)
			}
		}
	}
	if needs.Placement == Colocated && len(others) > 0 {
		zone := others[0].Zone
		bids = slices.DeleteFunc(bids, func(b Bid) bool { return zone == "" || b.Zone != zone })
	}
	// No replacement mixes the host network in (selectIn).
	var kept []Member
	for _, m := range others {
		kept = append(kept, memberOf(&m.bid, m.GPUs))
	}
	bids = slices.DeleteFunc(bids, func(b Bid) bool { return mixes(b, kept) })
	chosen, _, err := SelectRanked(bids, needs, n.cfg.Ranking)
	return chosen, err
}

// fail releases every member and ends the negotiation.
func (n *Negotiation) fail(reason string) {
	for _, m := range n.members {
		n.release(m.Provider, reason)
	}
	n.releaseLate()
	n.phase = Failed
	n.ready.Outcome = &Outcome{Reason: reason, Contended: n.refused, Refused: slices.Clone(n.refusers), Silent: slices.Clone(n.silent)}
}

func (n *Negotiation) release(p peer.ID, reason string) {
	n.ready.Releases = append(n.ready.Releases, Release{Job: n.rfb.Job, From: n.rfb.Submitter, Provider: p, Reason: clip(reason)})
}

// clip cuts a reason to what a Release or Refusal may carry.
func clip(reason string) string {
	if len(reason) <= maxReasonLen {
		return reason
	}
	return strings.ToValidUTF8(reason[:maxReasonLen], "")
}

// Settled is what an ended negotiation keeps once the negotiation itself
// is dropped: enough to answer a late acceptance with a release, as the
// negotiation would. It is a few words a job, where a negotiation holds
// every bid.
type Settled struct {
	job       JobID
	submitter peer.ID
	formed    bool
	members   []peer.ID
}

// Settle returns the negotiation's settled record; nil until it has ended.
func (n *Negotiation) Settle() *Settled {
	if n.phase != Formed && n.phase != Failed {
		return nil
	}
	s := &Settled{job: n.rfb.Job, submitter: n.rfb.Submitter, formed: n.phase == Formed}
	if s.formed {
		s.members = make([]peer.ID, len(n.members))
		for i, m := range n.members {
			s.members[i] = m.Provider
		}
	}
	return s
}

// Step answers a message for the ended negotiation: an acceptance from a
// provider that is not a member (any provider, if it failed) is released;
// everything else needs no answer.
func (s *Settled) Step(msg Message) *Release {
	a, ok := msg.(*Acceptance)
	if !ok || a.Check() != nil || a.Job != s.job || slices.Contains(s.members, a.Provider) {
		return nil
	}
	return &Release{Job: s.job, From: s.submitter, Provider: a.Provider, Reason: "not a member of the cluster"}
}
