package dht

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// fakeKey is the record key of the i-th fake offer: a fresh identity each,
// as cheap as an attacker gets them.
func fakeKey(i int) string { return OfferKey(peer.ID(fmt.Sprintf("fake-%d", i))) }

// closeKey grinds a key whose keyspace point is in the quarter of the
// keyspace closest to self: where the keys a server holds as one of their
// 20 closest servers lie, in any swarm of 80 servers or more.
func closeKey(self peer.ID) string {
	me := kadPoint([]byte(self))
	for i := 0; ; i++ {
		k := OfferKey(peer.ID(fmt.Sprintf("honest-%d", i)))
		if xorDistance(kadPoint([]byte(k)), me)[0] < 0x40 {
			return k
		}
	}
}

// put runs one remote PUT through the shard as the store does: charged on
// the wire, then admitted at the write.
func put(s *shard, now time.Time, key string, from origin, expires time.Time) error {
	if err := s.attribute(now, key, from); err != nil {
		return err
	}
	f, ok := s.takeTicket(now, key)
	if !ok {
		return errUnattributed
	}
	_, err := s.admit(now, key, kadPoint([]byte(key)), f, expires)
	return err
}

func group24(i int) string { return fmt.Sprintf("ip4:%d.%d.%d.0/24", 11+i>>16&0x7f, i>>8&0xff, i&0xff) }

func TestHonestOfferIsStoredAfter100kFakesFromOneNetwork(t *testing.T) {
	_, self := newKey(t)
	s := newShard(self, defaultShardLimits)
	now := t0
	quota := 0
	// 100k fresh identities in one /24, each storing one record, slowly
	// enough that no rate binds: the /24's quota does.
	for i := range 100_000 {
		now = now.Add(time.Second)
		err := put(s, now, fakeKey(i), origin{peer: peer.ID(fmt.Sprintf("sender-%d", i)), group: "ip4:203.0.113.0/24"}, now.Add(time.Hour))
		switch {
		case errors.Is(err, errGroupQuota):
			quota++
		case err != nil:
			t.Fatalf("fake %d: %v", i, err)
		}
	}
	if got, want := s.len(), defaultShardLimits.PerGroup; got != want {
		t.Fatalf("stored %d fake records from one /24, want its quota %d", got, want)
	}
	if quota != 100_000-defaultShardLimits.PerGroup {
		t.Fatalf("%d refused for the group quota, want %d", quota, 100_000-defaultShardLimits.PerGroup)
	}
	honest := OfferKey(peer.ID("honest"))
	if err := put(s, now, honest, origin{peer: "honest", group: "ip4:198.51.100.0/24"}, now.Add(10*time.Minute)); err != nil {
		t.Fatalf("honest offer refused: %v", err)
	}
	if _, ok := s.stored(honest); !ok {
		t.Fatal("honest offer not stored")
	}
}

