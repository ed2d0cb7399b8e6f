// Package jobqueue decides when a queued job tries again to form a cluster.
//
// A job whose spec says `queue: 30m` waits when no cluster can form, and
// negotiates again when offers change: a new provider, GPUs freed, a price
// drop. Every try is a request for bids that every provider of the swarm
// reads and answers, so a queue must never flood: Queue is the rule of
// when to try, as a pure state machine (no clock, no goroutines, no I/O;
// the time is an argument), in the shape of node/attempt:
//
//	Add, Failed, Remove, Offer  the inputs: a job waits, a try ended without
//	                            a cluster, a job left, a provider's quote
//	Tick(now)                   decides: tries due, queues run out
//	Ready()                     what to do: the tries to start, the jobs
//	                            whose queue time ended (with the last reason)
//	Wake()                      when Tick next has something to decide
//
// The rule: a waiting job tries again when an offer that could serve it
// is news (a provider or class not seen before, more GPUs available, a
// lower ask) and at least Floor has passed since its last try ended; and,
// in case news was missed, after a backoff that doubles from Backoff to
// MaxBackoff with every try that fails. All of a node's queued jobs
// together try at most Rate times a second (Burst at once), oldest first,
// so a queue takes a small, fixed part of the node's request-for-bids
// allowance whatever the offers do, and fresh submissions keep the rest.
// A job whose queue time has ended is expired (once no try of it is under
// way) with the reason of its last try.
package jobqueue

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"
)

// Config tunes a Queue. The zero value takes the defaults.
type Config struct {
	Floor      time.Duration // least time from a try's end to the next, on news; 0: 2 s
	Backoff    time.Duration // wait after the first failed try without news; 0: 10 s
	MaxBackoff time.Duration // the backoff doubles up to this; 0: 1 min
	Rate       float64       // tries a second, all jobs together; 0: 1
	Burst      int           // tries at once, all jobs together; 0: 2
	MaxJobs    int           // jobs waiting at once; 0: DefaultMaxJobs
	MaxOffers  int           // (provider, class) quotes remembered to tell news; 0: 10,000
}

// DefaultMaxJobs is how many jobs a Queue keeps waiting unless told.
const DefaultMaxJobs = 64

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Floor, 2*time.Second)
	def(&c.Backoff, 10*time.Second)
	def(&c.MaxBackoff, time.Minute)
	c.MaxBackoff = max(c.MaxBackoff, c.Backoff)
	if c.Rate <= 0 {
		c.Rate = 1
	}
	if c.Burst <= 0 {
		c.Burst = 2
	}
	if c.MaxJobs <= 0 {
		c.MaxJobs = DefaultMaxJobs
	}
	if c.MaxOffers <= 0 {
		c.MaxOffers = 10_000
	}
	return c
}

// ErrFull is Add's error when MaxJobs wait already.
var ErrFull = errors.New("jobqueue: full")

// Want is what a queued job waits for: GPUs of its class or model (and
// memory), in its unit, at or below its max price.
type Want struct {
	Class     string // canonical class, e.g. "H100-80GB"; "": any class of Model
	Model     string // family, e.g. "H100"
	MinVRAMGB uint32
	Unit      string // e.g. "USDC:6"
	MaxPrice  uint64 // per GPU-hour, in Unit's smallest unit
}

// serves reports whether a quote of class in unit is for GPUs w can use
// (whatever its price).
func (w Want) serves(class, unit string) bool {
	if unit != w.Unit {
		return false
	}
	if w.Class != "" {
		return class == w.Class
	}
	model, gb, ok := SplitClass(class)
	return ok && model == w.Model && gb >= w.MinVRAMGB
}

// SplitClass reads a GPU class, "H100-80GB", as its family and memory.
func SplitClass(class string) (model string, gb uint32, ok bool) {
	i := strings.LastIndexByte(class, '-')
	if i <= 0 || !strings.HasSuffix(class, "GB") {
		return "", 0, false
	}
	v, err := strconv.ParseUint(class[i+1:len(class)-2], 10, 32)
	if err != nil {
		return "", 0, false
	}
	return class[:i], uint32(v), true
}

