package dht

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// deadAddr is an address on 127.0.0.1 where nothing listens.
func deadAddr(t *testing.T) ma.Multiaddr {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port))
}

// newLiar is a peer that speaks the DHT protocol on the real wire and,
// asked for the peers closest to target's ID, names the target at a false
// address, beside an honest peer; every other FIND_NODE it answers with no
// peers (so it passes a routing table's check and lies only where it
// counts). told counts the lies.
func newLiar(t *testing.T, swarm string, target peer.ID, false ma.Multiaddr, honest peer.AddrInfo) (h host.Host, told *atomic.Int32) {
	h = loopHost(t, nil, "127.0.0.1")
	told = new(atomic.Int32)
	serveKad(h, swarm, func(req *pb.Message) *pb.Message {
		reply := &pb.Message{Type: req.GetType(), Key: req.GetKey()}
		if req.GetType() == pb.Message_FIND_NODE && peer.ID(req.GetKey()) == target {
			told.Add(1)
			reply.CloserPeers = pb.RawPeerInfosToPBPeers([]peer.AddrInfo{{ID: target, Addrs: []ma.Multiaddr{false}}, honest})
		}
		return reply
	})
	return h, told
}

// TestAFalseAddressCostsADialNotAnOffer: a search among named providers
// (Among) reaches a provider it holds no address of by a DHT walk, and
// fetches its offer as soon as an answer lists the provider's addresses,
// before the walk ends. A peer that answers the walk with a false address
// for the provider, speaking the real DHT protocol, costs that fetch a
// failed dial: the fetch is tried again with what the walk found (the
// provider's true address, from an honest peer), and the provider is not
// reported unanswered. So is a false address this peer held from before:
// a fetch that fails with it is tried again after a walk.
func TestAFalseAddressCostsADialNotAnOffer(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s := &lookupSwarm{swarm: "walk"}
	sk, pid := newKey(t)
	prov := s.start(t, ctx, sk, LookupOptions{})
	honest := s.start(t, ctx, nil, LookupOptions{})
	connect(t, ctx, honest, prov.host)
	connect(t, ctx, prov, honest.host)
	o := testOffer(pid, 1)
	o.Expires = s.now().Add(time.Hour).Unix()
	if err := prov.Publish(ctx, seal(t, o, sk), false); err != nil {
		t.Fatalf("publish: %v", err)
	}
	dead := deadAddr(t)
	q := Query{Model: "H100", Count: 8}
	check := func(who string, res FindResult, walks int) {
		t.Helper()
		if len(res.Matches) != 1 || res.Matches[0].Offer.Provider != pid || len(res.Unanswered) != 0 || res.Timing.PeerWalks > walks || !res.Enough {
			t.Fatalf("%s: %d matches, unanswered %v, %d walks, enough %v; want the provider's offer, after at most %d walk", who, len(res.Matches), res.Unanswered, res.Timing.PeerWalks, res.Enough, walks)
		}
	}

	// A searcher whose one peer lies about where the provider is.
	liar, told := newLiar(t, s.swarm, pid, dead, peer.AddrInfo{ID: honest.host.ID(), Addrs: honest.host.Addrs()})
	first := s.start(t, ctx, nil, LookupOptions{})
	connect(t, ctx, first, liar)
	if a := first.host.Peerstore().Addrs(pid); len(a) != 0 {
		t.Fatalf("the searcher holds addresses of the provider before it searches: %v", a)
	}
	res := first.Among(ctx, q, []peer.ID{pid})
	check("a walk through a liar", res, 1)
	if res.Timing.PeerWalks != 1 {
		t.Fatalf("a walk through a liar: %d walks, want 1", res.Timing.PeerWalks)
	}
	if told.Load() == 0 {
		t.Fatal("the liar was never asked where the provider is: the test shows nothing")
	}

	// A searcher that holds a false address of the provider. (Its
	// routing table's refresh may yet bring it the true one from the
	// honest peer, and then no walk is needed: either way the provider's
	// offer is found.)
	second := s.start(t, ctx, nil, LookupOptions{})
	connect(t, ctx, second, honest.host)
	second.host.Peerstore().ClearAddrs(pid)
	second.host.Peerstore().AddAddr(pid, dead, time.Hour)
	check("a false address held", second.Among(ctx, q, []peer.ID{pid}), 1)
}
