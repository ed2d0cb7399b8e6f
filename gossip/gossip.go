// Package gossip carries the swarm's broadcast traffic over GossipSub
// (go-libp2p-pubsub): spot-price ticks and the requests-for-bids of cluster
// negotiation. Every topic name carries the swarm's ID, and every message is
// signed by its author and checked before any validator sees it. Peers that
// deliver what a validator rejects lose GossipSub score until they are
// ignored (score.go).
//
// The spot market's deciding parts are plain data structures with the time
// passed in: TickValidator (which ticks to accept and forward), PriceBoard
// (the market index every peer keeps), Policy (a provider's ask) and
// Resend (how often an unchanged ask is gossiped again: a budget the swarm
// shares). The only I/O is PriceFeed, the swarm's price topic; boardsync.go
// is the codec with which a joining peer fetches a neighbour's board of
// signed ticks. Cluster negotiation's
// are Negotiation and Reservations (negotiation.go), RFBValidator (which
// requests for bids to accept and forward: a rate and open requests per
// submitter) and RequestQueue (which waiting request a provider answers
// next: one submitter at a time, the one answered longest ago first);
// FairQueue holds peers' other negotiation messages, bounded a peer and
// in all, and hands them out one peer at a time.
package gossip

import (
	"context"
	"fmt"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// MaxMessageSize bounds every message on every gpumesh topic, in bytes.
const MaxMessageSize = 64 << 10

// Config of a Gossip. The zero value joins the public swarm.
type Config struct {
	Swarm string // swarm ID; "" means "public"
	// ScoreView keeps a copy of GossipSub's peer scores, refreshed every
	// second, for Score. Off, Score knows no peer: nothing in a node reads
	// the scores (GossipSub keeps and applies its own), and the refresh
	// scores every connected peer each second (9% of the CPU of a
	// 1,000-peer simulated mesh; docs/scale.md). Tests that watch a
	// peer's score fall turn it on.
	ScoreView bool
}

// Gossip is one peer's GossipSub router.
type Gossip struct {
	swarm string
	ps    *pubsub.PubSub
	stats *statsTracer

	scoreMu sync.Mutex // guards scores
	scores  map[peer.ID]float64

	prefilters sync.Map // topic name -> PrefilterFunc
}

// PrefilterFunc says whether to drop a message of a topic that a relay
// (from, not the message's author) delivered, before its signature is
// checked: author is the unverified name the message carries. It must be
// cheap and must not block (GossipSub's event loop calls it), and it may
// drop only what the topic's validator would refuse without blame
// whoever wrote the message, because anyone can put any name on one.
type PrefilterFunc func(author, from peer.ID) bool

// Queues of the router. GossipSub drops what does not fit (a full
// validation queue drops without blame, to be fetched again by gossip a
// heartbeat later), and its defaults (32) are small for bursts of ticks.
const (
	outboundQueue = 256  // messages waiting to be sent to one peer
	validateQueue = 1024 // messages waiting for validation
)

// routerParams are GossipSub's defaults but for the gossip factor. Each
// heartbeat a peer tells some peers outside its mesh the IDs of the
// messages of the last three heartbeats (IHAVE); by default a quarter of
// its topic peers, at least 6 — so a peer with 200 connections sends
// every message ID to 50 peers three times, and at rest that costs more
// than the messages themselves (at 300 peers: 7.6 of 11.7 KB/s, see
// docs/scale.md). Here it is 6 peers whatever the connection count: with
// flood publishing and a mesh of 6, gossip only repairs losses.
func routerParams() pubsub.GossipSubParams {
	p := pubsub.DefaultGossipSubParams()
	p.GossipFactor = 0
	return p
}

// scoreInspectPeriod is how often Score's view of peer scores is refreshed.
const scoreInspectPeriod = time.Second

// New starts GossipSub on h; it stops when ctx ends.
func New(ctx context.Context, h host.Host, cfg Config) (*Gossip, error) {
	swarm := cfg.Swarm
	if swarm == "" {
		swarm = "public"
	}
	g := &Gossip{swarm: swarm, stats: &statsTracer{}}
	opts := []pubsub.Option{
		pubsub.WithGossipSubParams(routerParams()),
		pubsub.WithMessageSigning(true),
		pubsub.WithStrictSignatureVerification(true),
		pubsub.WithMaxMessageSize(MaxMessageSize),
		pubsub.WithPeerScore(scoreParams(TopicName(swarm, PricesTopic), TopicName(swarm, RFBTopic)), scoreThresholds()),
		pubsub.WithRawTracer(g.stats),
		// A peer's own messages go to every topic peer in good standing, not
		// only its mesh: a tick is out before the mesh forms, in fewer hops,
		// and a mesh of attackers cannot hide it.
		pubsub.WithFloodPublish(true),
		// Ticks are small and come in bursts (heartbeats meeting, a
		// provider's classes at once): queue them rather than drop them.
		pubsub.WithPeerOutboundQueueSize(outboundQueue),
		pubsub.WithValidateQueueSize(validateQueue),
		pubsub.WithAppSpecificRpcInspector(g.prefilter),
	}
	if cfg.ScoreView {
		opts = append(opts, pubsub.WithPeerScoreInspect(pubsub.PeerScoreInspectFn(g.setScores), scoreInspectPeriod))
	}
	ps, err := pubsub.NewGossipSub(ctx, h, opts...)
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	g.ps = ps
	return g, nil
}

// Prefilter sets the topic's PrefilterFunc (nil: none). Checking an
// ed25519 signature costs far more than a validator's look at its rate
// table, so a relayed flood of what the validator would ignore anyway is
// dropped unchecked; what a peer delivers of its own is always checked
// and validated, so a flooder still pays for it in score.
func (g *Gossip) Prefilter(topic string, f PrefilterFunc) {
	if f == nil {
		g.prefilters.Delete(topic)
		return
	}
	g.prefilters.Store(topic, f)
}

// prefilter is GossipSub's RPC inspector: it takes out of an arriving RPC
// the relayed messages a topic's PrefilterFunc drops (counted as ignored).
func (g *Gossip) prefilter(from peer.ID, rpc *pubsub.RPC) error {
	msgs := rpc.GetPublish()
	kept := msgs[:0]
	for _, m := range msgs {
		author := peer.ID(m.GetFrom())
		if author != from {
			if f, ok := g.prefilters.Load(m.GetTopic()); ok && f.(PrefilterFunc)(author, from) {
				if c := g.stats.get(m.GetTopic()); c != nil {
					c.ignored.Add(1)
					c.refuse("ignore", "prefiltered")
				}
				continue
			}
		}
		kept = append(kept, m)
	}
	clear(msgs[len(kept):])
	rpc.Publish = kept
	return nil
}

func (g *Gossip) setScores(s map[peer.ID]float64) {
	g.scoreMu.Lock()
	g.scores = s
	g.scoreMu.Unlock()
}

// Score is GossipSub's score of a connected peer, as of at most a second
// ago; ok is false for a peer it does not score (yet), and for every peer
// without Config.ScoreView.
func (g *Gossip) Score(p peer.ID) (score float64, ok bool) {
	g.scoreMu.Lock()
	defer g.scoreMu.Unlock()
	score, ok = g.scores[p]
	return score, ok
}

// Topic names a topic of this swarm (see TopicName).
func (g *Gossip) Topic(name string) string {
	return TopicName(g.swarm, name)
}

// TopicName names a topic of a swarm: "/gpumesh/<swarm>/<name>/<version>",
// version 3 for the price topic (ticks with Until and the provider's
// addresses: tickVersion), 1 for the others.
func TopicName(swarm, name string) string {
	if swarm == "" {
		swarm = "public"
	}
	v := "/1"
	if name == PricesTopic {
		v = "/3"
	}
	return "/gpumesh/" + swarm + "/" + name + v
}

// PubSub is the router, for the packages that define topics on it.
func (g *Gossip) PubSub() *pubsub.PubSub { return g.ps }

// Peers is the number of connected peers that speak GossipSub.
func (g *Gossip) Peers() int { return len(g.ps.ListPeers("")) }
