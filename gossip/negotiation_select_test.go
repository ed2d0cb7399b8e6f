package gossip

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// usdc is n hundredths of a USDC in smallest units: usdc(250) is 2.50 USDC.
func usdc(n uint64) uint64 { return n * 10_000 }

// bidOf is a bid of provider i for the test job.
func bidOf(i int, class string, gpus uint32, price uint64, zone string) Bid {
	return Bid{
		Job: negJob, Provider: testID(i), Class: class, Model: strings.SplitN(class, "-", 2)[0], VRAMGB: 80,
		GPUs: gpus, Price: price, LeaseSeconds: 86400, Zone: zone, Expires: t0.Add(1e12).UnixMilli(),
	}
}

func needsOf(gpus, perNode uint32, place Placement, maxPrice uint64) Needs {
	return Needs{GPUs: gpus, Class: "H100-80GB", PerNode: perNode, Placement: place, MaxPrice: maxPrice,
		Unit: "USDC:6", LeaseSeconds: 3600}
}

// picked renders a selection as "provider:GPUs" of test peer numbers.
func picked(ms []Member, n int) string {
	var s []string
	for _, m := range ms {
		for i := 0; i < n; i++ {
			if testID(i) == m.Provider {
				s = append(s, fmt.Sprintf("%d:%d", i, m.GPUs))
			}
		}
	}
	return strings.Join(s, " ")
}

func TestSelectPicksTheCheapestSetThatMeetsPlacement(t *testing.T) {
	const h = "H100-80GB"
	tests := []struct {
		name  string
		bids  []Bid
		needs Needs
		want  string // provider:GPUs, cheapest first
		cost  uint64
	}{
		{"cheapest GPUs first, the last bid in part",
			[]Bid{bidOf(1, h, 8, usdc(240), "a"), bidOf(2, h, 4, usdc(200), "b"), bidOf(3, h, 8, usdc(220), "c")},
			needsOf(10, 0, Spread, usdc(250)), "2:4 3:6", 4*usdc(200) + 6*usdc(220)},
		{"too dear and other classes are not taken",
			[]Bid{bidOf(1, h, 8, usdc(260), "a"), bidOf(2, "A100-40GB", 8, usdc(100), "a"), bidOf(3, h, 8, usdc(250), "a")},
			needsOf(8, 0, Spread, usdc(250)), "3:8", 8 * usdc(250)},
		{"perNode takes exactly perNode of a bigger bid and skips fragments",
			[]Bid{bidOf(1, h, 4, usdc(100), "a"), bidOf(2, h, 16, usdc(200), "a"), bidOf(3, h, 8, usdc(210), "a")},
			needsOf(16, 8, Spread, usdc(250)), "2:8 3:8", 8*usdc(200) + 8*usdc(210)},
		{"colocated picks the cheapest zone that has enough, not the cheapest bids",
			[]Bid{bidOf(1, h, 4, usdc(100), "eu"), bidOf(2, h, 4, usdc(100), "us"),
				bidOf(3, h, 8, usdc(200), "us"), bidOf(4, h, 8, usdc(150), "ap")},
			needsOf(8, 0, Colocated, usdc(250)), "4:8", 8 * usdc(150)},
		{"colocated: a bid without a zone is a zone of its own",
			[]Bid{bidOf(1, h, 4, usdc(100), ""), bidOf(2, h, 4, usdc(100), ""), bidOf(3, h, 8, usdc(200), "")},
			needsOf(8, 0, Colocated, usdc(250)), "3:8", 8 * usdc(200)},
		{"ties go to the bigger bid",
			[]Bid{bidOf(1, h, 2, usdc(200), "a"), bidOf(2, h, 8, usdc(200), "a")},
			needsOf(8, 0, Spread, usdc(250)), "2:8", 8 * usdc(200)},
	}
	for _, tt := range tests {
		chosen, spares, err := Select(tt.bids, tt.needs)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if got := picked(chosen, 10); got != tt.want {
			t.Errorf("%s: chose %q, want %q", tt.name, got, tt.want)
		}
		if got := TotalCost(chosen); got != tt.cost {
			t.Errorf("%s: cost %d, want %d", tt.name, got, tt.cost)
		}
		for _, s := range spares {
			for _, c := range chosen {
				if s.Provider == c.Provider {
					t.Errorf("%s: %s is both a member and a spare", tt.name, c.Provider)
				}
			}
		}
	}
}

func TestSpareBidsAreRankedCheapestFirst(t *testing.T) {
	const h = "H100-80GB"
	bids := []Bid{bidOf(1, h, 8, usdc(230), "a"), bidOf(2, h, 8, usdc(200), "a"), bidOf(3, h, 8, usdc(210), "a"),
		bidOf(4, h, 8, usdc(300), "a")}
	_, spares, err := Select(bids, needsOf(8, 0, Spread, usdc(250)))
	if err != nil {
		t.Fatal(err)
	}
	if len(spares) != 2 || spares[0].Provider != testID(3) || spares[1].Provider != testID(1) {
		t.Errorf("spares %v, want providers 3 then 1 (4 is above the max price)", spares)
	}
}

