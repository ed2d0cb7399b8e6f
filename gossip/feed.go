package gossip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
)

// PricesTopic is the name of the swarm's price topic:
// "/gpumesh/<swarm>/prices/3" (version 3: ticks that say how long they
// stand and where their provider is; see tickVersion).
const PricesTopic = "prices"

// PriceFeedConfig of a PriceFeed. The zero value is a feed in DefaultUnit
// with the validator's defaults.
type PriceFeedConfig struct {
	Validator ValidatorConfig  // what ticks to accept (its Unit is the feed's)
	Now       func() time.Time // the clock of freshness checks; nil: time.Now
	Logger    *slog.Logger     // rejected ticks are logged at debug level
}

// PriceFeed is a peer's membership of its swarm's price topic: it checks
// every tick, its own too, with a TickValidator before GossipSub forwards
// it, hands accepted ticks to Next, and publishes this peer's.
type PriceFeed struct {
	g     *Gossip
	name  string
	topic *pubsub.Topic
	sub   *pubsub.Subscription
	now   func() time.Time
	log   *slog.Logger

	mu  sync.Mutex // guards val; GossipSub validates on several goroutines
	val *TickValidator

	closeOnce sync.Once
	closeErr  error
}

// JoinPrices joins the swarm's price topic. Close leaves it.
func (g *Gossip) JoinPrices(cfg PriceFeedConfig) (*PriceFeed, error) {
	f := &PriceFeed{
		g:    g,
		name: g.Topic(PricesTopic),
		now:  cfg.Now,
		log:  cfg.Logger,
		val:  NewTickValidator(cfg.Validator),
	}
	if f.now == nil {
		f.now = time.Now
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	if err := g.ps.RegisterTopicValidator(f.name, f.validate); err != nil {
		return nil, fmt.Errorf("gossip: price topic validator: %w", err)
	}
	var err error
	if f.topic, err = g.ps.Join(f.name); err != nil {
		g.ps.UnregisterTopicValidator(f.name)
		return nil, fmt.Errorf("gossip: join %s: %w", f.name, err)
	}
	if f.sub, err = f.topic.Subscribe(pubsub.WithBufferSize(1024)); err != nil {
		f.topic.Close()
		g.ps.UnregisterTopicValidator(f.name)
		return nil, fmt.Errorf("gossip: subscribe %s: %w", f.name, err)
	}
	return f, nil
}

// validate is the topic's GossipSub validator; from is the neighbour that
// delivered the message (this peer for its own).
func (f *PriceFeed) validate(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	if len(msg.Data) > MaxTickSize { // before taking the lock
		err := fmt.Errorf("%w: %d bytes", ErrBadTick, len(msg.Data))
		f.log.Debug("price tick rejected", "from", from, "err", err)
		msg.ValidatorData = err // why, for the refusals counted (Refusals)
		return pubsub.ValidationReject
	}
	f.mu.Lock()
	t, v, err := f.val.Validate(msg.Data, msg.GetFrom(), from, f.now())
	f.mu.Unlock()
	switch v {
	case Accept:
		msg.ValidatorData = t
		return pubsub.ValidationAccept
	case Ignore:
		f.log.Debug("price tick ignored", "from", from, "signer", msg.GetFrom(), "err", err)
		msg.ValidatorData = err // why, for the refusals counted (Refusals)
		return pubsub.ValidationIgnore
	}
	f.log.Debug("price tick rejected", "from", from, "signer", msg.GetFrom(), "err", err)
	msg.ValidatorData = err
	return pubsub.ValidationReject
}

// Next waits for the next accepted tick, this peer's own included. It
// returns an error when ctx ends or the feed is closed.
func (f *PriceFeed) Next(ctx context.Context) (Tick, error) {
	st, err := f.NextSigned(ctx)
	return st.Tick, err
}

// NextSigned is Next with the message the provider signed, for a board
// to keep and hand on.
func (f *PriceFeed) NextSigned(ctx context.Context) (SignedTick, error) {
	for {
		msg, err := f.sub.Next(ctx)
		if err != nil {
			return SignedTick{}, err
		}
		t, ok := msg.ValidatorData.(Tick)
		if !ok {
			continue
		}
		raw, err := proto.Marshal(msg.Message)
		if err != nil || len(raw) > MaxSignedTickSize {
			raw = nil // kept, not handed on
		}
		return SignedTick{Tick: t, Msg: raw}, nil
	}
}

// CheckStored checks a tick another peer handed on from its board (a
// board sync; from is that peer) exactly as the topic's validator checks a
// tick, but for its age (TickValidator.ValidateStored): the signature, the
// topic, the signer being the provider, the bounds, unit, sequence and
// rate. Reject means no honest peer would have handed it on.
func (f *PriceFeed) CheckStored(raw []byte, from peer.ID) (SignedTick, Verdict, error) {
	data, author, err := OpenSignedTick(raw, f.name)
	if err != nil {
		return SignedTick{}, Reject, err
	}
	f.mu.Lock()
	t, v, err := f.val.ValidateStored(data, author, from, f.now())
	f.mu.Unlock()
	if v != Accept {
		return SignedTick{}, v, err
	}
	return SignedTick{Tick: t, Msg: raw}, Accept, nil
}

// ListPeers is the connected peers subscribed to the price topic.
func (f *PriceFeed) ListPeers() []peer.ID { return f.topic.ListPeers() }

// Publish signs and gossips one of this peer's ticks. The tick goes through
// this peer's validator first: one that breaks a bound, names another
// provider or comes too fast is refused with an error.
func (f *PriceFeed) Publish(ctx context.Context, t Tick) error {
	data, err := t.Marshal()
	if err != nil {
		return err
	}
	if err := f.topic.Publish(ctx, data); err != nil {
		return fmt.Errorf("publish price tick: %w", err)
	}
	return nil
}

// Topic is the price topic's full name.
func (f *PriceFeed) Topic() string { return f.name }

// Peers is the number of connected peers subscribed to the price topic.
func (f *PriceFeed) Peers() int { return len(f.topic.ListPeers()) }

// Close leaves the price topic. Safe to call twice.
func (f *PriceFeed) Close() error {
	f.closeOnce.Do(func() {
		// After the router stops (its context ended) there is nothing to leave.
		quiet := func(err error) error {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
		f.sub.Cancel()
		f.closeErr = errors.Join(quiet(f.topic.Close()), quiet(f.g.ps.UnregisterTopicValidator(f.name)))
	})
	return f.closeErr
}
