package gossip

import (
	"cmp"
	"container/list"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"
)

// RFBTopic is the name of the swarm's request-for-bids topic:
// "/gpumesh/<swarm>/rfb/1".
const RFBTopic = "rfb"

// Why a request for bids was not accepted; the validator's errors wrap one
// of these or ErrBadNegotiation.
var (
	ErrForgedRequest   = errors.New("request names a submitter other than its signer")
	ErrStaleRequest    = errors.New("request's deadline has passed")
	ErrFarRequest      = errors.New("request's deadline too far ahead")
	ErrRequestRate     = errors.New("submitter over its request rate")
	ErrTooManyRequests = errors.New("submitter has too many open requests")
	ErrTopicBusy       = errors.New("peer has accepted as many requests, of all submitters, as it takes")
)

// RFBLimits bound what one submitter may broadcast on the request-for-bids
// topic. Every provider answers every request it can serve with a signed
// bid on a stream of its own, so a request costs the whole swarm work; an
// honest submitter asks once a job (and once a retry). The zero value takes
// the defaults.
type RFBLimits struct {
	Burst    int           // requests a submitter may send at once; 0: 8
	Rate     float64       // requests a second on average; 0: 5
	MaxOpen  int           // requests of one submitter whose deadline has not passed; 0: 32
	MaxAhead time.Duration // latest deadline, from now; 0: 60 s
}

func (l RFBLimits) withDefaults() RFBLimits {
	orDefault(&l.Burst, 8)
	orDefault(&l.Rate, 5)
	orDefault(&l.MaxOpen, 32)
	orDefault(&l.MaxAhead, time.Minute)
	return l
}

// TopicLimits are the bounds of the request-for-bids topic, tighter than
// a direct request's (the RFBLimits defaults, which one provider holds
// each submitter to): a broadcast reaches, and costs, every peer in the
// swarm, and honest submitters use the topic only when the providers the
// directory names are too few or silent (see negotiation_direct.go), so a
// submitter may send 4 at once, 1 a second, 8 open.
func TopicLimits() RFBLimits {
	return RFBLimits{Burst: 4, Rate: 1, MaxOpen: 8, MaxAhead: time.Minute}
}

// Pace is the limits a peer keeps its own requests under: a little below
// what every validator allows (half the burst and open requests, four
// fifths of the rate), so that requests sent evenly and delivered
// unevenly, or read by a peer whose clock runs behind, still pass.
func (l RFBLimits) Pace() RFBLimits {
	l = l.withDefaults()
	return RFBLimits{Burst: max(l.Burst/2, 1), Rate: l.Rate * 4 / 5, MaxOpen: max(l.MaxOpen/2, 1), MaxAhead: l.MaxAhead}
}

// TotalLimits bound the requests for bids a peer accepts of all
// submitters together (RFBValidatorConfig.Total): a token bucket of Burst
// requests at once, refilled at Rate a second, whose last Reserve tokens
// only a quiet submitter may take: one of which this peer has checked no
// request (accepted or not) for Quiet. The zero value bounds nothing.
type TotalLimits struct {
	Burst   int           // requests at once; 0: no bound
	Rate    float64       // requests a second on average
	Reserve int           // of Burst, the tokens left to quiet submitters
	Quiet   time.Duration // how long a submitter must have sent nothing to be quiet; 0: 1 min
}

