package dht

import (
	"context"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Peers on one machine, in the public swarm with default modes, serve each
// other in the LAN half; the WAN half takes none of them. A provider that
// published before it had peers is told to publish again once the LAN half
// has some, and its offer is then found through the LAN half.
func TestPeersOnOneMachineShareTheLANHalf(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	provKey, provID := newKey(t)
	provHost := loopHost(t, provKey, "127.0.0.1")
	prov, err := New(ctx, provHost, Config{Swarm: "lan"})
	if err != nil {
		t.Fatal(err)
	}
	defer prov.Close()
	o := testOffer(provID, 1)
	o.Expires = time.Now().Add(10 * time.Minute).Unix()
	sealed := seal(t, o, provKey)
	if err := prov.Publish(ctx, sealed, false); err == nil {
		t.Fatal("publish with no peer at all: want an error")
	}
	if prov.Unpublished() {
		t.Fatal("unpublished with no half that has peers")
	}

	finderHost := loopHost(t, nil, "127.0.0.1")
	finder, err := New(ctx, finderHost, Config{Swarm: "lan"})
	if err != nil {
		t.Fatal(err)
	}
	defer finder.Close()
	if err := finderHost.Connect(ctx, peer.AddrInfo{ID: provHost.ID(), Addrs: provHost.Addrs()}); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, ctx, "each peer in the other's LAN half", func() bool {
		return prov.half(HalfLAN).kad.RoutingTable().Size() == 1 && finder.half(HalfLAN).kad.RoutingTable().Size() == 1
	})
	for _, d := range []*Directory{prov, finder} {
		h := d.Halves()
		if len(h) != 2 || h[0] != (HalfStatus{HalfLAN, true, 1}) || h[1] != (HalfStatus{HalfWAN, false, 0}) {
			t.Fatalf("halves %+v; want the LAN half serving one peer, the WAN half an auto-mode client with none", h)
		}
	}
	if !prov.Unpublished() {
		t.Fatal("the LAN half has a peer and not the offer: want Unpublished")
	}
	if err := prov.Publish(ctx, sealed, false); err != nil {
		t.Fatal(err)
	}
	if prov.Unpublished() {
		t.Fatal("unpublished after a publish into the LAN half")
	}
	res, err := finder.Find(ctx, Query{Model: "H100"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Providers != 1 || res.Matches[0].Offer.Provider != provID {
		t.Fatalf("find: %+v; want the provider", res)
	}
	// The finder stores the offer in its LAN shard (it is the closest
	// server to the key in a swarm of two).
	if v, _ := finder.half(HalfLAN).store.counts(); v != 1 {
		t.Fatalf("the finder's LAN shard holds %d offers, want 1", v)
	}
	// The finder served the provider's put (and the index's provider
	// records); the provider served the finder's lookups.
	if got := finder.Requests(); got["PUT_VALUE"] != 1 || got["ADD_PROVIDER"] == 0 {
		t.Errorf("the finder served %v; want 1 PUT_VALUE and ADD_PROVIDERs", got)
	}
	if got := prov.Requests(); got["GET_PROVIDERS"] == 0 || got["PUT_VALUE"] != 0 {
		t.Errorf("the provider served %v; want GET_PROVIDERS and no PUT_VALUE", got)
	}
}
