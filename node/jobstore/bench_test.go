package jobstore_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkPut1000th measures one job's change (a Put of an existing
// record, fsync'd) in stores of 1 to 10,000 jobs of about 1.26 KB each, the
// size of node's records. Unlike jobs.json, rewritten whole on every change,
// the cost should not grow with the number of jobs.
func BenchmarkPut1000th(b *testing.B) {
	pad := strings.Repeat("x", 1200)
	rec := func(i int, state string) []byte {
		data, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("job-%05d", i), "state": state, "created": t0.Add(time.Duration(i) * time.Second), "pad": pad})
		return data
	}
	for _, n := range []int{1, 1000, 10000} {
		b.Run(fmt.Sprint("records=", n), func(b *testing.B) {
			s := newStore(b)
			recs := make([]json.RawMessage, n)
			for i := range recs {
				recs[i] = rec(i, "done")
			}
			path := filepath.Join(filepath.Dir(s.Path()), "jobs.json")
			writeJobsFile(b, path, recs)
			if _, err := s.Migrate(path); err != nil {
				b.Fatal(err)
			}
			id, created := fmt.Sprintf("job-%05d", n-1), t0.Add(time.Duration(n-1)*time.Second)
			states := [][]byte{rec(n-1, "running"), rec(n-1, "done")}
			b.SetBytes(int64(len(states[0])))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if err := s.Put(id, created, states[i%2]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