// TopicTotal is the bound of the request-for-bids topic on all submitters
// together, at every peer, forwarders and providers alike: what a provider
// answers of the topic (TopicAnswerRate, at once TopicAnswerBurst), twice
// that at once, half of it kept for submitters quiet for a minute.
//
// The per-author bounds (TopicLimits) cap one identity, but identities
// cost nothing: a hundred of them made every peer check and forward ~770
// requests a flood (a provider answers 20 a second of them), and the
// honest job then waited for CPU, not for any queue. With a total bound a
// peer forwards no more than providers answer, and what is over it is
// Ignored (no blame: an honest forwarder or submitter may meet a busy peer
// too). Its cost: while the bound is spent, a topic request of a submitter
// that asked within the minute is dropped at that peer, and an honest
// fallback (one request a job, from a submitter quiet for a minute) passes
// while quiet submitters together ask less than the reserve; identities
// made fresh for every request look quiet too, and a flood of those
// spends the reserve, so a fallback then goes only where a peer's budget
// allows. Direct requests (negotiation_direct.go), an honest submitter's
// first ask, do not count.
func TopicTotal() TotalLimits {
	return TotalLimits{Burst: 2 * TopicAnswerBurst, Rate: TopicAnswerRate, Reserve: TopicAnswerBurst, Quiet: time.Minute}
}

// RFBValidatorConfig bounds what an RFBValidator accepts. The zero value
// takes the defaults.
type RFBValidatorConfig struct {
	Limits     RFBLimits
	Total      TotalLimits // all submitters together; the zero value: no bound
	MaxAuthors int         // submitters remembered (least recently seen go first); 0: 65536
	// Self is this peer: the requests it publishes itself, which its own
	// pacer bounds, are not held to Total (a flood of others' must not
	// stop its own from going out). Empty: none.
	Self peer.ID
	// AskedAgain is how many times an open request (same submitter, job
	// and deadline) may come again and be accepted without counting as a
	// new one: a direct negotiation asks a provider again when its
	// request may have been lost (see NegotiationConfig.Reasks), and its
	// pacer counted the request once. Past that, a copy counts as a new
	// request. 0: every copy counts (the topic's validator, where no
	// honest peer publishes a request twice). At most MaxAskedAgain.
	AskedAgain int
}

// MaxAskedAgain is the most times a direct negotiation asks one provider
// again in one negotiation: once beside its fallback to the topic
// (reaskSilent) and once a round after it (NegotiationConfig.Reasks, at
// most MaxAskedAgain-1 rounds).
const MaxAskedAgain = 3

// RFBValidator decides which requests for bids a peer accepts and forwards.
// Like TickValidator it is a state machine with no I/O and no clock: the
// time is an argument. It remembers, per submitter, a token bucket of its
// request rate and the deadlines of its open requests. It is not safe for
// concurrent use.
type RFBValidator struct {
	cfg     RFBValidatorConfig
	authors map[peer.ID]*list.Element // of *author, most recently seen at the front
	lru     *list.List
	total   *rate.Limiter // of cfg.Total; nil: no bound
}

// author is what the validator keeps of one submitter.
type author struct {
	id     peer.ID
	bucket requestBucket
	seen   time.Time // when a request of it was last checked (accepted or not); zero: never
	// dropped is its last request this peer Ignored for the bound on all
	// submitters together (zero: none since), quiet whether the submitter
	// was quiet when it came, and copies how many copies of it have come
	// since: GossipSub does not remember an ignored message as seen, so
	// relays offer it again, and a copy is the same request, not a new
	// one (see Admit).
	dropped       JobID
	droppedQuiet  bool
	droppedCopies int
}

// maxDroppedCopies bounds the copies of one dropped request that are
// checked as that request rather than as new ones: a submitter sending
// copies of its own dropped request past it pays for them as for new
// requests. A peer sees an honest request from at most its mesh peers
// and the peers gossiping it, a few times each.
const maxDroppedCopies = 8

// requestBucket is one submitter's allowance: tokens of its rate and the
// deadlines of its open requests (at most MaxOpen, in no order).
type requestBucket struct {
	tokens *rate.Limiter
	open   []openRequest // accepted requests whose deadline has not passed
}

// openRequest is an accepted request: its deadline (unix ms), its job, and
// how many times it came again (RFBValidatorConfig.AskedAgain).
type openRequest struct {
	deadline int64
	job      JobID
	again    int
}

