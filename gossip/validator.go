package gossip

import (
	"container/list"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Verdict is what a validator decides about a message, in GossipSub's terms.
type Verdict int

// Verdicts. Reject is for what no honest peer sends or forwards (garbage, a
// forgery, a broken bound): GossipSub drops the message and lowers the score
// of the peers that delivered it. Ignore is for what an honest peer may
// still relay (stale, a replay, another unit, a provider past its rate
// through a relay): dropped without blame.
const (
	Accept Verdict = iota
	Ignore
	Reject
)

func (v Verdict) String() string {
	switch v {
	case Accept:
		return "accept"
	case Ignore:
		return "ignore"
	case Reject:
		return "reject"
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

// Why a tick was not accepted; the validator's errors wrap one of these or
// ErrBadTick.
var (
	ErrForgedTick  = errors.New("tick names a provider other than its signer")
	ErrOtherUnit   = errors.New("tick in another price unit")
	ErrStaleTick   = errors.New("tick too old")
	ErrFutureTick  = errors.New("tick from the future")
	ErrReplay      = errors.New("tick sequence not newer than the provider's last")
	ErrRateLimited = errors.New("provider over its tick rate")
	ErrTooMany     = errors.New("provider quotes too many classes")
)

// ValidatorConfig bounds what a TickValidator accepts. The zero value takes
// the defaults and the DefaultUnit.
type ValidatorConfig struct {
	Unit         Unit          // ticks in another unit are ignored; zero: DefaultUnit
	MaxSkew      time.Duration // how far ahead of our clock a tick may be; 0: 30 s
	MaxAge       time.Duration // how far behind; 0: 60 s
	Burst        int           // ticks a provider may send at once; 0: 32
	Rate         float64       // ticks per second a provider may send on average; 0: 2
	MaxClasses   int           // classes one provider may quote; 0: 16
	MaxProviders int           // providers remembered (least recently seen go first); 0: 65536
}

func (c ValidatorConfig) withDefaults() ValidatorConfig {
	orDefault(&c.Unit, DefaultUnit)
	orDefault(&c.MaxSkew, 30*time.Second)
	orDefault(&c.MaxAge, 60*time.Second)
	orDefault(&c.Burst, 32)
	orDefault(&c.Rate, 2)
	orDefault(&c.MaxClasses, 16)
	orDefault(&c.MaxProviders, 65536)
	return c
}

// TickValidator decides which price ticks a peer accepts and forwards. It is
// a state machine with no I/O and no clock of its own: the time is an
// argument. It remembers, per provider, the last sequence of each class and
// a token bucket of its tick rate. It is not safe for concurrent use; the
// price topic's validator holds a lock around it.
type TickValidator struct {
	cfg       ValidatorConfig
	providers map[peer.ID]*list.Element // of *providerState, most recently seen at the front
	lru       *list.List
}

type providerState struct {
	id     peer.ID
	seqs   map[string]uint64 // class -> last accepted sequence
	tokens float64           // rate-limit bucket, at most Burst
	at     time.Time         // when tokens was last refilled
}

// NewTickValidator returns a validator that knows no provider yet.
func NewTickValidator(cfg ValidatorConfig) *TickValidator {
	return &TickValidator{cfg: cfg.withDefaults(), providers: make(map[peer.ID]*list.Element), lru: list.New()}
}

// Validate decides about the encoded tick data, published by signer (the
// key GossipSub checked) and delivered by from (the neighbour it came from,
// or this peer for its own ticks), at time now. It returns the tick when it
// accepts it, and an error that says why when it does not. An accepted tick
// counts against the provider's rate and sequence.
func (v *TickValidator) Validate(data []byte, signer, from peer.ID, now time.Time) (Tick, Verdict, error) {
	return v.validate(data, signer, from, now, false)
}

// ValidateStored decides about a tick another peer kept on its board and
// handed over (a board sync, not the topic): exactly as Validate, but a
// tick may be older than MaxAge as long as it still stands (its Until is
// after now). It counts against the provider's rate and sequence as
// Validate does, so one arriving later by either path is a replay.
func (v *TickValidator) ValidateStored(data []byte, signer, from peer.ID, now time.Time) (Tick, Verdict, error) {
	return v.validate(data, signer, from, now, true)
}

func (v *TickValidator) validate(data []byte, signer, from peer.ID, now time.Time, stored bool) (Tick, Verdict, error) {
	t, err := UnmarshalTick(data)
	if err != nil {
		return Tick{}, Reject, err
	}
	if t.Provider != signer {
		return Tick{}, Reject, fmt.Errorf("%w: provider %s, signer %s", ErrForgedTick, t.Provider, signer)
	}
	if t.Unit != v.cfg.Unit {
		return Tick{}, Ignore, fmt.Errorf("%w: %s, want %s", ErrOtherUnit, t.Unit, v.cfg.Unit)
	}
	if d := t.Time.Sub(now); d > v.cfg.MaxSkew {
		return Tick{}, Ignore, fmt.Errorf("%w: %v ahead of this peer's clock, at most %v", ErrFutureTick, d.Round(time.Millisecond), v.cfg.MaxSkew)
	}
	if d := now.Sub(t.Time); d > v.cfg.MaxAge && !stored {
		return Tick{}, Ignore, fmt.Errorf("%w: %v old, at most %v", ErrStaleTick, d.Round(time.Millisecond), v.cfg.MaxAge)
	}
	if !t.Until.After(now) {
		return Tick{}, Ignore, fmt.Errorf("%w: stood until %s, %v ago", ErrStaleTick, t.Until.UTC().Format(time.RFC3339), now.Sub(t.Until).Round(time.Millisecond))
	}
	st := v.lookup(signer, now)
	last, known := st.seqs[t.Class]
	if t.Seq <= last {
		return Tick{}, Ignore, fmt.Errorf("%w: %s sequence %d, last %d", ErrReplay, t.Class, t.Seq, last)
	}
	if !known && len(st.seqs) >= v.cfg.MaxClasses {
		return Tick{}, Ignore, fmt.Errorf("%w: %s would be class %d, at most %d", ErrTooMany, t.Class, len(st.seqs)+1, v.cfg.MaxClasses)
	}
	st.refill(now, v.cfg)
	if st.tokens < 1 {
		// Only the provider itself can be blamed for its rate: relays may
		// each have let through a different part of a burst.
		verdict := Ignore
		if from == signer {
			verdict = Reject
		}
		return Tick{}, verdict, fmt.Errorf("%w: more than %d at once or %.3g a second", ErrRateLimited, v.cfg.Burst, v.cfg.Rate)
	}
	st.tokens--
	st.seqs[t.Class] = t.Seq
	return t, Accept, nil
}

// lookup finds or makes the state of a provider and marks it most recently
// seen, forgetting the least recently seen provider when full.
func (v *TickValidator) lookup(id peer.ID, now time.Time) *providerState {
	if e, ok := v.providers[id]; ok {
		v.lru.MoveToFront(e)
		return e.Value.(*providerState)
	}
	for v.lru.Len() >= v.cfg.MaxProviders {
		old := v.lru.Back()
		v.lru.Remove(old)
		delete(v.providers, old.Value.(*providerState).id)
	}
	st := &providerState{id: id, seqs: make(map[string]uint64), tokens: float64(v.cfg.Burst), at: now}
	v.providers[id] = v.lru.PushFront(st)
	return st
}

func (st *providerState) refill(now time.Time, cfg ValidatorConfig) {
	if dt := now.Sub(st.at).Seconds(); dt > 0 {
		st.tokens = min(float64(cfg.Burst), st.tokens+dt*cfg.Rate)
	}
	st.at = now
}

// Providers is the number of providers the validator remembers.
func (v *TickValidator) Providers() int { return v.lru.Len() }
