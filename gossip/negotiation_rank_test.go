package gossip

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Of two bids at one price the provider of the higher score is chosen,
// whatever the peer IDs say; without scores the lower peer ID is.
func TestScoresBreakPriceTies(t *testing.T) {
	lo, hi := 1, 2 // lo has the lower peer ID
	if testID(2) < testID(1) {
		lo, hi = 2, 1
	}
	bids := []Bid{bidOf(lo, "H100-80GB", 1, usdc(200), ""), bidOf(hi, "H100-80GB", 1, usdc(200), "")}
	needs := needsOf(1, 0, Spread, usdc(250))
	chosen, _, err := Select(bids, needs)
	if err != nil || chosen[0].Provider != testID(lo) {
		t.Fatalf("without scores: chose %v (%v), want the lower peer ID", chosen, err)
	}
	rank := Ranking{Scores: map[peer.ID]float64{testID(lo): 0.6, testID(hi): 0.9}, Unknown: 0.8}
	chosen, spares, err := SelectRanked(bids, needs, rank)
	if err != nil || chosen[0].Provider != testID(hi) {
		t.Fatalf("with scores: chose %v (%v), want the provider of score 0.9", chosen, err)
	}
	if len(spares) != 1 || spares[0].Provider != testID(lo) {
		t.Fatalf("spares %v: want the provider of score 0.6", spares)
	}
	// A tie-break never costs money: a cheaper provider of a low score wins.
	bids[0].Price = usdc(199)
	if chosen, _, _ := SelectRanked(bids, needs, rank); chosen[0].Provider != testID(lo) {
		t.Fatalf("chose %v: a score of weight 0 must not outbid a lower price", chosen)
	}
}

// With a weight, a score trades against price by the documented rule:
// price × (1 + w × (1 − score)).
func TestScoreWeightTradesAgainstPrice(t *testing.T) {
	needs := needsOf(1, 0, Spread, usdc(250))
	rank := Ranking{Scores: map[peer.ID]float64{testID(1): 0.5, testID(2): 1}, Weight: 0.1}
	for _, tt := range []struct {
		good uint64 // price of provider 2 (score 1); provider 1 (score 0.5) asks 2.00
		want int
	}{
		{usdc(209), 2}, // 2.09 < 2.00 × 1.05 = 2.10
		{usdc(211), 1}, // 2.11 > 2.10
	} {
		bids := []Bid{bidOf(1, "H100-80GB", 1, usdc(200), ""), bidOf(2, "H100-80GB", 1, tt.good, "")}
		chosen, _, err := SelectRanked(bids, needs, rank)
		if err != nil || chosen[0].Provider != testID(tt.want) {
			t.Errorf("good provider at %d: chose %v (%v), want provider %d", tt.good, chosen, err, tt.want)
		}
		if chosen[0].Price != bids[tt.want-1].Price {
			t.Errorf("member price %d, want its bid's %d: the weighed price only orders", chosen[0].Price, bids[tt.want-1].Price)
		}
	}
}

// With weight 0 any scores leave the cost of the choice at the cheapest
// (checked against Select on random markets).
func TestTieBreakScoresNeverRaiseTheCost(t *testing.T) {
	rng := rand.New(rand.NewPCG(18, 2))
	prices := []uint64{usdc(180), usdc(200), usdc(220)}
	for round := range 300 {
		var bids []Bid
		scores := map[peer.ID]float64{}
		for i := range 1 + rng.IntN(12) {
			b := bidOf(i+1, "H100-80GB", uint32(1+rng.IntN(4)), prices[rng.IntN(len(prices))], []string{"a", "b", ""}[rng.IntN(3)])
			bids = append(bids, b)
			scores[b.Provider] = rng.Float64()
		}
		needs := needsOf(uint32(1+rng.IntN(8)), 0, []Placement{Spread, Colocated}[rng.IntN(2)], usdc(250))
		plain, _, err1 := Select(bids, needs)
		ranked, _, err2 := SelectRanked(bids, needs, Ranking{Scores: scores, Unknown: 0.8})
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("round %d: feasibility differs: %v vs %v", round, err1, err2)
		}
		if err1 == nil && TotalCost(plain) != TotalCost(ranked) {
			t.Fatalf("round %d: ranked cost %d, cheapest %d", round, TotalCost(ranked), TotalCost(plain))
		}
	}
}

