package node

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/libp2p/go-libp2p/core/peer"
)

// A provider that closes tells the price topic, as its last ticks, that
// it has no GPUs available: every board stops naming it at once, not
// when its ask expires (up to three hours later), so a search for a count
// names the providers still there and dials no peer that is gone. Real
// hosts on loopback, real gossip and DHT.
func TestAClosingProviderWithdrawsItsAsk(t *testing.T) {
	const class = "H100-80GB"
	hub := startNode(t, Config{})
	boot := []string{hub.Info().Addrs[0]}
	p1 := startNode(t, Config{Bootstrap: boot, GPUs: "mock:dgxh100", Price: "fixed:1.90"})
	p2 := startNode(t, Config{Bootstrap: boot, GPUs: "mock:dgxh100", Price: "fixed:2.20"})
	finder := startNode(t, Config{Bootstrap: boot})
	for _, n := range []*Node{hub, finder} {
		testwait.For(t, 30*time.Second, "both providers on the board", func() (bool, string) {
			_, ok1 := boardTick(n, p1.host.ID(), class)
			_, ok2 := boardTick(n, p2.host.ID(), class)
			return ok1 && ok2, fmt.Sprintf("p1 %v, p2 %v", ok1, ok2)
		})
	}
	p1.priceMu.Lock()
	last := p1.asks[class].sent
	p1.priceMu.Unlock()

	if err := p1.Close(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Node{hub, finder} {
		testwait.For(t, 10*time.Second, "p1 off the board's sellers", func() (bool, string) {
			tk, ok := boardTick(n, p1.host.ID(), class)
			return !ok, fmt.Sprintf("still selling %d at sequence %d (its last ask: %d)", tk.Available, tk.Seq, last.Seq)
		})
		if _, ok := boardTick(n, p2.host.ID(), class); !ok {
			t.Fatal("p2 went off the board with p1")
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, got := findH100s(t, ctx, finder, 8)
	if !res.Named || !slices.Equal(got, []peer.ID{p2.host.ID()}) || len(res.Unanswered)+len(res.AddrsFailed) != 0 {
		t.Fatalf("search for 8 after p1 closed: named %v, offers of %v, unanswered %v, not reached at %v; want p2 alone, named from the board, nobody unanswered",
			res.Named, got, res.Unanswered, res.AddrsFailed)
	}
}

// A provider that dies says nothing: its ask stands on every board until
// it expires. A search for a count that names such providers and is left
// short asks the next cheapest the board lists, without them, before it
// falls back to the index (whose DHT copies of the dead providers' offers
// would be found as live). Real hosts on loopback; the dead providers'
// hosts are closed, so a dial to them is refused as a dead machine's
// would be.
func TestASearchForACountAsksTheNextCheapestWhenTheCheapestAreGone(t *testing.T) {
	const class = "H100-80GB"
	hub := startNode(t, Config{})
	boot := []string{hub.Info().Addrs[0]}
	var provs []*Node
	for _, price := range []string{"1.80", "1.90", "2.10", "2.20"} {
		provs = append(provs, startNode(t, Config{Bootstrap: boot, GPUs: "mock:dgxh100", Price: "fixed:" + price}))
	}
	finder := startNode(t, Config{Bootstrap: boot})
	testwait.For(t, 30*time.Second, "every provider on the finder's board", func() (bool, string) {
		for i, p := range provs {
			if _, ok := boardTick(finder, p.host.ID(), class); !ok {
				return false, fmt.Sprintf("provider %d not yet", i)
			}
		}
		return true, ""
	})
	dead := []peer.ID{provs[0].host.ID(), provs[1].host.ID()}
	for _, p := range provs[:2] {
		if err := p.host.Close(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, got := findH100s(t, ctx, finder, 8)
	slices.Sort(res.Unanswered)
	slices.Sort(dead)
	alive := []peer.ID{provs[2].host.ID(), provs[3].host.ID()}
	slices.Sort(alive)
	if !res.Named || !res.Enough || !slices.Equal(got, alive) || !slices.Equal(res.Unanswered, dead) {
		t.Fatalf("named %v, enough %v, offers of %v, unanswered %v; want the two live providers' offers from the board's next cheapest, the dead two unanswered (%v)",
			res.Named, res.Enough, got, res.Unanswered, dead)
	}
	t.Logf("the cheapest two dead: %v, %d walks", res.Elapsed, res.Timing.PeerWalks)
}
