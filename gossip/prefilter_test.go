package gossip

import (
	"context"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
)

// A topic's prefilter drops, before any signature check, what a relay
// delivers of an author it names, and only that: the same author's
// messages delivered by the author itself still go through, as do other
// authors' relayed ones. On a line a - b - c, c drops a's messages relayed
// by b, and delivers b's own.
func TestPrefilterDropsOnlyRelayedMessagesOfTheNamedAuthor(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mn := mocknet.New()
	defer mn.Close()
	hs := mockHosts(t, mn, 1, 3)
	a, b, c := hs[0], hs[1], hs[2]
	if _, err := mn.LinkPeers(a.ID(), b.ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := mn.LinkPeers(b.ID(), c.ID()); err != nil {
		t.Fatal(err)
	}
	topic := TopicName("test", "pf")
	var gs []*Gossip
	for _, h := range hs {
		g, err := New(ctx, h, Config{Swarm: "test"})
		if err != nil {
			t.Fatal(err)
		}
		gs = append(gs, g)
	}
	gs[2].Prefilter(topic, func(author, _ peer.ID) bool { return author == a.ID() })
	var topics []*pubsub.Topic
	var cSub *pubsub.Subscription
	for i, g := range gs {
		tp, err := g.PubSub().Join(topic)
		if err != nil {
			t.Fatal(err)
		}
		topics = append(topics, tp)
		s, err := tp.Subscribe()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Cancel()
		if i == 2 {
			cSub = s
		}
	}
	if _, err := mn.ConnectPeers(a.ID(), b.ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := mn.ConnectPeers(b.ID(), c.ID()); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, ctx, "b to have a and c in its mesh of the topic", func() bool {
		return gs[1].Stats(topic).Mesh == 2 && gs[0].Stats(topic).Mesh == 1 && gs[2].Stats(topic).Mesh == 1
	})
	if err := topics[0].Publish(ctx, []byte("from a")); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, ctx, "c's prefilter to see a's message relayed by b", func() bool {
		return gs[2].Stats(topic).Ignored >= 1
	})
	if err := topics[1].Publish(ctx, []byte("from b")); err != nil {
		t.Fatal(err)
	}
	m, err := cSub.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Data) != "from b" {
		t.Fatalf("c got %q first, want b's own message (a's was to be dropped)", m.Data)
	}
	if st := gs[2].Stats(topic); st.Ignored != 1 || st.Delivered != 1 {
		t.Errorf("c's stats %+v, want 1 ignored (a's, unchecked) and 1 delivered (b's)", st)
	}
}
