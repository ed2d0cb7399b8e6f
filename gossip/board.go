package gossip

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// BoardConfig tunes a PriceBoard. The zero value takes every default.
//
// How the index resists manipulation: a quote's weight is the GPUs it offers,
// capped (CapGPUs), times the provider's standing in that class. Standing is
// 0 during Probation, then grows with the time the provider has kept quoting
// until it is 1 at Maturity. Together the not-yet-mature providers weigh at
// most NewcomerShare of what the mature ones weigh. So a flood of fresh
// identities, however many and whatever they claim, holds at most
// NewcomerShare/(1+NewcomerShare) of the weight (1/6 by default): it can move
// the weighted median only to a nearby quantile of the honest quotes, and
// none of it survives the trimmed mean as long as that is at most Trim (0.2).
// What this cannot stop is identities that keep quoting for Maturity (an
// hour by default); that needs a cost per identity (stake, or a record of
// paid work) that the board does not have.
type BoardConfig struct {
	TTL           time.Duration // a quote lives until its tick's Until, but at most this long past its time (or arrival, if earlier): this peer's bound on what a stranger says; 0: 3 h (Resend's longest life)
	Probation     time.Duration // a provider new to a class has no weight for this long; 0: 2 min
	Maturity      time.Duration // age at which a provider's weight is full; 0: 1 h (at least Probation)
	NewcomerShare float64       // weight of the not-yet-mature, at most this times the mature's; 0: 0.2
	CapGPUs       int           // GPUs of one provider that count in weights; 0: 64
	Trim          float64       // fraction of weight cut off each end for the trimmed mean, 0..0.45; 0: 0.2
	HalfLife      time.Duration // of the EWMA of the median; 0: 10 min
	MaxEntries    int           // quotes (provider, class) held; a full board takes no new ones; 0: 100000

	// Trusted: every quote counts at full weight from its first tick, no
	// probation (a private swarm, whose members hold its key, trusts them).
	Trusted bool
}

func (c BoardConfig) withDefaults() BoardConfig {
	orDefault(&c.TTL, DefaultResend.Life(DefaultResend.Cap))
	orDefault(&c.Probation, 2*time.Minute)
	orDefault(&c.Maturity, time.Hour)
	orDefault(&c.HalfLife, 10*time.Minute)
	c.Maturity = max(c.Maturity, c.Probation)
	orDefault(&c.NewcomerShare, 0.2)
	orDefault(&c.CapGPUs, 64)
	orDefault(&c.Trim, 0.2)
	orDefault(&c.MaxEntries, 100_000)
	return c
}

// Check says what is wrong with a config, if anything.
func (c BoardConfig) Check() error {
	switch {
	case c.TTL < 0, c.Probation < 0, c.Maturity < 0, c.HalfLife < 0:
		return errors.New("price board: durations must not be negative")
	case c.NewcomerShare < 0 || math.IsNaN(c.NewcomerShare):
		return fmt.Errorf("price board: newcomer share %v: want >= 0", c.NewcomerShare)
	case c.CapGPUs < 0, c.MaxEntries < 0:
		return errors.New("price board: caps must not be negative")
	case c.Trim < 0 || c.Trim > 0.45 || math.IsNaN(c.Trim):
		return fmt.Errorf("price board: trim %v: want 0..0.45", c.Trim)
	}
	return nil
}

// PriceBoard is one peer's view of the spot market: the live quote of every
// (provider, class) it has accepted, and per class an index robust to
// manipulation (see BoardConfig). It is a plain data structure: no I/O, no
// goroutines, and the time is an argument of every call, so it can be
// tested and replayed exactly. It is not safe for concurrent use.
type PriceBoard struct {
	cfg     BoardConfig
	classes map[string]*classBook
	entries int
}

type classBook struct {
	class   string
	quotes  map[peer.ID]*entry
	ewma    ewma
	updated time.Time // arrival of the last tick applied
}

