package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node"
)

// BenchmarkStartup measures how long `gpumesh node` takes from process start
// until its local API answers status (ready-ms), and its resident memory
// once ready and idle (rss-MB). For scale it also times `gpumesh --version`,
// a run of the same binary that starts nothing (baseline-ms), and reports
// ready/baseline. ns/op is the time to ready.
func BenchmarkStartup(b *testing.B) {
	if testing.Short() {
		b.Skip("starts real node processes")
	}
	var ready, base time.Duration
	var rss float64
	for b.Loop() {
		r, m := startOnce(b)
		ready += r
		rss += m
		base += versionOnce(b)
	}
	n := float64(b.N)
	readyMS := float64(ready.Microseconds()) / 1000 / n
	baseMS := float64(base.Microseconds()) / 1000 / n
	b.ReportMetric(float64(ready.Nanoseconds())/n, "ns/op")
	b.ReportMetric(readyMS, "ready-ms")
	b.ReportMetric(rss/n, "rss-MB")
	b.ReportMetric(baseMS, "baseline-ms")
	b.ReportMetric(readyMS/baseMS, "ready/baseline")
}

// startOnce starts a node on a fresh data dir, returns the time until its
// local API answered and its RSS in MB after it has idled a moment, and
// stops it.
func startOnce(b *testing.B) (time.Duration, float64) {
	data := dataDir(b)
	cmd := exec.Command(gmBin, "--data", data, "node", "--listen", "/ip4/127.0.0.1/tcp/0", "--mdns=false", "--log-level", "warn")
	done := make(chan error, 1)
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-done
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), startWait)
	defer cancel()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		if cl, err := node.NewClient(data); err == nil {
			if _, err := cl.Status(ctx); err == nil {
				break
			}
		}
		select {
		case err := <-done:
			stopped = true
			b.Fatalf("node exited before it answered: %v", err)
		case <-ctx.Done():
			b.Fatalf("node did not answer within %v", startWait)
		case <-tick.C:
		}
	}
	ready := time.Since(t0)

	// A measurement, not synchronization: let start-up work settle.
	time.Sleep(time.Second)
	rss, err := vmRSS(cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}

	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-done:
		stopped = true
		if err != nil {
			b.Fatalf("node exited with %v after SIGINT, want 0", err)
		}
	case <-time.After(stopWait):
		b.Fatalf("node did not exit within %v of SIGINT", stopWait)
	}
	return ready, rss
}

// versionOnce times one `gpumesh --version`.
func versionOnce(b *testing.B) time.Duration {
	t0 := time.Now()
	out, err := exec.Command(gmBin, "--version").Output()
	d := time.Since(t0)
	if err != nil || !strings.HasPrefix(string(out), "gpumesh version ") {
		b.Fatalf("gpumesh --version: %v, %q", err, out)
	}
	return d
}

// vmRSS reads a process's resident set size in MB from /proc.
func vmRSS(pid int) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		fields := strings.Fields(v) // "12345 kB"
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("VmRSS line %q", sc.Text())
		}
		kb, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return 0, err
		}
		return kb / 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
