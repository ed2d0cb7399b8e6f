package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
)

// findGPUs runs `gpumesh gpus find ARGS -o json` on the finder.
func findGPUs(data string, args ...string) (dht.FindResult, error) {
	var res dht.FindResult
	err := gmJSON(data, &res, append([]string{"gpus", "find"}, args...)...)
	return res, err
}

func providers(res dht.FindResult) []string {
	var ids []string
	for _, m := range res.Matches {
		ids = append(ids, m.Offer.Provider.String())
	}
	slices.Sort(ids)
	return ids
}

// Four provider processes with go-nvml's mock DGX machines publish their
// GPUs; a fifth peer with none finds them with `gpumesh gpus find`.
func TestPeerWithoutGPUsFindsProvidersWithTheCLI(t *testing.T) {
	common := []string{"--nat=false", "--dht-mode", "server"}
	first := startNode(t, "h100-a", dataDir(t), append(common, "--gpus", "mock:dgxh100", "--region", "eu-west/ams1")...)
	boot := []string{"--bootstrap", first.bootstrapAddr(t)}
	provs := []*gmNode{first}
	for i, spec := range []struct{ gpus, region string }{
		{"mock:dgxh100", "us-east/nyc2"}, {"mock:dgxa100", "us-east/nyc2"}, {"mock:dgxa100", "eu-west/ams1"},
	} {
		args := append(append(slices.Clone(common), boot...), "--gpus", spec.gpus, "--region", spec.region)
		provs = append(provs, startNode(t, fmt.Sprintf("provider-%d", i+1), dataDir(t), args...))
	}
	finder := startNode(t, "finder", dataDir(t), append(slices.Clone(common), boot...)...)

	var local node.LocalGPUs
	if err := gmJSON(finder.data, &local, "gpus", "local"); err != nil {
		t.Fatal(err)
	}
	if len(local.Inventory.GPUs) != 0 || local.Offer != nil {
		t.Fatalf("the finder offers GPUs: %+v", local)
	}
	if err := gmJSON(provs[2].data, &local, "gpus", "local"); err != nil {
		t.Fatal(err)
	}
	if len(local.Inventory.GPUs) != 8 || local.Inventory.GPUs[0].Class != "A100-40GB" || local.Inventory.Source != "mock:dgxa100" {
		t.Fatalf("provider 2's GPUs: %+v", local.Inventory)
	}

	wantH100 := []string{provs[0].id.PeerID, provs[1].id.PeerID}
	slices.Sort(wantH100)
	var res dht.FindResult
	testwait.For(t, meshWait, "both H100 providers found", func() (bool, string) {
		var err error
		res, err = findGPUs(finder.data, "--model", "H100", "--min-vram", "80", "--count", "8")
		if err != nil {
			return false, err.Error()
		}
		return slices.Equal(providers(res), wantH100), fmt.Sprint(providers(res))
	})
	if res.GPUs != 16 || !res.Enough || res.IndexKey != "model/H100" {
		t.Fatalf("H100 search: %d GPUs, enough %v, key %s; want 16, true, model/H100", res.GPUs, res.Enough, res.IndexKey)
	}

	testwait.For(t, meshWait, "all four providers found", func() (bool, string) {
		all, err := findGPUs(finder.data)
		if err != nil {
			return false, err.Error()
		}
		return len(all.Matches) == 4 && all.GPUs == 32, fmt.Sprintf("%d matches, %d GPUs", len(all.Matches), all.GPUs)
	})
	eu, err := findGPUs(finder.data, "--region", "eu")
	if err != nil {
		t.Fatal(err)
	}
	wantEU := []string{provs[0].id.PeerID, provs[3].id.PeerID}
	slices.Sort(wantEU)
	if !slices.Equal(providers(eu), wantEU) {
		t.Fatalf("eu providers %v, want %v", providers(eu), wantEU)
	}

	// The table a user reads.
	out, err := gm(finder.data, "gpus", "find", "--model", "H100", "--count", "24")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"H100-80GB", "8/8", "eu-west/ams1", "found 16 GPUs from 2 providers", "need 24", "SCORE", "0.80 (no evidence)"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("gpus find output lacks %q:\n%s", want, out)
		}
	}

	// A provider that stops withdraws its offer.
	if err := provs[0].stop(); err != nil {
		t.Fatal(err)
	}
	res, err = findGPUs(finder.data, "--model", "H100")
	if err != nil {
		t.Fatal(err)
	}
	if got := providers(res); !slices.Equal(got, []string{provs[1].id.PeerID}) {
		t.Fatalf("after provider 0 stopped: H100 providers %v, want only %s", got, provs[1].id.PeerID)
	}

	// A bad query is refused before it reaches the node.
	if _, err := gm(finder.data, "gpus", "find", "--count", "-1"); err == nil || !strings.Contains(err.Error(), "count: want 0..4096") {
		t.Fatalf("gpus find --count -1: %v", err)
	}
	for _, p := range append(provs[1:], finder) {
		if err := p.stop(); err != nil {
			t.Errorf("%s: %v", p.name, err)
		}
	}
}
