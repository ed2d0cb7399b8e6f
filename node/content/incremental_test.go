package content_test

import (
	"context"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node/content"
)

// changeFile overwrites n bytes at off of the file at path with new random
// bytes, in place.
func changeFile(t testing.TB, path string, off, n int64, seed byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{seed}).Read(b)
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// randomFile writes size random bytes at dir/model.pt, a MiB at a time
// (a checkpoint of a GiB need not be held in memory).
func randomFile(t testing.TB, dir string, size int) string {
	t.Helper()
	path := filepath.Join(dir, "model.pt")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{9})
	buf := make([]byte, 1<<20)
	for left := size; left > 0; left -= len(buf) {
		n := min(left, len(buf))
		_, _ = rng.Read(buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// A checkpoint synced again after a change in place moves only the
// chunks that changed (and the DAG's nodes above them).
func TestSyncAfterAChangeMovesOnlyNewChunks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	hb, b := peerOn(t, 0)
	connect(t, hb, ha)
	dir := t.TempDir()
	path := randomFile(t, dir, 8*content.ChunkSize)
	first, err := a.Add(ctx, dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	grant(t, a, first.CID, hb)
	if _, release, err := b.Fetch(ctx, first.CID, 0); err != nil {
		t.Fatal(err)
	} else {
		release()
	}
	changeFile(t, path, 3*content.ChunkSize, content.ChunkSize, 1) // one chunk, in place
	second, err := a.Add(ctx, dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	grant(t, a, second.CID, hb)
	if second.CID == first.CID {
		t.Fatal("the changed folder has the same CID")
	}
	st, release, err := b.Fetch(ctx, second.CID, 0)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if st.FetchedBytes < content.ChunkSize || st.FetchedBytes > content.ChunkSize+16<<10 {
		t.Fatalf("fetched %d bytes of a %d-byte checkpoint after a change of %d, want the one chunk and its parents", st.FetchedBytes, st.Bytes, content.ChunkSize)
	}
}

// checkpointBytes is the size of BenchmarkCheckpointResync's checkpoint:
// the target is a GiB (-checkpoint-bytes 1073741824); 256 MiB by
// default, to spare a shared machine's disk and time.
var checkpointBytes = flag.Int("checkpoint-bytes", 256<<20, "bytes of BenchmarkCheckpointResync's checkpoint")

// BenchmarkCheckpointResync is a checkpoint (-checkpoint-bytes, 256 MiB
// by default) of which 10 MiB changed in place, synced again: the add on
// the member's side and the fetch on the submitter's (resync-transfer-s:
// the fetch alone), reported against a first full sync in the same run.
// The submitter fetches as the node does: FetchFrom member 0's peer (bulk
// streams, bitswap for what they miss).
func BenchmarkCheckpointResync(b *testing.B) {
	const changed = 10 << 20
	size := *checkpointBytes
	if size < 2*changed {
		b.Fatalf("-checkpoint-bytes %d: want at least %d", size, 2*changed)
	}
	ctx := context.Background()
	ha, member := peerOn(b, 0)
	dir := b.TempDir()
	path := randomFile(b, dir, size)
	var full, resync, transfer time.Duration
	for i := 0; i < b.N; i++ {
		hs, sub := peerOn(b, 0)
		connect(b, hs, ha)
		start := time.Now()
		root, err := member.Add(ctx, dir, 0, nil)
		if err != nil {
			b.Fatal(err)
		}
		grant(b, member, root.CID, hs)
		if _, release, err := sub.FetchFrom(ctx, root.CID, 0, ha.ID()); err != nil {
			b.Fatal(err)
		} else {
			release()
		}
		full += time.Since(start)
		changeFile(b, path, int64(size/2), changed, byte(i+1))
		start = time.Now()
		root, err = member.Add(ctx, dir, 0, nil)
		if err != nil {
			b.Fatal(err)
		}
		grant(b, member, root.CID, hs)
		fetchStart := time.Now()
		st, release, err := sub.FetchFrom(ctx, root.CID, 0, ha.ID())
		if err != nil {
			b.Fatal(err)
		}
		release()
		resync += time.Since(start)
		transfer += time.Since(fetchStart)
		if st.FetchedBytes > changed+2*content.ChunkSize {
			b.Fatalf("resync fetched %d bytes, want about %d", st.FetchedBytes, changed)
		}
	}
	b.ReportMetric(full.Seconds()/float64(b.N), "full-s")
	b.ReportMetric(resync.Seconds()/float64(b.N), "resync-s")
	b.ReportMetric(transfer.Seconds()/float64(b.N), "resync-transfer-s")
	b.ReportMetric(resync.Seconds()/full.Seconds(), "ratio")
	b.ReportMetric(float64(size)/(1<<20), "checkpoint-MiB")
}