func TestNoClusterReasonsHaveNumbers(t *testing.T) {
	const h = "H100-80GB"
	tests := []struct {
		name  string
		bids  []Bid
		needs Needs
		want  string
	}{
		{"nobody", nil, needsOf(8, 0, Spread, usdc(250)), "no cluster can form: no provider of class H100-80GB bid"},
		{"other classes only", []Bid{bidOf(1, "A100-40GB", 8, usdc(100), "a")}, needsOf(8, 0, Spread, usdc(250)),
			"no provider of class H100-80GB bid (1 bid of other GPUs)"},
		{"too few below the max price",
			[]Bid{bidOf(1, h, 16, usdc(240), "a"), bidOf(2, h, 8, usdc(250), "a"), bidOf(3, h, 8, usdc(300), "a")},
			needsOf(32, 0, Spread, usdc(250)), "24 GPUs available at or below 2.50 USDC/GPU-h, need 32 (8 more from 3.00 USDC/GPU-h)"},
		{"fragments only",
			[]Bid{bidOf(1, h, 4, usdc(200), "a"), bidOf(2, h, 4, usdc(200), "a"), bidOf(3, h, 2, usdc(200), "a")},
			needsOf(8, 8, Spread, usdc(250)), "only fragments of at most 4 GPUs, perNode 8"},
		{"some whole nodes, the rest fragments",
			[]Bid{bidOf(1, h, 8, usdc(200), "a"), bidOf(2, h, 4, usdc(200), "a"), bidOf(3, h, 6, usdc(200), "a")},
			needsOf(16, 8, Spread, usdc(250)), "only 1 provider of 8 GPUs (8 GPUs), need 16; 2 more bids are fragments of at most 6 GPUs, perNode 8"},
		{"colocation impossible",
			[]Bid{bidOf(1, h, 16, usdc(200), "eu-west/ams1"), bidOf(2, h, 8, usdc(200), "us-east/nyc1"), bidOf(3, h, 8, usdc(200), "us-west/sfo1")},
			needsOf(32, 0, Colocated, usdc(250)), "colocation impossible: no zone has 32 GPUs (best eu-west/ams1 with 16)"},
		{"lease too short",
			[]Bid{func() Bid { b := bidOf(1, h, 8, usdc(200), "a"); b.LeaseSeconds = 1800; return b }()},
			needsOf(8, 0, Spread, usdc(250)), "no provider leases for 1h0m0s, the longest lease bid is 30m0s"},
	}
	for _, tt := range tests {
		_, _, err := Select(tt.bids, tt.needs)
		if !errors.Is(err, ErrNoCluster) {
			t.Errorf("%s: err = %v, want ErrNoCluster", tt.name, err)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s:\n got %q\nwant %q", tt.name, err, tt.want)
		}
	}
}

// bruteForce is the reference selection: it tries every way to take GPUs
// from every bid and keeps the cheapest that meets needs. Only for a few
// bids.
func bruteForce(bids []Bid, n Needs) (cost uint64, ok bool) {
	var options [][]uint32
	for _, b := range bids {
		opts := []uint32{0}
		eligible := b.Class == n.Class && b.VRAMGB >= n.MinVRAMGB && b.Price <= n.MaxPrice && b.LeaseSeconds >= n.LeaseSeconds
		if eligible {
			if n.PerNode > 0 {
				if b.GPUs >= n.PerNode {
					opts = append(opts, n.PerNode)
				}
			} else {
				for g := uint32(1); g <= b.GPUs; g++ {
					opts = append(opts, g)
				}
			}
		}
		options = append(options, opts)
	}
	zone := func(b Bid) string {
		if b.Zone == "" {
			return "self:" + string(b.Provider)
		}
		return b.Zone
	}
	take := make([]uint32, len(bids))
	var walk func(i int, sum uint32)
	walk = func(i int, sum uint32) {
		if sum > n.GPUs {
			return
		}
		if i == len(bids) {
			if sum != n.GPUs {
				return
			}
			var c uint64
			z := ""
			members, hostNet, noHostNet := 0, false, false
			for j, g := range take {
				if g == 0 {
					continue
				}
				members++
				hostNet = hostNet || bids[j].HostNet
				noHostNet = noHostNet || bids[j].NoHostNet
				if members > 1 && hostNet && noHostNet { // never a mix (selectIn)
					return
				}
				if n.Placement == Colocated {
					if z != "" && zone(bids[j]) != z {
						return
					}
					z = zone(bids[j])
				}
				c += uint64(g) * bids[j].Price
			}
			if !ok || c < cost {
				cost, ok = c, true
			}
			return
		}
		for _, g := range options[i] {
			take[i] = g
			walk(i+1, sum+g)
		}
		take[i] = 0
	}
	walk(0, 0)
	return cost, ok
}

