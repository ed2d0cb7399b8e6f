package meshtest_test

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
)

func TestPeersMeshAndGossipReachesAll(t *testing.T) {
	const n = 30
	m := meshtest.Start(t, n, meshtest.Options{Seed: 1}) // meshed: 8 DHT peers each
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// GossipSub is joined and ready: a message from one peer reaches all.
	topic := m.Nodes[0].Gossip().Topic("meshtest")
	if want := "/gpumesh/public/meshtest/1"; topic != want {
		t.Fatalf("topic = %q, want %q", topic, want)
	}
	subs := make([]*pubsub.Subscription, n)
	topics := make([]*pubsub.Topic, n)
	for i, nd := range m.Nodes {
		tp, err := nd.Gossip().PubSub().Join(topic)
		if err != nil {
			t.Fatal(err)
		}
		topics[i] = tp
		if subs[i], err = tp.Subscribe(); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until the publisher sees subscribers, then publish.
	testwait.Until(t, ctx, "the publisher to see a subscriber", func() bool { return len(topics[0].ListPeers()) > 0 })
	if err := topics[0].Publish(ctx, []byte("hello mesh")); err != nil {
		t.Fatal(err)
	}
	for i, s := range subs {
		msg, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("node %d got no message: %v", i, err)
		}
		if got := string(msg.Data); got != "hello mesh" {
			t.Fatalf("node %d got %q", i, got)
		}
		if msg.ReceivedFrom == "" || msg.GetFrom() != m.Nodes[0].Host().ID() {
			t.Fatalf("node %d: message from %s, want %s", i, msg.GetFrom(), m.Nodes[0].Host().ID())
		}
	}
}

func TestSameSeedSameKeys(t *testing.T) {
	a, b, c := meshtest.Key(7, 3), meshtest.Key(7, 3), meshtest.Key(8, 3)
	if a.PeerID != b.PeerID {
		t.Fatalf("same seed and index gave %s and %s", a.PeerID, b.PeerID)
	}
	if a.PeerID == c.PeerID {
		t.Fatalf("different seeds gave the same key %s", a.PeerID)
	}
}

// BenchmarkMesh measures the wall time for N peers to start and mesh (every
// routing table holding 8+ peers, every peer with a GossipSub neighbour on
// the topic of requests for bids).
func BenchmarkMesh(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				m := meshtest.Start(b, n, meshtest.Options{Seed: uint64(i)})
				b.StopTimer()
				m.Close()
				b.StartTimer()
			}
		})
	}
}

