package dht

import (
	"container/heap"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"golang.org/x/time/rate"
)

// The admission rule of a DHT server's value records (offers), a pure state
// machine: no I/O, no clock of its own (every call takes now).
//
// Identities are free: an offer record needs only a fresh key to sign it,
// and one host can push records signed by any number of keys. What an
// attacker does not get for free is network addresses, and keys close to
// this server (they must be ground, 2^k tries for k leading bits). So:
//
//  1. Rate: every PUT is charged, before its signature is checked, to a
//     token bucket of its sender and one of its sender's network group
//     (IPv4 /24, IPv6 /48; the full address where it is not public).
//  2. Quotas: a record is counted to the sender that first stored it here;
//     one peer holds at most PerPeer records, one group at most PerGroup.
//     Replacing a stored record (a newer sequence; only its provider can
//     sign one) adds nothing and is allowed within the rate.
//  3. Capacity: when Capacity records are stored, expired ones go first;
//     then a new record whose key is closer (XOR of the SHA-256 keyspace
//     the DHT routes by) to this server's ID than the farthest stored one
//     displaces it; a farther one is refused. Honest records land on the
//     servers closest to their keys, so they are the close ones here.
//  4. This peer's own puts (its offer, corrections from its lookups) are
//     always stored and never displaced.
//
// To push out an honest record at distance d an attacker needs Capacity
// records closer than d, ground key by key, from Capacity/PerGroup
// distinct /24s.

// shardLimits bound what remote peers may store here.
type shardLimits struct {
	Capacity   int           // value records in all
	PerPeer    int           // records first stored by one remote peer
	PerGroup   int           // records first stored by the peers of one network group
	PeerEvery  time.Duration // sustained put rate of one peer: one per PeerEvery
	PeerBurst  int           // puts one peer may make at once
	GroupEvery time.Duration // sustained put rate of one network group
	GroupBurst int           // puts one group may make at once
}

// defaultShardLimits are a public server's. An honest provider stores one
// offer on each of the ~20 servers closest to it and republishes it every
// few minutes; a /24 holding 256 offers on one server is a GPU farm behind
// one NAT in a swarm of very few servers.
var defaultShardLimits = shardLimits{
	Capacity:   MaxStoredValues,
	PerPeer:    16,
	PerGroup:   256,
	PeerEvery:  10 * time.Second,
	PeerBurst:  32,
	GroupEvery: 100 * time.Millisecond,
	GroupBurst: 256,
}

// Why a put was refused.
var (
	errRateLimited  = errors.New("dht: too many puts from this peer or its network; try again later")
	errPeerQuota    = errors.New("dht: this peer stores its quota of records here")
	errGroupQuota   = errors.New("dht: peers of this network store their quota of records here")
	errFarKey       = errors.New("dht: this peer's directory shard is full of records closer to it")
	errUnattributed = errors.New("dht: put not admitted (no sender on record; send it again)")
)

// origin is who stored a record: a remote peer and its network group, or
// this peer (the zero value).
type origin struct {
	peer  peer.ID
	group string
}

func (o origin) local() bool { return o.peer == "" }

// netGroup names the network a connection comes from: IPv4 /24 or IPv6 /48
// for public addresses, the address itself for loopback, private and
// link-local ones (a LAN's hosts are not free for an outsider to take).
func netGroup(a ma.Multiaddr) string {
	ip, err := manet.ToIP(a)
	if err != nil {
		return "other:" + a.String()
	}
	if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() {
		return "host:" + ip.String()
	}
	if ip4 := ip.To4(); ip4 != nil {
		return "ip4:" + ip4.Mask(net.CIDRMask(24, 32)).String() + "/24"
	}
	return "ip6:" + ip.Mask(net.CIDRMask(48, 128)).String() + "/48"
}

// kadDistance is the XOR distance between two points of the DHT keyspace
// (SHA-256 of a record key or of a peer ID's bytes), big-endian.
type kadDistance [32]byte

func kadPoint(b []byte) [32]byte { return sha256.Sum256(b) }

func xorDistance(a, b [32]byte) kadDistance {
	var d kadDistance
	for i := range a {
		d[i] = a[i] ^ b[i]
	}
	return d
}

func (d kadDistance) less(e kadDistance) bool {
	for i := range d {
		if d[i] != e[i] {
			return d[i] < e[i]
		}
	}
	return false
}

