package gossip

// Direct requests: the submitter asks the providers the directory (and the
// price board) names, not the whole swarm.
//
// With NegotiationConfig.Direct, a new negotiation broadcasts nothing.
// The node feeds it Candidates: providers that list GPUs of the class, from
// the price board at once and from the directory's lookup as it answers.
// The negotiation picks whom to ask and says so in Ready.Ask; the node
// sends each of them the request on a stream of its own. Only the asked
// providers see the request, so its cost is a few messages however large
// the swarm is, and a flood of broadcast requests on the topic does not
// stand between the request and the providers.
//
// Rules:
//
//   - Whom: candidates whose ask is at or below the max price (or
//     unknown), cheapest first, those the ranking doubts (or awards last:
//     Ranking.Last) last, until the
//     GPUs the asked providers can give — a bid's GPUs once it has bid,
//     the candidate's listing until then, in whole multiples of perNode —
//     are twice the GPUs needed (the rest are the spares), at least MinAsk
//     providers (so one slow provider does not hold a small job back), and
//     never more than Fanout.
//   - Closing: the asked providers are the providers expected (Expect):
//     once every one has bid, the negotiation awards at once. When the
//     bids in hand cannot form a cluster, more candidates are asked.
//   - Fallback to the topic (Ready.RequestForBids, once): when the
//     directory has answered and its candidates together list fewer
//     usable GPUs than needed (the directory may be behind: new providers,
//     moved prices), or when FallbackWait has passed since the request and
//     no cluster can form yet (asked providers busy or gone; those that
//     have not bid are asked again then, in case the request was lost).
//     From then on the negotiation takes bids as a broadcast one does,
//     and the named providers not asked yet are asked too (up to Fanout):
//     a listing too short may be an old one.
//   - Waiting for the requests to go out (SendReports): the fallback
//     wait counts from when the node's requests left, not from when the
//     negotiation asked for them. A submitter whose sends wait on its own
//     CPU, a dial or a lookup (up to 1,082 ms at 1,000 simulated peers in
//     one process, docs/scale.md) would otherwise give a provider its
//     request 100 ms before the fallback, and each early fallback puts
//     the request before every provider of the class, whose bids then
//     load the mesh further. While a request is neither sent nor failed
//     the fallback waits, and once every one is reported it comes
//     FallbackWait after the last sent; never more than one more
//     FallbackWait (2 s in all by default), so a dial that hangs on a
//     provider gone delays the topic by at most that.
//   - Asking again after the topic (Reasks, 2 rounds): while no cluster
//     can form, each FallbackWait after the request went on the topic
//     every asked provider that is not a member is asked again directly,
//     and providers named since (Candidates) are asked for the first time.
//     A request on the topic is published once, and a peer whose bound on
//     all submitters together (TopicTotal) is spent by a flood ignores it
//     at every hop; a direct request counts against no such bound. And a
//     provider whose GPUs were busy when it was asked (no bid, or a bid
//     too small) bids what it has free now.
//   - A failure without the topic: every candidate the directory named
//     was asked, every one bid, and no cluster can form: the negotiation
//     fails after ExpectWait, as a broadcast one with a directory count
//     does.

