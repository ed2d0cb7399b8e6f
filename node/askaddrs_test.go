package node

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
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

// findH100s searches n's directory for count H100s and returns the
// result with the providers of its offers, sorted.
func findH100s(t *testing.T, ctx context.Context, n *Node, count int) (dht.FindResult, []peer.ID) {
	t.Helper()
	res, err := n.FindGPUs(ctx, dht.Query{Model: "H100", Count: count, Unit: "USDC:6"})
	if err != nil {
		t.Fatal(err)
	}
	var got []peer.ID
	for _, m := range res.Matches {
		if !slices.Contains(got, m.Offer.Provider) {
			got = append(got, m.Offer.Provider)
		}
	}
	slices.Sort(got)
	return res, got
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
	// then asks for 16 GPUs: both are named, and must answer (for 8, the
	// first to answer would make the count and the other, behind a failed
	// dial and a walk, could be left out by the grace).
	search := func(n *Node) dht.FindResult {
		t.Helper()
		for _, p := range provs {
			_ = n.host.Network().ClosePeer(p.host.ID())
			n.host.Peerstore().ClearAddrs(p.host.ID())
			if n.host.Network().Connectedness(p.host.ID()) == network.Connected {
				t.Fatalf("still connected to %s", p.host.ID())
			}
		}
		res, got := findH100s(t, ctx, n, 16)
		if !res.Named || !res.Enough || len(got) != 2 {
			t.Fatalf("named %v, enough %v, offers of %v, unanswered %v, %d walks; want both providers named and answering", res.Named, res.Enough, got, res.Unanswered, res.Timing.PeerWalks)
		}
		return res
	}
	res := search(finder)
	if res.Timing.PeerWalks != 0 {
		t.Fatalf("%d DHT walks with both providers' addresses on their ticks, want 0 (not reached at %v)", res.Timing.PeerWalks, res.AddrsFailed)
	}
	t.Logf("with the ticks' addresses: %v, no walk", res.Elapsed)
	res = search(walker)
	if res.Timing.PeerWalks != 2 {
		t.Fatalf("%d DHT walks by a peer that ignores the ticks' addresses, want 2 (is the case above testing anything?)", res.Timing.PeerWalks)
	}
	t.Logf("walking to both: %v", res.Elapsed)

	// p1 signs a tick that lists a port where no libp2p host listens:
	// what answers there takes each connection and closes it, counting.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var dialed atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			dialed.Add(1)
			c.Close()
		}
	}()
	dead := ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", l.Addr().(*net.TCPAddr).Port))
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
	if res.Timing.PeerWalks != 1 || dialed.Load() == 0 {
		t.Fatalf("%d DHT walks, the listed address dialed %d times; want it dialed, then 1 walk: to p1", res.Timing.PeerWalks, dialed.Load())
	}
	if len(res.Unanswered) != 0 {
		t.Fatalf("unanswered %v: a false address must not cost the provider its offer", res.Unanswered)
	}
	if !slices.Equal(res.AddrsFailed, []peer.ID{p1.host.ID()}) {
		t.Fatalf("not reached at the addresses held: %v, want p1 %s", res.AddrsFailed, p1.host.ID())
	}
	// The dead address is not dialed again (a provider listing another
	// host's addresses costs each peer one dial in ten minutes): p1 is
	// walked to at once (or reached at its true address, if a DHT answer
	// listed it to the finder meanwhile), p2 still at its tick's addresses.
	before := dialed.Load()
	res = search(finder)
	if dialed.Load() != before || res.Timing.PeerWalks > 1 || len(res.AddrsFailed) != 0 {
		t.Fatalf("searching again: the listed address dialed %d more times, %d DHT walks, not reached at %v; want no dial of it, at most 1 walk (to p1), no failed address",
			dialed.Load()-before, res.Timing.PeerWalks, res.AddrsFailed)
	}
}