type entry struct {
	tick    Tick
	signed  []byte    // the tick as its provider signed it (SignedTick.Msg); nil if not known
	since   time.Time // arrival of the first tick of the provider's current run of quotes
	expires time.Time
}

// ewma is an exponentially weighted moving average in continuous time of a
// piecewise-constant input: last held from at until now.
type ewma struct {
	value, last float64
	at          time.Time
	ok          bool
}

// Quote is the board's summary of one class. Prices are per GPU-hour in the
// board's unit; 0 means none.
type Quote struct {
	Class     string    `json:"class"`
	Providers int       `json:"providers"` // live quotes of the class
	Counted   int       `json:"counted"`   // of those, in the index: past probation, GPUs available
	Mature    int       `json:"mature"`    // of those, at full weight
	GPUs      uint64    `json:"gpus"`      // GPUs available from every live quote, counted or not
	Best      uint64    `json:"best"`      // lowest live ask with GPUs available, counted or not
	Median    uint64    `json:"median"`    // weighted median of the counted asks
	Mean      uint64    `json:"mean"`      // weighted trimmed mean of the counted asks
	EWMA      uint64    `json:"ewma"`      // of the median, over time
	Depth     []Level   `json:"depth"`     // GPUs available at or below each live ask
	Updated   time.Time `json:"updated,omitzero"`
}

// Level is one step of a class's depth: GPUs available at Ask or less.
type Level struct {
	Ask  uint64 `json:"ask"`
	GPUs uint64 `json:"gpus"`
}

// NewPriceBoard returns an empty board.
func NewPriceBoard(cfg BoardConfig) *PriceBoard {
	return &PriceBoard{cfg: cfg.withDefaults(), classes: make(map[string]*classBook)}
}

// Apply records a tick that arrived at now. It reports whether the board
// took it: not if it breaks a bound, is older than the provider's live quote,
// has already expired, or is new while the board is full. The quote lives
// until the tick's Until, but no longer than TTL past the tick's time (or
// its arrival, if earlier). Apply does not check signatures or units; the
// validator has.
func (b *PriceBoard) Apply(t Tick, now time.Time) bool {
	return b.ApplySigned(SignedTick{Tick: t}, now)
}

// ApplySigned is Apply for a tick with the message its provider signed,
// which the board keeps so that it can hand the quote on (Signed).
func (b *PriceBoard) ApplySigned(st SignedTick, now time.Time) bool {
	t := st.Tick
	if t.Check() != nil {
		return false
	}
	expires := t.Time
	if now.Before(expires) {
		expires = now
	}
	expires = expires.Add(b.cfg.TTL)
	if t.Until.Before(expires) {
		expires = t.Until
	}
	if !expires.After(now) {
		return false
	}
	book := b.classes[t.Class]
	e := book.lookup(t.Provider)
	switch {
	case e != nil && e.expires.After(now):
		if t.Seq <= e.tick.Seq {
			return false
		}
		e.tick, e.signed, e.expires = t, st.Msg, expires
	case e != nil: // expired: a new run of quotes
		*e = entry{tick: t, signed: st.Msg, since: now, expires: expires}
	default:
		if b.entries >= b.cfg.MaxEntries {
			b.expire(now)
			if b.entries >= b.cfg.MaxEntries {
				return false
			}
		}
		if book == nil {
			book = &classBook{class: t.Class, quotes: make(map[peer.ID]*entry)}
			b.classes[t.Class] = book
		}
		book.quotes[t.Provider] = &entry{tick: t, signed: st.Msg, since: now, expires: expires}
		b.entries++
	}
	book.updated = now
	return true
}

func (c *classBook) lookup(p peer.ID) *entry {
	if c == nil {
		return nil
	}
	return c.quotes[p]
}

// Advance drops expired quotes and moves every class's EWMA to now. Call it
// every few seconds; Quote and Quotes also advance the classes they read.
func (b *PriceBoard) Advance(now time.Time) {
	b.expire(now)
	for _, book := range b.classes {
		b.advance(book, now)
	}
}

