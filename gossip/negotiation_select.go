package gossip

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrNoCluster marks a request that no set of bids can meet; the error
// wrapping it says why, with numbers.
var ErrNoCluster = errors.New("no cluster can form")

// ErrNoBids marks a request that failed without a single bid for the GPUs
// it asked for: wrapped, with ErrNoCluster, by Select's error then.
var ErrNoBids = errors.New("no provider of the GPUs asked for bid")

// noBidsError is the reason of a failure without bids of the class.
type noBidsError string

func (e noBidsError) Error() string        { return string(e) }
func (e noBidsError) Is(target error) bool { return target == ErrNoBids }

// Member is one provider's part of a cluster: GPUs of its bid at its price.
type Member struct {
	Provider peer.ID
	Class    string
	GPUs     uint32
	Price    uint64 // per GPU-hour, the bid's price
	Zone     string
	Addrs    []string
	HostNet  bool `json:",omitempty"` // its bid's HostNet: its provider cannot make job networks
	// NoHostNet: its bid's NoHostNet: its provider refuses the host network.
	NoHostNet bool `json:",omitempty"`
}

// Cost is what a member costs per hour: GPUs times price.
func (m Member) Cost() uint64 { return uint64(m.GPUs) * m.Price }

// TotalCost is what a cluster costs per hour. It cannot overflow for a
// selection: at most MaxJobGPUs GPUs at at most MaxPrice each.
func TotalCost(ms []Member) uint64 {
	var c uint64
	for _, m := range ms {
		c += m.Cost()
	}
	return c
}

// Select picks the cheapest set of bids that meets needs, and ranks the
// other usable bids as spares (cheapest first; for colocated, those of the
// chosen zone first). It is the negotiation's whole decision of who gets an
// award; it neither looks at the clock nor at expiry (the caller passes only
// live bids). A provider should appear once; a later bid of the same
// provider replaces an earlier one.
//
// The rules:
//   - A bid is usable if its class matches (Needs.Class, or any class of
//     Needs.Model), its VRAM is at least MinVRAMGB, its price is at most
//     MaxPrice and its lease is at least LeaseSeconds.
//   - Without PerNode, a bid may be taken in part: a provider offering 8 can
//     be awarded 4. Every GPU is then an item with its bid's price, and
//     taking the cheapest ones first is optimal.
//   - With PerNode p, every member gives exactly p GPUs (the launcher runs p
//     processes on every node): a bid of fewer is a fragment and unusable, a
//     bid of more is taken for p. Every member is then an item of cost
//     p*price, and again the cheapest first is optimal.
//   - Colocated: every member in one zone. The cheapest set of every zone is
//     found as above and the cheapest of those wins. A bid without a zone is
//     a zone of its own.
//   - Spread: members in any zones.
//   - Ties go to the bid with more GPUs (fewer members), then the lower peer
//     ID, so the choice is deterministic.
//
// Select is SelectRanked without scores: price alone.
func Select(bids []Bid, needs Needs) (chosen []Member, spares []Bid, err error) {
	return SelectRanked(bids, needs, Ranking{})
}

// Ranking is what a submitter knows of providers besides their prices:
// each one's score (node/reputation: the expected share of its work it
// finishes, 0..1) and how much a score may weigh against a price.
//
// With Weight 0 (the default) a score only breaks ties: of two bids at one
// price the one of the higher score goes first, before the rules of Select
// (more GPUs, lower peer ID). With Weight w > 0 a bid is ranked by its
// price × (1 + w × (1 − score)): a provider of score 0.5 at 2.00 ranks as
// 2.00 × (1 + w/2), so with w = 0.1 it loses to a provider of score 1 at
// up to 2.10. Prices are still what members are paid; the weighed price
// only orders the bids.
//
// Whatever the weight, a provider in Last (one that refused this
// submitter's award after bidding, or did not answer one, lately) is
// asked and awarded last: its bid is taken only when no cluster can form
// from the other bids, and it is a spare after every other.
type Ranking struct {
	Scores  map[peer.ID]float64 // providers' scores, 0..1; a provider not in it has Unknown
	Unknown float64             // the score of a provider without one
	Weight  float64             // 0..MaxScoreWeight; 0: scores only break ties
	Last    map[peer.ID]bool    // providers asked and awarded last
}

