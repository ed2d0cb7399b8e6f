package node

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// boardTick is the tick of p for class on n's price board, if it has one.
func boardTick(n *Node, p peer.ID, class string) (gossip.Tick, bool) {
	n.priceMu.Lock()
	defer n.priceMu.Unlock()
	for _, t := range n.board.Sellers(func(c string) bool { return c == class }, 64, n.now()) {
		if t.Provider == p {
			return t, true
		}
	}
	return gossip.Tick{}, false
}

// A search for a count names the board's cheapest providers; one this
// peer is neither connected to nor holds an address of is dialed at the
// addresses its own signed tick lists, with no DHT walk to its peer ID
// first. A provider whose tick lists a false address costs the searcher a
// failed dial and then the walk: its offer is still found, and its
// tick's addresses are not dialed again for ten minutes. Real hosts on
// loopback, real gossip and DHT.
func TestASearchDialsTheAddressesAProvidersTickLists(t *testing.T) {
	const class = "H100-80GB"
	hub := startNode(t, Config{})
	boot := []string{hub.Info().Addrs[0]}
	p1 := startNode(t, Config{Bootstrap: boot, GPUs: "mock:dgxh100", Price: "fixed:2.10"})
	p2 := startNode(t, Config{Bootstrap: boot, GPUs: "mock:dgxh100", Price: "fixed:2.20"})
	finder := startNode(t, Config{Bootstrap: boot})
	walker := startNode(t, Config{Bootstrap: boot, IgnoreAskAddrs: true}) // as before: the walk first
	provs := []*Node{p1, p2}
	for _, n := range []*Node{finder, walker} {
		testwait.For(t, 30*time.Second, "both providers' ticks, with their addresses, on the board", func() (bool, string) {
			for _, p := range provs {
				tk, ok := boardTick(n, p.host.ID(), class)
				if !ok || len(tk.Addrs) == 0 {
					return false, fmt.Sprintf("%s: on the board %v, addresses %v", p.host.ID(), ok, tk.Addrs)
				}
			}
			return true, ""
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// search cuts n off from the providers (no connection, no address),
	// then asks for 8 GPUs: both are named, and must be reached.
	search := func(n *Node) dht.FindResult {
		t.Helper()
		for _, p := range provs {
			_ = n.host.Network().ClosePeer(p.host.ID())
			n.host.Peerstore().ClearAddrs(p.host.ID())
			if n.host.Network().Connectedness(p.host.ID()) == network.Connected {
				t.Fatalf("still connected to %s", p.host.ID())
			}
		}
		res, err := n.FindGPUs(ctx, dht.Query{Model: "H100", Count: 8, Unit: "USDC:6"})
		if err != nil {
			t.Fatal(err)
		}
		var got []peer.ID
		for _, m := range res.Matches {
			if !slices.Contains(got, m.Offer.Provider) {
				got = append(got, m.Offer.Provider)
			}
		}
		if !res.Named || !res.Enough || len(got) != 2 {
			t.Fatalf("named %v, enough %v, offers of %v; want both providers named and answering", res.Named, res.Enough, got)
		}
		return res
	}
	res := search(finder)
	if res.Timing.PeerWalks != 0 {
		t.Fatalf("%d DHT walks with both providers' addresses on their ticks, want 0", res.Timing.PeerWalks)
	}
	t.Logf("with the ticks' addresses: %v, no walk", res.Elapsed)
	res = search(walker)
	if res.Timing.PeerWalks != 2 {
		t.Fatalf("%d DHT walks by a peer that ignores the ticks' addresses, want 2 (is the case above testing anything?)", res.Timing.PeerWalks)
	}
	t.Logf("walking to both: %v", res.Elapsed)

	// p1 signs a tick that lists a port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", l.Addr().(*net.TCPAddr).Port))
	l.Close()
	now := time.Now()
	p1.priceMu.Lock()
	lie := p1.asks[class].sent
	p1.priceMu.Unlock()
	lie.Seq, lie.Time, lie.Until, lie.Addrs = uint64(now.UnixNano()), now, now.Add(time.Minute), []ma.Multiaddr{dead}
	if err := p1.PublishTick(ctx, lie); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 10*time.Second, "p1's tick with the dead address on the finder's board", func() (bool, string) {
		tk, _ := boardTick(finder, p1.host.ID(), class)
		return slices.EqualFunc(tk.Addrs, lie.Addrs, ma.Multiaddr.Equal), fmt.Sprintf("addresses %v", tk.Addrs)
	})
	res = search(finder)
	if res.Timing.PeerWalks != 1 {
		t.Fatalf("%d DHT walks, want 1: to p1, after its listed address failed", res.Timing.PeerWalks)
	}
	if len(res.Unanswered) != 0 {
		t.Fatalf("unanswered %v: a false address must not cost the provider its offer", res.Unanswered)
	}
	if !slices.Equal(res.AddrsFailed, []peer.ID{p1.host.ID()}) {
		t.Fatalf("not reached at the addresses held: %v, want p1 %s", res.AddrsFailed, p1.host.ID())
	}
	// The dead address is not dialed again (a provider listing another
	// host's addresses costs each peer one dial in ten minutes): p1 is
	// walked to at once, p2 still reached at its tick's addresses.
	res = search(finder)
	if res.Timing.PeerWalks != 1 || len(res.AddrsFailed) != 0 {
		t.Fatalf("searching again: %d DHT walks, not reached at %v; want 1 walk (to p1) and no failed address", res.Timing.PeerWalks, res.AddrsFailed)
	}
}
