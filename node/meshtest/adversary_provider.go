package meshtest

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node"
)

// Negotiator is a hostile provider of the adversary kit: a real provider
// node of the mesh (its offer in the directory, its asks on the price
// board, so submitters ask it) whose side of negotiation a script plays.
// Direct requests for bids and negotiation messages to it go to the
// script, checked as the node checks them (signed by their author, who is
// the peer that sent them); what the script answers goes back to the
// author signed with the node's key. Requests for bids on the topic are
// still the node's (it bids from its real reservations), and an award of
// such a bid comes to the script like any.
type Negotiator struct {
	h  host.Host
	id node.Identity

	mu      sync.Mutex
	taken   []gossip.Message // what the script was given, in order
	arrived chan struct{}    // closed and replaced when a message is taken
}

// ServeNegotiation makes node i of the mesh a Negotiator: script is given
// each message taken, one at a time, and returns the messages to send
// back to its author (none: silence).
func (m *Mesh) ServeNegotiation(t testing.TB, i int, script func(gossip.Message) []gossip.Message) *Negotiator {
	t.Helper()
	if i < 0 || i >= len(m.Nodes) {
		t.Fatalf("meshtest: no node %d to serve negotiation", i)
	}
	g := &Negotiator{h: m.Nodes[i].Host(), id: Key(m.seed, i), arrived: make(chan struct{})}
	var scriptMu sync.Mutex // one message at a time, as a node's loop takes them
	handle := func(s network.Stream) {
		defer s.Close()
		from := s.Conn().RemotePeer()
		_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
		data, err := io.ReadAll(io.LimitReader(s, gossip.MaxNegotiationSize+2048))
		if err != nil {
			return
		}
		msg, err := node.OpenNegotiation(data)
		if err != nil || msg.Author() != from {
			return
		}
		g.mu.Lock()
		if len(g.taken) < maxHeard {
			g.taken = append(g.taken, msg)
		}
		close(g.arrived)
		g.arrived = make(chan struct{})
		g.mu.Unlock()
		scriptMu.Lock()
		replies := script(msg)
		scriptMu.Unlock()
		for _, r := range replies {
			_ = g.send(from, r) // a peer gone meanwhile (the mesh closing): as a provider's send fails
		}
	}
	g.h.SetStreamHandler(node.RFBProtocol, handle)
	g.h.SetStreamHandler(node.NegotiateProtocol, handle)
	return g
}

// send signs msg with the node's key and sends it to peer to on the
// negotiation protocol.
func (g *Negotiator) send(to peer.ID, msg gossip.Message) error {
	data, err := node.SealNegotiation(g.id, msg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := g.h.NewStream(ctx, to, node.NegotiateProtocol)
	if err != nil {
		return err
	}
	if _, err := s.Write(data); err != nil {
		_ = s.Reset()
		return err
	}
	return s.Close()
}

// ID is the node's peer ID: the provider the script plays.
func (g *Negotiator) ID() peer.ID { return g.id.PeerID }

// Taken is every message the script was given so far, in order.
func (g *Negotiator) Taken() []gossip.Message {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]gossip.Message(nil), g.taken...)
}

// Await waits until a message that match accepts has been taken, and
// returns it.
func (g *Negotiator) Await(ctx context.Context, match func(gossip.Message) bool) (gossip.Message, error) {
	return awaitMatch(ctx, &g.mu, &g.taken, &g.arrived, match, "negotiation message taken")
}

// BidOn is provider's bid on a request for gpus GPUs of the class (its
// model the part before the first "-", 80 GB each) at price per GPU-hour,
// for the lease the request asks, good for 10 s: what an honest provider
// with those GPUs free would send.
func BidOn(rfb *gossip.RequestForBids, provider peer.ID, class string, gpus uint32, price uint64) *gossip.Bid {
	model := class
	for i := range class {
		if class[i] == '-' {
			model = class[:i]
			break
		}
	}
	return &gossip.Bid{
		Job: rfb.Job, Provider: provider, Class: class, Model: model, VRAMGB: 80, GPUs: gpus, Price: price,
		LeaseSeconds: max(rfb.Needs.LeaseSeconds, 1), Expires: time.Now().Add(10 * time.Second).UnixMilli(),
	}
}