// MaxScoreWeight bounds Ranking.Weight: at 1 a score of 0 doubles a price.
const MaxScoreWeight = 1.0

func (r Ranking) score(p peer.ID) float64 {
	if s, ok := r.Scores[p]; ok {
		return min(max(s, 0), 1)
	}
	return r.Unknown
}

// weighed is the price a bid is ranked by (see Ranking).
func (r Ranking) weighed(b *Bid) float64 {
	w := min(max(r.Weight, 0), MaxScoreWeight)
	return float64(b.Price) * (1 + w*(1-r.score(b.Provider)))
}

// SelectRanked is Select with the bids ranked by price and score (see
// Ranking) rather than price alone.
func SelectRanked(bids []Bid, needs Needs, rank Ranking) (chosen []Member, spares []Bid, err error) {
	if err := needs.Check(); err != nil {
		return nil, nil, err
	}
	usable := usableBids(bids, needs, rank)
	var ok bool
	if slices.ContainsFunc(usable, func(b Bid) bool { return rank.Last[b.Provider] }) {
		// Without the providers awarded last, if a cluster forms so.
		others := slices.DeleteFunc(slices.Clone(usable), func(b Bid) bool { return rank.Last[b.Provider] })
		chosen, ok = selectIn(others, needs.GPUs, needs.PerNode, needs.Placement, rank)
	}
	if !ok {
		chosen, ok = selectIn(usable, needs.GPUs, needs.PerNode, needs.Placement, rank)
	}
	if !ok {
		why, none := whyNot(bids, needs)
		if none {
			return nil, nil, fmt.Errorf("%w: %w", ErrNoCluster, noBidsError(why))
		}
		return nil, nil, fmt.Errorf("%w: %s", ErrNoCluster, why)
	}
	return chosen, spareBids(usable, chosen, needs), nil
}

// zoneKey is the colocation group of a bid: its zone, or the provider alone.
func zoneKey(b *Bid) string {
	if b.Zone == "" {
		return "\x00" + string(b.Provider)
	}
	return b.Zone
}

func zoneName(key string) string {
	if strings.HasPrefix(key, "\x00") {
		return "provider " + peer.ID(key[1:]).String() + " (no zone)"
	}
	return key
}

func (n *Needs) classMatches(b *Bid) bool {
	return (n.Class == "" || b.Class == n.Class) &&
		(n.Model == "" || b.Model == n.Model) &&
		b.VRAMGB >= n.MinVRAMGB
}

func (n *Needs) usable(b *Bid) bool {
	return n.classMatches(b) && b.Price <= n.MaxPrice && b.LeaseSeconds >= n.LeaseSeconds &&
		b.GPUs >= max(n.PerNode, 1)
}

// usableBids keeps the last bid of every provider that is usable, sorted
// cheapest first (by the ranking's weighed price, then score), those of
// the providers in Ranking.Last after all others.
func usableBids(bids []Bid, needs Needs, rank Ranking) []Bid {
	out := lastBids(bids, needs.usable)
	slices.SortFunc(out, func(a, b Bid) int { return compareBids(a, b, rank) })
	return out
}

func compareBids(a, b Bid, rank Ranking) int {
	return cmp.Or(cmp.Compare(boolInt(rank.Last[a.Provider]), boolInt(rank.Last[b.Provider])),
		cmp.Compare(rank.weighed(&a), rank.weighed(&b)), cmp.Compare(a.Price, b.Price),
		cmp.Compare(rank.score(b.Provider), rank.score(a.Provider)),
		cmp.Compare(b.GPUs, a.GPUs), cmp.Compare(a.Provider, b.Provider))
}

// weighedCost is what a set of members costs per hour at the ranking's
// weighed prices.
func weighedCost(ms []Member, rank Ranking) float64 {
	var c float64
	for _, m := range ms {
		c += float64(m.GPUs) * rank.weighed(&Bid{Provider: m.Provider, Price: m.Price})
	}
	return c
}

