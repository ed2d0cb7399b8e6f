package meshtest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node/meshtest"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
)

func TestPeersMeshAndGossipReachesAll(t *testing.T) {
	const n = 30
	m := meshtest.Start(t, n, meshtest.Options{Seed: 1}) // meshed: 8 DHT peers each
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// GossipSub is joined and ready: a message from one peer reaches all.
	topic := m.Nodes[0].Gossip().Topic("meshtest")
	if want := "/gpumesh/public/meshtest/1"; topic != want {
		t.Fatalf("topic = %q, want %q", topic, want)
	}
	subs := make([]*pubsub.Subscription, n)
	topics := make([]*pubsub.Topic, n)
	for i, nd := range m.Nodes {
		tp, err := nd.Gossip().PubSub().Join(topic)
		if err != nil {
			t.Fatal(err)
		}
		topics[i] = tp
		if subs[i], err = tp.Subscribe(); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until the publisher sees subscribers, then publish.
	testwait.Until(t, ctx, "the publisher to see a subscriber", func() bool { return len(topics[0].ListPeers()) > 0 })
	if err := topics[0].Publish(ctx, []byte("hello mesh")); err != nil {
		t.Fatal(err)
	}
	for i, s := range subs {
		msg, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("node %d got no message: %v", i, err)
		}
		if got := string(msg.Data); got != "hello mesh" {
			t.Fatalf("node %d got %q", i, got)
		}
		if msg.ReceivedFrom == "" || msg.GetFrom() != m.Nodes[0].Host().ID() {
			t.Fatalf("node %d: message from %s, want %s", i, msg.GetFrom(), m.Nodes[0].Host().ID())
		}
	}
}

func TestSameSeedSameKeys(t *testing.T) {
	a, b, c := meshtest.Key(7, 3), meshtest.Key(7, 3), meshtest.Key(8, 3)
	if a.PeerID != b.PeerID {
		t.Fatalf("same seed and index gave %s and %s", a.PeerID, b.PeerID)
	}
	if a.PeerID == c.PeerID {
		t.Fatalf("different seeds gave the same key %s", a.PeerID)
	}
}

// BenchmarkMesh measures the wall time for N peers to start and mesh (every
// routing table holding 8+ peers, every peer with a GossipSub neighbour on
// the topic of requests for bids).
func BenchmarkMesh(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				m := meshtest.Start(b, n, meshtest.Options{Seed: uint64(i)})
				b.StopTimer()
				m.Close()
				b.StartTimer()
			}
		})
	}
}
