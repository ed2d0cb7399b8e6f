package dht

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/libp2p/go-libp2p"
	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	recpb "github.com/libp2p/go-libp2p-record/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"
)

// loopHost starts a TCP-only libp2p host on ip (an address of 127.0.0.0/8:
// its outgoing connections come from there too, so the server sees it as
// that network).
func loopHost(t *testing.T, key crypto.PrivKey, ip string) host.Host {
	t.Helper()
	opts := []libp2p.Option{
		libp2p.NoTransports, libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ListenAddrStrings("/ip4/" + ip + "/tcp/0"),
		libp2p.DisableRelay(),
	}
	if key != nil {
		opts = append(opts, libp2p.Identity(key))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// fakeOffer is an offer signed by a fresh identity: what an attacker makes
// by the thousand.
func fakeOffer(t *testing.T, now time.Time) (key string, sealed []byte) {
	t.Helper()
	sk, id := newKey(t)
	o := testOffer(id, 1)
	o.Expires = now.Add(MaxOfferTTL - time.Minute).Unix()
	return OfferKey(id), seal(t, o, sk)
}

// rawPut sends one PUT_VALUE message on the DHT protocol, as any program
// can, and reads the answer: the echo of the message when stored, a reset
// stream when refused.
func rawPut(ctx context.Context, h host.Host, to peer.ID, kad protocol.ID, key string, value []byte) error {
	s, err := h.NewStream(ctx, to, kad)
	if err != nil {
		return err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	msg, err := proto.Marshal(&pb.Message{Type: pb.Message_PUT_VALUE, Key: []byte(key), Record: &recpb.Record{Key: []byte(key), Value: value}})
	if err != nil {
		return err
	}
	if _, err := s.Write(append(binary.AppendUvarint(nil, uint64(len(msg))), msg...)); err != nil {
		return err
	}
	r := msgio.NewVarintReaderSize(s, 64<<10)
	reply, err := r.ReadMsg()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("stream closed without an answer")
		}
		return err
	}
	defer r.ReleaseMsg(reply)
	var got pb.Message
	if err := proto.Unmarshal(reply, &got); err != nil || got.GetType() != pb.Message_PUT_VALUE {
		return fmt.Errorf("answer %v, %v", got.GetType(), err)
	}
	return nil
}

// Each half of the directory has its shard bounded the same way: the LAN
// half and a private swarm's one DHT are tested whole on loopback; the WAN
// half (whose routing table takes no loopback peer) only against the flood.
func TestHonestOfferIsFoundAfterHostilePeersFillAServer(t *testing.T) {
	for _, c := range []struct {
		half    string
		private bool
		honest  bool
	}{
		{HalfLAN, false, true},
		{HalfSwarm, true, true},
		{HalfWAN, false, false},
	} {
		t.Run(c.half, func(t *testing.T) { testHostileFill(t, c.half, c.private, c.honest) })
	}
}

func testHostileFill(t *testing.T, halfName string, private, honest bool) {
	ctx, cancel := context.WithTimeout(t.Context(), 25*time.Second)
	defer cancel()
	lim := shardLimits{
		Capacity: 64, PerPeer: 8, PerGroup: 32,
		PeerEvery: time.Minute, PeerBurst: 24,
		GroupEvery: time.Millisecond, GroupBurst: 1000,
	}
	const swarm = "hostile"
	kad := ProtocolPrefix(swarm) + "/kad/1.0.0"
	if halfName == HalfLAN {
		kad = ProtocolPrefix(swarm) + "/lan/kad/1.0.0"
	}

	srvHost := loopHost(t, nil, "127.0.0.1")
	srv, err := New(ctx, srvHost, Config{Swarm: swarm, Mode: ModeServer, Private: private, limits: lim})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	store := srv.half(halfName).store
	srvInfo := peer.AddrInfo{ID: srvHost.ID(), Addrs: srvHost.Addrs()}

	// Hostile peers, each a real host with its own identity, pushing
	// offers of fresh identities with raw PUT_VALUE messages:
	// six hosts of 127.0.0.2 and four of 127.0.0.3, twelve offers each
	// (past the per-peer quota; the first network past its quota too), and
	// one host of 127.0.0.4 flooding 400.
	type hostile struct {
		h       host.Host
		puts    int
		refused int
	}
	var hostiles []*hostile
	for _, g := range []struct {
		ip            string
		hosts, offers int
	}{{"127.0.0.2", 6, 12}, {"127.0.0.3", 4, 12}, {"127.0.0.4", 1, 400}} {
		for range g.hosts {
			hostiles = append(hostiles, &hostile{h: loopHost(t, nil, g.ip), puts: g.offers})
		}
	}
	now := time.Now()
	for _, x := range hostiles {
		if err := x.h.Connect(ctx, srvInfo); err != nil {
			t.Fatal(err)
		}
		for range x.puts {
			key, sealed := fakeOffer(t, now)
			if err := rawPut(ctx, x.h, srvHost.ID(), kad, key, sealed); err != nil {
				x.refused++
			}
		}
	}

	st := store.snapshot()
	store.mu.Lock()
	sh := store.shard
	full := sh.len()
	for _, x := range hostiles {
		if n := sh.perPeer[x.h.ID()]; n > lim.PerPeer {
			t.Errorf("hostile peer %s stores %d records, quota %d", x.h.ID(), n, lim.PerPeer)
		}
		// A peer's quota bounds what it holds: a record of its own that
		// was displaced frees a place.
		if atLeast := x.puts - lim.PerPeer - st.Evicted; x.refused < atLeast {
			t.Errorf("hostile peer made %d puts, %d refused; want at least %d refused", x.puts, x.refused, atLeast)
		}
	}
	for g, n := range sh.perGroup {
		if n > lim.PerGroup {
			t.Errorf("network %s stores %d records, quota %d", g, n, lim.PerGroup)
		}
	}
	groups := len(sh.perGroup)
	store.mu.Unlock()
	t.Logf("after the hostile puts: %d stored of %d; %+v", full, lim.Capacity, st)
	if full != lim.Capacity {
		t.Fatalf("the hostile peers filled %d of %d; the test wants a full server", full, lim.Capacity)
	}
	if groups != 3 || st.RateLimited == 0 || st.PeerQuota == 0 || st.GroupQuota == 0 {
		t.Fatalf("want records from 3 networks, and puts refused for the rate, the peer quota and the network quota; got %d networks, %+v", groups, st)
	}

	if !honest {
		return
	}

	// The honest provider: a client-mode peer whose offer key is in the
	// quarter of the keyspace closest to the server, as it is for every
	// server among its 20 closest in a swarm of 80 servers or more.
	var provKey crypto.PrivKey
	var provID peer.ID
	me := kadPoint([]byte(srvHost.ID()))
	for {
		provKey, provID = newKey(t)
		if xorDistance(kadPoint([]byte(OfferKey(provID))), me)[0] < 0x40 {
			break
		}
	}
	provHost := loopHost(t, provKey, "127.0.0.1")
	prov, err := New(ctx, provHost, Config{Swarm: swarm, Mode: ModeClient, Private: private})
	if err != nil {
		t.Fatal(err)
	}
	defer prov.Close()
	finderHost := loopHost(t, nil, "127.0.0.1")
	finder, err := New(ctx, finderHost, Config{Swarm: swarm, Mode: ModeClient, Private: private})
	if err != nil {
		t.Fatal(err)
	}
	defer finder.Close()
	for _, c := range []struct {
		h host.Host
		d *Directory
	}{{provHost, prov}, {finderHost, finder}} {
		if err := c.h.Connect(ctx, srvInfo); err != nil {
			t.Fatal(err)
		}
		testwait.Until(t, ctx, "the server in the routing table", func() bool { return c.d.RoutingTableSize() > 0 })
	}

	o := testOffer(provID, 1)
	o.Addrs = []string{provHost.Addrs()[0].String()}
	o.Expires = time.Now().Add(10 * time.Minute).Unix()
	if err := prov.Publish(ctx, seal(t, o, provKey), true); err != nil {
		t.Fatal(err)
	}

	// Stored on the server, counted to the provider, with the server still
	// at its bound.
	store.mu.Lock()
	var stored bool
	for _, e := range sh.entries {
		if e.from.peer == provID {
			stored = true
		}
	}
	full = sh.len()
	store.mu.Unlock()
	if !stored {
		t.Fatalf("the honest offer is not stored on the server: %+v", store.snapshot())
	}
	if full != lim.Capacity {
		t.Fatalf("server stores %d records, bound %d", full, lim.Capacity)
	}

	// Found by a third peer: from the server's copy (the provider serves no
	// DHT records), and by a search of its GPU model.
	got, err := finder.Offer(ctx, provID)
	if err != nil {
		t.Fatalf("third peer reads the honest offer from the server: %v", err)
	}
	if got.Provider != provID || got.Seq != 1 {
		t.Fatalf("read offer of %s seq %d", got.Provider, got.Seq)
	}
	res, err := finder.Find(ctx, Query{Model: "H100"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Providers != 1 || res.Matches[0].Offer.Provider != provID {
		t.Fatalf("find H100: %d providers %+v; want the honest one", res.Providers, res.Matches)
	}
}
