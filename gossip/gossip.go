// Package gossip carries the swarm's broadcast traffic over GossipSub
// (go-libp2p-pubsub): spot-price ticks and the requests-for-bids of cluster
// negotiation. Every topic name carries the swarm's ID, and every message is
// signed by its author and checked before any validator sees it.
package gossip

import (
	"context"
	"fmt"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
)

// MaxMessageSize bounds every message on every gpumesh topic, in bytes.
const MaxMessageSize = 64 << 10

// Config of a Gossip. The zero value joins the public swarm.
type Config struct {
	Swarm string // swarm ID; "" means "public"
}

// Gossip is one peer's GossipSub router.
type Gossip struct {
	swarm string
	ps    *pubsub.PubSub
}

// New starts GossipSub on h; it stops when ctx ends.
func New(ctx context.Context, h host.Host, cfg Config) (*Gossip, error) {
	swarm := cfg.Swarm
	if swarm == "" {
		swarm = "public"
	}
	ps, err := pubsub.NewGossipSub(ctx, h,
		pubsub.WithMessageSigning(true),
		pubsub.WithStrictSignatureVerification(true),
		pubsub.WithMaxMessageSize(MaxMessageSize),
	)
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	return &Gossip{swarm: swarm, ps: ps}, nil
}

// Topic names a topic of this swarm: "/gpumesh/<swarm>/<name>/1".
func (g *Gossip) Topic(name string) string {
	return TopicName(g.swarm, name)
}

// TopicName names a topic of a swarm: "/gpumesh/<swarm>/<name>/1".
func TopicName(swarm, name string) string {
	if swarm == "" {
		swarm = "public"
	}
	return "/gpumesh/" + swarm + "/" + name + "/1"
}

// PubSub is the router, for the packages that define topics on it.
func (g *Gossip) PubSub() *pubsub.PubSub { return g.ps }

// Peers is the number of connected peers that speak GossipSub.
func (g *Gossip) Peers() int { return len(g.ps.ListPeers("")) }