type shardEntry struct {
	key     string
	dist    kadDistance
	from    origin
	expires time.Time
	farIdx  int // in shard.far, -1 for this peer's own records
	expIdx  int // in shard.exp
}

// ticket is a sender's PUT seen on the wire and charged to its rate,
// waiting for the write it leads to.
type ticket struct {
	from origin
	at   time.Time
}

const (
	ticketTTL       = 30 * time.Second // a put not written by then failed
	maxTickets      = 8192             // puts waiting for their write at once
	maxGroupTickets = 64               // of them from one network group
)

// shard is the admission state of this peer's stored value records.
type shard struct {
	lim  shardLimits
	self [32]byte

	entries  map[string]*shardEntry
	far      *entryHeap // remote records, farthest from this peer first
	exp      *entryHeap // all records, soonest expiry first
	perPeer  map[peer.ID]int
	perGroup map[string]int

	peerRate, groupRate     map[string]*rate.Limiter
	peerPruned, groupPruned int // bucket count after the last prune

	tickets      map[string]ticket // by record key
	groupTickets map[string]int    // tickets by network group
	ticketsSwept time.Time         // last sweep of stale tickets
}

func newShard(self peer.ID, lim shardLimits) *shard {
	return &shard{
		lim:     lim,
		self:    kadPoint([]byte(self)),
		entries: map[string]*shardEntry{},
		far: &entryHeap{
			first: func(a, b *shardEntry) bool { return b.dist.less(a.dist) },
			slot:  func(e *shardEntry) *int { return &e.farIdx },
		},
		exp: &entryHeap{
			first: func(a, b *shardEntry) bool { return a.expires.Before(b.expires) },
			slot:  func(e *shardEntry) *int { return &e.expIdx },
		},
		perPeer:   map[peer.ID]int{},
		perGroup:  map[string]int{},
		peerRate:  map[string]*rate.Limiter{},
		groupRate: map[string]*rate.Limiter{},
		tickets:   map[string]ticket{},

		groupTickets: map[string]int{},
	}
}

// len is the number of stored records.
func (s *shard) len() int { return len(s.entries) }

// attribute charges a remote PUT of key to its sender's and group's rates
// and, if within them, files a ticket so that the write it leads to is
// counted to that sender. It runs before the record is checked.
func (s *shard) attribute(now time.Time, key string, from origin) error {
	if !allow(now, s.groupRate, &s.groupPruned, from.group, s.lim.GroupEvery, s.lim.GroupBurst) ||
		!allow(now, s.peerRate, &s.peerPruned, string(from.peer), s.lim.PeerEvery, s.lim.PeerBurst) {
		return errRateLimited
	}
	if old, ok := s.tickets[key]; ok {
		s.dropTicket(key, old)
	}
	if len(s.tickets) >= maxTickets || s.groupTickets[from.group] >= maxGroupTickets {
		// Tickets of puts that failed their check linger until swept; a
		// sweep runs at most once a second, so a flood cannot make every
		// put pay for one.
		if now.Sub(s.ticketsSwept) >= time.Second {
			s.ticketsSwept = now
			for k, t := range s.tickets {
				if now.Sub(t.at) > ticketTTL {
					s.dropTicket(k, t)
				}
			}
		}
		if len(s.tickets) >= maxTickets || s.groupTickets[from.group] >= maxGroupTickets {
			return errRateLimited
		}
	}
	s.tickets[key] = ticket{from: from, at: now}
	s.groupTickets[from.group]++
	return nil
}

func (s *shard) dropTicket(key string, t ticket) {
	delete(s.tickets, key)
	decr(s.groupTickets, t.from.group)
}

// allow takes a token from name's bucket in m. Buckets that have filled up
// again are the same as none; they are dropped once m doubles in size.
func allow(now time.Time, m map[string]*rate.Limiter, pruned *int, name string, every time.Duration, burst int) bool {
	l, ok := m[name]
	if !ok {
		if len(m) >= 2*(*pruned)+1024 {
			for k, b := range m {
				if b.TokensAt(now) >= float64(b.Burst()) {
					delete(m, k)
				}
			}
			*pruned = len(m)
		}
		l = rate.NewLimiter(rate.Every(every), burst)
		m[name] = l
	}
	return l.AllowN(now, 1)
}

