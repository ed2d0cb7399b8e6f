package dht

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/libp2p/go-libp2p/core/peer"
)

func TestFindNodeKeysAreToldApart(t *testing.T) {
	_, self := newKey(t)
	_, from := newKey(t)
	_, other := newKey(t)
	refresh := make([]byte, 34)
	copy(refresh, []byte{0x12, 32, 0xa1, 0x07, 0x3c, 0x55}) // a bucket refresh's key: 4 bytes of prefix, then zeros
	for _, c := range []struct {
		name string
		key  []byte
		want findNodeKind
	}{
		{"our own ID", []byte(self), findNodeCheck},
		{"the asker's ID", []byte(from), findNodeSelf},
		{"a bucket refresh key", refresh, findNodeRefresh},
		{"an offer key", []byte(OfferKey(other)), findNodeOffer},
		{"an index key", indexKeyCID("model/H100").Hash(), findNodeIndex},
		{"another peer's ID", []byte(other), findNodePeer},
		{"nothing", nil, findNodePeer},
	} {
		if got := classifyFindNode(c.key, self, from); got != c.want {
			t.Errorf("%s: got %s, want %s", c.name, findNodeKindNames[got], findNodeKindNames[c.want])
		}
	}
}

// What a directory's FIND_NODEs are for, told apart on the peer that
// serves them: a new peer checks it before taking it into its table, a
// refresh looks the refresher and each bucket up, a provider's publication
// looks up its offer key and its index keys.
func TestFindNodesServedAreCountedByWhatTheAskerDoes(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var dirs []*Directory
	provKey, provID := newKey(t)
	for i := range 3 {
		var h = loopHost(t, nil, "127.0.0.1")
		if i == 0 {
			h = loopHost(t, provKey, "127.0.0.1")
		}
		d, err := New(ctx, h, Config{Swarm: "findnode", Private: true, Mode: ModeServer})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		for _, o := range dirs {
			if err := h.Connect(ctx, peer.AddrInfo{ID: o.host.ID(), Addrs: o.host.Addrs()}); err != nil {
				t.Fatal(err)
			}
		}
		dirs = append(dirs, d)
	}
	served := func(kind string) uint64 {
		var n uint64
		for _, d := range dirs {
			n += d.FindNodes()[kind]
		}
		return n
	}
	testwait.Until(t, ctx, "each peer in the others' tables, checks served", func() (bool, string) {
		for _, d := range dirs {
			if d.RoutingTableSize() != 2 {
				return false, "a table is not full"
			}
		}
		return served("check") >= 3, fmt.Sprintf("%d checks served", served("check")) // 3 pairs, each checked at least one way
	})

	before := dirs[2].FindNodes()
	if err := dirs[0].RefreshAll(ctx); err != nil {
		t.Fatal(err)
	}
	if after := dirs[2].FindNodes(); after["self"] <= before["self"] || after["refresh"] <= before["refresh"] {
		t.Errorf("a peer's refresh: the others served self %d→%d, refresh %d→%d; want both to grow", before["self"], after["self"], before["refresh"], after["refresh"])
	}

	o := testOffer(provID, 1)
	o.Expires = time.Now().Add(10 * time.Minute).Unix()
	offerBefore, indexBefore := served("offer"), served("index")
	if err := dirs[0].Publish(ctx, seal(t, o, provKey), true); err != nil {
		t.Fatal(err)
	}
	if served("offer") == offerBefore || served("index") == indexBefore {
		t.Errorf("a publication: offer lookups served %d→%d, index lookups %d→%d; want both to grow", offerBefore, served("offer"), indexBefore, served("index"))
	}
	for _, d := range dirs {
		var sum uint64
		for _, v := range d.FindNodes() {
			sum += v
		}
		if got := d.Requests()["FIND_NODE"]; got != sum {
			t.Errorf("FIND_NODE served %d; by kind they add up to %d", got, sum)
		}
	}
}
