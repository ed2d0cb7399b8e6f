package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
)

// Five peers on one machine started as a new user would, with nothing but
// --bootstrap (no --dht-mode, no swarm key, fresh data dirs; the tests'
// loopback listen address and no mDNS are the only other flags): the LAN
// half of the directory serves them, so the peer without GPUs finds all
// four providers, and its price board shows every ask at once, with the
// robust index saying that the new providers are not counted yet.
func TestFivePeersWithDefaultsFindEveryProviderAndSeeEveryAsk(t *testing.T) {
	specs := []struct{ gpus, price string }{
		{"mock:dgxh100", "fixed:2.10"}, {"mock:dgxh100", "fixed:2.40"},
		{"mock:dgxa100", "fixed:1.20"}, {"mock:dgxa100", "fixed:1.50"},
	}
	var provs []*gmNode
	var boot []string
	for i, s := range specs {
		args := append(slices.Clone(boot), "--gpus", s.gpus, "--price", s.price)
		p := startNode(t, fmt.Sprintf("provider-%d", i), dataDir(t), args...)
		if i == 0 {
			boot = []string{"--bootstrap", p.bootstrapAddr(t)}
		}
		provs = append(provs, p)
	}
	finder := startNode(t, "finder", dataDir(t), boot...)

	var want []string
	for _, p := range provs {
		want = append(want, p.id.PeerID)
	}
	slices.Sort(want)
	testwait.For(t, meshWait, "all four providers found", func() (bool, string) {
		res, err := findGPUs(finder.data)
		if err != nil {
			return false, err.Error()
		}
		return slices.Equal(providers(res), want) && res.GPUs == 32, fmt.Sprintf("%d GPUs from %v", res.GPUs, providers(res))
	})

	// Every ask on the board at once: best and GPUs from all of them,
	// the index still waiting out the providers' probation.
	var p node.Prices
	testwait.For(t, meshWait, "every ask on the finder's board", func() (bool, string) {
		if err := gmJSON(finder.data, &p, "prices"); err != nil {
			return false, err.Error()
		}
		if len(p.Classes) != 2 {
			return false, fmt.Sprintf("%d classes", len(p.Classes))
		}
		a, h := p.Classes[0], p.Classes[1]
		return a.Providers == 2 && h.Providers == 2, fmt.Sprintf("%+v", p.Classes)
	})
	a, h := p.Classes[0], p.Classes[1]
	if a.Class != "A100-40GB" || a.Best != 1_200_000 || a.GPUs != 16 || h.Class != "H100-80GB" || h.Best != 2_100_000 || h.GPUs != 16 {
		t.Fatalf("board: %+v; want A100-40GB best 1.20 and H100-80GB best 2.10, 16 GPUs each", p.Classes)
	}
	if a.Counted != 0 || a.Median != 0 || h.Counted != 0 || h.Median != 0 {
		t.Fatalf("board: %+v; want the new providers on probation, outside the index", p.Classes)
	}
	out, err := gm(finder.data, "prices")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"A100-40GB  1.20  16", "H100-80GB  2.10  16", "(0 of 2 counted)"} {
		if !strings.Contains(string(out), line) {
			t.Errorf("prices output lacks %q:\n%s", line, out)
		}
	}

	// status: the LAN half serves, the WAN half (no public address on
	// loopback) has no peer; AutoNAT has no verdict for loopback peers.
	st, err := finder.status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Reach.DHT) != 2 || st.Reach.DHT[0].Name != "lan" || !st.Reach.DHT[0].Server || st.Reach.DHT[0].Peers == 0 ||
		st.Reach.DHT[1].Name != "wan" || st.Reach.DHT[1].Peers != 0 || st.Reach.Reachability != node.ReachUnknown {
		t.Fatalf("status reach: %+v; want LAN server with peers, WAN empty, reachability unknown", st.Reach)
	}
	out, err = gm(finder.data, "status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"reachability: unknown yet", "dht:          LAN server, "} {
		if !strings.Contains(string(out), line) {
			t.Errorf("status output lacks %q:\n%s", line, out)
		}
	}
	for _, n := range append(provs, finder) {
		if err := n.stop(); err != nil {
			t.Errorf("%s: %v", n.name, err)
		}
	}
}
