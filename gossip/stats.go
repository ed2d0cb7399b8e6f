package gossip

import (
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/proto"
)

// TopicStats counts what one peer saw of one topic since it joined.
type TopicStats struct {
	Received   uint64 `json:"received"`   // messages that arrived from other peers, every copy
	Delivered  uint64 `json:"delivered"`  // accepted messages from other peers handed to subscribers
	Duplicates uint64 `json:"duplicates"` // copies of messages already seen
	Rejected   uint64 `json:"rejected"`   // refused with blame: bad signature, validator Reject
	Ignored    uint64 `json:"ignored"`    // refused without blame: validator Ignore, throttled
	Mesh       int    `json:"mesh"`       // peers in this peer's mesh of the topic now
}

type topicCounters struct {
	received, delivered, duplicates, rejected, ignored atomic.Uint64
	mesh                                               atomic.Int64
	sentBytes                                          atomic.Uint64 // of messages sent (own and forwarded), every copy
	refusals                                           sync.Map      // refusalKey -> *atomic.Uint64 (reasons.go)
}

// statsTracer counts messages per joined topic for Gossip.Stats. GossipSub
// calls it from its event loop and validation workers: it only adds to
// atomic counters, and tracks no topic this peer has not joined (a peer
// could name any).
type statsTracer struct {
	topics sync.Map // topic name -> *topicCounters

	sentBytes, recvBytes atomic.Uint64 // RPCs of every topic, control included

	// Bytes sent, by part of an RPC (the topics' messages are counted
	// per topic): what a peer's gossip bandwidth is made of.
	sentIHave, sentIWant, sentGraft, sentPrune, sentIDontWant, sentSubs, sentOther atomic.Uint64

	sends sendWatches // messages whose writes a publisher waits for (PriceFeed.PublishFlushed)
}

var _ pubsub.RawTracer = (*statsTracer)(nil)

func (s *statsTracer) get(topic string) *topicCounters {
	if c, ok := s.topics.Load(topic); ok {
		return c.(*topicCounters)
	}
	return nil
}

func (s *statsTracer) Join(topic string) { s.topics.LoadOrStore(topic, &topicCounters{}) }

func (s *statsTracer) RecvRPC(rpc *pubsub.RPC) {
	s.recvBytes.Add(uint64(proto.Size(&rpc.RPC)))
	for _, m := range rpc.GetPublish() {
		if c := s.get(m.GetTopic()); c != nil {
			c.received.Add(1)
		}
	}
}

func (s *statsTracer) DeliverMessage(msg *pubsub.Message) {
	if c := s.get(msg.GetTopic()); c != nil {
		c.delivered.Add(1)
	}
}

func (s *statsTracer) DuplicateMessage(msg *pubsub.Message) {
	if c := s.get(msg.GetTopic()); c != nil {
		c.duplicates.Add(1)
	}
}

func (s *statsTracer) RejectMessage(msg *pubsub.Message, reason string) {
	c := s.get(msg.GetTopic())
	if c == nil {
		return
	}
	why := pubsubReason(reason)
	if reason == pubsub.RejectValidationFailed || reason == pubsub.RejectValidationIgnored {
		// A validator of ours says why in the message's ValidatorData.
		err, _ := msg.ValidatorData.(error)
		why = Reason(err)
	}
	switch reason {
	case pubsub.RejectValidationIgnored, pubsub.RejectValidationThrottled, pubsub.RejectValidationQueueFull:
		c.ignored.Add(1)
		c.refuse("ignore", why)
	default:
		c.rejected.Add(1)
		c.refuse("reject", why)
	}
}

func (s *statsTracer) Graft(p peer.ID, topic string) {
	if c := s.get(topic); c != nil {
		c.mesh.Add(1)
	}
}

func (s *statsTracer) Prune(p peer.ID, topic string) {
	if c := s.get(topic); c != nil {
		c.mesh.Add(-1)
	}
}

