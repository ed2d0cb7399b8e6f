package dht

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	dssync "github.com/ipfs/go-datastore/sync"
	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	recpb "github.com/libp2p/go-libp2p-record/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
	"google.golang.org/protobuf/proto"
)

// Bounds of a peer's shard of the directory. Any peer may ask a DHT server
// to store records; past these the server refuses (values: see shard.go for
// which ones it keeps), so no one can make it hold more than a bounded
// amount of memory.
const (
	MaxStoredValues    = 100_000 // offer records (≤ 4 KiB each)
	MaxStoredProviders = 500_000 // provider records (index announcements)
)

// errShardFull is returned to a put of a provider record past the bound.
var errShardFull = errors.New("dht: this peer's directory shard is full")

// localPut marks the context of this peer's own puts (its Put, Publish and
// the corrections of its own lookups): they are stored without a sender's
// limits. Puts from the wire run under the DHT's own context, unmarked.
type localPut struct{}

func withLocal(ctx context.Context) context.Context { return context.WithValue(ctx, localPut{}, true) }

func isLocal(ctx context.Context) bool { return ctx.Value(localPut{}) != nil }

// shardStore is this peer's shard of the directory: an in-memory datastore
// whose value records are admitted by the shard's rule (per-sender rates and
// quotas, closeness when full) and whose provider records (under
// /providers/) are capped in count.
//
// The DHT hands a datastore write no sender, so the sender comes from the
// DHT's request hook: onRequest sees every PUT_VALUE with its connection,
// charges its rates and files a ticket; the write it leads to takes the
// ticket. A remote write without one is refused.
type shardStore struct {
	ds.Batching
	now func() time.Time

	self     peer.ID
	requests [6]atomic.Uint64                // DHT requests served, by type (pb.Message_MessageType 0..5)
	findNode [numFindNodeKinds]atomic.Uint64 // FIND_NODE requests served, by what the asker was doing (findNodeKind)

	mu        sync.Mutex // guards shard, providers and stats, and makes each check-and-write one step
	shard     *shard
	providers int
	maxProvid int
	stats     shardStats
}

// shardStats counts what the shard did with remote puts. A rate-limited
// put is counted twice: RateLimited on the wire, Unattributed at its write.
type shardStats struct {
	Stored, Replaced, Evicted                             int
	RateLimited, PeerQuota, GroupQuota, Far, Unattributed int
}

func newShardStore(self peer.ID, lim shardLimits, maxProviders int, now func() time.Time) *shardStore {
	return &shardStore{
		Batching:  dssync.MutexWrap(ds.NewMapDatastore()),
		now:       now,
		self:      self,
		shard:     newShard(self, lim),
		maxProvid: maxProviders,
	}
}

func isProviderKey(k ds.Key) bool { return strings.HasPrefix(k.String(), "/providers/") }

// onRequest is the DHT's request hook: it charges each PUT_VALUE to its
// sender before the DHT checks and stores the record. It must not block.
func (s *shardStore) onRequest(_ context.Context, st network.Stream, req *pb.Message) {
	if t := int(req.GetType()); t >= 0 && t < len(s.requests) {
		s.requests[t].Add(1)
	}
	if req.GetType() == pb.Message_FIND_NODE {
		s.findNode[classifyFindNode(req.GetKey(), s.self, st.Conn().RemotePeer())].Add(1)
	}
	if req.GetType() != pb.Message_PUT_VALUE {
		return
	}
	c := st.Conn()
	s.charge(string(req.GetKey()), origin{peer: c.RemotePeer(), group: netGroup(c.RemoteMultiaddr())})
}

// charge files the ticket of a remote put of key (or counts it as
// rate-limited: its write then finds no ticket and is refused).
func (s *shardStore) charge(key string, from origin) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.shard.attribute(s.now(), key, from); err != nil {
		s.stats.RateLimited++
	}
}

func (s *shardStore) Put(ctx context.Context, k ds.Key, v []byte) error {
	if isProviderKey(k) {
		return s.putProvider(ctx, k, v)
	}
	rec := &recpb.Record{}
	if err := proto.Unmarshal(v, rec); err != nil {
		return fmt.Errorf("dht: store %s: not a DHT record: %w", k, err)
	}
	now := s.now()
	expires := offerExpiry(rec.GetValue(), now)
	point := kadPoint(rec.GetKey())
	s.mu.Lock()
	defer s.mu.Unlock()
	from := origin{}
	if !isLocal(ctx) {
		var ok bool
		if from, ok = s.shard.takeTicket(now, string(rec.GetKey())); !ok {
			s.stats.Unattributed++
			return errUnattributed
		}
	}
	_, had := s.shard.stored(k.String())
	evict, err := s.shard.admit(now, k.String(), point, from, expires)
	for _, e := range evict {
		if derr := s.Batching.Delete(ctx, ds.RawKey(e)); derr != nil {
			err = errors.Join(err, derr)
		}
	}
	s.stats.Evicted += len(evict)
	if err != nil {
		if !from.local() {
			s.count(err)
		}
		return err
	}
	if had {
		s.stats.Replaced++
	} else if !from.local() {
		s.stats.Stored++
	}
	return s.Batching.Put(ctx, k, v)
}