func newBucket(l RFBLimits) requestBucket {
	return requestBucket{tokens: rate.NewLimiter(rate.Limit(l.Rate), l.Burst)}
}

// refill forgets the open requests whose deadline has passed at now.
func (b *requestBucket) refill(now time.Time) {
	ms := now.UnixMilli()
	b.open = slices.DeleteFunc(b.open, func(o openRequest) bool { return o.deadline <= ms })
}

// check says whether a request may go out at now; it takes nothing.
func (b *requestBucket) check(l RFBLimits, now time.Time) error {
	b.refill(now)
	if b.tokens.TokensAt(now) < 1-tokenSlack {
		return fmt.Errorf("%w: more than %d at once or %.3g a second", ErrRequestRate, l.Burst, l.Rate)
	}
	if len(b.open) >= l.MaxOpen {
		return fmt.Errorf("%w: %d whose deadline has not passed, at most %d", ErrTooManyRequests, len(b.open), l.MaxOpen)
	}
	return nil
}

// tokenSlack absorbs the rounding of refills: a bucket refilled to one
// token at the time next named has a token.
const tokenSlack = 1e-9

// take counts a request of job that check allowed at now (a token short
// by tokenSlack is taken all the same).
func (b *requestBucket) take(job JobID, deadline, now time.Time) {
	b.tokens.ReserveN(now, 1)
	b.open = append(b.open, openRequest{deadline: deadline.UnixMilli(), job: job})
}

// askedAgain finds the open request of job with deadline, if any, and
// counts one more time it came, up to most; it reports whether the
// request was open and within most.
func (b *requestBucket) askedAgain(job JobID, deadline, now time.Time, most int) bool {
	if most <= 0 || job == (JobID{}) {
		return false
	}
	b.refill(now)
	ms := deadline.UnixMilli()
	for i := range b.open {
		if o := &b.open[i]; o.job == job && o.deadline == ms {
			if o.again >= most {
				return false
			}
			o.again++
			return true
		}
	}
	return false
}