func (s *statsTracer) Leave(topic string)                       {}
func (s *statsTracer) AddPeer(peer.ID, protocol.ID)             {}
func (s *statsTracer) OnNewOutboundStream(peer.ID, protocol.ID) {}
func (s *statsTracer) OnClosedOutboundStream(peer.ID)           {}
func (s *statsTracer) ValidateMessage(*pubsub.Message)          {}
func (s *statsTracer) ThrottlePeer(peer.ID)                     {}
func (s *statsTracer) SendRPC(rpc *pubsub.RPC, _ peer.ID) {
	total := uint64(proto.Size(&rpc.RPC))
	s.sentBytes.Add(total)
	parts := uint64(0)
	for _, m := range rpc.GetPublish() {
		n := uint64(proto.Size(m))
		parts += n
		if c := s.get(m.GetTopic()); c != nil {
			c.sentBytes.Add(n)
		}
	}
	for _, sub := range rpc.GetSubscriptions() {
		n := uint64(proto.Size(sub))
		parts += n
		s.sentSubs.Add(n)
	}
	if ctl := rpc.GetControl(); ctl != nil {
		add := func(c *atomic.Uint64, n int) { c.Add(uint64(n)); parts += uint64(n) }
		for _, x := range ctl.GetIhave() {
			add(&s.sentIHave, proto.Size(x))
		}
		for _, x := range ctl.GetIwant() {
			add(&s.sentIWant, proto.Size(x))
		}
		for _, x := range ctl.GetGraft() {
			add(&s.sentGraft, proto.Size(x))
		}
		for _, x := range ctl.GetPrune() {
			add(&s.sentPrune, proto.Size(x))
		}
		for _, x := range ctl.GetIdontwant() {
			add(&s.sentIDontWant, proto.Size(x))
		}
	}
	if total > parts {
		s.sentOther.Add(total - parts) // framing: field tags and lengths
	}
}
func (s *statsTracer) SendRPCCompleted(rpc *pubsub.RPC, p peer.ID, _ time.Duration) {
	s.sends.note(rpc, p, true)
}
func (s *statsTracer) DropRPC(rpc *pubsub.RPC, p peer.ID)   { s.sends.note(rpc, p, false) }
func (s *statsTracer) UndeliverableMessage(*pubsub.Message) {}

// Stats counts what this peer saw of a topic it joined (zero for others).
func (g *Gossip) Stats(topic string) TopicStats {
	c := g.stats.get(topic)
	if c == nil {
		return TopicStats{}
	}
	return TopicStats{
		Received:   c.received.Load(),
		Delivered:  c.delivered.Load(),
		Duplicates: c.duplicates.Load(),
		Rejected:   c.rejected.Load(),
		Ignored:    c.ignored.Load(),
		Mesh:       int(c.mesh.Load()),
	}
}

// SentBytes is what this peer's router has sent since it started, in
// bytes, by part of the RPCs: the messages of each topic it joined (its
// own and those it forwarded, every copy), and GossipSub's control.
type SentBytes struct {
	Topics        map[string]uint64 `json:"topics"`        // topic name -> bytes of its messages
	IHave         uint64            `json:"ihave"`         // "I have these message IDs" gossip, each heartbeat
	IWant         uint64            `json:"iwant"`         // requests for messages an IHAVE named
	Graft         uint64            `json:"graft"`         // joining a peer's mesh of a topic
	Prune         uint64            `json:"prune"`         // leaving one (with peer exchange)
	IDontWant     uint64            `json:"idontwant"`     // "already have it" for large messages
	Subscriptions uint64            `json:"subscriptions"` // topic (un)subscriptions
	Framing       uint64            `json:"framing"`       // the RPCs' own tags and lengths
}

// Sent is what this peer's router has sent, by part (see SentBytes).
func (g *Gossip) Sent() SentBytes {
	s := g.stats
	out := SentBytes{
		Topics: map[string]uint64{},
		IHave:  s.sentIHave.Load(), IWant: s.sentIWant.Load(), Graft: s.sentGraft.Load(), Prune: s.sentPrune.Load(),
		IDontWant: s.sentIDontWant.Load(), Subscriptions: s.sentSubs.Load(), Framing: s.sentOther.Load(),
	}
	s.topics.Range(func(k, v any) bool {
		out.Topics[k.(string)] = v.(*topicCounters).sentBytes.Load()
		return true
	})
	return out
}

// Bytes is what this peer's router has sent and received, in bytes of
// RPCs (messages and control of every topic: grafts, prunes, IHAVE and
// IWANT gossip), since it started: the gossip part of its bandwidth.
func (g *Gossip) Bytes() (sent, received uint64) {
	return g.stats.sentBytes.Load(), g.stats.recvBytes.Load()
}