// Offer is one provider's quote for one class of GPUs, as the price board
// took it.
type Offer struct {
	Provider  string
	Class     string
	Unit      string
	Ask       uint64 // per GPU-hour
	Available uint32 // GPUs
}

// Expired is a job whose queue time ended.
type Expired struct {
	ID     string
	Tries  int
	Reason string // of its last try
}

// Ready is what the caller must do.
type Ready struct {
	Try    []string  // negotiate again for these jobs, then tell Failed (or Remove)
	Expire []Expired // fail these jobs with their reason; they have left the queue
}

// Empty reports whether there is nothing to do.
func (r Ready) Empty() bool { return len(r.Try) == 0 && len(r.Expire) == 0 }

// Status is where a job stands in the queue.
type Status struct {
	Position int       // 1 for the oldest waiting job
	Tries    int       // tries since it was added (the one that queued it not counted)
	Trying   bool      // a try is under way
	Next     time.Time // the latest its next try starts, news or not (zero while trying)
	Until    time.Time // when its queue time ends
	Reason   string    // of its last try
}

type entry struct {
	id      string
	want    Want
	until   time.Time
	last    time.Time     // the end of its last try
	backoff time.Duration // from last, without news
	news    bool          // an offer changed since its last try began
	trying  bool
	tries   int
	reason  string
}

type seenQuote struct {
	ask       uint64
	available uint32
}

// Queue is the jobs of one node that wait for a cluster. It is not safe for
// concurrent use.
type Queue struct {
	cfg    Config
	order  []*entry // oldest first
	byID   map[string]*entry
	seen   map[string]seenQuote // provider + "\x00" + class
	tokens *rate.Limiter
	ready  Ready
}

// New makes an empty queue.
func New(cfg Config) *Queue {
	cfg = cfg.withDefaults()
	return &Queue{
		cfg:    cfg,
		byID:   map[string]*entry{},
		seen:   map[string]seenQuote{},
		tokens: rate.NewLimiter(rate.Limit(cfg.Rate), cfg.Burst),
	}
}

// Len is how many jobs wait (trying or not).
func (q *Queue) Len() int { return len(q.order) }

// Add puts a job in the queue, its last try having just ended at now with
// reason, to wait until until. news says offers may have changed since
// (a node that restarted knows nothing of them): it tries again after
// Floor. Adding a job that waits already updates it. ErrFull when MaxJobs
// wait.
func (q *Queue) Add(id string, w Want, until time.Time, reason string, news bool, now time.Time) error {
	if e, ok := q.byID[id]; ok {
		e.want, e.until, e.reason, e.last, e.news, e.trying = w, until, reason, now, e.news || news, false
		return nil
	}
	if len(q.order) >= q.cfg.MaxJobs {
		return fmt.Errorf("%w: %d jobs wait already", ErrFull, len(q.order))
	}
	e := &entry{id: id, want: w, until: until, last: now, backoff: q.cfg.Backoff, news: news, reason: reason}
	q.order = append(q.order, e)
	q.byID[id] = e
	return nil
}

// Failed records that a try of job id ended at now without a cluster, for
// reason: it waits again, with its backoff doubled.
func (q *Queue) Failed(id, reason string, now time.Time) {
	e, ok := q.byID[id]
	if !ok {
		return
	}
	e.trying, e.last, e.reason = false, now, reason
	e.backoff = min(2*e.backoff, q.cfg.MaxBackoff)
}

// Remove takes a job out of the queue: it formed, was cancelled or ended
// otherwise.
func (q *Queue) Remove(id string) {
	if _, ok := q.byID[id]; !ok {
		return
	}
	delete(q.byID, id)
	for i, e := range q.order {
		if e.id == id {
			q.order = append(q.order[:i], q.order[i+1:]...)
			break
		}
	}
}