func (b *PriceBoard) expire(now time.Time) {
	for class, book := range b.classes {
		for p, e := range book.quotes {
			if !e.expires.After(now) {
				delete(book.quotes, p)
				b.entries--
			}
		}
		if len(book.quotes) == 0 {
			delete(b.classes, class)
		}
	}
}

// advance integrates the EWMA up to now with the median that held since the
// last call, then takes the median of now as the one that holds from here.
func (b *PriceBoard) advance(book *classBook, now time.Time) Quote {
	q := b.summarize(book, now, "")
	m, ok := float64(q.Median), q.Median > 0
	a := &book.ewma
	switch {
	case !a.ok && ok:
		*a = ewma{value: m, last: m, at: now, ok: true}
	case a.ok:
		if dt := now.Sub(a.at); dt > 0 {
			a.value = a.last + (a.value-a.last)*math.Exp2(-float64(dt)/float64(b.cfg.HalfLife))
			a.at = now
		}
		if ok {
			a.last = m
		}
	}
	if a.ok {
		q.EWMA = uint64(math.Round(a.value))
	}
	return q
}

// Quote summarizes class at now; ok is false when no live quote names it.
func (b *PriceBoard) Quote(class string, now time.Time) (q Quote, ok bool) {
	book := b.classes[class]
	if book == nil {
		return Quote{Class: class}, false
	}
	q = b.advance(book, now)
	return q, q.Providers > 0
}

// Quotes summarizes every class with a live quote at now, sorted by class.
func (b *PriceBoard) Quotes(now time.Time) []Quote {
	out := []Quote{}
	for _, book := range b.classes {
		if q := b.advance(book, now); q.Providers > 0 {
			out = append(out, q)
		}
	}
	slices.SortFunc(out, func(a, b Quote) int { return cmp.Compare(a.Class, b.Class) })
	return out
}

// Median is the weighted median ask of class at now leaving out one
// provider's quote (a pricing policy leaves out its own); ok is false when
// no quote counts.
func (b *PriceBoard) Median(class string, now time.Time, except peer.ID) (uint64, bool) {
	book := b.classes[class]
	if book == nil {
		return 0, false
	}
	q := b.summarize(book, now, except)
	return q.Median, q.Median > 0
}

// Len is the number of quotes held, live or not yet dropped.
func (b *PriceBoard) Len() int { return b.entries }

// standing is the share of its GPUs a provider's quote weighs at an age.
func (b *PriceBoard) standing(age time.Duration) float64 {
	switch {
	case b.cfg.Trusted:
		return 1
	case age < b.cfg.Probation:
		return 0
	case age >= b.cfg.Maturity:
		return 1
	}
	return float64(age) / float64(b.cfg.Maturity)
}

type weighted struct {
	id    peer.ID
	ask   uint64
	avail uint64
	w     float64
}