// checkSelection says what is wrong with a selection, if anything.
func checkSelection(chosen []Member, bids []Bid, n Needs) error {
	byProvider := map[peer.ID]Bid{}
	for _, b := range bids {
		byProvider[b.Provider] = b
	}
	var sum uint32
	seen := map[peer.ID]bool{}
	for _, m := range chosen {
		b, ok := byProvider[m.Provider]
		switch {
		case !ok:
			return fmt.Errorf("member %s did not bid", m.Provider)
		case seen[m.Provider]:
			return fmt.Errorf("member %s twice", m.Provider)
		case m.GPUs == 0 || m.GPUs > b.GPUs:
			return fmt.Errorf("member %s takes %d of %d GPUs", m.Provider, m.GPUs, b.GPUs)
		case m.Price != b.Price || b.Price > n.MaxPrice:
			return fmt.Errorf("member %s at %d, bid %d, max %d", m.Provider, m.Price, b.Price, n.MaxPrice)
		case n.PerNode > 0 && m.GPUs != n.PerNode:
			return fmt.Errorf("member %s takes %d, perNode %d", m.Provider, m.GPUs, n.PerNode)
		case n.Placement == Colocated && (m.Zone != chosen[0].Zone || (m.Zone == "" && len(chosen) > 1)):
			return fmt.Errorf("members in zones %q and %q", chosen[0].Zone, m.Zone)
		}
		seen[m.Provider] = true
		sum += m.GPUs
	}
	if sum != n.GPUs {
		return fmt.Errorf("%d GPUs, need %d", sum, n.GPUs)
	}
	if len(chosen) > 1 && HostNetwork(chosen) && slices.ContainsFunc(chosen, func(m Member) bool { return m.NoHostNet }) {
		return fmt.Errorf("a cluster on the host network with a member whose provider refuses it: %+v", chosen)
	}
	return nil
}

func TestSelectIsAsCheapAsBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 2026))
	zones := []string{"", "z1", "z2", "z3"}
	prices := []uint64{usdc(100), usdc(150), usdc(200), usdc(250), usdc(300)}
	feasible := 0
	const rounds = 3000
	for round := range rounds {
		perNode := []uint32{0, 0, 1, 2, 4}[rng.IntN(5)]
		maxBids := 7
		if perNode > 0 {
			maxBids = 10
		}
		var bids []Bid
		for i := range rng.IntN(maxBids + 1) {
			class := "H100-80GB"
			if rng.IntN(6) == 0 {
				class = "A100-40GB"
			}
			b := bidOf(i+1, class, uint32(1+rng.IntN(4)), prices[rng.IntN(len(prices))], zones[rng.IntN(len(zones))])
			if rng.IntN(8) == 0 {
				b.LeaseSeconds = 1800
			}
			switch rng.IntN(5) { // a private swarm's: some cannot make job networks, some refuse the host's
			case 0:
				b.HostNet = true
			case 1:
				b.NoHostNet = true
			}
			bids = append(bids, b)
		}
		needs := needsOf(uint32(1+rng.IntN(10)), perNode, []Placement{Spread, Colocated}[rng.IntN(2)], prices[1+rng.IntN(3)])
		if perNode > 0 {
			needs.GPUs = perNode * uint32(1+rng.IntN(4))
		}
		want, wantOK := bruteForce(bids, needs)
		chosen, _, err := Select(bids, needs)
		if (err == nil) != wantOK {
			t.Fatalf("round %d: Select err %v, brute force feasible %v\nneeds %+v\nbids %+v", round, err, wantOK, needs, bids)
		}
		if err != nil {
			if !errors.Is(err, ErrNoCluster) {
				t.Fatalf("round %d: err %v does not wrap ErrNoCluster", round, err)
			}
			continue
		}
		feasible++
		if err := checkSelection(chosen, bids, needs); err != nil {
			t.Fatalf("round %d: %v\nneeds %+v\nbids %+v\nchosen %+v", round, err, needs, bids, chosen)
		}
		if got := TotalCost(chosen); got != want {
			t.Fatalf("round %d: cost %d, brute force %d\nneeds %+v\nbids %+v\nchosen %+v", round, got, want, needs, bids, chosen)
		}
	}
	if feasible < rounds/5 || feasible > rounds*4/5 {
		t.Errorf("%d of %d rounds feasible: the generator should give both kinds often", feasible, rounds)
	}
}

// BenchmarkSelect is the selection over 500 bids in 20 zones: what the
// submitter runs on every bid while collecting.
func BenchmarkSelect(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	var bids []Bid
	for i := range 500 {
		bids = append(bids, bidOf(i, "H100-80GB", uint32(1+rng.IntN(8)), usdc(uint64(150+rng.IntN(150))), fmt.Sprintf("zone%d", rng.IntN(20))))
	}
	for _, place := range []Placement{Spread, Colocated} {
		b.Run(string(place), func(b *testing.B) {
			needs := needsOf(32, 8, place, usdc(250))
			for b.Loop() {
				if _, _, err := Select(bids, needs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
