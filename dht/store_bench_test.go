package dht

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	recpb "github.com/libp2p/go-libp2p-record/pb"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
)

// BenchmarkShardStore stores 100k offer records, each from its own peer and
// /24 (no quota binds: the most the admission rule has to track), in the
// guarded store and in the unguarded one it replaced (a locked map), and
// reports for each the put rate and the heap held per record, and their
// ratios, and the time the guard adds to a put against the offer check the
// DHT runs on every put anyway (measured in the same run). It then offers 100k more, closer and farther, to the full guarded
// store (displacement or refusal) and reports that rate.
func BenchmarkShardStore(b *testing.B) {
	const n = MaxStoredValues
	_, self := newKey(b)
	sk, id := newKey(b)
	sealed := seal(b, func() *Offer { o := testOffer(id, 1); o.Expires = time.Now().Add(time.Hour).Unix(); return o }(), sk)
	type put struct {
		k    ds.Key
		rec  string
		v    []byte
		from origin
	}
	mk := func(i int) put {
		rk := OfferKey(peer.ID(fmt.Sprintf("fake-identity-%08d", i)))
		v, err := proto.Marshal(&recpb.Record{Key: []byte(rk), Value: sealed, TimeReceived: time.Now().UTC().Format(time.RFC3339Nano)})
		if err != nil {
			b.Fatal(err)
		}
		return put{k: ds.NewKey("/" + offerNamespace + "/" + fmt.Sprintf("%x", rk)), rec: rk, v: v,
			from: origin{peer: peer.ID(fmt.Sprintf("sender-%08d", i)), group: group24(i)}}
	}
	puts := make([]put, 2*n)
	for i := range puts {
		puts[i] = mk(i)
	}
	ctx := context.Background()
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	// Baseline of the cost: the check the DHT runs on every put anyway.
	v := offerValidator{now: time.Now}
	start := time.Now()
	const checks = 2000
	for range checks {
		if err := v.Validate(OfferKey(id), sealed); err != nil {
			b.Fatal(err)
		}
	}
	checkNs := float64(time.Since(start).Nanoseconds()) / checks

	var plainNs, guardNs, fullNs, plainB, guardB float64
	b.ResetTimer()
	for range b.N {
		before := heap()
		plain := dssync.MutexWrap(ds.NewMapDatastore())
		start := time.Now()
		for _, p := range puts[:n] {
			if err := plain.Put(ctx, p.k, bytes.Clone(p.v)); err != nil {
				b.Fatal(err)
			}
		}
		plainNs += float64(time.Since(start).Nanoseconds()) / n
		plainB += float64(heap()-before) / n
		runtime.KeepAlive(plain)
		plain = nil

		before = heap()
		guard := newShardStore(self, defaultShardLimits, MaxStoredProviders, time.Now)
		start = time.Now()
		for _, p := range puts[:n] {
			guard.charge(p.rec, p.from)
			if err := guard.Put(ctx, p.k, bytes.Clone(p.v)); err != nil {
				b.Fatal(err)
			}
		}
		guardNs += float64(time.Since(start).Nanoseconds()) / n
		guardB += float64(heap()-before) / n
		if v, _ := guard.counts(); v != n {
			b.Fatalf("guarded store holds %d, want %d", v, n)
		}
		start = time.Now()
		for _, p := range puts[n:] {
			guard.charge(p.rec, p.from)
			_ = guard.Put(ctx, p.k, bytes.Clone(p.v)) // displaces a farther record or is refused
		}
		fullNs += float64(time.Since(start).Nanoseconds()) / n
		runtime.KeepAlive(guard)
	}
	b.StopTimer()
	N := float64(b.N)
	b.ReportMetric(plainNs/N, "unguarded-ns/put")
	b.ReportMetric(guardNs/N, "guarded-ns/put")
	b.ReportMetric(guardNs/plainNs, "put-time-ratio")
	b.ReportMetric(fullNs/N, "full-ns/put")
	b.ReportMetric(checkNs, "offer-check-ns")
	b.ReportMetric((guardNs-plainNs)/N/checkNs, "added/offer-check")
	b.ReportMetric(plainB/N, "unguarded-B/record")
	b.ReportMetric(guardB/N, "guarded-B/record")
	b.ReportMetric(guardB/plainB, "memory-ratio")
}
