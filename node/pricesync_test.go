package node_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// TestANewPeerSeesThePricesFromItsNeighboursBoards: providers that re-send
// their unchanged asks only every 10 minutes; a peer that joins after
// their ticks went out has every quote on its board at once, from its
// neighbours' boards, with nothing re-sent.
func TestANewPeerSeesThePricesFromItsNeighboursBoards(t *testing.T) {
	slow := gossip.Resend{Floor: 10 * time.Minute, Cap: 10 * time.Minute}
	m := meshtest.Start(t, 4, meshtest.Options{Seed: 41, Config: func(i int, c *node.Config) {
		c.PriceBoard = gossip.BoardConfig{Probation: time.Millisecond, Maturity: time.Millisecond}
		c.PriceResend = slow
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	waitPriceMesh(ctx, t, m)
	for i := range 2 {
		if err := m.Nodes[i].Quote(ctx, h100, usd(2.00+0.10*float64(i)), 8); err != nil {
			t.Fatal(err)
		}
	}
	testwait.Until(t, ctx, "every board to hold both quotes", func() (bool, string) {
		for i, nd := range m.Nodes {
			if q := board(nd); q.Providers != 2 {
				return false, fmt.Sprintf("node %d holds %d", i, q.Providers)
			}
		}
		return true, ""
	})
	sent := func() [2]time.Time {
		return [2]time.Time{m.Nodes[0].Prices("").Asks[0].Sent, m.Nodes[1].Prices("").Asks[0].Sent}
	}
	before := sent()

	nd := m.Add(t, false, 1, 2)
	testwait.Until(t, ctx, "the newcomer's board to hold both quotes", func() (bool, string) {
		q := board(nd)
		return q.Providers == 2 && q.Best == usd(2.00), fmt.Sprintf("%d quotes, best %d", q.Providers, q.Best)
	})
	if after := sent(); after != before {
		t.Fatalf("a provider re-sent its ask (sent %v, then %v): the newcomer may have heard it on the topic", before, after)
	}
	// The quotes stand as long as their ticks say (three intervals).
	if q := board(nd); q.GPUs != 16 {
		t.Fatalf("newcomer's board: %+v", q)
	}
}

// TestBoardSyncRefusesWhatNoHonestPeerHandsOn: a stranger answers board
// syncs on the real protocol with forged, altered, stale, foreign and
// oversized quotes. The node takes only the good one, refuses each bad
// answer with ErrBadBoard (skipping a merely stale tick), and answers the
// stranger's own requests at most once a minute.
func TestBoardSyncRefusesWhatNoHonestPeerHandsOn(t *testing.T) {
	m := meshtest.Start(t, 2, meshtest.Options{Seed: 42, Config: func(i int, c *node.Config) {
		c.PriceBoard = gossip.BoardConfig{Probation: time.Millisecond, Maturity: time.Millisecond}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nd := m.Nodes[0]
	topic := nd.Prices("").Topic

	evilID := meshtest.Key(666, 7)
	evil, err := m.Net.AddPeer(evilID.Key, ma.StringCast("/ip4/10.66.6.7/tcp/4021"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Net.LinkAll(); err != nil {
		t.Fatal(err)
	}
	if err := evil.Connect(ctx, peer.AddrInfo{ID: nd.Host().ID(), Addrs: nd.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	var answer atomic.Value // []byte: what the stranger answers next
	evil.SetStreamHandler(node.BoardSyncProtocol, func(s network.Stream) {
		defer s.Close()
		if _, err := io.ReadAll(io.LimitReader(s, gossip.SyncRequestSize)); err != nil {
			_ = s.Reset()
			return
		}
		_, _ = s.Write(answer.Load().([]byte))
	})

	sybil, victim := meshtest.Key(667, 1), m.Nodes[1].Host().ID()
	now := time.Now()
	tick := func(provider peer.ID, ask uint64, at, until time.Time) gossip.Tick {
		return gossip.Tick{Provider: provider, Class: h100, Unit: gossip.DefaultUnit, Ask: ask, Available: 8, Seq: uint64(at.UnixNano()), Time: at, Until: until}
	}
	sign := func(id node.Identity, topic string, tk gossip.Tick) []byte {
		data := marshal(t, tk)
		raw, err := gossip.SignTick(id.Key, topic, data, tk.Seq)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	good := sign(sybil, topic, tick(sybil.PeerID, usd(2.50), now.Add(-20*time.Minute), now.Add(time.Hour))) // old, still standing
	altered := append([]byte{}, good...)
	altered[len(altered)-80] ^= 1 // inside the tick's data, which the signature covers
	oversized := make([]byte, gossip.MaxSyncAnswer+1)
	oversized[0] = 1
	for _, c := range []struct {
		name  string
		ticks [][]byte
		raw   []byte // the answer, when not made of ticks
		took  int
		bad   bool
	}{
		{name: "forged: names another provider", ticks: [][]byte{sign(evilID, topic, tick(victim, usd(0.01), now, now.Add(time.Minute)))}, bad: true},
		{name: "altered after signing", ticks: [][]byte{altered}, bad: true},
		{name: "of another swarm", ticks: [][]byte{sign(sybil, "/gpumesh/other/prices/3", tick(sybil.PeerID, usd(0.01), now, now.Add(time.Minute)))}, bad: true},
		{name: "stale: stood until a minute ago", ticks: [][]byte{sign(sybil, topic, tick(sybil.PeerID, usd(0.01), now.Add(-5*time.Minute), now.Add(-time.Minute)))}},
		{name: "oversized answer", raw: oversized, bad: true},
		{name: "a tick over its bound", raw: append([]byte{1, 0, 1, 0x02, 0x01}, make([]byte, gossip.MaxSignedTickSize+1)...), bad: true},
		{name: "not an answer", raw: []byte("hello"), bad: true},
		{name: "good, then forged", ticks: [][]byte{good, sign(evilID, topic, tick(victim, usd(0.01), now, now.Add(time.Minute)))}, took: 1, bad: true},
	} {
		raw := c.raw
		if raw == nil {
			if raw, err = gossip.MarshalSyncAnswer(c.ticks); err != nil {
				t.Fatal(err)
			}
		}
		answer.Store(raw)
		took, err := nd.SyncPrices(ctx, evil.ID())
		if took != c.took || c.bad != errors.Is(err, node.ErrBadBoard) {
			t.Errorf("%s: took %d, error %v; want %d taken, refused %v", c.name, took, err, c.took, c.bad)
		}
		if !c.bad && err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	q := board(nd)
	if q.Providers != 1 || q.Best != usd(2.50) {
		t.Fatalf("board after the stranger's answers: %s; want the one good quote (2.50) only", sameNumbers(q))
	}

	// The node answers the stranger's own request once, then not again
	// within a minute.
	ask := func() ([]byte, error) {
		s, err := evil.NewStream(ctx, nd.Host().ID(), node.BoardSyncProtocol)
		if err != nil {
			return nil, err
		}
		defer s.Close()
		req, _ := gossip.MarshalSyncRequest(10)
		if _, err := s.Write(req); err != nil {
			return nil, err
		}
		if err := s.CloseWrite(); err != nil {
			return nil, err
		}
		return io.ReadAll(io.LimitReader(s, gossip.MaxSyncAnswer+1))
	}
	data, err := ask()
	if err != nil {
		t.Fatal(err)
	}
	if ticks, err := gossip.UnmarshalSyncAnswer(data); err != nil || len(ticks) != 1 {
		t.Fatalf("the node's answer: %d ticks, %v; want the 1 it holds", len(ticks), err)
	}
	if data, err := ask(); err == nil && len(data) > 0 {
		t.Fatalf("answered again at once: %d bytes", len(data))
	}
}
