package node_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// directoryMesh starts n peers: h100 providers of 8x H100-80GB in region
// eu-west at 2.10 USDC/GPU-h, a100 providers of 8x A100-40GB in us-east
// asking nothing, and the rest with no GPUs; offers live for ttl (0: the
// default). It waits until every provider has published into the full mesh.
func directoryMesh(t *testing.T, n, h100, a100 int, ttl time.Duration) *meshtest.Mesh {
	t.Helper()
	m := meshtest.Start(t, n, meshtest.Options{Seed: 42, Providers: h100, Price: "fixed:2.10", Config: func(i int, c *node.Config) {
		c.OfferTTL = ttl
		switch {
		case i < h100:
			c.Region = "eu-west/ams1"
		case i < h100+a100:
			c.GPUs, c.Region = "mock:dgxa100", "us-east/nyc2"
		}
	}})
	// Republish into the grown mesh, as a provider does when its routing
	// table has grown, and wait for each to land.
	meshed := time.Now()
	for i := range h100 + a100 {
		m.Nodes[i].OffersChanged()
	}
	for i := range h100 + a100 {
		testwait.For(t, time.Minute, fmt.Sprintf("provider %d to publish", i), func() (bool, string) {
			l := m.Nodes[i].LocalGPUs()
			return l.PublishedAt.After(meshed) && l.Error == "", fmt.Sprintf("published at %v: %q", l.PublishedAt, l.Error)
		})
	}
	return m
}

func providersOf(res dht.FindResult) []string {
	var out []string
	for _, m := range res.Matches {
		out = append(out, m.Offer.Provider.String())
	}
	sort.Strings(out)
	return out
}

func peerIDs(m *meshtest.Mesh, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, m.Nodes[i].Identity().PeerID.String())
	}
	sort.Strings(out)
	return out
}

func TestEveryLiveOfferIsFoundFromEveryPeer(t *testing.T) {
	const n, h100, a100 = 32, 6, 4
	m := directoryMesh(t, n, h100, a100, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	for _, tc := range []struct {
		q         dht.Query
		from, to  int // providers expected: nodes [from, to)
		gpus      int
		enough    bool
		wantModel string
	}{
		{dht.Query{Model: "H100"}, 0, h100, 8 * h100, true, "H100"}, // a count is found among the board's cheapest: TestACountIsFoundAmongTheBoardsCheapest
		{dht.Query{Model: "a100-40gb"}, h100, h100 + a100, 8 * a100, true, "A100"},
		{dht.Query{MinVRAMGB: 80, Count: 1000}, 0, h100, 8 * h100, false, "H100"},
		{dht.Query{Region: "us-east"}, h100, h100 + a100, 8 * a100, true, "A100"},
	} {
		want := peerIDs(m, tc.from, tc.to)
		for i, nd := range m.Nodes {
			res, err := nd.FindGPUs(ctx, tc.q)
			if err != nil {
				t.Fatalf("peer %d, %+v: %v", i, tc.q, err)
			}
			if got := providersOf(res); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("peer %d, %+v: found %d providers %v, want %d %v", i, tc.q, len(got), got, len(want), want)
			}
			if res.GPUs != tc.gpus || res.Providers != len(want) || res.Enough != tc.enough {
				t.Fatalf("peer %d, %+v: %d GPUs from %d providers (enough %v), want %d from %d (enough %v)",
					i, tc.q, res.GPUs, res.Providers, res.Enough, tc.gpus, len(want), tc.enough)
			}
			for _, mt := range res.Matches {
				if mt.GPU.Model != tc.wantModel || mt.GPU.Available != 8 {
					t.Fatalf("peer %d: match %+v, want 8 available %s", i, mt.GPU, tc.wantModel)
				}
				// H100 providers ask 2.10 USDC per GPU-hour; A100 ones have no fixed ask.
				wantPrice := uint64(0)
				if tc.wantModel == "H100" {
					wantPrice = 2_100_000
				}
				if mt.GPU.Price != wantPrice || mt.Offer.Token != "USDC:6" {
					t.Fatalf("peer %d: %s offer asks %d %s, want %d USDC:6", i, mt.GPU.Class, mt.GPU.Price, mt.Offer.Token, wantPrice)
				}
			}
		}
	}
}

