package dht

import (
	"context"
	"errors"
	"testing"

	ds "github.com/ipfs/go-datastore"
)

func TestShardRefusesNewRecordsPastItsBound(t *testing.T) {
	ctx := context.Background()
	s := newCappedStore(2, 1)
	for _, k := range []string{"/a", "/b"} {
		if err := s.Put(ctx, ds.NewKey(k), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Put(ctx, ds.NewKey("/c"), []byte("v")); !errors.Is(err, errShardFull) {
		t.Fatalf("third value: err = %v, want errShardFull", err)
	}
	// Replacing a stored key is always allowed.
	if err := s.Put(ctx, ds.NewKey("/a"), []byte("newer")); err != nil {
		t.Fatalf("replace: %v", err)
	}
	// Provider records are counted apart, batches too.
	b, _ := s.Batch(ctx)
	_ = b.Put(ctx, ds.NewKey("/providers/x"), []byte("p"))
	_ = b.Put(ctx, ds.NewKey("/providers/y"), []byte("p"))
	if err := b.Commit(ctx); !errors.Is(err, errShardFull) {
		t.Fatalf("second provider record through a batch: err = %v, want errShardFull", err)
	}
	// Deleting frees room.
	if err := s.Delete(ctx, ds.NewKey("/b")); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, ds.NewKey("/c"), []byte("v")); err != nil {
		t.Fatalf("after a delete: %v", err)
	}
	if v, p := s.counts(); v != 2 || p != 1 {
		t.Fatalf("counts = %d values, %d providers; want 2, 1", v, p)
	}
}
