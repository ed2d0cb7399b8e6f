package node_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkClusterFormation submits jobs of 8 and 32 H100s from peers
// without GPUs on a 50-peer mesh (meshtest: real nodes on mocknet, no
// injected latency; ten providers of 8 GPUs in two zones) and measures
// submit-to-formed latency p50/p95/p99 and the negotiation messages sent per
// cluster. Each formed job is cancelled (and its GPUs seen free again)
// before the next, outside the timing.
func BenchmarkClusterFormation(b *testing.B) {
	m := market50(b)
	providers := m.Nodes[:10]
	for _, gpus := range []int{8, 32} {
		b.Run(fmt.Sprintf("gpus=%d", gpus), func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			spec := jobSpec(b, gpus, "")
			var lat []time.Duration
			var msgs uint64
			count := func() uint64 {
				var s uint64
				for _, nd := range m.Nodes {
					s += nd.NegotiationMessages()
				}
				return s
			}
			b.ResetTimer()
			for i := range b.N {
				submitter := m.Nodes[10+i%40]
				before := count()
				start := time.Now()
				j := submit(b, ctx, submitter, spec)
				lat = append(lat, time.Since(start))
				if !holds(j) {
					b.Fatalf("%s: %s", j.State, j.Reason)
				}
				msgs += count() - before
				b.StopTimer()
				if _, err := submitter.CancelJob(ctx, j.ID); err != nil {
					b.Fatal(err)
				}
				waitFree(b, ctx, providers)
				b.StartTimer()
			}
			b.StopTimer()
			slices.Sort(lat)
			q := func(p int) float64 {
				i := min(max((len(lat)*p+99)/100-1, 0), len(lat)-1)
				return float64(lat[i]) / float64(time.Millisecond)
			}
			b.ReportMetric(q(50), "p50-ms")
			b.ReportMetric(q(95), "p95-ms")
			b.ReportMetric(q(99), "p99-ms")
			b.ReportMetric(float64(msgs)/float64(b.N), "msgs/cluster")
		})
	}
}