// takeTicket returns and forgets the sender of the latest PUT of key.
func (s *shard) takeTicket(now time.Time, key string) (origin, bool) {
	t, ok := s.tickets[key]
	if ok {
		s.dropTicket(key, t)
	}
	if !ok || now.Sub(t.at) > ticketTTL {
		return origin{}, false
	}
	return t.from, true
}

// admit decides whether a record stored under key, at point of the DHT
// keyspace and valid until expires, may be stored for from. On success it is
// counted as stored. evict lists the records to delete (expired or
// displaced; already forgotten here), on refusal too.
func (s *shard) admit(now time.Time, key string, point [32]byte, from origin, expires time.Time) (evict []string, err error) {
	if e, ok := s.entries[key]; ok { // a newer version of a stored record
		e.expires = expires
		heap.Fix(s.exp, e.expIdx)
		return nil, nil
	}
	if !from.local() {
		if s.perPeer[from.peer] >= s.lim.PerPeer {
			return nil, fmt.Errorf("%w (%d)", errPeerQuota, s.lim.PerPeer)
		}
		if s.perGroup[from.group] >= s.lim.PerGroup {
			return nil, fmt.Errorf("%w (%d from %s)", errGroupQuota, s.lim.PerGroup, from.group)
		}
	}
	e := &shardEntry{key: key, dist: xorDistance(point, s.self), from: from, expires: expires, farIdx: -1}
	for len(s.entries) >= s.lim.Capacity && s.exp.Len() > 0 && !s.exp.es[0].expires.After(now) {
		evict = append(evict, s.exp.es[0].key)
		s.remove(s.exp.es[0].key)
	}
	if len(s.entries) >= s.lim.Capacity && s.far.Len() > 0 {
		f := s.far.es[0]
		if !from.local() && !e.dist.less(f.dist) {
			return evict, fmt.Errorf("%w (%d records)", errFarKey, s.lim.Capacity)
		}
		evict = append(evict, f.key)
		s.remove(f.key)
	}
	if len(s.entries) >= s.lim.Capacity && !from.local() {
		return evict, fmt.Errorf("%w (%d records)", errFarKey, s.lim.Capacity)
	}
	s.entries[key] = e
	heap.Push(s.exp, e)
	if !from.local() {
		heap.Push(s.far, e)
		s.perPeer[from.peer]++
		s.perGroup[from.group]++
	}
	return evict, nil
}

// remove forgets a stored record (deleted, expired or displaced).
func (s *shard) remove(key string) {
	e, ok := s.entries[key]
	if !ok {
		return
	}
	delete(s.entries, key)
	heap.Remove(s.exp, e.expIdx)
	if e.farIdx >= 0 {
		heap.Remove(s.far, e.farIdx)
		decr(s.perPeer, e.from.peer)
		decr(s.perGroup, e.from.group)
	}
}

func decr[K comparable](m map[K]int, k K) {
	if m[k] <= 1 {
		delete(m, k)
		return
	}
	m[k]--
}

// stored reports whether key is stored, and for whom.
func (s *shard) stored(key string) (origin, bool) {
	e, ok := s.entries[key]
	if !ok {
		return origin{}, false
	}
	return e.from, true
}

// entryHeap is a heap of records in the order first says, each record
// keeping its place in it in the field slot names (-1 when out of it), so
// that heap.Fix and heap.Remove find it.
type entryHeap struct {
	es    []*shardEntry
	first func(a, b *shardEntry) bool
	slot  func(e *shardEntry) *int
}

func (h *entryHeap) Len() int           { return len(h.es) }
func (h *entryHeap) Less(i, j int) bool { return h.first(h.es[i], h.es[j]) }
func (h *entryHeap) Swap(i, j int) {
	h.es[i], h.es[j] = h.es[j], h.es[i]
	*h.slot(h.es[i]), *h.slot(h.es[j]) = i, j
}
func (h *entryHeap) Push(x any) {
	e := x.(*shardEntry)
	*h.slot(e) = len(h.es)
	h.es = append(h.es, e)
}
func (h *entryHeap) Pop() any {
	e := h.es[len(h.es)-1]
	h.es[len(h.es)-1] = nil
	h.es = h.es[:len(h.es)-1]
	*h.slot(e) = -1
	return e
}
