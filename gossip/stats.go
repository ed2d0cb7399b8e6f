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
}

// statsTracer counts messages per joined topic for Gossip.Stats. GossipSub
// calls it from its event loop and validation workers: it only adds to
// atomic counters, and tracks no topic this peer has not joined (a peer
// could name any).
type statsTracer struct {
	topics sync.Map // topic name -> *topicCounters

	sentBytes, recvBytes atomic.Uint64 // RPCs of every topic, control included
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
	switch reason {
	case pubsub.RejectValidationIgnored, pubsub.RejectValidationThrottled, pubsub.RejectValidationQueueFull:
		c.ignored.Add(1)
	default:
		c.rejected.Add(1)
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
func (s *statsTracer) RemovePeer(peer.ID)                       {}
func (s *statsTracer) OnNewOutboundStream(peer.ID, protocol.ID) {}
func (s *statsTracer) OnClosedOutboundStream(peer.ID)           {}
func (s *statsTracer) ValidateMessage(*pubsub.Message)          {}
func (s *statsTracer) ThrottlePeer(peer.ID)                     {}
func (s *statsTracer) SendRPC(rpc *pubsub.RPC, _ peer.ID) {
	s.sentBytes.Add(uint64(proto.Size(&rpc.RPC)))
}
func (s *statsTracer) SendRPCCompleted(*pubsub.RPC, peer.ID, time.Duration) {}
func (s *statsTracer) DropRPC(*pubsub.RPC, peer.ID)                         {}
func (s *statsTracer) UndeliverableMessage(*pubsub.Message)                 {}

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

// Bytes is what this peer's router has sent and received, in bytes of
// RPCs (messages and control of every topic: grafts, prunes, IHAVE and
// IWANT gossip), since it started: the gossip part of its bandwidth.
func (g *Gossip) Bytes() (sent, received uint64) {
	return g.stats.sentBytes.Load(), g.stats.recvBytes.Load()
}
