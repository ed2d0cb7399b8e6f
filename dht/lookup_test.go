package dht

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"
)

// silentHolder is a peer that speaks the DHT protocol on the real wire:
// it answers FIND_NODE (with no peers, so it passes a routing table's
// check), and holds every GET_PROVIDERS request without an answer until
// the test ends: a holder that is slow, gone quiet, or stalling lookups on
// purpose.
type silentHolder struct {
	h     host.Host
	asked atomic.Int32 // GET_PROVIDERS requests received
	done  chan struct{}
	// Stop ends its silence: the requests it holds, and every one after,
	// end at once (their streams closed unanswered).
	Stop func()
}

func newSilentHolder(t *testing.T, swarm string, key crypto.PrivKey) *silentHolder {
	s := &silentHolder{h: loopHost(t, key, "127.0.0.1"), done: make(chan struct{})}
	s.Stop = sync.OnceFunc(func() { close(s.done) })
	t.Cleanup(s.Stop)
	serveKad(s.h, swarm, func(req *pb.Message) *pb.Message {
		if req.GetType() == pb.Message_GET_PROVIDERS {
			s.asked.Add(1)
			<-s.done // whatever the asker does meanwhile
			return nil
		}
		return &pb.Message{Type: req.GetType(), Key: req.GetKey()}
	})
	return s
}

// serveKad answers the swarm's DHT protocol on h, on the real wire: each
// request gets answer's reply, or, where it returns nil, the stream ends.
func serveKad(h host.Host, swarm string, answer func(req *pb.Message) *pb.Message) {
	h.SetStreamHandler(ProtocolPrefix(swarm)+"/kad/1.0.0", func(st network.Stream) {
		defer st.Close()
		r := msgio.NewVarintReaderSize(st, 64<<10)
		w := msgio.NewVarintWriter(st)
		for {
			data, err := r.ReadMsg()
			if err != nil {
				return
			}
			req := new(pb.Message)
			if err := proto.Unmarshal(data, req); err != nil {
				return
			}
			reply := answer(req)
			if reply == nil {
				return
			}
			out, err := proto.Marshal(reply)
			if err != nil || w.WriteMsg(out) != nil {
				return
			}
		}
	})
}

// lookupSwarm is a private swarm's directory on real hosts on 127.0.0.1:
// servers, providers of H100 offers, and a clock they share.
type lookupSwarm struct {
	swarm  string
	offset atomic.Int64 // added to time.Now on every peer's clock
	dirs   []*Directory
}

func (s *lookupSwarm) now() time.Time { return time.Now().Add(time.Duration(s.offset.Load())) }