func (s *shardStore) count(err error) {
	switch {
	case errors.Is(err, errPeerQuota):
		s.stats.PeerQuota++
	case errors.Is(err, errGroupQuota):
		s.stats.GroupQuota++
	case errors.Is(err, errFarKey):
		s.stats.Far++
	}
}

// offerExpiry reads when an offer record expires, without checking its
// signature (the DHT's validator did, just before the write); a record past
// MaxOfferTTL from now, or unreadable, is given MaxOfferTTL.
func offerExpiry(value []byte, now time.Time) time.Time {
	limit := now.Add(MaxOfferTTL)
	env, err := record.UnmarshalEnvelope(value)
	if err != nil {
		return limit
	}
	var o struct {
		Expires int64 `json:"expires"`
	}
	if err := json.Unmarshal(env.RawPayload, &o); err != nil {
		return limit
	}
	exp := time.Unix(o.Expires, 0)
	if exp.After(limit) {
		return limit
	}
	return exp
}

func (s *shardStore) putProvider(ctx context.Context, k ds.Key, v []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	has, err := s.Batching.Has(ctx, k)
	if err != nil {
		return err
	}
	if !has {
		if s.providers >= s.maxProvid {
			return fmt.Errorf("%w (%d provider records)", errShardFull, s.maxProvid)
		}
		s.providers++
	}
	return s.Batching.Put(ctx, k, v)
}

func (s *shardStore) Delete(ctx context.Context, k ds.Key) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if isProviderKey(k) {
		has, err := s.Batching.Has(ctx, k)
		if err != nil {
			return err
		}
		if has {
			s.providers--
		}
	} else {
		s.shard.remove(k.String())
	}
	return s.Batching.Delete(ctx, k)
}

// Batch applies its puts and deletes through the bounds.
func (s *shardStore) Batch(ctx context.Context) (ds.Batch, error) {
	return ds.NewBasicBatch(s), nil
}

// Query, Get, Has, GetSize, Sync and Close come from the wrapped store.
var _ ds.Batching = (*shardStore)(nil)

// counts returns how many values and provider records are stored.
func (s *shardStore) counts() (values, providers int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shard.len(), s.providers
}

// snapshot returns the counters of remote puts.
func (s *shardStore) snapshot() shardStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// queryKeys lists the stored keys; for tests and the benchmark.
func (s *shardStore) queryKeys(ctx context.Context) (query.Results, error) {
	return s.Batching.Query(ctx, query.Query{KeysOnly: true})
}

// findNodeKind is what a peer that sends us a FIND_NODE was doing, told
// from the key it asks for.
type findNodeKind int

const (
	findNodeCheck   findNodeKind = iota // key is our own ID: the asker checks we answer before it puts us in its routing table, or checks we are still alive
	findNodeSelf                        // key is the asker's ID: its routing-table refresh looks itself up
	findNodeRefresh                     // key is a refresh key (a SHA-256 multihash with 28 zero bytes): its refresh of one bucket
	findNodeOffer                       // key is an offer key: it puts an offer (the lookup before PUT_VALUE)
	findNodeIndex                       // key is another SHA-256 multihash: it announces under an index key (the lookup before ADD_PROVIDER)
	findNodePeer                        // any other key: it looks for a peer (FindPeer)
	numFindNodeKinds
)

var findNodeKindNames = [numFindNodeKinds]string{"check", "self", "refresh", "offer", "index", "peer"}

// classifyFindNode tells what a FIND_NODE for key from peer from to peer
// self was for.
func classifyFindNode(key []byte, self, from peer.ID) findNodeKind {
	switch k := string(key); {
	case k == string(self):
		return findNodeCheck
	case k == string(from):
		return findNodeSelf
	case strings.HasPrefix(k, "/"+offerNamespace+"/"):
		return findNodeOffer
	case len(key) == 34 && key[0] == 0x12 && key[1] == 32: // SHA-256 multihash
		if allZero(key[6:]) {
			return findNodeRefresh
		}
		return findNodeIndex
	}
	return findNodePeer
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
