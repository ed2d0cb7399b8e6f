package gossip

import (
	"container/heap"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Capacity is what a provider has of one GPU class and what it asks.
type Capacity struct {
	Class  string // canonical class, e.g. "H100-80GB"
	Model  string // family, e.g. "H100"
	VRAMGB uint32 // memory per GPU, whole GB
	GPUs   uint32 // GPUs of the class on this provider; 1..MaxJobGPUs
	Price  uint64 // ask per GPU-hour in Unit's smallest unit; 1..MaxPrice
}

// ProviderConfig is a provider's side of negotiation. Durations are
// defaulted where zero.
type ProviderConfig struct {
	ID       peer.ID
	Unit     string   // unit of Price, "USDC:6"; a request in another unit gets no bid; "": DefaultUnit
	Zone     string   // region/zone label, e.g. "eu-west/ams1"
	Addrs    []string // where submitters reach this provider
	GPUs     []Capacity
	BidTTL   time.Duration // a bid is good this long; 0: 10 s
	Hold     time.Duration // an unconfirmed reservation lapses after this; 0: 10 s
	MaxLease time.Duration // longest lease granted; 0: 24 h
	MaxBids  int           // outstanding bids remembered; 0: 4096
	// MaxSubmitterBids is how many of those one submitter may hold: a
	// newer request of a submitter at the cap replaces its oldest bid, so
	// no submitter fills the provider's memory of bids; 0: 16. When all
	// MaxBids are out, a submitter holding fewer bids than the one holding
	// the most takes that one's oldest: a crowd of identities shares the
	// room evenly and cannot keep a newcomer out.
	MaxSubmitterBids int
	// StartWithin is how long a confirmed reservation waits for its member
	// to start (the start frame; the image pull comes after) before it
	// lapses; 0: 1 min.
	StartWithin time.Duration
	// MaxWaiting is how many reservations not yet running one submitter may
	// hold here at once; an award past it is refused; 0: 4.
	MaxWaiting int
	// NoJobNet says this provider cannot give a member a job network of
	// its own (node/jobnet: not root, no tun). With HostNetOK it bids on
	// every request as before, its bids marked HostNet: a job that takes
	// it as one of several members runs all of them on the host network
	// (HostNetwork). Without, it bids only on requests it can take whole,
	// as one member: every GPU needed free here in one class, and no
	// perNode split into several members.
	NoJobNet bool
	// HostNetOK: members of several may meet over this provider's host
	// network: the swarm is private (a swarm key: every peer in it was let
	// in by its owner) and the provider's owner allows it.
	HostNetOK bool
	// NoHostNet: this provider refuses to run a member of several on its
	// host network (--no-host-network), in a private swarm where others
	// may: its bids say so (Bid.NoHostNet), and no submitter of this
	// version puts it in a cluster that meets there.
	NoHostNet bool
	// Egress: this provider gives jobs that ask for it the internet (its
	// node runs with --job-egress). Without it, requests whose Needs ask
	// for egress get no bid: their members would run cut off.
	Egress bool
}

// ErrRefused marks an award a provider will not take; the error says why.
var ErrRefused = errors.New("award refused")

// Reservations is a provider's GPUs and who holds them: it decides what to
// bid and reserves atomically on an award, so no GPU is ever held for two
// jobs. Like Negotiation it does no I/O and reads no clock; it is not safe
// for concurrent use: one goroutine owns it.
type Reservations struct {
	cfg   ProviderConfig
	unit  Unit
	bids  map[holder]Bid
	order map[peer.ID][]holder // each submitter's bids, oldest first
	// expiries is every bid made, by expiry, soonest first (one replaced
	// or dropped stays until its time: Tick skips it then), so that Tick,
	// which the provider's loop runs on every event, touches only the
	// bids due, not all MaxBids of them.
	expiries expiryHeap
	held     map[holder]*Reservation
	inUse    map[string]uint32 // GPUs held per class
}

// holder names a bid or a reservation: the job and the submitter that
// asked. A job's ID is public once its request is out, so a bid or a
// reservation is never found by the ID alone: another peer's request or
// award with the same ID is another submitter's, and touches nothing of
// the first's. A job ID is held for one submitter at a time.
type holder struct {
	job       JobID
	submitter peer.ID
}

// Reservation is GPUs of one class held for one job.
type Reservation struct {
	Job       JobID
	Submitter peer.ID
	Class     string
	GPUs      uint32
	Price     uint64
	Bid       uint32    // GPUs of the bid: an award may grow the reservation up to this
	Confirmed bool      // every member of the gang accepted
	HoldUntil time.Time // an unconfirmed reservation lapses then
	LeaseEnd  time.Time // a confirmed one then, unless its member runs
	Running   bool      // its member runs: it ends only by End, when the member has ended
	StartBy   time.Time // a confirmed one lapses then unless its member has started
}

// NewReservations makes a provider's reservations; nothing is held.
func NewReservations(cfg ProviderConfig) (*Reservations, error) {
	if cfg.BidTTL <= 0 {
		cfg.BidTTL = 10 * time.Second
	}
	if cfg.StartWithin <= 0 {
		cfg.StartWithin = time.Minute
	}
	if cfg.MaxWaiting <= 0 {
		cfg.MaxWaiting = 4
	}
	if cfg.Hold <= 0 {
		cfg.Hold = 10 * time.Second
	}
	if cfg.MaxLease <= 0 {
		cfg.MaxLease = 24 * time.Hour
	}
	cfg.MaxLease = min(cfg.MaxLease, MaxLeaseSeconds*time.Second)
	if cfg.MaxBids <= 0 {
		cfg.MaxBids = 4096
	}
	if cfg.MaxSubmitterBids <= 0 {
		cfg.MaxSubmitterBids = 16
	}
	cfg.MaxSubmitterBids = min(cfg.MaxSubmitterBids, cfg.MaxBids)
	if err := checkPeer("provider", cfg.ID); err != nil {
		return nil, err
	}
	u, err := ParseUnit(cfg.Unit)
	if err != nil {
		return nil, err
	}
	if err := checkText("zone", cfg.Zone, maxZoneLen); err != nil {
		return nil, err
	}
	if err := checkAddrs(cfg.Addrs); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, c := range cfg.GPUs {
		switch {
		case !ValidClass(c.Class) || (c.Model != "" && !ValidClass(c.Model)):
			return nil, fmt.Errorf("provider: GPU class %q model %q: want 1..%d of A-Z a-z 0-9 . _ + -", c.Class, c.Model, maxClassLen)
		case seen[c.Class]:
			return nil, fmt.Errorf("provider: class %s listed twice", c.Class)
		case c.GPUs == 0 || c.GPUs > MaxJobGPUs:
			return nil, fmt.Errorf("provider: class %s: %d GPUs, want 1..%d", c.Class, c.GPUs, MaxJobGPUs)
		case c.Price == 0 || c.Price > MaxPrice:
			return nil, fmt.Errorf("provider: class %s: price %d, want 1..%d", c.Class, c.Price, uint64(MaxPrice))
		}
		seen[c.Class] = true
	}
	return &Reservations{cfg: cfg, unit: u, bids: map[holder]Bid{}, order: map[peer.ID][]holder{}, held: map[holder]*Reservation{}, inUse: map[string]uint32{}}, nil
}

func (r *Reservations) capacity(class string) (Capacity, bool) {
	for _, c := range r.cfg.GPUs {
		if c.Class == class {
			return c, true
		}
	}
	return Capacity{}, false
}

// Free is the GPUs of a class not held at time now (after expiring what is
// due, as Tick does).
func (r *Reservations) Free(class string, now time.Time) uint32 {
	r.Tick(now)
	c, _ := r.capacity(class)
	return c.GPUs - r.inUse[class]
}

// Errors of Start.
var (
	ErrNoReservation = errors.New("no reservation")
	ErrMemberRuns    = errors.New("a member of this job already runs on this provider")
)

// Start marks a job's reservation for submitter as running its member,
// confirming it (a start may overtake the confirm). A running reservation
// does not lapse and its lease does not end under its member: it ends by a
// Release once the member has ended. A reservation runs one member: a
// second start is refused with ErrMemberRuns.
func (r *Reservations) Start(job JobID, submitter peer.ID, now time.Time) (Reservation, error) {
	r.Tick(now)
	h, ok := r.held[holder{job, submitter}]
	switch {
	case !ok:
		return Reservation{}, fmt.Errorf("%w of %s for job %s", ErrNoReservation, submitter, job)
	case h.Running:
		return *h, fmt.Errorf("%w: job %s; a reservation runs one member at a time", ErrMemberRuns, job)
	}
	h.Confirmed, h.Running = true, true
	return *h, nil
}

// SetPrice sets a class's ask (per GPU-hour, in the provider's unit): bids
// from now on are at it; reservations keep the price they were awarded at.
// A price of 0 makes no bids for the class. It reports whether the
// provider has the class.
func (r *Reservations) SetPrice(class string, price uint64) bool {
	for i := range r.cfg.GPUs {
		if r.cfg.GPUs[i].Class == class {
			r.cfg.GPUs[i].Price = price
			return true
		}
	}
	return false
}

// Held is the reservation of a job for its submitter, if any.
func (r *Reservations) Held(job JobID, submitter peer.ID) (Reservation, bool) {
	h, ok := r.held[holder{job, submitter}]
	if !ok {
		return Reservation{}, false
	}
	return *h, true
}

// Bid decides whether and what to bid on a request at time now: the class
// that matches (the cheapest, if several do) with a free GPU, at a price at
// most the request's maximum, for a lease at least the job's. It offers all
// its free GPUs up to the number needed, even fewer than perNode (so the
// submitter can say that only fragments exist). A bid reserves nothing; the
// error says why there is no bid.
func (r *Reservations) Bid(rfb RequestForBids, now time.Time) (Bid, error) {
	if err := rfb.Check(); err != nil {
		return Bid{}, err
	}
	r.Tick(now)
	needs := rfb.Needs
	if !now.Before(rfb.DeadlineTime()) {
		return Bid{}, fmt.Errorf("no bid: deadline passed")
	}
	if needs.unit() != r.unit {
		return Bid{}, fmt.Errorf("no bid: request in %s, prices in %s", needs.Unit, r.unit)
	}
	if lease := time.Duration(needs.LeaseSeconds) * time.Second; lease > r.cfg.MaxLease {
		return Bid{}, fmt.Errorf("no bid: lease of %v, at most %v", lease, r.cfg.MaxLease)
	}
	if needs.Egress && !r.cfg.Egress {
		return Bid{}, fmt.Errorf("no bid: the job asks for the internet (network.egress) and this provider gives jobs none (it runs without --job-egress)")
	}
	key := holder{rfb.Job, rfb.Submitter}
	if _, ok := r.held[key]; ok {
		return Bid{}, fmt.Errorf("no bid: already holding GPUs for job %s", rfb.Job)
	}
	var best *Bid
	notWhole := false
	for _, c := range r.cfg.GPUs {
		b := Bid{
			Job: rfb.Job, Provider: r.cfg.ID, Class: c.Class, Model: c.Model, VRAMGB: c.VRAMGB,
			GPUs: min(c.GPUs-r.inUse[c.Class], needs.GPUs), Price: c.Price,
			LeaseSeconds: uint32(r.cfg.MaxLease / time.Second), Zone: r.cfg.Zone, Addrs: r.cfg.Addrs,
			Expires: now.Add(r.cfg.BidTTL).UnixMilli(),
		}
		// Fewer GPUs than perNode still get a bid: the submitter finds them
		// unusable, but can then tell its user that only fragments exist.
		if b.GPUs == 0 || b.Price == 0 || !needs.classMatches(&b) || b.Price > needs.MaxPrice || b.LeaseSeconds < needs.LeaseSeconds {
			continue
		}
		b.HostNet = r.cfg.NoJobNet && r.cfg.HostNetOK
		b.NoHostNet = r.cfg.NoHostNet && !b.HostNet
		if r.cfg.NoJobNet && !r.cfg.HostNetOK && (b.GPUs < needs.GPUs || (needs.PerNode != 0 && needs.PerNode < needs.GPUs)) {
			notWhole = true
			continue
		}
		if best == nil || b.Price < best.Price {
			best = &b
		}
	}
	if best == nil && notWhole {
		return Bid{}, fmt.Errorf("no bid: this provider takes only jobs it can run whole, as one member, and has not %d GPUs of the class free for it (it cannot make job networks, which members of several need in the public swarm)", needs.GPUs)
	}
	if best == nil {
		return Bid{}, fmt.Errorf("no bid: no free GPUs of the class at or below the max price")
	}
	if err := r.makeRoom(key); err != nil {
		return Bid{}, err
	}
	r.bids[key] = *best
	r.order[key.submitter] = append(r.order[key.submitter], key)
	heap.Push(&r.expiries, bidExpiry{best.Expires, key})
	return *best, nil
}

// makeRoom makes room for a bid of key: it drops an earlier bid of the
// same key, the submitter's oldest bid when it is at MaxSubmitterBids, and,
// when all MaxBids are out, the oldest bid of the submitter that holds the
// most, if that is more than this submitter holds. It fails when none can
// go.
func (r *Reservations) makeRoom(key holder) error {
	r.dropBid(key)
	if mine := r.order[key.submitter]; len(mine) >= r.cfg.MaxSubmitterBids {
		r.dropBid(mine[0])
	}
	if len(r.bids) < r.cfg.MaxBids {
		return nil
	}
	var most peer.ID
	for s, keys := range r.order {
		if len(keys) > len(r.order[most]) || (len(keys) == len(r.order[most]) && s < most) {
			most = s
		}
	}
	if len(r.order[most]) <= len(r.order[key.submitter]) {
		return fmt.Errorf("no bid: %d bids outstanding, %d of them for %s", len(r.bids), len(r.order[key.submitter]), key.submitter)
	}
	r.dropBid(r.order[most][0])
	return nil
}

// dropBid forgets the bid of key, if any.
func (r *Reservations) dropBid(key holder) {
	if _, ok := r.bids[key]; !ok {
		return
	}
	delete(r.bids, key)
	keys := slices.DeleteFunc(r.order[key.submitter], func(k holder) bool { return k == key })
	if len(keys) == 0 {
		delete(r.order, key.submitter)
	} else {
		r.order[key.submitter] = keys
	}
}

// Bids is the number of outstanding bids, and how many of them submitter
// holds.
func (r *Reservations) Bids(submitter peer.ID) (all, its int) {
	return len(r.bids), len(r.order[submitter])
}

// Award takes an award at time now and answers it: an Acceptance once the
// GPUs are reserved, or a Refusal saying why not (the bid expired or is
// unknown, the award asks for more than the bid or a lower price, or the
// GPUs are gone). Awarding the same job again answers the same way without
// reserving twice.
func (r *Reservations) Award(a Award, now time.Time) Message {
	acc, err := r.award(a, now)
	if err != nil {
		return &Refusal{Job: a.Job, Provider: r.cfg.ID, Reason: clip(err.Error())}
	}
	return &acc
}

func (r *Reservations) award(a Award, now time.Time) (Acceptance, error) {
	if err := a.Check(); err != nil {
		return Acceptance{}, err
	}
	r.Tick(now)
	if a.Provider != r.cfg.ID {
		return Acceptance{}, fmt.Errorf("%w: award names provider %s", ErrRefused, a.Provider)
	}
	key := holder{a.Job, a.Submitter}
	if h, ok := r.held[key]; ok {
		return r.amend(h, a, now)
	}
	// One reservation a job ID: the member's task, bills and receipt are
	// named by it, so another submitter reusing the ID gets nothing. And a
	// submitter holds at most MaxWaiting reservations not yet running.
	waiting := 0
	for k, h := range r.held {
		if k.job == a.Job {
			return Acceptance{}, fmt.Errorf("%w: already holding %d GPUs for job %s", ErrRefused, h.GPUs, a.Job)
		}
		if k.submitter == a.Submitter && !h.Running {
			waiting++
		}
	}
	if waiting >= r.cfg.MaxWaiting {
		return Acceptance{}, fmt.Errorf("%w: %s holds %d reservations here that have not started, at most %d", ErrRefused, a.Submitter, waiting, r.cfg.MaxWaiting)
	}
	b, ok := r.bids[key]
	switch {
	case !ok:
		return Acceptance{}, fmt.Errorf("%w: no live bid for job %s of %s", ErrRefused, a.Job, a.Submitter)
	case a.Class != b.Class:
		return Acceptance{}, fmt.Errorf("%w: bid %s, award %s", ErrRefused, b.Class, a.Class)
	case a.GPUs > b.GPUs:
		return Acceptance{}, fmt.Errorf("%w: award of %d GPUs, bid %d", ErrRefused, a.GPUs, b.GPUs)
	case a.Price < b.Price:
		return Acceptance{}, fmt.Errorf("%w: award at %s, bid %s", ErrRefused, r.unit.Format(a.Price), r.unit.Format(b.Price))
	case a.LeaseExpires <= now.UnixMilli():
		return Acceptance{}, fmt.Errorf("%w: lease already expired", ErrRefused)
	case time.UnixMilli(a.LeaseExpires).After(now.Add(r.cfg.MaxLease)):
		return Acceptance{}, fmt.Errorf("%w: lease longer than %v", ErrRefused, r.cfg.MaxLease)
	}
	c, _ := r.capacity(a.Class)
	if free := c.GPUs - r.inUse[a.Class]; free < a.GPUs {
		return Acceptance{}, fmt.Errorf("%w: %d GPUs of %s free, award of %d", ErrRefused, free, a.Class, a.GPUs)
	}
	h := &Reservation{
		Job: a.Job, Submitter: a.Submitter, Class: a.Class, GPUs: a.GPUs, Price: a.Price,
		Bid: b.GPUs, HoldUntil: now.Add(r.cfg.Hold), LeaseEnd: time.UnixMilli(a.LeaseExpires),
	}
	r.held[key] = h
	r.inUse[a.Class] += a.GPUs
	r.dropBid(key)
	return Acceptance{Job: a.Job, Provider: r.cfg.ID, GPUs: h.GPUs, HoldUntil: h.HoldUntil.UnixMilli()}, nil
}

// amend answers an award for a job already held: the same award again is
// accepted again; one for a different number of GPUs (up to the bid) moves
// the reservation to that number if the GPUs are free. A refused amendment
// drops the reservation: a Refusal always means nothing is held for the job.
func (r *Reservations) amend(h *Reservation, a Award, now time.Time) (Acceptance, error) {
	if h.Submitter != a.Submitter || h.Class != a.Class {
		return Acceptance{}, fmt.Errorf("%w: already holding %d GPUs for job %s", ErrRefused, h.GPUs, a.Job)
	}
	if a.GPUs != h.GPUs {
		c, _ := r.capacity(a.Class)
		free := c.GPUs - r.inUse[a.Class] + h.GPUs
		switch {
		case a.GPUs > h.Bid:
			r.drop(h)
			return Acceptance{}, fmt.Errorf("%w: award of %d GPUs, bid %d", ErrRefused, a.GPUs, h.Bid)
		case a.GPUs > free:
			r.drop(h)
			return Acceptance{}, fmt.Errorf("%w: %d GPUs of %s free, award of %d", ErrRefused, free, a.Class, a.GPUs)
		}
		end := time.UnixMilli(a.LeaseExpires)
		if !end.After(now) || end.After(now.Add(r.cfg.MaxLease)) {
			r.drop(h)
			return Acceptance{}, fmt.Errorf("%w: lease ends %s, want within %v", ErrRefused, end.UTC().Format(time.RFC3339), r.cfg.MaxLease)
		}
		r.inUse[a.Class] = r.inUse[a.Class] - h.GPUs + a.GPUs
		h.GPUs = a.GPUs
		h.LeaseEnd = end
		h.Confirmed = false
		h.HoldUntil = now.Add(r.cfg.Hold)
	}
	return Acceptance{Job: a.Job, Provider: r.cfg.ID, GPUs: h.GPUs, HoldUntil: h.HoldUntil.UnixMilli()}, nil
}

// Confirm holds a job's reservation until its lease ends: every member of
// the gang accepted. A confirmation for a reservation that has lapsed is
// an error: the submitter must replace this member.
func (r *Reservations) Confirm(c Confirm, now time.Time) error {
	if err := c.Check(); err != nil {
		return err
	}
	r.Tick(now)
	h, ok := r.held[holder{c.Job, c.Submitter}]
	if !ok || c.Provider != r.cfg.ID {
		return fmt.Errorf("%w: no reservation of %s for job %s", ErrRefused, c.Submitter, c.Job)
	}
	if !h.Confirmed {
		h.Confirmed, h.StartBy = true, now.Add(r.cfg.StartWithin)
	}
	return nil
}

// Release drops a job's reservation, if its submitter asks and no member
// runs on it. It reports whether anything was dropped.
func (r *Reservations) Release(rel Release, now time.Time) bool {
	if rel.Check() != nil || rel.Provider != r.cfg.ID {
		return false
	}
	r.Tick(now)
	key := holder{rel.Job, rel.From}
	r.dropBid(key)
	h, ok := r.held[key]
	if !ok || h.Running {
		return false // a running member's GPUs are freed by its end (End)
	}
	r.drop(h)
	return true
}

// End frees a reservation whose member has ended (the provider's own
// word; a submitter's Release does not free GPUs a member still runs on).
func (r *Reservations) End(job JobID, submitter peer.ID) bool {
	h, ok := r.held[holder{job, submitter}]
	if !ok {
		return false
	}
	r.drop(h)
	return true
}

func (r *Reservations) drop(h *Reservation) {
	r.inUse[h.Class] -= h.GPUs
	delete(r.held, holder{h.Job, h.Submitter})
}

// Tick expires what is due at now: bids past their expiry, unconfirmed
// reservations past their hold, confirmed ones past their lease. It
// returns the reservations that ended, oldest job first.
func (r *Reservations) Tick(now time.Time) []Reservation {
	ms := now.UnixMilli()
	for len(r.expiries) > 0 && r.expiries[0].at <= ms {
		e := heap.Pop(&r.expiries).(bidExpiry)
		if b, ok := r.bids[e.key]; ok && b.Expires <= ms {
			r.dropBid(e.key)
		}
	}
	var ended []Reservation
	for _, h := range r.held {
		lapsed := !h.Confirmed && !now.Before(h.HoldUntil)
		unstarted := h.Confirmed && !h.StartBy.IsZero() && !now.Before(h.StartBy)
		if !h.Running && (lapsed || unstarted || !now.Before(h.LeaseEnd)) {
			ended = append(ended, *h)
		}
	}
	for i := range ended {
		r.drop(r.held[holder{ended[i].Job, ended[i].Submitter}])
	}
	slices.SortFunc(ended, func(a, b Reservation) int { return compareJobs(a.Job, b.Job) })
	return ended
}

func compareJobs(a, b JobID) int {
	for i := range a {
		if a[i] != b[i] {
			return int(a[i]) - int(b[i])
		}
	}
	return 0
}

// bidExpiry is when a bid made for key expires (unix ms).
type bidExpiry struct {
	at  int64
	key holder
}

// expiryHeap is a min-heap of bidExpiry by time (container/heap).
type expiryHeap []bidExpiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(bidExpiry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
