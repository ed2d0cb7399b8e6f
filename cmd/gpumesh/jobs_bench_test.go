package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
)

// benchPeer is a gpumesh node process of a benchmark.
type benchPeer struct {
	data string
	cmd  *exec.Cmd
	done chan error
	cl   *node.Client
	id   node.IDInfo
}

// startBenchPeer runs `gpumesh node` on a fresh data dir with args and
// waits until its local API answers; it is stopped when the benchmark ends.
func startBenchPeer(b *testing.B, args ...string) *benchPeer {
	b.Helper()
	p := &benchPeer{data: dataDir(b), done: make(chan error, 1)}
	argv := append([]string{"--data", p.data, "node", "--listen", "/ip4/127.0.0.1/tcp/0", "--mdns=false", "--nat=false",
		"--dht-mode", "server", "--log-level", "warn"}, args...)
	p.cmd = exec.Command(gmBin, argv...)
	if err := p.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	b.Cleanup(func() {
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(stopWait):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), startWait)
	defer cancel()
	testwait.Until(b, ctx, "the node's local API to answer", func() (bool, string) {
		select {
		case err := <-p.done:
			p.done <- err // for the cleanup
			b.Fatalf("node exited before it answered: %v", err)
		default:
		}
		cl, err := node.NewClient(p.data)
		if err == nil {
			p.id, err = cl.ID(ctx)
		}
		p.cl = cl
		return err == nil, fmt.Sprint(err)
	})
	return p
}

// BenchmarkSequentialJobs submits b.N trivial jobs (a process that exits
// at once, on one GPU) one after another from one submitter process to one
// provider process, each waited for to its end, beside a third peer that
// stays idle. It reports the submit latency (the local API call) of the
// first and last tenth of the jobs and their ratio, and the submitter's
// RSS after the jobs against the idle peer's. Run it with -benchtime 1000x
// (make bench does).
func BenchmarkSequentialJobs(b *testing.B) {
	if b.N < 10 {
		// The framework's first probe runs b.N = 1; the numbers need
		// -benchtime 10x or more (the first and the last tenth).
		return
	}
	swarm := privateSwarm(b)
	_, jobFlags := jobDir(b)
	prov := startBenchPeer(b, append(append(slices.Clone(swarm), jobFlags...), "--gpus", "mock:dgxh100", "--price", "fixed:2.10", "--executors", "docker,process", "--heartbeat", "1s")...)
	boot := "--bootstrap=" + prov.id.Addrs[0]
	sub := startBenchPeer(b, append(slices.Clone(swarm), boot)...)
	idle := startBenchPeer(b, append(slices.Clone(swarm), boot)...)
	spec, err := jobspec.Parse([]byte(`name: trivial
command: ["true"]
resources: {gpus: 1, gpu: {model: H100}}
maxPrice: 2.50
timeout: 1m
`), "yaml")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	// The provider in the submitter's directory first.
	testwait.Until(b, ctx, "the provider in the submitter's directory", func() bool {
		res, err := sub.cl.FindGPUs(ctx, node.FindQuery{Model: "H100"})
		return err == nil && res.GPUs == 8
	})

	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		job, err := sub.cl.SubmitJob(ctx, spec)
		if err != nil {
			b.Fatalf("job %d: %v", i+1, err)
		}
		lat = append(lat, time.Since(start))
		// The followed log ends with the run; the job's end is recorded
		// at about the same moment.
		if logs, err := sub.cl.JobLogs(ctx, job.ID, true); err == nil {
			_, _ = io.Copy(io.Discard, logs)
			logs.Close()
		}
		testwait.Until(b, ctx, fmt.Sprintf("job %d to end", i+1), func() (bool, string) {
			j, err := sub.cl.Job(ctx, job.ID)
			if err != nil {
				b.Fatal(err)
			}
			if j.State.Ended() && j.State != node.JobDone {
				b.Fatalf("job %d %s: %s", i+1, j.State, j.Reason)
			}
			return j.State == node.JobDone, string(j.State)
		})
	}
	b.StopTimer()

	tenth := b.N / 10
	median := func(d []time.Duration) float64 {
		d = slices.Clone(d)
		slices.Sort(d)
		return float64(d[len(d)/2]) / float64(time.Millisecond)
	}
	first, last := median(lat[:tenth]), median(lat[len(lat)-tenth:])
	subRSS, err := vmRSS(sub.cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	idleRSS, err := vmRSS(idle.cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(first, "first-submit-ms")
	b.ReportMetric(last, "last-submit-ms")
	b.ReportMetric(last/first, "last/first")
	b.ReportMetric(subRSS, "submitter-rss-MB")
	b.ReportMetric(idleRSS, "idle-rss-MB")
	b.ReportMetric(subRSS/idleRSS, "submitter/idle")
}