// summarize computes a class's statistics at now (all but the EWMA): best,
// GPUs and depth over every live ask at once; the index over the counted.
func (b *PriceBoard) summarize(book *classBook, now time.Time, except peer.ID) Quote {
	q := Quote{Class: book.class, Updated: book.updated, Depth: []Level{}}
	var all, ws []weighted
	var mature, young float64
	for id, e := range book.quotes {
		if !e.expires.After(now) || id == except {
			continue
		}
		q.Providers++
		if e.tick.Available > 0 {
			all = append(all, weighted{id: id, ask: e.tick.Ask, avail: uint64(e.tick.Available)})
		}
		s := b.standing(now.Sub(e.since))
		w := float64(min(e.tick.Available, uint32(b.cfg.CapGPUs))) * s
		if w <= 0 {
			continue
		}
		if s >= 1 {
			mature += w
			q.Mature++
		} else {
			young += w
		}
		ws = append(ws, weighted{id: id, ask: e.tick.Ask, avail: uint64(e.tick.Available), w: w})
	}
	byAsk := func(a, b weighted) int { return cmp.Or(cmp.Compare(a.ask, b.ask), cmp.Compare(a.id, b.id)) }
	slices.SortFunc(all, byAsk)
	for _, x := range all {
		q.GPUs += x.avail
		if n := len(q.Depth); n > 0 && q.Depth[n-1].Ask == x.ask {
			q.Depth[n-1].GPUs = q.GPUs
		} else {
			q.Depth = append(q.Depth, Level{Ask: x.ask, GPUs: q.GPUs})
		}
	}
	if len(all) > 0 {
		q.Best = all[0].ask
	}
	if len(ws) == 0 {
		return q
	}
	if limit := b.cfg.NewcomerShare * mature; mature > 0 && young > limit {
		scale := limit / young
		for i := range ws {
			if b.standing(now.Sub(book.quotes[ws[i].id].since)) < 1 {
				ws[i].w *= scale
			}
		}
	}
	slices.SortFunc(ws, byAsk)
	var total float64
	for _, x := range ws {
		total += x.w
	}
	q.Counted = len(ws)
	// Weighted median: the lowest ask with half the weight at or below it.
	var cum float64
	for _, x := range ws {
		cum += x.w
		if cum >= total/2 {
			q.Median = x.ask
			break
		}
	}
	// Trimmed mean: the mean of the asks over the weight between Trim and
	// 1-Trim of the total, each ask weighing its overlap with that band.
	lo, hi := b.cfg.Trim*total, (1-b.cfg.Trim)*total
	var sum float64
	cum = 0
	for _, x := range ws {
		if o := math.Min(cum+x.w, hi) - math.Max(cum, lo); o > 0 {
			sum += float64(x.ask) * o
		}
		cum += x.w
	}
	q.Mean = uint64(math.Round(sum / (hi - lo)))
	return q
}

// orDefault sets a zero config field to its default.
func orDefault[T comparable](field *T, def T) {
	var zero T
	if *field == zero {
		*field = def
	}
}

// Sellers is the live quotes at now, of the classes match takes, with
// GPUs available: whom a submitter may ask for bids before the directory
// has answered. Cheapest first, at most max of them.
func (b *PriceBoard) Sellers(match func(class string) bool, max int, now time.Time) []Tick {
	var out []Tick
	for class, book := range b.classes {
		if !match(class) {
			continue
		}
		for _, e := range book.quotes {
			if e.expires.After(now) && e.tick.Available > 0 {
				out = append(out, e.tick)
			}
		}
	}
	slices.SortFunc(out, func(a, b Tick) int {
		return cmp.Or(cmp.Compare(a.Ask, b.Ask), cmp.Compare(b.Available, a.Available), cmp.Compare(a.Provider, b.Provider))
	})
	if len(out) > max {
		out = out[:max]
	}
	return out
}

// Signed is the live quotes at now that the board holds as their providers
// signed them (SignedTick.Msg), at most max of them: those with GPUs
// available first, cheapest first. It is what a board sync hands a
// newcomer, which checks each as it would a tick from the topic.
func (b *PriceBoard) Signed(max int, now time.Time) [][]byte {
	var live []*entry
	for _, book := range b.classes {
		for _, e := range book.quotes {
			if e.expires.After(now) && e.signed != nil {
				live = append(live, e)
			}
		}
	}
	slices.SortFunc(live, func(x, y *entry) int {
		return cmp.Or(cmp.Compare(min(y.tick.Available, 1), min(x.tick.Available, 1)), cmp.Compare(x.tick.Ask, y.tick.Ask),
			cmp.Compare(x.tick.Class, y.tick.Class), cmp.Compare(x.tick.Provider, y.tick.Provider))
	})
	out := make([][]byte, 0, min(len(live), max))
	for _, e := range live[:min(len(live), max)] {
		out = append(out, e.signed)
	}
	return out
}