// selectIn picks need GPUs from sorted usable bids under a placement. A
// cluster of several never mixes a HostNet bid (all would meet on the host
// network) with a NoHostNet one (its provider refuses that): where both
// are among the bids, the cheaper of the clusters without either is taken.
func selectIn(sorted []Bid, need, perNode uint32, place Placement, rank Ranking) ([]Member, bool) {
	if !slices.ContainsFunc(sorted, func(b Bid) bool { return b.HostNet }) || !slices.ContainsFunc(sorted, func(b Bid) bool { return b.NoHostNet }) {
		return selectPlaced(sorted, need, perNode, place, rank)
	}
	jobNet := slices.DeleteFunc(slices.Clone(sorted), func(b Bid) bool { return b.HostNet })
	hostNet := slices.DeleteFunc(slices.Clone(sorted), func(b Bid) bool { return b.NoHostNet })
	a, okA := selectPlaced(jobNet, need, perNode, place, rank)
	b, okB := selectPlaced(hostNet, need, perNode, place, rank)
	switch {
	case !okB:
		return a, okA
	case !okA:
		return b, okB
	}
	if ca, cb := weighedCost(a, rank), weighedCost(b, rank); cb < ca || (cb == ca && len(b) < len(a)) {
		return b, true
	}
	return a, true
}

// mixes reports whether a bid would mix the host network into a cluster
// with ms that must not have it, or the reverse (see selectIn).
func mixes(b Bid, ms []Member) bool {
	return b.HostNet && slices.ContainsFunc(ms, func(m Member) bool { return m.NoHostNet }) ||
		b.NoHostNet && slices.ContainsFunc(ms, func(m Member) bool { return m.HostNet })
}

// selectPlaced is selectIn for bids that all may meet in one cluster.
func selectPlaced(sorted []Bid, need, perNode uint32, place Placement, rank Ranking) ([]Member, bool) {
	if place != Colocated {
		return take(sorted, need, perNode)
	}
	var zones []string
	byZone := map[string][]Bid{}
	for _, b := range sorted {
		k := zoneKey(&b)
		if _, ok := byZone[k]; !ok {
			zones = append(zones, k)
		}
		byZone[k] = append(byZone[k], b)
	}
	slices.Sort(zones)
	var best []Member
	found := false
	for _, z := range zones {
		ms, ok := take(byZone[z], need, perNode)
		if !ok {
			continue
		}
		if !found || weighedCost(ms, rank) < weighedCost(best, rank) || (weighedCost(ms, rank) == weighedCost(best, rank) && len(ms) < len(best)) {
			best, found = ms, true
		}
	}
	return best, found
}

// take is the greedy choice: the cheapest GPUs first.
func take(sorted []Bid, need, perNode uint32) ([]Member, bool) {
	var ms []Member
	for _, b := range sorted {
		if need == 0 {
			break
		}
		g := min(b.GPUs, need)
		if perNode > 0 {
			if b.GPUs < perNode {
				continue
			}
			g = perNode
		}
		ms = append(ms, memberOf(&b, g))
		need -= g
	}
	return ms, need == 0
}

func memberOf(b *Bid, gpus uint32) Member {
	return Member{Provider: b.Provider, Class: b.Class, GPUs: gpus, Price: b.Price, Zone: b.Zone, Addrs: b.Addrs, HostNet: b.HostNet, NoHostNet: b.NoHostNet}
}

// HostNetwork reports whether a cluster's members meet over their
// providers' host networks rather than on a job network of their own: a
// cluster of several members of which one's provider cannot make job
// networks (its bid was HostNet, taken only in a private swarm). Then
// every member runs on the host network, not only that one, since a
// member outside the job network could reach none inside it and none
// inside could reach it.
func HostNetwork(ms []Member) bool {
	return len(ms) > 1 && slices.ContainsFunc(ms, func(m Member) bool { return m.HostNet })
}