func TestSimulatedNodesTrimConnectionsAndCountBytesByProtocol(t *testing.T) {
	const n = 40
	m := meshtest.Start(t, n, meshtest.Options{Seed: 2, ConnLow: 4, ConnHigh: 8, ConnGrace: 100 * time.Millisecond, CountProtocols: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hub := m.Nodes[0] // every node dialed it
	// The DHT's and GossipSub's tags reach a real connection manager.
	tagged := 0
	for _, p := range hub.Host().Network().Peers() {
		if info := hub.Host().ConnManager().GetTagInfo(p); info != nil && len(info.Tags) > 0 {
			tagged++
		}
	}
	if tagged == 0 {
		t.Fatal("no connected peer of node 0 has a tag: its connection manager is not the one the DHT and GossipSub use")
	}
	// It trims what it may close (GossipSub protects its mesh peers) to
	// the low mark, 4.
	testwait.Until(t, ctx, "node 0 to trim the connections it may close to 4", func() (bool, string) {
		all, open := hub.Host().Network().Peers(), 0
		for _, p := range all {
			if !hub.Host().ConnManager().IsProtected(p, "") {
				open++
			}
		}
		return open <= 4, fmt.Sprintf("%d of %d peers unprotected", open, len(all))
	})
	sent := m.SentByProtocol()
	kad, meshsub := uint64(0), sent["/meshsub/1.3.0"]
	for p, v := range sent {
		if strings.HasSuffix(string(p), "/kad/1.0.0") {
			kad += v
		}
	}
	if kad == 0 || meshsub == 0 {
		t.Fatalf("bytes sent by protocol %v: want DHT and GossipSub bytes", sent)
	}
}

// A wait whose check blocks (a node's event loop that does not answer)
// still ends at its deadline, and says where the check was stuck; a check
// that holds ends it at once.
func TestPollBoundedGivesUpOnAStuckCheckAtItsDeadline(t *testing.T) {
	stuck := make(chan struct{})
	defer close(stuck)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	calls := 0
	err := meshtest.PollBounded(ctx, func(at *meshtest.Step) (bool, string) {
		calls++
		if calls < 3 {
			return false, fmt.Sprintf("check %d: not yet", calls)
		}
		at.Set("asking node %d", 7)
		<-stuck
		return true, ""
	})
	if err == nil {
		t.Fatal("a check stuck past the deadline: want an error")
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("gave up after %v; want about the 200 ms deadline", took)
	}
	for _, want := range []string{"asking node 7", "check 2: not yet"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if err := meshtest.PollBounded(t.Context(), func(*meshtest.Step) (bool, string) { return true, "" }); err != nil {
		t.Errorf("a check that holds: %v", err)
	}
}

// With LinkOnDial a pair of nodes is linked once, when one first dials the
// other (LinkAll links every ordered pair, each node to itself too); a
// dial to a node not yet linked goes through, and an isolated node stays
// cut off.
func TestLinkOnDialLinksPairsAsTheyDialAndIsolateHolds(t *testing.T) {
	const n = 30
	m := meshtest.Start(t, n, meshtest.Options{Seed: 3, LinkOnDial: true, Config: func(_ int, c *node.Config) { c.NoBlockExchange = true }})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	links := func(i, j int) int {
		return len(m.Net.LinksBetweenPeers(m.Nodes[i].Host().ID(), m.Nodes[j].Host().ID()))
	}
	var unlinked [][2]int
	for i := range n {
		if k := links(i, i); k != 0 {
			t.Fatalf("node %d has %d links to itself, want none", i, k)
		}
		for j := i + 1; j < n; j++ {
			connected := m.Nodes[i].Host().Network().Connectedness(m.Nodes[j].Host().ID()) == network.Connected
			switch k := links(i, j); {
			case k > 1:
				t.Fatalf("nodes %d and %d have %d links, want one at most", i, j, k)
			case connected && k == 0:
				t.Fatalf("nodes %d and %d are connected with no link", i, j)
			case k == 0:
				unlinked = append(unlinked, [2]int{i, j})
			}
		}
	}
	// A dial to a node never linked is linked and connects (on a loaded
	// machine every pair may have dialed already).
	a, b := 1, n-1
	if len(unlinked) > 0 {
		a, b = unlinked[0][0], unlinked[0][1]
	}
	if err := m.Connect(ctx, a, b); err != nil {
		t.Fatalf("node %d dialing node %d (linked before: %v): %v", a, b, len(unlinked) == 0, err)
	}
	if links(a, b) != 1 {
		t.Fatalf("nodes %d and %d connected with %d links, want one", a, b, links(a, b))
	}
	// An isolated node is cut off and not linked again by a dial.
	if err := m.Isolate(b); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{a, (b + 1) % n} {
		// (the far side of a closed mocknet connection closes a moment later)
		testwait.Until(t, ctx, fmt.Sprintf("node %d to see isolated node %d gone", i, b), func() bool {
			return m.Nodes[i].Host().Network().Connectedness(m.Nodes[b].Host().ID()) != network.Connected
		})
		if err := m.Connect(ctx, i, b); err == nil {
			t.Errorf("node %d reached isolated node %d", i, b)
		}
		if links(i, b) > 0 {
			t.Errorf("node %d linked to isolated node %d", i, b)
		}
	}
	// A node without a block exchange has no bitswap protocol to offer.
	for _, p := range m.Nodes[0].Host().Mux().Protocols() {
		if strings.Contains(string(p), "bitswap") {
			t.Errorf("node 0 serves %s with NoBlockExchange", p)
		}
	}
}

// TestNodesStartedInWavesJoinOneMesh: with Waves, each group of nodes is
// meshed before the next starts, and the whole mesh is meshed at the end.
func TestNodesStartedInWavesJoinOneMesh(t *testing.T) {
	const n, waves = 24, 3
	var mu sync.Mutex
	var lines []string
	m := meshtest.Start(t, n, meshtest.Options{Seed: 0x3a7e, Waves: waves, Progress: func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, fmt.Sprintf(format, args...))
	}})
	mu.Lock()
	said := slices.Clone(lines)
	mu.Unlock()
	// Wave w's nodes (8w to 8w+7) start after wave w-1 is meshed.
	for w := 1; w < waves; w++ {
		meshed := slices.IndexFunc(said, func(l string) bool { return strings.HasPrefix(l, fmt.Sprintf("wave %d of %d ", w, waves)) })
		started := slices.IndexFunc(said, func(l string) bool {
			var k int
			_, err := fmt.Sscanf(l, "%d of 24 nodes started", &k)
			return err == nil && k > w*n/waves
		})
		if meshed < 0 || started < 0 || started < meshed {
			t.Fatalf("wave %d meshed at line %d, a node of a later wave started at line %d; want it after:\n%s", w, meshed, started, strings.Join(said, "\n"))
		}
	}
	for i, nd := range m.Nodes {
		if got := nd.Directory().RoutingTableSize(); got < 8 {
			t.Errorf("node %d holds %d DHT peers, want at least 8", i, got)
		}
	}
	if len(m.Nodes) != n {
		t.Fatalf("%d nodes, want %d", len(m.Nodes), n)
	}
}

// A short request written and closed at once crosses a link in its
// latency, not at once (mocknet delivers a small write early when its
// stream is closed), on a stream opened either way: by the host, or on
// its network directly (as the directory opens them).
func TestAClosedStreamsLastWriteTakesTheLinksLatency(t *testing.T) {
	const latency = 60 * time.Millisecond
	m := meshtest.Start(t, 2, meshtest.Options{Seed: 3, Latency: latency, LinkOnDial: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const proto = "/meshtest/latency/1"
	arrived := make(chan time.Time, 2)
	m.Nodes[1].Host().SetStreamHandler(proto, func(s network.Stream) {
		defer s.Close()
		buf := make([]byte, 16)
		if n, _ := s.Read(buf); n > 0 {
			arrived <- time.Now()
		}
	})
	h, to := m.Nodes[0].Host(), m.Nodes[1].Host().ID()
	for _, open := range []struct {
		how  string
		open func() (network.Stream, error)
	}{
		{"host", func() (network.Stream, error) { return h.NewStream(ctx, to, proto) }},
		{"network", func() (network.Stream, error) {
			s, err := h.Network().NewStream(ctx, to)
			if err == nil {
				err = s.SetProtocol(proto)
			}
			return s, err
		}},
	} {
		s, err := open.open()
		if err != nil {
			t.Fatalf("%s: open: %v", open.how, err)
		}
		go func() { _, _ = io.Copy(io.Discard, s) }() // mocknet's pipes hold a write until it is read
		if open.how == "network" {
			// No negotiation on this stream: the handler is reached by
			// the host's, so write the negotiation here as a client does.
			_, _ = s.Write([]byte("\x13/multistream/1.0.0\n\x14/meshtest/latency/1\n"))
		}
		sent := time.Now()
		if _, err := s.Write([]byte("ping")); err != nil {
			t.Fatalf("%s: write: %v", open.how, err)
		}
		if err := s.CloseWrite(); err != nil {
			t.Fatalf("%s: close: %v", open.how, err)
		}
		select {
		case at := <-arrived:
			if took := at.Sub(sent); took < latency {
				t.Errorf("%s: a request closed at once arrived in %v, want at least the link's %v", open.how, took, latency)
			}
		case <-ctx.Done():
			t.Fatalf("%s: the request never arrived", open.how)
		}
		_ = s.Close()
	}
}

// TestAMeshRunsInVirtualTime: whole nodes run in a bubble of
// testing/synctest (TestScaleVirtual's ground): on 20 ms links, waves
// WaveGap apart take at least the gaps on the bubble's clock, a lookup
// finds every provider in a few link delays, and every goroutine the
// mesh started ends when it closes (synctest.Test fails otherwise).
func TestAMeshRunsInVirtualTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n, providers, waves, gap, latency = 24, 4, 3, 20 * time.Second, 20 * time.Millisecond
		start := time.Now()
		m := meshtest.Start(t, n, meshtest.Options{Seed: 0x5e7, Providers: providers, Waves: waves, WaveGap: gap,
			Latency: latency, LinkOnDial: true, ConnLow: 16, ConnHigh: 32})
		defer m.CloseInBubble()
		if took := time.Since(start); took < (waves-1)*gap {
			t.Fatalf("the mesh of %d waves %v apart started in %v of the bubble's clock, want at least %v", waves, gap, took, (waves-1)*gap)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var res dht.FindResult
		testwait.Until(t, ctx, "a lookup to find every provider", func() bool {
			var err error
			res, err = m.Nodes[n-1].FindGPUs(ctx, dht.Query{Model: "H100"})
			return err == nil && res.Providers == providers
		})
		// The lookup's time is of the bubble's clock: whole link delays,
		// whatever the CPU did meanwhile.
		begin := time.Now()
		if res, err := m.Nodes[n-2].FindGPUs(ctx, dht.Query{Model: "H100"}); err != nil || res.Providers != providers {
			t.Fatalf("lookup: %d providers, %v; want %d", res.Providers, err, providers)
		}
		if took := time.Since(begin); took < 2*latency || took%latency != 0 {
			t.Errorf("a lookup took %v of the bubble's clock, want whole %v link delays, at least a round trip", took, latency)
		}
	})
}
