package content_test

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node/content"
)

// The holder's meter counts what the fetcher read from it on bulk
// streams, exactly, fetch after fetch of a changing folder; a stream the
// fetcher reset before its end is not counted by the holder.
func TestMeterCountsWhatTheFetcherReadToTheEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	hb, b := peerOn(t, 0)
	connect(t, hb, ha)
	src := tree(t, 5*content.ChunkSize+3)
	m := a.NewMeter(hb.ID())
	defer m.Close()
	var read atomic.Int64
	fctx := content.CountFrom(ctx, ha.ID(), &read)
	for i := range 2 {
		if i == 1 { // one file changes: only its blocks move
			if err := os.WriteFile(filepath.Join(src, "train.py"), []byte("print('step 2')\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		root, err := a.Add(ctx, src, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.GrantMetered(ctx, root.CID, m); err != nil {
			t.Fatal(err)
		}
		before := read.Load()
		st, release, err := b.FetchFrom(fctx, root.CID, 0, ha.ID())
		if err != nil {
			t.Fatal(err)
		}
		release()
		if got := read.Load() - before; got != st.FetchedBytes || got == 0 {
			t.Fatalf("fetch %d: counted %d bytes read from the holder, the fetch moved %d", i, got, st.FetchedBytes)
		}
		if !m.Wait(ctx, root.CID) {
			t.Fatalf("fetch %d: the meter never saw the fetch end", i)
		}
		if got, want := m.Bytes(), read.Load(); got != want {
			t.Fatalf("fetch %d: the holder counted %d bytes, the fetcher read %d", i, got, want)
		}
	}

	// A peer that reads a block and resets its stream: served, not counted.
	hx := bareHost(t)
	connect(t, hx, ha)
	mx := a.NewMeter(hx.ID())
	defer mx.Close()
	root, err := a.Add(ctx, src, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.GrantMetered(ctx, root.CID, mx); err != nil {
		t.Fatal(err)
	}
	data, err := ask(t, hx, ha.ID(), wants(root.CID))
	if err != nil || len(data) == 0 {
		t.Fatalf("the root's block was not served: %v", err)
	}
	if !mx.Wait(ctx, root.CID) {
		t.Fatal("the meter never saw the reset stream end")
	}
	if got := mx.Bytes(); got != 0 {
		t.Fatalf("a reset stream counted %d bytes, want 0", got)
	}
}