// A set whose only bid so far is of a provider known to do worse than an
// unknown one waits DoubtWait, not Grace, for other bids; the honest bid
// arriving meanwhile at the same price wins.
func TestADoubtfulProviderWaitsForOtherBids(t *testing.T) {
	rank := Ranking{Scores: map[peer.ID]float64{testID(1): 0.7, testID(2): 0.9}, Unknown: 0.8}
	n := newNeg(t, needsOf(1, 0, Spread, usdc(250)), NegotiationConfig{Ranking: rank, DoubtWait: 500 * time.Millisecond})
	n.Ready()
	step(t, n, jobBid(1, 1, usdc(200), ""), ms(3))
	if w := n.Wake(); !w.Equal(t0.Add(ms(503))) {
		t.Fatalf("wake at %v, want 3 ms + 500 ms (DoubtWait)", w.Sub(t0))
	}
	n.Tick(t0.Add(ms(100)))
	if rd := n.Ready(); len(rd.Awards) != 0 {
		t.Fatalf("awarded %q at 100 ms: the doubtful set must wait", awarded(rd.Awards))
	}
	step(t, n, jobBid(2, 1, usdc(200), ""), ms(120))
	n.Tick(t0.Add(ms(140))) // the new set is not doubtful: its grace has passed
	if got := awarded(n.Ready().Awards); got != "2:1" {
		t.Fatalf("awarded %q, want provider 2 (score 0.9)", got)
	}
}

// BenchmarkSelectRanked is BenchmarkSelect's market with every provider
// scored: the cost of ranking by score, against "price" (Select) in the
// same run.
func BenchmarkSelectRanked(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	var bids []Bid
	scores := map[peer.ID]float64{}
	for i := range 500 {
		bids = append(bids, bidOf(i, "H100-80GB", uint32(1+rng.IntN(8)), usdc(uint64(150+rng.IntN(150))), fmt.Sprintf("zone%d", rng.IntN(20))))
		scores[bids[i].Provider] = rng.Float64()
	}
	for _, place := range []Placement{Spread, Colocated} {
		needs := needsOf(32, 8, place, usdc(250))
		for _, rk := range []struct {
			name string
			r    Ranking
		}{{"price", Ranking{}}, {"tie-break", Ranking{Scores: scores, Unknown: 0.8}}, {"weight", Ranking{Scores: scores, Unknown: 0.8, Weight: 0.2}}} {
			b.Run(string(place)+"/"+rk.name, func(b *testing.B) {
				for b.Loop() {
					if _, _, err := SelectRanked(bids, needs, rk.r); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// A provider that refused this submitter lately (Ranking.Last) is awarded
// only when the other bids cannot form the cluster, whatever its price
// and with no score weight; and it is the last spare.
func TestAProviderThatRefusedLatelyIsAwardedLast(t *testing.T) {
	rank := Ranking{Last: map[peer.ID]bool{testID(1): true}}
	for _, tt := range []struct {
		name  string
		needs Needs
		bids  []Bid
		want  string // providers chosen, with GPUs
	}{
		{"spread, others suffice", needsOf(8, 0, Spread, usdc(250)),
			[]Bid{bidOf(1, h100, 8, usdc(100), "a"), bidOf(2, h100, 8, usdc(240), "a")}, "2:8"},
		{"spread, others fall short", needsOf(12, 0, Spread, usdc(250)),
			[]Bid{bidOf(1, h100, 8, usdc(100), "a"), bidOf(2, h100, 8, usdc(240), "a")}, "2:8 1:4"},
		{"colocated, another zone suffices", needsOf(8, 0, Colocated, usdc(250)),
			[]Bid{bidOf(1, h100, 8, usdc(100), "a"), bidOf(2, h100, 8, usdc(240), "b")}, "2:8"},
		{"alone", needsOf(8, 0, Spread, usdc(250)),
			[]Bid{bidOf(1, h100, 8, usdc(100), "a")}, "1:8"},
	} {
		chosen, spares, err := SelectRanked(tt.bids, tt.needs, rank)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		var got []string
		for _, m := range chosen {
			got = append(got, fmt.Sprintf("%d:%d", idOf(m.Provider), m.GPUs))
		}
		if g := strings.Join(got, " "); g != tt.want {
			t.Errorf("%s: chose %s, want %s", tt.name, g, tt.want)
		}
		if len(spares) > 1 && spares[len(spares)-1].Provider != testID(1) {
			t.Errorf("%s: spares %v, want the provider that refused last", tt.name, spares)
		}
	}
}

// A negotiation asks a provider that refused lately after the others,
// and waits DoubtWait for other bids before awarding it.
func TestANegotiationWaitsForOthersBeforeAwardingAProviderThatRefused(t *testing.T) {
	rank := Ranking{Last: map[peer.ID]bool{testID(1): true}}
	n := newNeg(t, needsOf(8, 0, Spread, usdc(250)), NegotiationConfig{Ranking: rank, DoubtWait: time.Second})
	n.Ready()
	step(t, n, jobBid(1, 8, usdc(100), "a"), ms(1))
	n.Tick(t0.Add(ms(100)))
	if got := awarded(n.Ready().Awards); got != "" {
		t.Fatalf("awarded %q 100 ms in, want a wait for other bids", got)
	}
	step(t, n, jobBid(2, 8, usdc(240), "a"), ms(200))
	n.Tick(t0.Add(ms(300)))
	if got := awarded(n.Ready().Awards); got != "2:8" {
		t.Fatalf("awarded %q, want the dearer provider that did not refuse", got)
	}
}

// idOf is the test number of a test peer ID (-1 if none).
func idOf(p peer.ID) int {
	for i := range 20 {
		if testID(i) == p {
			return i
		}
	}
	return -1
}