import (
	"cmp"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Candidate is a provider that a directory record or a price tick names
// for a request: a hint of whom to ask, not a promise. Its bid decides.
type Candidate struct {
	Provider peer.ID
	GPUs     uint32 // GPUs of a matching class it lists free
	Price    uint64 // its ask per GPU-hour in the request's unit; 0: not known
}

// maxCandidates bounds the candidates a negotiation keeps.
const maxCandidates = 1024

// candidate is a Candidate as a negotiation keeps it.
type candidate struct {
	Candidate
	asked bool
}

// Request is the negotiation's request for bids, as sent to a provider
// Ready.Ask names.
func (n *Negotiation) Request() RequestForBids { return n.rfb }

// Candidates tells a direct negotiation, at time now, of providers to
// ask; final says the directory has answered (no more will come from
// it). The negotiation asks the best of them (Ready.Ask) and falls back to
// the topic when they cannot be enough (see Direct requests). It does
// nothing for a negotiation that is not Direct or has stopped collecting.
func (n *Negotiation) Candidates(cs []Candidate, final bool, now time.Time) {
	if !n.cfg.Direct || n.phase != Collecting {
		return
	}
	for _, c := range cs {
		if c.Provider == "" || c.GPUs == 0 || (c.Price != 0 && c.Price > n.rfb.Needs.MaxPrice) {
			continue
		}
		if i := slices.IndexFunc(n.cands, func(x candidate) bool { return x.Provider == c.Provider }); i >= 0 {
			if !n.cands[i].asked {
				n.cands[i].Candidate = c // the newer word
			}
			continue
		}
		if len(n.cands) < maxCandidates {
			n.cands = append(n.cands, candidate{Candidate: c})
		}
	}
	n.final = n.final || final
	if n.final && !n.broadcast && n.listed() < n.rfb.Needs.GPUs {
		n.toTopic(now)
	}
	n.askMore()
	n.maybeClose(now)
}

// usableOf is how many of g GPUs one member can give: all of them up to
// the GPUs needed, in whole multiples of perNode.
func (n *Negotiation) usableOf(g uint32) uint32 {
	g = min(g, n.rfb.Needs.GPUs)
	if p := n.rfb.Needs.PerNode; p > 0 {
		g -= g % p
	}
	return g
}

// listed is the usable GPUs every candidate lists.
func (n *Negotiation) listed() uint32 {
	var sum uint32
	for _, c := range n.cands {
		sum += n.usableOf(c.GPUs)
	}
	return sum
}

// promised is the usable GPUs of the asked providers: a bid's once it has
// bid, the listing until then.
func (n *Negotiation) promised() uint32 {
	var sum uint32
	for _, c := range n.cands {
		if !c.asked {
			continue
		}
		g := c.GPUs
		if i := slices.IndexFunc(n.bids, func(b Bid) bool { return b.Provider == c.Provider }); i >= 0 {
			g = 0
			if n.rfb.Needs.usable(&n.bids[i]) {
				g = n.bids[i].GPUs
			}
		} else if n.gone[c.Provider] || n.isMember(c.Provider) {
			g = 0
		}
		sum += n.usableOf(g)
	}
	return sum
}

// askMore asks the best candidates not yet asked until the asked ones
// promise twice the GPUs needed, at most Fanout of them.
func (n *Negotiation) askMore() {
	if !n.cfg.Direct || n.phase != Collecting || n.broadcast {
		return
	}
	asked := 0
	var rest []int
	for i, c := range n.cands {
		switch {
		case c.asked:
			asked++
		case n.usableOf(c.GPUs) > 0:
			rest = append(rest, i)
		}
	}
	doubt := func(c candidate) bool {
		if n.cfg.Ranking.Last[c.Provider] {
			return true
		}
		s, ok := n.cfg.Ranking.Scores[c.Provider]
		return ok && s < n.cfg.Ranking.Unknown
	}
	price := func(c candidate) uint64 {
		if c.Price == 0 {
			return MaxPrice // unknown asks after known ones
		}
		return c.Price
	}
	slices.SortFunc(rest, func(a, b int) int {
		x, y := n.cands[a], n.cands[b]
		if dx, dy := doubt(x), doubt(y); dx != dy {
			if dx {
				return 1
			}
			return -1
		}
		return cmp.Or(cmp.Compare(price(x), price(y)), cmp.Compare(y.GPUs, x.GPUs), cmp.Compare(x.Provider, y.Provider))
	})
	want := 2 * n.rfb.Needs.GPUs
	have := n.promised()
	for _, i := range rest {
		if (have >= want && asked >= n.cfg.MinAsk) || asked >= n.cfg.Fanout {
			break
		}
		n.cands[i].asked = true
		n.ready.Ask = append(n.ready.Ask, n.cands[i].Provider)
		if n.cfg.SendReports {
			n.sending++
		}
		have += n.usableOf(n.cands[i].GPUs)
		asked++
	}
	n.cfg.Expect = asked
}

// unasked reports whether a candidate that could help is left to ask.
func (n *Negotiation) unasked() bool {
	for _, c := range n.cands {
		if !c.asked && n.usableOf(c.GPUs) > 0 {
			return true
		}
	}
	return false
}

// toTopic sends the request on the topic as well (once): from then on the
// negotiation expects bids from anyone. The named providers not asked yet
// are asked directly too, up to Fanout in all: their listing may be old.
func (n *Negotiation) toTopic(now time.Time) {
	if n.broadcast {
		return
	}
	n.broadcast = true
	n.lastAsk = now
	req := n.rfb
	n.ready.RequestForBids = &req
	n.askUnasked()
	n.cfg.Expect = 0
}

// askUnasked asks the candidates not asked yet that list usable GPUs, in
// their order, until Fanout providers in all have been asked.
func (n *Negotiation) askUnasked() {
	asked := 0
	for _, c := range n.cands {
		if c.asked {
			asked++
		}
	}
	for i, c := range n.cands {
		if asked >= n.cfg.Fanout {
			break
		}
		if !c.asked && n.usableOf(c.GPUs) > 0 {
			n.cands[i].asked = true
			n.ready.Ask = append(n.ready.Ask, c.Provider)
			asked++
		}
	}
}

// reask is a round of asking again after the topic (see Reasks): when
// FallbackWait has passed since the request last went out, every asked
// provider that is not a member (nor refused) is asked again, bid or not.
func (n *Negotiation) reask(now time.Time) {
	if n.reasks >= n.cfg.Reasks || now.Before(n.lastAsk.Add(n.cfg.FallbackWait)) {
		return
	}
	n.reasks++
	n.lastAsk = now
	for _, c := range n.cands {
		if c.asked && !n.gone[c.Provider] && !n.isMember(c.Provider) {
			n.ready.Ask = append(n.ready.Ask, c.Provider)
		}
	}
	// Named since the topic (Candidates: a provider busy then lists GPUs
	// free now), asked for the first time.
	n.askUnasked()
}

// directClose is maybeClose's part for a direct negotiation with no
// cluster in its bids: ask more, or fall back to the topic when
// FallbackWait has passed. It reports whether the negotiation may fail now
// for want of bids (every candidate asked and answered, the directory has
// answered), as a broadcast one with a directory count would.
func (n *Negotiation) directClose(now time.Time) (mayFail bool) {
	if !n.cfg.Direct {
		return true
	}
	if n.broadcast {
		n.reask(now)
		return true
	}
	n.askMore()
	if !now.Before(n.fallbackAt()) && (!n.final || n.unasked() || len(n.bids) < n.cfg.Expect || n.cfg.Expect == 0) {
		n.reaskSilent()
		n.toTopic(now)
		return false
	}
	return n.final && !n.unasked()
}

// reaskSilent asks again the asked providers that have not bid: a request
// lost on the way (a dial that failed, a stream reset under load) gets a
// second chance beside the topic's.
func (n *Negotiation) reaskSilent() {
	for _, c := range n.cands {
		if !c.asked || n.gone[c.Provider] || n.isMember(c.Provider) ||
			slices.ContainsFunc(n.bids, func(b Bid) bool { return b.Provider == c.Provider }) {
			continue
		}
		n.ready.Ask = append(n.ready.Ask, c.Provider)
	}
}

// directWake is when a direct negotiation that cannot form a cluster yet
// falls back to the topic, or asks again after it; zero when it will not.
func (n *Negotiation) directWake() time.Time {
	if !n.cfg.Direct || n.phase != Collecting || !n.feasible.IsZero() {
		return time.Time{}
	}
	if n.broadcast {
		if n.reasks >= n.cfg.Reasks {
			return time.Time{}
		}
		return n.lastAsk.Add(n.cfg.FallbackWait)
	}
	return n.fallbackAt()
}

// Sent tells a direct negotiation with SendReports that its request to
// provider p left at time at (ok), or could not be sent (a provider not
// found, a stream refused). Each ask the negotiation made before the
// topic is reported once; reports of asks after it, of providers not
// asked, and more than were asked, change nothing.
func (n *Negotiation) Sent(p peer.ID, ok bool, at time.Time) {
	if !n.cfg.Direct || !n.cfg.SendReports || n.phase != Collecting || n.broadcast || n.sending == 0 ||
		!slices.ContainsFunc(n.cands, func(c candidate) bool { return c.asked && c.Provider == p }) {
		return
	}
	n.sending--
	if ok && at.After(n.lastOut) {
		n.lastOut = at
	}
}

// fallbackAt is when a direct negotiation that cannot form a cluster goes
// on the topic: FallbackWait after the request, or with SendReports after
// the last request out (see Waiting for the requests to go out).
func (n *Negotiation) fallbackAt() time.Time {
	at := n.started.Add(n.cfg.FallbackWait)
	if !n.cfg.SendReports {
		return at
	}
	hold := at.Add(n.cfg.FallbackWait)
	if n.sending > 0 {
		return hold
	}
	if out := n.lastOut.Add(n.cfg.FallbackWait); out.After(at) {
		at = out
	}
	return earliest(at, hold)
}