func TestWithdrawnForgedReplayedAndExpiredOffersAreNotFound(t *testing.T) {
	const n, h100, a100 = 30, 4, 2
	// Long enough that a provider's renewal lands before its record ages
	// out on a loaded machine (3 s was not: with -race and four runs at
	// once a publication took over a second, and a find met the live
	// provider's record expired).
	const ttl = 8 * time.Second
	m := directoryMesh(t, n, h100, a100, ttl)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	finder := m.Nodes[n-1]
	find := func(q dht.Query) dht.FindResult {
		t.Helper()
		res, err := finder.FindGPUs(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if got := len(find(dht.Query{Model: "H100"}).Matches); got != h100 {
		t.Fatalf("before: %d H100 providers, want %d", got, h100)
	}

	// A replayed older record of provider 1 is refused; its newest stands.
	victim := m.Nodes[1]
	key := dht.OfferKey(victim.Identity().PeerID)
	var old []byte
	testwait.Until(t, ctx, "provider 1's record", func() (bool, string) {
		var err error
		old, err = finder.Directory().Get(ctx, key)
		l := victim.LocalGPUs()
		return err == nil, fmt.Sprintf("%v (published %v, expires %v)", err, l.PublishedAt.Format(time.StampMilli), l.Offer.ExpiresAt().Format(time.StampMilli))
	})
	before := victim.LocalGPUs().PublishedAt
	victim.OffersChanged()
	testwait.Until(t, ctx, "provider 1 to republish", func() bool { return victim.LocalGPUs().PublishedAt.After(before) })
	// (The put itself may "succeed": peers that hold the newer record
	// refuse the older one, and a peer that held none keeps both and
	// selects the newer on every read.)
	newest := victim.LocalGPUs().Offer.Seq
	_ = finder.Directory().Put(ctx, key, old)
	got, err := finder.Directory().Offer(ctx, victim.Identity().PeerID)
	if err != nil || got.Seq < newest { // (its renewal may be newer still)
		t.Fatalf("after replay: %v (%v), want seq %d or later", got, err, newest)
	}

	// A forged offer: signed by the finder, naming provider 1.
	forged := *victim.LocalGPUs().Offer
	forged.Seq++
	forged.GPUs = append([]dht.GPUOffer{}, forged.GPUs...)
	forged.GPUs[0].Price = 1
	forged.Provider = finder.Identity().PeerID
	sealed, err := dht.SealOffer(&forged, finder.Identity().Key)
	if err != nil {
		t.Fatal(err)
	}
	if err := finder.Directory().Put(ctx, key, sealed); err == nil {
		t.Fatal("an offer signed by another peer was stored under provider 1's key")
	}
	// An oversized record.
	if err := finder.Directory().Put(ctx, key, make([]byte, dht.MaxOfferSize+1)); err == nil {
		t.Fatal("an oversized record was stored")
	}
	for _, mt := range find(dht.Query{Model: "H100"}).Matches {
		if mt.GPU.Price == 1 {
			t.Fatal("the forged price reached a search")
		}
	}

	// Withdrawn: provider 0 stops and publishes zero availability.
	if err := m.Nodes[0].Close(); err != nil {
		t.Fatal(err)
	}
	gone := m.Nodes[0].Identity().PeerID.String()
	for _, p := range providersOf(find(dht.Query{Model: "H100"})) {
		if p == gone {
			t.Fatal("a withdrawn offer was found")
		}
	}

	// Expired: provider h100 (an A100 host) falls off the network without a
	// word; its offer ages out within its TTL.
	lost := m.Nodes[h100].Identity().PeerID.String()
	if err := m.Isolate(h100); err != nil {
		t.Fatal(err)
	}
	live := peerIDs(m, h100+1, h100+a100)
	testwait.Until(t, ctx, "the lost provider's offer to expire, the others' found", func() (bool, string) {
		got := providersOf(find(dht.Query{Model: "A100"}))
		if slices.Contains(got, lost) {
			return false, "the lost provider is still found"
		}
		return slices.Equal(got, live), fmt.Sprintf("found %v, want %v", got, live)
	})
}

// A search for a count of GPUs asks the cheapest providers the price board
// lists, enough for twice the count, and no one else (FindResult.Named);
// a provider among them that gossips its asks but withholds its offer is
// left out; when those that answer make less than the count, the search
// falls back to the index and finds every provider (the withholder's offer
// read from its DHT record).
func TestACountIsFoundAmongTheBoardsCheapest(t *testing.T) {
	// In a bubble, on 10 ms links: every answer takes the time a link
	// gives it, not what a loaded machine's scheduler does, so the grace
	// after the count is made cuts no honest provider by chance.
	synctest.Test(t, func(t *testing.T) {
		const n, provs = 14, 5
		m := meshtest.Start(t, n, meshtest.Options{Seed: 7, Providers: provs, Price: "fixed:2.10", Latency: 10 * time.Millisecond, LinkOnDial: true, Config: func(i int, c *node.Config) {
			if i < provs {
				c.Price = fmt.Sprintf("fixed:2.%d0", 1+i) // provider 0 the cheapest
			}
		}})
		defer m.CloseInBubble()
		finder := m.Nodes[n-1]
		ids := peerIDs(m, 0, provs)
		want := func(i ...int) []string {
			var out []string
			for _, k := range i {
				out = append(out, m.Nodes[k].Identity().PeerID.String())
			}
			sort.Strings(out)
			return out
		}
		testwait.For(t, time.Minute, "every provider's ask on the finder's board and in the index", func() (bool, string) {
			p := finder.Prices("H100-80GB")
			if len(p.Classes) == 0 || p.Classes[0].Providers != provs {
				return false, fmt.Sprintf("board: %+v", p.Classes)
			}
			res, err := finder.FindGPUs(context.Background(), dht.Query{Model: "H100"})
			return err == nil && len(providersOf(res)) == provs, fmt.Sprintf("index: %v %v", providersOf(res), err)
		})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()

		// Honest: the two cheapest make twice 8.
		res, err := finder.FindGPUs(ctx, dht.Query{Model: "H100", Count: 8, Unit: "USDC:6"})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Named || !res.Enough || res.GPUs != 16 || !slices.Equal(providersOf(res), want(0, 1)) {
			t.Fatalf("count 8: named %v, enough %v, %d GPUs from %v; want named, 16 from the two cheapest %v", res.Named, res.Enough, res.GPUs, providersOf(res), want(0, 1))
		}
		if res.Matches[0].Offer.Provider != m.Nodes[0].Identity().PeerID || res.Matches[0].GPU.Price != 2_100_000 {
			t.Fatalf("count 8: first match %s at %d, want provider 0 at 2.10", res.Matches[0].Offer.Provider, res.Matches[0].GPU.Price)
		}
		// A max price the board's cheapest meet.
		res, err = finder.FindGPUs(ctx, dht.Query{Model: "H100-80GB", Count: 16, MaxPrice: 2_300_000, Unit: "USDC:6"})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Named || !res.Enough || !slices.Equal(providersOf(res), want(0, 1, 2)) {
			t.Fatalf("count 16 at 2.30: named %v, enough %v, %v; want named, the three at or below 2.30 %v", res.Named, res.Enough, providersOf(res), want(0, 1, 2))
		}

		// Provider 0 keeps gossiping its ask and withholds its offer.
		m.Nodes[0].Host().SetStreamHandler(dht.OfferProtocol(m.Nodes[0].Info().Swarm), func(s network.Stream) { _ = s.Reset() })
		res, err = finder.FindGPUs(ctx, dht.Query{Model: "H100", Count: 8, Unit: "USDC:6"})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Named || !res.Enough || !slices.Equal(providersOf(res), want(1)) || res.Indexed != 2 {
			t.Fatalf("count 8, provider 0 withholding: named %v, enough %v, %v of %d named; want named, only provider 1 of 2", res.Named, res.Enough, providersOf(res), res.Indexed)
		}
		// 40: all five named, four answer with 32: the index is searched.
		res, err = finder.FindGPUs(ctx, dht.Query{Model: "H100", Count: 40, Unit: "USDC:6"})
		if err != nil {
			t.Fatal(err)
		}
		if res.Named || !res.Enough || res.GPUs != 40 || !slices.Equal(providersOf(res), ids) {
			t.Fatalf("count 40, provider 0 withholding: named %v, enough %v, %d GPUs from %v; want the index's 40 from all five", res.Named, res.Enough, res.GPUs, providersOf(res))
		}
	})
}

// A provider that started alone has backed off its failed publications
// (retries 1 s, 2 s, 4 s, ... apart); the first peer to join finds its
// offer in the index within a second of the bubble's clock, not at the
// provider's next retry. (Before, the publication on the new peer's
// identify often ran before the DHT had taken the peer into its table,
// failed, and waited out the backoff: 4 s, at times 15 s, for a new user's
// first `gpus find`.)
func TestAnOfferReachesTheFirstPeerToJoinAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const alone = 10 * time.Second // the provider's tries: 0, 1, 3, 7 s; the next at 15 s
		start := time.Now()
		m := meshtest.Start(t, 2, meshtest.Options{Seed: 11, Providers: 1, Waves: 2, WaveGap: alone, Latency: 5 * time.Millisecond, LinkOnDial: true})
		joined := start.Add(alone) // wave 2, the peer, starts after the gap
		defer m.CloseInBubble()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		testwait.Until(t, ctx, "the provider's offer found by the peer", func() bool {
			res, err := m.Nodes[1].FindGPUs(ctx, dht.Query{Model: "H100"})
			return err == nil && res.Providers == 1
		})
		if took := time.Since(joined); took > time.Second {
			t.Errorf("the offer was found %v after the peer joined (bubble's clock), want within a second", took)
		}
		t.Logf("found %v after the peer joined", time.Since(joined))
	})
}