// next is the earliest time from now at which check may allow a request.
func (b *requestBucket) next(l RFBLimits, now time.Time) time.Time {
	b.refill(now)
	at := now
	if t := b.tokens.TokensAt(now); t < 1-tokenSlack {
		at = now.Add(time.Duration(math.Ceil((1 - t) / l.Rate * float64(time.Second))))
	}
	if len(b.open) >= l.MaxOpen {
		// The open request whose deadline comes first frees a slot.
		first := slices.MinFunc(b.open, func(x, y openRequest) int { return cmp.Compare(x.deadline, y.deadline) })
		at = latest(at, time.UnixMilli(first.deadline+1))
	}
	return at
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// NewRFBValidator returns a validator that knows no submitter yet.
func NewRFBValidator(cfg RFBValidatorConfig) *RFBValidator {
	cfg.Limits = cfg.Limits.withDefaults()
	orDefault(&cfg.MaxAuthors, 65536)
	cfg.AskedAgain = min(max(cfg.AskedAgain, 0), MaxAskedAgain)
	v := &RFBValidator{cfg: cfg, authors: make(map[peer.ID]*list.Element), lru: list.New()}
	if t := cfg.Total; t.Burst > 0 {
		v.cfg.Total.Reserve = min(max(t.Reserve, 0), t.Burst-1)
		orDefault(&v.cfg.Total.Quiet, time.Minute)
		v.total = rate.NewLimiter(rate.Limit(t.Rate), t.Burst)
	}
	return v
}

// quiet says whether a is a quiet submitter at now (see TotalLimits).
func (v *RFBValidator) quiet(a *author, now time.Time) bool {
	return a.seen.IsZero() || now.Sub(a.seen) >= v.cfg.Total.Quiet
}

// checkTotal says whether the bound on all submitters together lets a
// request of a submitter, quiet or not (see TotalLimits), in at now.
func (v *RFBValidator) checkTotal(quiet bool, now time.Time) error {
	if v.total == nil {
		return nil
	}
	need := 1.0
	if !quiet {
		need += float64(v.cfg.Total.Reserve)
	}
	if v.total.TokensAt(now) < need-tokenSlack {
		which := "a submitter that asked within that time"
		if quiet {
			which = "any submitter"
		}
		return fmt.Errorf("%w: %d at once or %.3g a second, the last %d of them for submitters quiet for %v; none left for %s",
			ErrTopicBusy, v.cfg.Total.Burst, v.cfg.Total.Rate, v.cfg.Total.Reserve, v.cfg.Total.Quiet, which)
	}
	return nil
}

// Validate decides about an encoded request for bids, published by signer
// (the key GossipSub checked) and delivered by from (the neighbour it came
// from, or this peer for its own requests), at time now. It returns the
// request when it accepts it, and an error that says why when it does not.
// An accepted request counts against its submitter's rate and open
// requests.
//
// What no honest peer sends or forwards is Rejected: a request that does
// not decode or breaks a bound, or names a submitter other than its signer.
// A deadline that has passed or lies too far ahead is Ignored (clocks
// differ; gossip is late). A submitter over its rate or its open requests
// is Rejected when it delivered the request itself, and Ignored when a
// relay did: relays may each have let through a different part of a
// burst, but the submitter knows what it sent. A request over the bound
// on all submitters together (RFBValidatorConfig.Total) is Ignored,
// whoever delivered it: it says how busy this peer is, not who misbehaved;
// it counts against its submitter's rate (not its open requests).
func (v *RFBValidator) Validate(data []byte, signer, from peer.ID, now time.Time) (RequestForBids, Verdict, error) {
	rfb, err := UnmarshalRequestForBids(data)
	if err != nil {
		return RequestForBids{}, Reject, err
	}
	return v.Admit(rfb, signer, from, now)
}

// Admit is Validate of a request already decoded (UnmarshalRequestForBids):
// a caller that shares the validator between goroutines can decode outside
// its lock, and hold the lock only for the table lookup.
func (v *RFBValidator) Admit(rfb RequestForBids, signer, from peer.ID, now time.Time) (RequestForBids, Verdict, error) {
	if rfb.Submitter != signer {
		return RequestForBids{}, Reject, fmt.Errorf("%w: submitter %s, signer %s", ErrForgedRequest, rfb.Submitter, signer)
	}
	l := v.cfg.Limits
	deadline := rfb.DeadlineTime()
	if !deadline.After(now) {
		return RequestForBids{}, Ignore, fmt.Errorf("%w: %v ago", ErrStaleRequest, now.Sub(deadline).Round(time.Millisecond))
	}
	if d := deadline.Sub(now); d > l.MaxAhead {
		return RequestForBids{}, Ignore, fmt.Errorf("%w: %v from now, at most %v", ErrFarRequest, d.Round(time.Millisecond), l.MaxAhead)
	}
	a := v.lookup(signer, now)
	// The same request again (a direct negotiation's ask again, within
	// AskedAgain): accepted as it was, counted nowhere again.
	if a.bucket.askedAgain(rfb.Job, deadline, now, v.cfg.AskedAgain) {
		return rfb, Accept, nil
	}
	// A copy of the request this peer last dropped for the total is that
	// request again: it was counted against its submitter's rate then,
	// and is checked as then (quiet or not), not as a new request of a
	// submitter that just asked — else an honest submitter's one request,
	// dropped while a flood spent the bound, would find it needs the
	// reserve at every later copy, and be charged for each.
	again := a.dropped == rfb.Job && rfb.Job != (JobID{}) && a.droppedCopies < maxDroppedCopies
	quiet := v.quiet(a, now)
	if again {
		quiet = a.droppedQuiet
		a.droppedCopies++
		a.bucket.refill(now)
		if len(a.bucket.open) >= l.MaxOpen {
			return RequestForBids{}, Ignore, fmt.Errorf("%w: %d whose deadline has not passed, at most %d", ErrTooManyRequests, len(a.bucket.open), l.MaxOpen)
		}
	} else {
		a.seen = now
		if err := a.bucket.check(l, now); err != nil {
			verdict := Ignore
			if from == signer {
				verdict = Reject
			}
			return RequestForBids{}, verdict, err
		}
	}
	own := v.cfg.Self != "" && from == v.cfg.Self // not held to the total (RFBValidatorConfig.Self)
	if err := v.checkTotal(quiet, now); err != nil && !own {
		// It counts against the submitter's rate all the same: a flood
		// the total holds back runs over its authors' rates, is Rejected
		// and costs them score, and what relays deliver of it is then
		// dropped before its signature is checked (Refuses). An honest
		// submitter's request is checked once a peer (GossipSub's seen
		// messages), as when accepted.
		if !again {
			a.bucket.tokens.ReserveN(now, 1)
			a.dropped, a.droppedQuiet, a.droppedCopies = rfb.Job, quiet, 0
		}
		return RequestForBids{}, Ignore, err
	}
	if again {
		a.bucket.open = append(a.bucket.open, openRequest{deadline: deadline.UnixMilli(), job: rfb.Job}) // its rate was counted when it was dropped
	} else {
		a.bucket.take(rfb.Job, deadline, now)
	}
	a.dropped, a.droppedCopies = JobID{}, 0
	if v.total != nil && !own {
		v.total.ReserveN(now, 1)
	}
	return rfb, Accept, nil
}

// Refuses says whether a request of submitter would be refused at now for
// its rate or its open requests, or for the bound on all submitters
// together (see Validate), without counting anything or remembering
// submitter: a peer can use it to drop what a relay delivers of a flooding
// submitter, or what comes while this peer takes no more, before paying to
// check its signature. A submitter it does not know counts as quiet, so it
// is refused only when every submitter would be: a forged name cannot use
// up a real submitter's allowance.
func (v *RFBValidator) Refuses(submitter peer.ID, now time.Time) bool {
	quiet := true
	if e, ok := v.authors[submitter]; ok {
		a := e.Value.(*author)
		if a.bucket.check(v.cfg.Limits, now) != nil {
			return true
		}
		quiet = v.quiet(a, now)
	}
	return v.checkTotal(quiet, now) != nil
}

// lookup finds or makes the state of a submitter and marks it most
// recently seen, forgetting the least recently seen one when full.
func (v *RFBValidator) lookup(id peer.ID, now time.Time) *author {
	if e, ok := v.authors[id]; ok {
		v.lru.MoveToFront(e)
		return e.Value.(*author)
	}
	for v.lru.Len() >= v.cfg.MaxAuthors {
		old := v.lru.Back()
		v.lru.Remove(old)
		delete(v.authors, old.Value.(*author).id)
	}
	a := &author{id: id, bucket: newBucket(v.cfg.Limits)}
	v.authors[id] = v.lru.PushFront(a)
	return a
}

// Submitters is the number of submitters the validator remembers.
func (v *RFBValidator) Submitters() int { return v.lru.Len() }

// RFBPacer keeps a peer's own requests for bids within limits (its
// validator's Pace): a request waits until Next, then Take counts it. It is
// not safe for concurrent use.
type RFBPacer struct {
	limits RFBLimits
	bucket requestBucket
}

// NewRFBPacer returns a pacer with a full allowance.
func NewRFBPacer(l RFBLimits) *RFBPacer {
	l = l.withDefaults()
	return &RFBPacer{limits: l, bucket: newBucket(l)}
}

// Next is the earliest time, at or after now, at which a request may go.
func (p *RFBPacer) Next(now time.Time) time.Time {
	return p.bucket.next(p.limits, now)
}

// Take counts a request with deadline going out at now; it reports false,
// and counts nothing, if the request must wait (see Next).
func (p *RFBPacer) Take(deadline, now time.Time) bool {
	if p.bucket.check(p.limits, now) != nil {
		return false
	}
	p.bucket.take(JobID{}, deadline, now)
	return true
}

// RequestQueue holds the accepted requests for bids a provider has yet to
// answer, and hands them out fairly: Pop takes, one request at a time, the
// waiting submitter it answered longest ago, one never answered (as far as
// the queue remembers: its last maxServed submitters) first, in the order
// they came. So submitters with many waiting requests take turns, one
// request each, and delay another's by at most one of their own; and a
// submitter new to the queue — an honest one asks once a job — waits for
// no flooder the queue has answered before, only for the request being
// answered and those of other never-answered submitters that came first
// (a flooder gets that place once an identity). A submitter has at most
// PerSubmitter requests waiting (a newer one replaces its oldest), and the
// queue at most Max (when full, the submitter with the most waiting loses
// its oldest). Like the validator it does no I/O and reads no clock; it is
// not safe for concurrent use.
type RequestQueue struct {
	max, per int
	waiting  map[peer.ID][]RequestForBids // each submitter's, oldest first
	turn     []peer.ID                    // submitters with requests waiting, in the order they came
	n        int
	// served is when (in answers, counting from 1) each submitter was last
	// answered: at most maxServed of them, those answered longest ago
	// forgotten first (they are next anyway).
	served map[peer.ID]uint64
	seq    uint64 // answers so far
}

// maxServed bounds the submitters a RequestQueue remembers answering.
const maxServed = 4096

// NewRequestQueue makes an empty queue of at most max requests, per of
// them one submitter's; zero or less takes 1024 and 16.
func NewRequestQueue(max, per int) *RequestQueue {
	if max <= 0 {
		max = 1024
	}
	if per <= 0 {
		per = 16
	}
	return &RequestQueue{max: max, per: min(per, max), waiting: map[peer.ID][]RequestForBids{}, served: map[peer.ID]uint64{}}
}

// Push adds a request; it reports how many waiting requests it pushed out
// (0 or 1).
func (q *RequestQueue) Push(r RequestForBids) (dropped int) {
	s := r.Submitter
	if len(q.waiting[s]) >= q.per {
		q.dropOldest(s)
		dropped++
	} else if q.n >= q.max {
		var most peer.ID
		for _, id := range q.turn {
			if len(q.waiting[id]) > len(q.waiting[most]) {
				most = id
			}
		}
		q.dropOldest(most)
		dropped++
	}
	if len(q.waiting[s]) == 0 {
		q.turn = append(q.turn, s)
	}
	q.waiting[s] = append(q.waiting[s], r)
	q.n++
	return dropped
}

func (q *RequestQueue) dropOldest(s peer.ID) {
	w := q.waiting[s]
	if len(w) == 0 {
		return
	}
	q.n--
	if len(w) == 1 {
		delete(q.waiting, s)
		q.turn = slices.DeleteFunc(q.turn, func(id peer.ID) bool { return id == s })
		return
	}
	q.waiting[s] = slices.Delete(w, 0, 1)
}

// Pop takes the oldest request of the waiting submitter answered longest
// ago (see RequestQueue) whose deadline has not passed at now, dropping
// those that have; false when none is left.
func (q *RequestQueue) Pop(now time.Time) (RequestForBids, bool) {
	for len(q.turn) > 0 {
		i := 0
		for j, id := range q.turn[1:] {
			if q.served[id] < q.served[q.turn[i]] {
				i = j + 1
			}
		}
		s := q.turn[i]
		w := q.waiting[s]
		r := w[0]
		q.n--
		q.turn = slices.Delete(q.turn, i, i+1)
		if len(w) == 1 {
			delete(q.waiting, s)
		} else {
			q.waiting[s] = w[1:]
			q.turn = append(q.turn, s) // its next waits for the others' turn
		}
		if r.DeadlineTime().After(now) {
			q.answered(s)
			return r, true
		}
	}
	return RequestForBids{}, false
}

// answered notes that s was answered now, forgetting the submitter
// answered longest ago when the queue remembers maxServed.
func (q *RequestQueue) answered(s peer.ID) {
	q.seq++
	if _, ok := q.served[s]; !ok && len(q.served) >= maxServed {
		var oldest peer.ID
		first := true
		for id, at := range q.served {
			if first || at < q.served[oldest] {
				oldest, first = id, false
			}
		}
		delete(q.served, oldest)
	}
	q.served[s] = q.seq
}

// Len is the number of requests waiting.
func (q *RequestQueue) Len() int { return q.n }

// RequestQueues are a provider's two queues of accepted requests for
// bids: those sent to it directly (by a submitter that found it in the
// directory) and those from the topic (a submitter's fallback, or anyone's
// broadcast). Pop takes the direct ones first: they are what honest
// submitters send, and a flood on the topic then never stands between
// them and a bid. Each queue is a RequestQueue, fair among submitters,
// and both count against the same per-author bounds before they get here.
// The topic's are answered at most TopicAnswerRate a second, all
// submitters together (a burst of TopicAnswerBurst): the topic's
// per-author bounds let a hundred identities ask for a hundred bids a
// second from every provider, and each bid is signed and sent (and may
// look its submitter up); honest submitters use the topic only as a
// fallback, and a new one among flooders is answered first (RequestQueue).
// It is not safe for concurrent use.
type RequestQueues struct {
	Direct, Topic *RequestQueue
	topicRate     *rate.Limiter
}

// The most topic requests a provider answers: a second, at once.
const (
	TopicAnswerRate  = 20
	TopicAnswerBurst = 20
)

// NewRequestQueues makes two empty queues, each of at most max requests,
// per of them one submitter's (see NewRequestQueue).
func NewRequestQueues(max, per int) *RequestQueues {
	return &RequestQueues{Direct: NewRequestQueue(max, per), Topic: NewRequestQueue(max, per),
		topicRate: rate.NewLimiter(TopicAnswerRate, TopicAnswerBurst)}
}

// Push adds a request to the direct queue or the topic's; it reports how
// many waiting requests it pushed out (0 or 1).
func (q *RequestQueues) Push(r RequestForBids, direct bool) int {
	if direct {
		return q.Direct.Push(r)
	}
	return q.Topic.Push(r)
}

// Pop takes the next direct request, or when none waits the next of the
// topic's if the topic's answer rate allows one at now (see
// RequestQueue.Pop); false when none may be answered now (Next says when).
func (q *RequestQueues) Pop(now time.Time) (RequestForBids, bool) {
	if r, ok := q.Direct.Pop(now); ok {
		return r, true
	}
	if q.Topic.Len() == 0 || q.topicRate.TokensAt(now) < 1-tokenSlack {
		return RequestForBids{}, false
	}
	r, ok := q.Topic.Pop(now)
	if ok {
		q.topicRate.ReserveN(now, 1)
	}
	return r, ok
}

// Next is when Pop may next answer a waiting request: now when one may be
// answered at once, the zero time when none waits.
func (q *RequestQueues) Next(now time.Time) time.Time {
	switch {
	case q.Direct.Len() > 0:
		return now
	case q.Topic.Len() == 0:
		return time.Time{}
	}
	t := q.topicRate.TokensAt(now)
	if t >= 1-tokenSlack {
		return now
	}
	return now.Add(time.Duration(math.Ceil((1 - t) / TopicAnswerRate * float64(time.Second))))
}

// Len is the number of requests waiting in both.
func (q *RequestQueues) Len() int { return q.Direct.Len() + q.Topic.Len() }