func TestOnePeerStoresItsQuotaAtItsRate(t *testing.T) {
	_, self := newKey(t)
	lim := defaultShardLimits
	s := newShard(self, lim)
	flood := origin{peer: "flooder", group: "ip4:203.0.113.0/24"}
	// 100k puts at one instant: the peer's burst passes, the rest is refused
	// before anything else is looked at.
	limited := 0
	for i := range 100_000 {
		if err := s.attribute(t0, fakeKey(i), flood); errors.Is(err, errRateLimited) {
			limited++
		}
	}
	if want := 100_000 - lim.PeerBurst; limited != want {
		t.Fatalf("%d puts rate-limited, want %d", limited, want)
	}
	// Slowly, the same peer stores no more than its quota.
	s = newShard(self, lim)
	now := t0
	for i := range 1000 {
		now = now.Add(lim.PeerEvery)
		if err := put(s, now, fakeKey(i), flood, now.Add(time.Hour)); err != nil && !errors.Is(err, errPeerQuota) {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	if got := s.len(); got != lim.PerPeer {
		t.Fatalf("one peer stored %d records, want its quota %d", got, lim.PerPeer)
	}
	// A stored record may be replaced (a newer sequence) within the rate.
	now = now.Add(lim.PeerEvery)
	if err := put(s, now, fakeKey(0), flood, now.Add(2*time.Hour)); err != nil {
		t.Fatalf("replacing a stored record: %v", err)
	}
}

func TestHonestCloseOfferDisplacesTheFarthestOf100kFakes(t *testing.T) {
	_, self := newKey(t)
	s := newShard(self, defaultShardLimits)
	now := t0
	// An attacker with 100k /24s fills the shard with random keys.
	for i := range MaxStoredValues {
		if err := put(s, now, fakeKey(i), origin{peer: peer.ID(fmt.Sprintf("sender-%d", i)), group: group24(i)}, now.Add(MaxOfferTTL)); err != nil {
			t.Fatalf("fake %d: %v", i, err)
		}
	}
	if s.len() != MaxStoredValues {
		t.Fatalf("stored %d, want a full shard of %d", s.len(), MaxStoredValues)
	}
	honest := closeKey(self)
	if err := put(s, now, honest, origin{peer: "honest", group: "ip4:198.51.100.0/24"}, now.Add(10*time.Minute)); err != nil {
		t.Fatalf("honest offer refused by a full shard: %v", err)
	}
	// 10k more fakes from fresh networks: only closer ones get in, each
	// displacing the farthest; the honest offer stays.
	far := 0
	for i := MaxStoredValues; i < MaxStoredValues+10_000; i++ {
		err := put(s, now, fakeKey(i), origin{peer: peer.ID(fmt.Sprintf("sender-%d", i)), group: group24(i)}, now.Add(MaxOfferTTL))
		switch {
		case errors.Is(err, errFarKey):
			far++
		case err != nil:
			t.Fatalf("fake %d: %v", i, err)
		}
	}
	if _, ok := s.stored(honest); !ok {
		t.Fatal("honest offer was displaced by random fakes")
	}
	if s.len() != MaxStoredValues {
		t.Fatalf("stored %d, want %d", s.len(), MaxStoredValues)
	}
	if far == 0 || far == 10_000 {
		t.Fatalf("%d of 10k random fakes refused as farther than every stored record; want some, not all", far)
	}
}

func TestExpiredRecordsMakeRoomFirst(t *testing.T) {
	_, self := newKey(t)
	lim := defaultShardLimits
	lim.Capacity = 4
	s := newShard(self, lim)
	// Fill with records far from self that expire at t0+1m, but one that
	// expires later.
	for i := range 4 {
		exp := t0.Add(time.Minute)
		if i == 3 {
			exp = t0.Add(time.Hour)
		}
		if err := put(s, t0, fakeKey(i), origin{peer: peer.ID(fmt.Sprint(i)), group: group24(i)}, exp); err != nil {
			t.Fatal(err)
		}
	}
	// After the expiry, any record gets in, however far, and it takes the
	// place of an expired one, not of the live one.
	now := t0.Add(2 * time.Minute)
	key := farthestKey(self, 100)
	if _, err := s.admit(now, key, kadPoint([]byte(key)), origin{peer: "x", group: "ip4:198.51.100.0/24"}, now.Add(time.Hour)); err != nil {
		t.Fatalf("put into a shard of expired records: %v", err)
	}
	if _, ok := s.stored(fakeKey(3)); !ok {
		t.Fatal("a live record was displaced while expired ones were stored")
	}
}

// farthestKey is the farthest of n fake keys from self.
func farthestKey(self peer.ID, n int) string {
	me := kadPoint([]byte(self))
	best, bestD := "", kadDistance{}
	for i := range n {
		k := OfferKey(peer.ID(fmt.Sprintf("far-%d", i)))
		if d := xorDistance(kadPoint([]byte(k)), me); bestD.less(d) {
			best, bestD = k, d
		}
	}
	return best
}

func TestOwnRecordsAreAlwaysStoredAndNeverDisplaced(t *testing.T) {
	_, self := newKey(t)
	lim := defaultShardLimits
	lim.Capacity = 8
	s := newShard(self, lim)
	own := farthestKey(self, 1000)
	for i := range 8 {
		if err := put(s, t0, fakeKey(i), origin{peer: peer.ID(fmt.Sprint(i)), group: group24(i)}, t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	evict, err := s.admit(t0, own, kadPoint([]byte(own)), origin{}, t0.Add(time.Hour))
	if err != nil || len(evict) != 1 {
		t.Fatalf("own record into a full shard: evict %v, err %v; want one displaced", evict, err)
	}
	for i := 8; i < 1000; i++ {
		_ = put(s, t0, fakeKey(i), origin{peer: peer.ID(fmt.Sprint(i)), group: group24(i)}, t0.Add(time.Hour))
	}
	if _, ok := s.stored(own); !ok {
		t.Fatal("own record displaced")
	}
	if s.len() != 8 {
		t.Fatalf("stored %d, want 8", s.len())
	}
}

func TestAWriteNeedsATicketFromTheWire(t *testing.T) {
	_, self := newKey(t)
	s := newShard(self, defaultShardLimits)
	if _, ok := s.takeTicket(t0, fakeKey(1)); ok {
		t.Fatal("ticket for a put never seen")
	}
	from := origin{peer: "p", group: "ip4:198.51.100.0/24"}
	if err := s.attribute(t0, fakeKey(1), from); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.takeTicket(t0.Add(ticketTTL+time.Second), fakeKey(1)); ok {
		t.Fatal("a stale ticket was honoured")
	}
	if err := s.attribute(t0, fakeKey(2), from); err != nil {
		t.Fatal(err)
	}
	if got, ok := s.takeTicket(t0, fakeKey(2)); !ok || got != from {
		t.Fatalf("ticket = %v, %v; want %v", got, ok, from)
	}
	if _, ok := s.takeTicket(t0, fakeKey(2)); ok {
		t.Fatal("a ticket was used twice")
	}
}

// TestShardMatchesANaiveModel drives the shard and a naive model (a list
// scanned for the farthest and the expired) with the same random puts and
// deletes and compares what they store.
func TestShardMatchesANaiveModel(t *testing.T) {
	_, self := newKey(t)
	lim := shardLimits{Capacity: 50, PerPeer: 6, PerGroup: 12, PeerEvery: time.Nanosecond, PeerBurst: 1 << 20, GroupEvery: time.Nanosecond, GroupBurst: 1 << 20}
	s := newShard(self, lim)
	me := kadPoint([]byte(self))
	type rec struct {
		from    origin
		expires time.Time
		local   bool
	}
	model := map[string]rec{}
	rng := rand.New(rand.NewPCG(7, 8))
	now := t0
	seen := map[string]int{}
	for step := range 20_000 {
		now = now.Add(time.Duration(rng.IntN(5)) * time.Second)
		key := fakeKey(rng.IntN(400))
		if rng.IntN(10) == 0 {
			s.remove(key)
			delete(model, key)
			continue
		}
		from := origin{peer: peer.ID(fmt.Sprint(rng.IntN(20))), group: group24(rng.IntN(5))}
		if rng.IntN(50) == 0 {
			from = origin{}
		}
		expires := now.Add(time.Duration(rng.Int64N(int64(600 * time.Second))))
		_, err := s.admit(now, key, kadPoint([]byte(key)), from, expires)

		// The model.
		wantErr := error(nil)
		if r, ok := model[key]; ok {
			r.expires = expires
			model[key] = r
		} else {
			peers, groups := 0, 0
			for _, r := range model {
				if !r.local && r.from.peer == from.peer {
					peers++
				}
				if !r.local && r.from.group == from.group {
					groups++
				}
			}
			switch {
			case !from.local() && peers >= lim.PerPeer:
				wantErr = errPeerQuota
			case !from.local() && groups >= lim.PerGroup:
				wantErr = errGroupQuota
			}
			if wantErr == nil {
				if len(model) >= lim.Capacity {
					soonK, soon := "", time.Time{}
					for k, r := range model {
						if !r.expires.After(now) && (soonK == "" || r.expires.Before(soon)) {
							soonK, soon = k, r.expires
						}
					}
					delete(model, soonK)
				}
				if len(model) >= lim.Capacity {
					farK, farD := "", kadDistance{}
					for k, r := range model {
						if d := xorDistance(kadPoint([]byte(k)), me); !r.local && (farK == "" || farD.less(d)) {
							farK, farD = k, d
						}
					}
					if farK != "" && (from.local() || xorDistance(kadPoint([]byte(key)), me).less(farD)) {
						delete(model, farK)
					}
					if len(model) >= lim.Capacity && !from.local() {
						wantErr = errFarKey
					}
				}
			}
			if wantErr == nil {
				model[key] = rec{from: from, expires: expires, local: from.local()}
			}
		}
		seen[fmt.Sprint(wantErr)]++
		if !errors.Is(err, wantErr) && (err != nil || wantErr != nil) {
			t.Fatalf("step %d: admit %s: err = %v, want %v", step, key, err, wantErr)
		}
		if s.len() != len(model) {
			t.Fatalf("step %d: shard stores %d, model %d", step, s.len(), len(model))
		}
		for k := range model {
			if _, ok := s.stored(k); !ok {
				t.Fatalf("step %d: %s in the model, not in the shard", step, k)
			}
		}
	}
	for _, e := range []error{nil, errPeerQuota, errGroupQuota, errFarKey} {
		if seen[fmt.Sprint(e)] == 0 {
			t.Errorf("no put ended with %v; the model test does not cover it", e)
		}
	}
}

func TestNetGroup(t *testing.T) {
	for _, c := range []struct{ addr, want string }{
		{"/ip4/203.0.113.7/tcp/4001", "ip4:203.0.113.0/24"},
		{"/ip4/203.0.113.200/udp/4001/quic-v1", "ip4:203.0.113.0/24"},
		{"/ip6/2001:db8:aa:bb::1/tcp/4001", "ip6:2001:db8:aa::/48"},
		{"/ip4/127.0.0.2/tcp/4001", "host:127.0.0.2"},
		{"/ip4/192.168.1.9/tcp/4001", "host:192.168.1.9"},
	} {
		if got := netGroup(ma.StringCast(c.addr)); got != c.want {
			t.Errorf("netGroup(%s) = %q, want %q", c.addr, got, c.want)
		}
	}
}

func TestPutsThatNeverReachTheStoreBlockOnlyTheirOwnNetwork(t *testing.T) {
	_, self := newKey(t)
	s := newShard(self, defaultShardLimits)
	// A flood of puts that fail their check (no write takes their ticket),
	// from fresh peers of one /24.
	bad := "ip4:203.0.113.0/24"
	refused := 0
	for i := range 1000 {
		if err := s.attribute(t0, fakeKey(i), origin{peer: peer.ID(fmt.Sprint(i)), group: bad}); errors.Is(err, errRateLimited) {
			refused++
		}
	}
	if refused != 1000-maxGroupTickets {
		t.Fatalf("%d of 1000 refused, want all past the network's %d waiting puts", refused, maxGroupTickets)
	}
	// Another network's put is charged and written as usual.
	honest := OfferKey("honest")
	if err := put(s, t0, honest, origin{peer: "honest", group: "ip4:198.51.100.0/24"}, t0.Add(time.Hour)); err != nil {
		t.Fatalf("honest put during the flood: %v", err)
	}
	// Once the flood's tickets are stale, its network may put again.
	later := t0.Add(ticketTTL + time.Second)
	if err := s.attribute(later, fakeKey(5000), origin{peer: "new", group: bad}); err != nil {
		t.Fatalf("put after the stale tickets: %v", err)
	}
	if len(s.tickets) != 1 {
		t.Fatalf("%d tickets kept, want the one fresh", len(s.tickets))
	}
}
