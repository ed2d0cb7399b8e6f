// Package meshtest starts many real gpumesh nodes in one test process on a
// simulated network (libp2p's mocknet): real hosts, DHT and GossipSub, with
// in-memory links instead of sockets, so tests of 50+ peers take seconds.
// Keys are derived from a seed, so a failing run can be replayed.
package meshtest

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
)

// Options of a Mesh. The zero value is a good default.
type Options struct {
	Seed  uint64 // derives the peers' keys and the dial pattern; 0 is a seed like any other
	Dials int    // peers each new node dials besides node 0; 0 means 2
	// Config, if set, adjusts node i's config before it starts (GPUs,
	// region, ...). Nodes have no GPUs unless it gives them some.
	Config func(i int, c *node.Config)
}

// Mesh is a running set of nodes on one simulated network.
type Mesh struct {
	Net   mocknet.Mocknet
	Nodes []*node.Node
}

// Key returns the deterministic identity of peer i under seed.
func Key(seed uint64, i int) node.Identity {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], seed)
	binary.BigEndian.PutUint64(b[8:], uint64(i))
	s := sha256.Sum256(b[:])
	id, err := node.IdentityFromEd25519(ed25519.NewKeyFromSeed(s[:]))
	if err != nil {
		panic(err) // a seed always makes a valid key
	}
	return id
}

// Start starts n nodes, links every pair, and has each node dial node 0 and
// a few earlier ones. It does not wait for the DHT and GossipSub to fill:
// call WaitMeshed. Everything is stopped when the test ends.
func Start(t testing.TB, n int, opts Options) *Mesh {
	t.Helper()
	if opts.Dials == 0 {
		opts.Dials = 2
	}
	m := &Mesh{Net: mocknet.New()}
	t.Cleanup(func() { m.Close() })
	ctx := context.Background()
	for i := range n {
		id := Key(opts.Seed, i)
		addr := ma.StringCast(fmt.Sprintf("/ip4/127.%d.%d.%d/tcp/4021", (i>>16)&0xff, (i>>8)&0xff, i&0xff))
		h, err := m.Net.AddPeer(id.Key, addr)
		if err != nil {
			t.Fatalf("meshtest: add peer %d: %v", i, err)
		}
		cfg := node.Config{Host: h, Identity: &id, NoMDNS: true, NoNAT: true, GPUs: "none"}
		if opts.Config != nil {
			opts.Config(i, &cfg)
		}
		nd, err := node.New(cfg)
		if err != nil {
			t.Fatalf("meshtest: node %d: %v", i, err)
		}
		if err := nd.Start(ctx); err != nil {
			t.Fatalf("meshtest: start node %d: %v", i, err)
		}
		m.Nodes = append(m.Nodes, nd)
	}
	if err := m.Net.LinkAll(); err != nil {
		t.Fatalf("meshtest: link: %v", err)
	}
	rng := rand.New(rand.NewPCG(opts.Seed, 0x6d657368))
	for i := 1; i < n; i++ {
		targets := map[int]bool{0: true}
		for range opts.Dials {
			targets[rng.IntN(i)] = true
		}
		for j := range targets {
			if err := m.Connect(ctx, i, j); err != nil {
				t.Fatalf("meshtest: connect %d to %d: %v", i, j, err)
			}
		}
	}
	for _, nd := range m.Nodes {
		if err := nd.Directory().Bootstrap(ctx); err != nil {
			t.Fatalf("meshtest: dht bootstrap: %v", err)
		}
	}
	return m
}

// Connect dials node j from node i.
func (m *Mesh) Connect(ctx context.Context, i, j int) error {
	h := m.Nodes[j].Host()
	return m.Nodes[i].Connect(ctx, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()})
}

// WaitMeshed waits until every node has at least min(minDHT, n-1) peers in
// its DHT routing table and at least one GossipSub peer, or ctx ends.
func (m *Mesh) WaitMeshed(ctx context.Context, minDHT int) error {
	want := min(minDHT, len(m.Nodes)-1)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		lagging := -1
		for i, nd := range m.Nodes {
			if nd.Directory().RoutingTableSize() < want || (len(m.Nodes) > 1 && nd.Gossip().Peers() == 0) {
				lagging = i
				break
			}
		}
		if lagging < 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			nd := m.Nodes[lagging]
			return fmt.Errorf("meshtest: node %d not meshed: %d DHT peers (want %d), %d gossip peers: %w",
				lagging, nd.Directory().RoutingTableSize(), want, nd.Gossip().Peers(), ctx.Err())
		case <-tick.C:
		}
	}
}

// WaitTopic waits until every node has a GossipSub peer on the swarm topic
// name (e.g. "rfb"), or ctx ends.
func (m *Mesh) WaitTopic(ctx context.Context, name string) error {
	topic := m.Nodes[0].Gossip().Topic(name)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		lagging := -1
		for i, nd := range m.Nodes {
			if len(nd.Gossip().PubSub().ListPeers(topic)) == 0 {
				lagging = i
				break
			}
		}
		if lagging < 0 || len(m.Nodes) < 2 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("meshtest: node %d has no peer on %s: %w", lagging, topic, ctx.Err())
		case <-tick.C:
		}
	}
}

// Isolate cuts node i off from every other node, as if its machine fell off
// the network: no goodbye, nothing withdrawn.
func (m *Mesh) Isolate(i int) error {
	id := m.Nodes[i].Host().ID()
	for _, nd := range m.Nodes {
		other := nd.Host().ID()
		if other == id {
			continue
		}
		if err := m.Net.UnlinkPeers(id, other); err != nil {
			return err
		}
		_ = m.Net.DisconnectPeers(id, other)
	}
	return nil
}

// Close stops every node, all at once. Safe to call twice.
func (m *Mesh) Close() {
	var wg sync.WaitGroup
	for _, nd := range m.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); nd.Close() }()
	}
	wg.Wait()
	m.Net.Close()
}