// A hostile provider gossips the cheapest ask (the real price protocol)
// and, asked for its offer, holds the stream open and says nothing. A
// search for a count that names it answers from the others once they make
// the count, in at most twice what they took (the bubble's clock), not at
// the search's 2 s bound; being slower than the others is no failure, so
// it is named again. When the others cannot make the count without it, the
// search waits it out to its bound, falls back to the index (which finds
// it through its DHT record), and reports it: the next search does not
// name it.
func TestASilentCheapProviderDoesNotHoldASearchForACount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n, provs, latency = 8, 3, 10 * time.Millisecond
		m := cheapestFirst(t, n, provs, 5, 2, latency)
		defer m.CloseInBubble()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		finder := boardFull(t, ctx, m, provs)
		silent := m.Nodes[0].Identity().PeerID
		release := make(chan struct{})
		defer close(release) // before the mesh closes: deferred calls run last first
		holdOffers(m.Nodes[0], release)
		find := func(count int) dht.FindResult {
			t.Helper()
			res, err := finder.FindGPUs(ctx, dht.Query{Model: "H100", Count: count, Unit: "USDC:6"})
			if err != nil {
				t.Fatal(err)
			}
			return res
		}
		for range 2 {
			res := find(8) // named: 0 and 1
			if !res.Named || !res.Enough || res.Indexed != 2 || !slices.Equal(providersOf(res), want1(m, 1)) || len(res.Unanswered) != 0 {
				t.Fatalf("count 8: named %v, enough %v, %d named, found %v, unanswered %v; want providers 0 and 1 named, 1 found, none reported", res.Named, res.Enough, res.Indexed, providersOf(res), res.Unanswered)
			}
			if res.Elapsed > 20*latency {
				t.Fatalf("count 8 took %v of the bubble's clock with a silent provider named; want at most twice what the answer took (links %v)", res.Elapsed, latency)
			}
			t.Logf("count 8 with the silent provider named: %v", res.Elapsed)
		}
		res := find(24) // all three named; 1 and 2 make 16
		if res.Named || !res.Enough || res.GPUs != 24 {
			t.Fatalf("count 24: named %v, enough %v, %d GPUs; want the index's 24 (the silent provider's offer from its DHT record)", res.Named, res.Enough, res.GPUs)
		}
		if got := finder.NamedSkipped(); !slices.Equal(got, []peer.ID{silent}) {
			t.Fatalf("providers not named again: %v, want the silent one %s", got, silent)
		}
		res = find(8)
		next := append(want1(m, 1), want1(m, 2)...)
		slices.Sort(next)
		if !res.Named || !slices.Equal(providersOf(res), next) || res.Indexed != 2 {
			t.Fatalf("count 8 after the silent provider was reported: named %v, %d named, found %v; want providers 1 and 2", res.Named, res.Indexed, providersOf(res))
		}
	})
}

