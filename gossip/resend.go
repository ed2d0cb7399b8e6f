package gossip

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Resend paces a provider's re-sends of an unchanged ask, so that the price
// topic's traffic at rest stays the same whatever the number of providers.
// Every peer receives every tick, so if each of P providers re-sent every
// 30 s, each peer would carry P/30 ticks a second (at 1,000 providers ~85
// KB/s, see docs/scale.md). Instead the swarm shares a budget of re-sends a
// second: a provider whose board holds Q live quotes re-sends each of its
// own every Q/Budget seconds (at least Floor, at most Cap), and its ticks
// say they stand Life of that interval, so a board keeps them until the
// next re-send, with one lost re-send to spare. A changed ask goes out at
// once, whatever the interval. A board keeps a quote no longer than its own
// bound (BoardConfig.TTL), whatever the tick says.
//
// The zero value takes every default. It is a plain value: the time and
// the board's size are arguments.
type Resend struct {
	Budget float64       // re-sends a second of unchanged asks, all providers together; 0: 0.25
	Floor  time.Duration // shortest interval between re-sends of an ask; 0: 30 s
	Cap    time.Duration // longest; 0: 1 h
}

// DefaultResend is the pacing a node uses unless told otherwise.
var DefaultResend = Resend{}.withDefaults()

// lifeFactor: a tick stands this many intervals.
const lifeFactor = 3

func (r Resend) withDefaults() Resend {
	orDefault(&r.Budget, 0.25)
	orDefault(&r.Floor, 30*time.Second)
	orDefault(&r.Cap, time.Hour)
	return r
}

// Check says what is wrong with a pacing, if anything.
func (r Resend) Check() error {
	switch {
	case r.Budget < 0 || math.IsNaN(r.Budget) || math.IsInf(r.Budget, 0):
		return fmt.Errorf("price re-sends: budget %v a second: want a positive number", r.Budget)
	case r.Floor < 0, r.Cap < 0:
		return errors.New("price re-sends: intervals must not be negative")
	}
	d := r.withDefaults()
	switch {
	case d.Cap < d.Floor:
		return fmt.Errorf("price re-sends: cap %v below floor %v", d.Cap, d.Floor)
	case d.Life(d.Cap) > MaxTickLife:
		return fmt.Errorf("price re-sends: cap %v: a tick would stand %v, at most %v (cap at most %v)", d.Cap, d.Life(d.Cap), MaxTickLife, MaxTickLife/lifeFactor)
	}
	return nil
}

// Interval is how long a provider waits before re-sending an unchanged ask
// when its board holds quotes live quotes (its own included): the swarm's
// budget shared among them, within Floor..Cap.
func (r Resend) Interval(quotes int) time.Duration {
	r = r.withDefaults()
	secs := float64(max(quotes, 0)) / r.Budget
	if secs >= r.Cap.Seconds() {
		return r.Cap
	}
	return max(r.Floor, time.Duration(secs*float64(time.Second)))
}

// Life is how long a tick sent with this interval says it stands.
func (r Resend) Life(interval time.Duration) time.Duration { return lifeFactor * interval }

// Until is what a tick made at now says it stands until, when its
// provider's board holds quotes live quotes.
func (r Resend) Until(now time.Time, quotes int) time.Time {
	return now.Add(r.Life(r.Interval(quotes)))
}

// Due reports whether an unchanged ask last sent as sent is due again at
// now, when the board holds quotes live quotes. jitter, in (0, 1], shortens
// the wait so that providers that started together drift apart (the node
// draws it from 0.9..1 at each send). The wait is the interval of now's
// board, but at most two intervals of the one the last tick promised: a
// board that grew lengthens the wait step by step, never past the life a
// board already gave the last tick.
func (r Resend) Due(sent Tick, quotes int, now time.Time, jitter float64) bool {
	promised := sent.Until.Sub(sent.Time) / lifeFactor
	wait := min(r.Interval(quotes), 2*promised)
	jitter = min(max(jitter, 0.5), 1)
	return now.Sub(sent.Time) >= time.Duration(float64(wait)*jitter)
}
