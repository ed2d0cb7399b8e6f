package dht

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	dssync "github.com/ipfs/go-datastore/sync"
)

// Bounds of a peer's shard of the directory. Any peer may ask a DHT server
// to store records; past these the server refuses, so no one can make it
// hold more than a bounded amount of memory.
const (
	MaxStoredValues    = 100_000 // offer records (≤ 4 KiB each)
	MaxStoredProviders = 500_000 // provider records (index announcements)
)

// errShardFull is returned to a put past the bounds.
var errShardFull = errors.New("dht: this peer's directory shard is full")

// cappedStore is an in-memory datastore that refuses new keys past a bound,
// counted apart for provider records (under /providers/) and values.
type cappedStore struct {
	ds.Batching
	mu                   sync.Mutex // guards the counts
	values, providers    int
	maxValues, maxProvid int
}

func newCappedStore(maxValues, maxProviders int) *cappedStore {
	return &cappedStore{Batching: dssync.MutexWrap(ds.NewMapDatastore()), maxValues: maxValues, maxProvid: maxProviders}
}

func isProviderKey(k ds.Key) bool { return strings.HasPrefix(k.String(), "/providers/") }

func (s *cappedStore) Put(ctx context.Context, k ds.Key, v []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	has, err := s.Batching.Has(ctx, k)
	if err != nil {
		return err
	}
	if !has {
		count, limit := &s.values, s.maxValues
		if isProviderKey(k) {
			count, limit = &s.providers, s.maxProvid
		}
		if *count >= limit {
			return fmt.Errorf("%w (%d records)", errShardFull, limit)
		}
		*count++
	}
	return s.Batching.Put(ctx, k, v)
}

func (s *cappedStore) Delete(ctx context.Context, k ds.Key) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	has, err := s.Batching.Has(ctx, k)
	if err != nil {
		return err
	}
	if has {
		if isProviderKey(k) {
			s.providers--
		} else {
			s.values--
		}
	}
	return s.Batching.Delete(ctx, k)
}

// Batch applies its puts and deletes through the bounds.
func (s *cappedStore) Batch(ctx context.Context) (ds.Batch, error) {
	return ds.NewBasicBatch(s), nil
}

// Query, Get, Has, GetSize, Sync and Close come from the wrapped store.
var _ ds.Batching = (*cappedStore)(nil)

// counts returns how many values and provider records are stored.
func (s *cappedStore) counts() (values, providers int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.values, s.providers
}

// queryKeys lists the stored keys; for tests and the benchmark.
func (s *cappedStore) queryKeys(ctx context.Context) (query.Results, error) {
	return s.Batching.Query(ctx, query.Query{KeysOnly: true})
}
