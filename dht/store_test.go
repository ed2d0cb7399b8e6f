package dht

import (
	"context"
	"errors"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
)

func TestShardRefusesProviderRecordsPastItsBound(t *testing.T) {
	ctx := context.Background()
	_, self := newKey(t)
	s := newShardStore(self, defaultShardLimits, 1, time.Now)
	if err := s.Put(ctx, ds.NewKey("/providers/x"), []byte("p")); err != nil {
		t.Fatal(err)
	}
	// Replacing a stored key is always allowed.
	if err := s.Put(ctx, ds.NewKey("/providers/x"), []byte("newer")); err != nil {
		t.Fatalf("replace: %v", err)
	}
	// Batches go through the bound too.
	b, _ := s.Batch(ctx)
	_ = b.Put(ctx, ds.NewKey("/providers/y"), []byte("p"))
	if err := b.Commit(ctx); !errors.Is(err, errShardFull) {
		t.Fatalf("second provider record through a batch: err = %v, want errShardFull", err)
	}
	// Deleting frees room.
	if err := s.Delete(ctx, ds.NewKey("/providers/x")); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, ds.NewKey("/providers/y"), []byte("p")); err != nil {
		t.Fatalf("after a delete: %v", err)
	}
	if v, p := s.counts(); v != 0 || p != 1 {
		t.Fatalf("counts = %d values, %d providers; want 0, 1", v, p)
	}
}

// FuzzOfferExpiry: the expiry read from any bytes is never past MaxOfferTTL
// from now, and reading never panics.
func FuzzOfferExpiry(f *testing.F) {
	sk, id := newKey(f)
	f.Add(seal(f, testOffer(id, 1), sk))
	f.Add([]byte{})
	f.Add([]byte("\x0a\x00"))
	now := t0
	f.Fuzz(func(t *testing.T, b []byte) {
		if got := offerExpiry(b, now); got.After(now.Add(MaxOfferTTL)) {
			t.Fatalf("expiry %v past the bound %v", got, now.Add(MaxOfferTTL))
		}
	})
}