// Hostile providers, many identities, each gossip a cheap ask and hold
// every request for their offer open, saying nothing. A search for a
// count names them, then the next cheapest (more of them): it asks the
// board at most twice (each round bounded at 2 s, the bubble's clock),
// then searches the index; every silent one is then not named again by
// this peer.
func TestCheapSilentIdentitiesCostASearchAtMostTwoNamedRounds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n, silent, honest, latency = 9, 4, 2, 10 * time.Millisecond
		m := cheapestFirst(t, n, silent+honest, 7, 1, latency) // the silent ones the cheapest
		defer m.CloseInBubble()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		finder := boardFull(t, ctx, m, silent+honest)
		release := make(chan struct{})
		defer close(release) // before the mesh closes: deferred calls run last first
		var hostile []peer.ID
		for i := range silent {
			hostile = append(hostile, m.Nodes[i].Identity().PeerID)
			holdOffers(m.Nodes[i], release)
		}
		res, err := finder.FindGPUs(ctx, dht.Query{Model: "H100", Count: 8, Unit: "USDC:6"})
		if err != nil {
			t.Fatal(err)
		}
		if res.Named || !res.Enough {
			t.Fatalf("named %v, enough %v; want the index's answer after two named rounds", res.Named, res.Enough)
		}
		// Two named rounds of 2 s, then the index, whose fetch of a silent
		// provider's offer gives up after 3 s (then its DHT copy is read):
		// a third round would be 2 s more.
		if bound := 2*node.NamedFindTimeout + 3*time.Second + time.Second; res.Elapsed > bound {
			t.Fatalf("the search took %v of the bubble's clock, want at most %v: two named rounds of %v, then the index", res.Elapsed, bound, node.NamedFindTimeout)
		}
		slices.Sort(hostile)
		if got := finder.NamedSkipped(); !slices.Equal(got, hostile) {
			t.Fatalf("providers not named again: %v, want the %d silent ones %v", got, silent, hostile)
		}
		t.Logf("%d silent identities, the cheapest: answered from the index in %v", silent, res.Elapsed)
	})
}