func (s *lookupSwarm) start(t *testing.T, ctx context.Context, key crypto.PrivKey, lookup LookupOptions) *Directory {
	t.Helper()
	h := loopHost(t, key, "127.0.0.1")
	d, err := New(ctx, h, Config{Swarm: s.swarm, Mode: ModeServer, Private: true, Now: s.now, Lookup: lookup})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// connect connects d to every peer in to and waits until they are all in
// its routing table.
func connect(t *testing.T, ctx context.Context, d *Directory, to ...host.Host) {
	t.Helper()
	for _, h := range to {
		if err := d.host.Connect(ctx, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	testwait.Until(t, ctx, "the peers in the routing table", func() (bool, string) {
		rt := d.halves[0].kad.RoutingTable()
		for _, h := range to {
			if rt.Find(h.ID()) == "" {
				return false, "missing " + h.ID().String()
			}
		}
		return true, ""
	})
}

// TestLookupReturnsOnceTheClosestHoldersAnswered: a quick lookup
// (LookupOptions.QuickIndexLookup) returns as soon as the peers closest
// to the index key have answered and the offers
// of the providers named are in hand, without waiting for a holder
// further away that does not answer (a lookup that waits for the DHT's
// query to end waits for it in the follow-up, until the request times
// out). Offers are still checked: an expired one, and a provider whose
// offer is nowhere, are not returned.
func TestLookupReturnsOnceTheClosestHoldersAnswered(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s := &lookupSwarm{swarm: "quick"}

	// Twelve servers and three providers, all connected to each other.
	var hosts []host.Host
	for range 12 {
		d := s.start(t, ctx, nil, LookupOptions{})
		s.dirs = append(s.dirs, d)
		hosts = append(hosts, d.host)
	}
	type provider struct {
		d  *Directory
		sk crypto.PrivKey
	}
	var provs []provider
	for range 3 {
		sk, _ := newKey(t)
		d := s.start(t, ctx, sk, LookupOptions{})
		provs = append(provs, provider{d, sk})
		hosts = append(hosts, d.host)
	}
	for i, d := range append(s.dirs, provs[0].d, provs[1].d, provs[2].d) {
		connect(t, ctx, d, append(append([]host.Host{}, hosts[:i]...), hosts[i+1:]...)...)
	}
	// Provider 0's offer lives an hour, provider 1's two minutes;
	// provider 2 announces itself under the index key with no offer at
	// all.
	for i, ttl := range []time.Duration{time.Hour, 2 * time.Minute} {
		o := testOffer(provs[i].d.host.ID(), 1)
		o.Expires = s.now().Add(ttl).Unix()
		if err := provs[i].d.Publish(ctx, seal(t, o, provs[i].sk), false); err != nil {
			t.Fatalf("provider %d: publish: %v", i, err)
		}
	}
	if err := provs[2].d.Provide(ctx, indexKeyCID(indexModel("H100")), true); err != nil {
		t.Fatal(err)
	}
	s.offset.Store(int64(5 * time.Minute)) // provider 1's offer has expired

	// A peer asks: every other peer, and the silent holder, in its
	// table. The silent holder is not among the indexClosest peers
	// closest to the key (those a lookup waits for, as kad-dht's query
	// does), so the follow-up asks it.
	point := kadPoint(indexKeyCID(indexModel("H100")).Hash())
	silentKey := func() crypto.PrivKey {
		for {
			sk, id := newKey(t)
			d := xorDistance(point, kadPoint([]byte(id)))
			closer := 0
			for _, h := range hosts {
				if xorDistance(point, kadPoint([]byte(h.ID()))).less(d) {
					closer++
				}
			}
			if closer >= indexClosest && closer < len(hosts) {
				return sk
			}
		}
	}
	ask := func(lookup LookupOptions, within time.Duration) (FindResult, *silentHolder) {
		silent := newSilentHolder(t, s.swarm, silentKey())
		q := s.start(t, ctx, nil, lookup)
		connect(t, ctx, q, append(hosts, silent.h)...)
		fctx, cancel := context.WithTimeout(ctx, within)
		defer cancel()
		res, err := q.Find(fctx, Query{Model: "H100"})
		if err != nil {
			t.Fatalf("find: %v", err)
		}
		return res, silent
	}
	res, silent := ask(LookupOptions{QuickIndexLookup: true}, 8*time.Second) // a request times out after requestTimeout, 10 s
	// The next lookup's asker may hear of this holder from this one's
	// (a referral) and ask it: it must not wait on it (it waits on its
	// own silent holder).
	silent.Stop()
	if res.Partial {
		t.Errorf("the lookup ran out of time (%v, %d peers answered): it waited for the silent holder", res.Elapsed, res.Queried)
	}
	if res.Indexed != 3 {
		t.Errorf("%d providers indexed, want 3 (the two offers and the provider with none)", res.Indexed)
	}
	if res.Providers != 1 || len(res.Matches) != 1 || res.Matches[0].Offer.Provider != provs[0].d.host.ID() {
		var got []peer.ID
		for _, m := range res.Matches {
			got = append(got, m.Offer.Provider)
		}
		t.Errorf("matches from %v, want provider 0's live offer alone (%s; provider 1's has expired, provider 2 has none)", got, provs[0].d.host.ID())
	}

	// The default lookup, run to the DHT query's end, waits for the
	// silent holder, and runs out of the time it is given (the quick
	// lookup's, under the silent holder's request timeout: a loaded
	// machine's lookup reaches it well within that).
	res, silent = ask(LookupOptions{}, 8*time.Second)
	if silent.asked.Load() == 0 {
		t.Fatal("the silent holder was never asked by the whole lookup")
	}
	if !res.Partial {
		t.Errorf("a whole lookup returned in %v without the silent holder's answer: the test above shows nothing", res.Elapsed)
	}
}

// TestMessengerReportsARefusedProtocol: a request to a peer that does not
// speak the directory's protocol, sent without waiting for identify, fails
// with an error (the negotiation's refusal), and one to a peer that does
// is answered.
func TestMessengerReportsARefusedProtocol(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s := &lookupSwarm{swarm: "quick"}
	a := s.start(t, ctx, nil, LookupOptions{})
	b := s.start(t, ctx, nil, LookupOptions{})
	stranger := loopHost(t, nil, "127.0.0.1")
	m := newMessenger(false)(a.host, []protocol.ID{ProtocolPrefix(s.swarm) + "/kad/1.0.0"})
	for _, to := range []host.Host{b.host, stranger} {
		a.host.Peerstore().AddAddrs(to.ID(), to.Addrs(), time.Minute)
	}
	req := &pb.Message{Type: pb.Message_FIND_NODE, Key: []byte(b.host.ID())}
	if _, err := m.SendRequest(ctx, b.host.ID(), req); err != nil {
		t.Errorf("request to a directory peer: %v", err)
	}
	_, err := m.SendRequest(ctx, stranger.ID(), req)
	if err == nil {
		t.Fatal("a peer that does not speak the protocol answered")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the refusal was not reported; the request waited for its deadline: %v", err)
	}
}

// TestAnswerWatchWaitsForTheClosestPeersAndTheNamedProviders: the records
// in hand answer a lookup once the closest peers to the key it knows of
// (three here) have answered (a peer that failed does not count, a closer
// one heard of later does) and every provider named is in hand.
func TestAnswerWatchWaitsForTheClosestPeersAndTheNamedProviders(t *testing.T) {
	key := indexKeyCID(indexModel("H100")).Hash()
	point := kadPoint(key)
	const proto = protocol.ID("/gpumesh/t/kad/1.0.0")
	// Eight peers, closest to the key first.
	var ps []peer.ID
	for range 8 {
		_, id := newKey(t)
		ps = append(ps, id)
	}
	slices.SortFunc(ps, func(a, b peer.ID) int {
		da, db := xorDistance(point, kadPoint([]byte(a))), xorDistance(point, kadPoint([]byte(b)))
		if da.less(db) {
			return -1
		}
		if db.less(da) {
			return 1
		}
		return 0
	})
	_, self := newKey(t)
	_, prov := newKey(t)
	req := &pb.Message{Type: pb.Message_GET_PROVIDERS, Key: key}
	answer := func(providers []peer.ID, closer ...peer.ID) *pb.Message {
		m := &pb.Message{Type: pb.Message_GET_PROVIDERS, Key: key}
		for _, p := range providers {
			m.ProviderPeers = append(m.ProviderPeers, &pb.Message_Peer{Id: []byte(p), Addrs: [][]byte{{0}}})
		}
		for _, p := range closer {
			m.CloserPeers = append(m.CloserPeers, &pb.Message_Peer{Id: []byte(p), Addrs: [][]byte{{0}}})
		}
		return m
	}
	w := newAnswerWatch(self, key)
	w.seed(proto, ps[4:]) // the routing table knows the far half
	have := map[peer.ID]bool{}
	const closest = 3 // of the 8
	done := func() bool { return w.answeredBy([]protocol.ID{proto}, have, closest) }
	for _, p := range ps[4:7] {
		w.asked(proto, p, req)
		w.answered(proto, p, req, answer(nil))
	}
	if !done() {
		t.Fatal("the three closest known peers answered with nothing: want done")
	}
	// One of them tells of closer peers, and of itself asking: not done
	// until the closer ones have answered.
	w.answered(proto, ps[4], req, answer([]peer.ID{prov}, ps[0], ps[1], ps[2], ps[3], self))
	if done() {
		t.Fatal("done with closer peers heard of and not asked, and a provider named not in hand")
	}
	have[prov] = true
	w.asked(proto, ps[0], req)
	w.failed(proto, ps[0], req) // the closest fails: it does not count
	for _, p := range ps[1:3] {
		w.asked(proto, p, req)
		w.answered(proto, p, req, answer(nil))
	}
	if done() {
		t.Fatal("done while the third closest that did not fail (ps[3]) has not answered")
	}
	w.asked(proto, ps[3], req)
	w.answered(proto, ps[3], req, answer([]peer.ID{prov}))
	if !done() {
		t.Fatal("the three closest that did not fail answered and the provider named is in hand: want done")
	}
	// Another key's answers and another half's are told apart.
	other := &pb.Message{Type: pb.Message_GET_PROVIDERS, Key: []byte("other")}
	_, stranger := newKey(t)
	w.answered(proto, ps[5], other, answer([]peer.ID{stranger}))
	if !done() {
		t.Fatal("a provider named for another key held the lookup")
	}
	if w.answeredBy([]protocol.ID{proto, "/gpumesh/t/lan/kad/1.0.0"}, have, closest) {
		t.Fatal("done in a half that nobody answered")
	}
}
