package node_test

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gpumesh/gpumesh/internal/testdocker"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// dockerMesh is a provider of 8 mock H100s running containers, and a
// submitter without GPUs.
func dockerMesh(b *testing.B) *meshtest.Mesh {
	return meshtest.Start(b, 2, meshtest.Options{Seed: 61, Providers: 1, Price: "fixed:2.10"})
}

func dockerSpec(b *testing.B, image string, command ...string) jobspec.Spec {
	b.Helper()
	var q []string
	for _, c := range command {
		q = append(q, strconv.Quote(c))
	}
	y := fmt.Sprintf("name: bench\nimage: %s\ncommand: [%s]\nresources:\n  gpus: 1\n  gpu: {model: H100}\nmaxPrice: 2.50\ntimeout: 5m\n", image, strings.Join(q, ", "))
	s, err := jobspec.Parse([]byte(y), "yaml")
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

// BenchmarkJobOnDocker times a trivial container job through the mesh —
// submit → container started, submit → result (job done) — against a bare
// `docker run --rm` of the same image and command in the same run, and
// reports the ratios (targets: start at most 1.3× the bare run).
func BenchmarkJobOnDocker(b *testing.B) {
	img := testdocker.EnsureImage(b)
	m := dockerMesh(b)
	sub := m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	spec := dockerSpec(b, img, "true")

	var bare, toStart, toResult []time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if out, err := exec.Command("docker", "run", "--rm", "--network", "none", img, "true").CombinedOutput(); err != nil {
			b.Fatalf("docker run: %v: %s", err, out)
		}
		bare = append(bare, time.Since(t0))

		t0 = time.Now()
		job, err := sub.SubmitJob(ctx, spec)
		if err != nil {
			b.Fatal(err)
		}
		j := waitEnded(b, ctx, sub, job.ID)
		toResult = append(toResult, time.Since(t0))
		if j.State != node.JobDone {
			b.Fatalf("job %s: %s", j.State, j.Reason)
		}
		toStart = append(toStart, j.Runs[0].Started.Sub(t0))
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	b.ReportMetric(ms(pct(bare, 50)), "bare-docker-run-ms")
	b.ReportMetric(ms(pct(toStart, 50)), "submit-to-start-ms")
	b.ReportMetric(ms(pct(toResult, 50)), "submit-to-result-ms")
	b.ReportMetric(float64(pct(toStart, 50))/float64(pct(bare, 50)), "start/bare")
	b.ReportMetric(float64(pct(toResult, 50))/float64(pct(bare, 50)), "result/bare")
	b.Logf("n=%d p50: bare docker run %v, submit→start %v, submit→result %v", len(bare), pct(bare, 50), pct(toStart, 50), pct(toResult, 50))
}

// BenchmarkLogLatency measures how long a line a container writes takes to
// reach the submitter's log as a follower reads it (target: 100 ms). Each
// line carries the boot clock it was written at (/proc/uptime, 10 ms
// steps), read again on arrival.
func BenchmarkLogLatency(b *testing.B) {
	img := testdocker.EnsureImage(b)
	m := dockerMesh(b)
	sub := m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const lines = 20
	spec := dockerSpec(b, img, "sh", "-c", fmt.Sprintf(`i=0; while [ $i -lt %d ]; do cat /proc/uptime; sleep 0.05; i=$((i+1)); done`, lines))

	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		job, err := sub.SubmitJob(ctx, spec)
		if err != nil {
			b.Fatal(err)
		}
		w := &arrivals{}
		if err := sub.WriteLog(ctx, w, job.ID, true); err != nil {
			b.Fatal(err)
		}
		got := w.latencies()
		if len(got) != lines {
			b.Fatalf("%d of %d lines arrived", len(got), lines)
		}
		lat = append(lat, got...)
	}
	b.StopTimer()
	b.ReportMetric(float64(pct(lat, 50))/1e6, "p50-ms")
	b.ReportMetric(float64(pct(lat, 95))/1e6, "p95-ms")
	b.ReportMetric(float64(pct(lat, 100))/1e6, "max-ms")
}

// arrivals records, for each log line "[r] <uptime> <idle>", the boot clock
// when it arrived minus the one it carries.
type arrivals struct {
	mu   sync.Mutex
	rest []byte
	lat  []time.Duration
}

func (a *arrivals) Write(p []byte) (int, error) {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	now := time.Duration(ts.Nano())
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rest = append(a.rest, p...)
	for {
		i := bytes.IndexByte(a.rest, '\n')
		if i < 0 {
			break
		}
		line := string(a.rest[:i])
		a.rest = a.rest[i+1:]
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[0], "[0]") {
			continue
		}
		up, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		a.lat = append(a.lat, now-time.Duration(up*1e9))
	}
	return len(p), nil
}

func (a *arrivals) latencies() []time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.lat)
}