// cheapestFirst starts n nodes on links of latency, the first provs of
// them providers asking fixed:<whole>.<i+1>0 a GPU-hour (provider 0 the
// cheapest).
func cheapestFirst(t *testing.T, n, provs int, seed uint64, whole int, latency time.Duration) *meshtest.Mesh {
	return meshtest.Start(t, n, meshtest.Options{Seed: seed, Providers: provs, Latency: latency, LinkOnDial: true, Config: func(i int, c *node.Config) {
		if i < provs {
			c.Price = fmt.Sprintf("fixed:%d.%d0", whole, 1+i)
		}
	}})
}

// boardFull waits until the mesh's last node, the finder, has the asks of
// all provs providers on its board, and returns it.
func boardFull(t *testing.T, ctx context.Context, m *meshtest.Mesh, provs int) *node.Node {
	t.Helper()
	finder := m.Nodes[len(m.Nodes)-1]
	testwait.Until(t, ctx, "every provider's ask on the finder's board", func() bool {
		p := finder.Prices("H100-80GB")
		return len(p.Classes) == 1 && p.Classes[0].Providers == provs
	})
	return finder
}

// holdOffers makes nd a provider that, asked for its offer, holds the
// stream open and says nothing until release closes.
func holdOffers(nd *node.Node, release <-chan struct{}) {
	nd.Host().SetStreamHandler(dht.OfferProtocol(nd.Info().Swarm), func(s network.Stream) {
		<-release
		_ = s.Reset()
	})
}

func want1(m *meshtest.Mesh, i int) []string {
	return []string{m.Nodes[i].Identity().PeerID.String()}
}

// A provider searching for a count finds its own offer among the board's
// cheapest (read here, not fetched over a stream to itself) and is not
// taken for a provider that withheld it.
func TestAProviderFindsItsOwnOfferForACount(t *testing.T) {
	// In a bubble: its own offer is read at once, so a grace timed from
	// the start would end before the other provider's answer could come.
	synctest.Test(t, func(t *testing.T) {
		m := meshtest.Start(t, 4, meshtest.Options{Seed: 9, Providers: 2, Price: "fixed:2.10", Latency: 10 * time.Millisecond, LinkOnDial: true, Config: func(i int, c *node.Config) {
			if i == 1 {
				c.Price = "fixed:2.20"
			}
		}})
		defer m.CloseInBubble()
		self := m.Nodes[0]
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		testwait.Until(t, ctx, "both asks on provider 0's board", func() bool {
			p := self.Prices("H100-80GB")
			return len(p.Classes) == 1 && p.Classes[0].Providers == 2
		})
		for range 2 {
			res, err := self.FindGPUs(ctx, dht.Query{Model: "H100", Count: 8, Unit: "USDC:6"})
			if err != nil {
				t.Fatal(err)
			}
			if !res.Named || len(res.Unanswered) != 0 || !slices.Equal(providersOf(res), peerIDs(m, 0, 2)) || res.Matches[0].Offer.Provider != self.Identity().PeerID {
				t.Fatalf("named %v, unanswered %v, found %v in %v; want both providers named and answering, this one first", res.Named, res.Unanswered, providersOf(res), res.Elapsed)
			}
		}
	})
}