// Offer takes a provider's quote, and reports whether it is news for a
// waiting job: GPUs it can use, available at or below its max price, from
// a provider and class not seen before, with more GPUs available than
// before, or at a lower ask. Quotes are remembered (at most MaxOffers; past
// that an unknown quote is news every time, which Floor and Rate bound).
func (q *Queue) Offer(o Offer, now time.Time) bool {
	key := o.Provider + "\x00" + o.Class
	old, known := q.seen[key]
	if known || len(q.seen) < q.cfg.MaxOffers {
		q.seen[key] = seenQuote{ask: o.Ask, available: o.Available}
	}
	if o.Available == 0 || (known && o.Ask >= old.ask && o.Available <= old.available) {
		return false
	}
	news := false
	for _, e := range q.order {
		if e.want.serves(o.Class, o.Unit) && o.Ask <= e.want.MaxPrice {
			e.news, news = true, true
		}
	}
	return news
}

// due reports whether e may try at now, offers and backoff considered.
func (q *Queue) due(e *entry, now time.Time) bool {
	return (e.news && !now.Before(e.last.Add(q.cfg.Floor))) || !now.Before(e.last.Add(e.backoff))
}

// Tick decides at now: jobs whose queue time ended expire (unless a try
// of theirs is under way: they expire after it), then the jobs due try,
// oldest first, as far as the rate allows.
func (q *Queue) Tick(now time.Time) {
	kept := q.order[:0]
	for _, e := range q.order {
		if !e.trying && !now.Before(e.until) {
			q.ready.Expire = append(q.ready.Expire, Expired{ID: e.id, Tries: e.tries, Reason: e.reason})
			delete(q.byID, e.id)
			continue
		}
		kept = append(kept, e)
	}
	clear(q.order[len(kept):])
	q.order = kept
	for _, e := range q.order {
		if e.trying || !q.due(e, now) {
			continue
		}
		if !q.tokens.AllowN(now, 1) {
			break
		}
		e.trying, e.news = true, false
		e.tries++
		q.ready.Try = append(q.ready.Try, e.id)
	}
}

// Ready returns what Tick decided since the last Ready, and forgets it.
func (q *Queue) Ready() Ready {
	r := q.ready
	q.ready = Ready{}
	return r
}

// Wake is when Tick next has something to decide, after now: a queue time
// that ends, a try that comes due, or the rate's next token for one that is
// due already; zero when no job waits.
func (q *Queue) Wake(now time.Time) time.Time {
	var wake time.Time
	earliest := func(t time.Time) {
		if wake.IsZero() || t.Before(wake) {
			wake = t
		}
	}
	blocked := false
	for _, e := range q.order {
		if e.trying {
			continue
		}
		earliest(e.until)
		if q.due(e, now) {
			blocked = true
			continue
		}
		earliest(e.last.Add(e.backoff))
		if e.news {
			earliest(e.last.Add(q.cfg.Floor))
		}
	}
	if blocked { // due, and waiting for a token (or for Tick)
		wait := time.Duration(0)
		if tok := q.tokens.TokensAt(now); tok < 1 {
			wait = time.Duration((1 - tok) / q.cfg.Rate * float64(time.Second))
		}
		earliest(now.Add(wait))
	}
	if !wake.IsZero() && !wake.After(now) {
		wake = now.Add(time.Millisecond)
	}
	return wake
}

// Status says where job id stands; false if it does not wait.
func (q *Queue) Status(id string) (Status, bool) {
	for i, e := range q.order {
		if e.id != id {
			continue
		}
		s := Status{Position: i + 1, Tries: e.tries, Trying: e.trying, Until: e.until, Reason: e.reason}
		if !e.trying {
			s.Next = e.last.Add(e.backoff)
		}
		return s, true
	}
	return Status{}, false
}