func spareBids(usable []Bid, chosen []Member, needs Needs) []Bid {
	in := map[peer.ID]bool{}
	for _, m := range chosen {
		in[m.Provider] = true
	}
	var spares []Bid
	for _, b := range usable {
		if !in[b.Provider] && !mixes(b, chosen) {
			spares = append(spares, b)
		}
	}
	if needs.Placement == Colocated && len(chosen) > 0 {
		zone := chosen[0].Zone
		slices.SortStableFunc(spares, func(a, b Bid) int {
			return cmp.Compare(boolInt(a.Zone != zone || zone == ""), boolInt(b.Zone != zone || zone == ""))
		})
	}
	return spares
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// whyNot says, with numbers, why no set of bids meets needs. It walks the
// filters in the order a person would check them: class, lease, price,
// perNode, colocation.
// none reports that no bid at all was for the GPUs asked for.
func whyNot(bids []Bid, needs Needs) (why string, none bool) {
	u := needs.unit()
	price := func(v uint64) string { return u.Format(v) + " " + u.PerHour() }
	class := lastBids(bids, needs.classMatches)
	if len(class) == 0 {
		what := "class " + needs.Class
		if needs.Class == "" {
			what = "model " + needs.Model
		}
		if needs.MinVRAMGB > 0 {
			what += fmt.Sprintf(" with at least %d GB", needs.MinVRAMGB)
		}
		if other := len(lastBids(bids, func(*Bid) bool { return true })); other > 0 {
			return fmt.Sprintf("no provider of %s bid (%s of other GPUs)", what, plural(other, "bid")), true
		}
		return fmt.Sprintf("no provider of %s bid", what), true
	}
	var leased []Bid
	longest := uint32(0)
	for _, b := range class {
		longest = max(longest, b.LeaseSeconds)
		if b.LeaseSeconds >= needs.LeaseSeconds {
			leased = append(leased, b)
		}
	}
	if len(leased) == 0 {
		return fmt.Sprintf("no provider leases for %v, the longest lease bid is %v",
			time.Duration(needs.LeaseSeconds)*time.Second, time.Duration(longest)*time.Second), false
	}
	var cheap []Bid
	var cheapGPUs, dearGPUs uint64
	cheapestDear := uint64(0)
	for _, b := range leased {
		if b.Price <= needs.MaxPrice {
			cheap = append(cheap, b)
			cheapGPUs += uint64(b.GPUs)
		} else {
			dearGPUs += uint64(b.GPUs)
			if cheapestDear == 0 || b.Price < cheapestDear {
				cheapestDear = b.Price
			}
		}
	}
	if cheapGPUs < uint64(needs.GPUs) {
		s := fmt.Sprintf("%d GPUs available at or below %s, need %d", cheapGPUs, price(needs.MaxPrice), needs.GPUs)
		if dearGPUs > 0 {
			s += fmt.Sprintf(" (%d more from %s)", dearGPUs, price(cheapestDear))
		}
		return s, false
	}
	p := max(needs.PerNode, 1)
	usableGPUs := func(bs []Bid) (usable uint64, whole int, biggestFragment uint32) {
		for _, b := range bs {
			if b.GPUs >= p {
				whole++
				if needs.PerNode > 0 {
					usable += uint64(p)
				} else {
					usable += uint64(b.GPUs)
				}
			} else {
				biggestFragment = max(biggestFragment, b.GPUs)
			}
		}
		return usable, whole, biggestFragment
	}
	if needs.PerNode > 0 {
		usable, whole, frag := usableGPUs(cheap)
		if usable < uint64(needs.GPUs) {
			if whole == 0 {
				return fmt.Sprintf("only fragments of at most %d GPUs, perNode %d", frag, needs.PerNode), false
			}
			return fmt.Sprintf("only %s of %d GPUs (%d GPUs), need %d; %d more bids are fragments of at most %d GPUs, perNode %d",
				plural(whole, "provider"), needs.PerNode, usable, needs.GPUs, len(cheap)-whole, frag, needs.PerNode), false
		}
	}
	if needs.Placement == Colocated {
		byZone := map[string][]Bid{}
		for _, b := range cheap {
			byZone[zoneKey(&b)] = append(byZone[zoneKey(&b)], b)
		}
		bestZone, bestGPUs := "", uint64(0)
		for z, bs := range byZone {
			n, _, _ := usableGPUs(bs)
			if n > bestGPUs || (n == bestGPUs && z < bestZone) {
				bestZone, bestGPUs = z, n
			}
		}
		return fmt.Sprintf("colocation impossible: no zone has %d GPUs (best %s with %d)", needs.GPUs, zoneName(bestZone), bestGPUs), false
	}
	return fmt.Sprintf("%d usable bids cannot make %d GPUs", len(cheap), needs.GPUs), false
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// lastBids keeps, of every provider, its last bid, if keep takes it.
func lastBids(bids []Bid, keep func(*Bid) bool) []Bid {
	last := make(map[peer.ID]int, len(bids))
	for i := range bids {
		last[bids[i].Provider] = i
	}
	var out []Bid
	for i := range bids {
		if last[bids[i].Provider] == i && keep(&bids[i]) {
			out = append(out, bids[i])
		}
	}
	return out
}
