package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testdocker"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
)

// BenchmarkJobExec times `gpumesh job exec ID -- true` into a running
// container job (CLI, local API, libp2p over TCP to the provider, docker
// exec there) against `docker exec NAME true` into the same container,
// one of each per iteration, and reports each in ms and their ratio
// (target: at most 1.5).
func BenchmarkJobExec(b *testing.B) {
	if testing.Short() {
		b.Skip("starts real nodes and containers")
	}
	testdocker.EnsureImage(b)
	_, sub := jobSwarm(b, 1)
	j := runningServer(b, sub)
	name := fmt.Sprintf("gpumesh-%s-%d-0", j.ID, j.Attempt)
	run := func(argv ...string) time.Duration {
		t0 := time.Now()
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		}
		return time.Since(t0)
	}
	var gmT, dockerT time.Duration
	for b.Loop() {
		gmT += run(gmBin, "--data", sub.data, "job", "exec", j.ID, "--", "true")
		dockerT += run("docker", "exec", name, "true")
	}
	n := float64(b.N)
	b.ReportMetric(float64(gmT.Microseconds())/1000/n, "gpumesh-ms")
	b.ReportMetric(float64(dockerT.Microseconds())/1000/n, "docker-exec-ms")
	b.ReportMetric(float64(gmT)/float64(dockerT), "gpumesh/docker")
}

// BenchmarkPortForward reads a 64 MiB file from a container job's server
// through `gpumesh job port-forward` (local TCP, CLI, local API, libp2p
// over TCP, the container's network namespace) and, as the baseline, 64
// MiB copied over a direct loopback TCP connection, one of each per
// iteration; it reports each in MB/s and their ratio (target: at least
// 0.5). For scale it also copies 64 MiB over one libp2p stream between two
// hosts with the node's transports (TCP, noise, yamux) in this process:
// the ceiling of any forward over libp2p here (libp2p-MB/s).
//
// On a shared machine the wall times swing with others' load, so it also
// reports the CPU time each copy costs (user + system, from /proc, in ms
// a MB): the direct copy's and the libp2p stream's are this process's;
// the forward's is the HTTP client (this process), the CLI, both nodes and
// the container's server together, and each part of it (cli-, sub-,
// prov-cpu-ms/MB). direct-cpu/forward-cpu is the throughput ratio the
// forward would have where the CPU, not others' load, bounds it.
func BenchmarkPortForward(b *testing.B) {
	if testing.Short() {
		b.Skip("starts real nodes and containers")
	}
	const size = 64 << 20
	testdocker.EnsureImage(b)
	provs, sub := jobSwarm(b, 1)
	j := runningServer(b, sub)
	in, err := testdocker.Client(b).ContainerInspect(context.Background(), fmt.Sprintf("gpumesh-%s-%d-0", j.ID, j.Attempt))
	if err != nil || in.State == nil {
		b.Fatalf("the server's container: %v", err)
	}
	pf := exec.Command(gmBin, "--data", sub.data, "job", "port-forward", j.ID, "0:8000")
	out, err := pf.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := pf.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = pf.Process.Kill(); _ = pf.Wait() }()
	lines := bufio.NewScanner(out)
	if !lines.Scan() {
		b.Fatal("port-forward printed nothing")
	}
	addr, _, _ := strings.Cut(strings.TrimPrefix(lines.Text(), "forwarding "), " ")

	// The baseline: a loopback TCP server writing the same bytes.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		buf := make([]byte, 256<<10)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			for sent := 0; sent < size; sent += len(buf) {
				if _, err := c.Write(buf); err != nil {
					break
				}
			}
			c.Close()
		}
	}()
	ctx := context.Background()
	streamOne := libp2pPair(b, size)
	self := os.Getpid()
	parts := []int{self, pf.Process.Pid, sub.cmd.Process.Pid, provs[0].cmd.Process.Pid, in.State.Pid}
	var fwdT, directT, p2pT time.Duration
	fwdCPU := make([]time.Duration, len(parts))
	var directCPU, p2pCPU time.Duration
	for b.Loop() {
		before := cpuTimes(b, parts)
		t0 := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/big", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != size {
			b.Fatalf("through the forward: %d bytes, %v", n, err)
		}
		fwdT += time.Since(t0)
		for i, c := range cpuTimes(b, parts) {
			fwdCPU[i] += c - before[i]
		}
		before = cpuTimes(b, parts[:1])
		t0 = time.Now()
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		n, err = io.Copy(io.Discard, c)
		c.Close()
		if err != nil || n != size {
			b.Fatalf("direct: %d bytes, %v", n, err)
		}
		directT += time.Since(t0)
		mid := cpuTimes(b, parts[:1])
		directCPU += mid[0] - before[0]
		p2pT += streamOne()
		p2pCPU += cpuTimes(b, parts[:1])[0] - mid[0]
	}
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / 1e6 / d.Seconds() }
	b.SetBytes(size)
	b.ReportMetric(mbps(fwdT), "forward-MB/s")
	b.ReportMetric(mbps(directT), "direct-MB/s")
	b.ReportMetric(mbps(p2pT), "libp2p-MB/s")
	b.ReportMetric(mbps(fwdT)/mbps(directT), "forward/direct")
	mb := float64(size) * float64(b.N) / 1e6
	perMB := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / mb }
	var fwdAll time.Duration
	for _, c := range fwdCPU {
		fwdAll += c
	}
	b.ReportMetric(perMB(directCPU), "direct-cpu-ms/MB")
	b.ReportMetric(perMB(p2pCPU), "libp2p-cpu-ms/MB")
	b.ReportMetric(perMB(fwdAll), "forward-cpu-ms/MB")
	b.ReportMetric(perMB(fwdCPU[1]), "cli-cpu-ms/MB")
	b.ReportMetric(perMB(fwdCPU[2]), "sub-cpu-ms/MB")
	b.ReportMetric(perMB(fwdCPU[3]), "prov-cpu-ms/MB")
	b.ReportMetric(float64(directCPU)/float64(fwdAll), "direct-cpu/forward-cpu")
}

// cpuTimes is the CPU time (user and system) each of pids has used so
// far, from /proc/PID/stat; a process that is gone counts 0.
func cpuTimes(b *testing.B, pids []int) []time.Duration {
	const tick = 10 * time.Millisecond // USER_HZ: 100 on Linux
	out := make([]time.Duration, len(pids))
	for i, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(data)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			b.Fatalf("/proc/%d/stat: %d fields", pid, len(f))
		}
		utime, err1 := strconv.ParseInt(f[11], 10, 64)
		stime, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 != nil || err2 != nil {
			b.Fatalf("/proc/%d/stat: %q", pid, s)
		}
		out[i] = time.Duration(utime+stime) * tick
	}
	return out
}

// libp2pPair starts two libp2p hosts on 127.0.0.1 with the node's
// transports, one serving size bytes on each stream; it returns what
// times one stream's copy.
func libp2pPair(b *testing.B, size int) func() time.Duration {
	hosts := make([]host.Host, 2)
	for i := range hosts {
		h, err := libp2p.New(libp2p.Security(noise.ID, noise.New), libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
			libp2p.Transport(tcp.NewTCPTransport), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { h.Close() })
		hosts[i] = h
	}
	hosts[1].SetStreamHandler("/bench/1", func(s network.Stream) {
		defer s.Close()
		buf := make([]byte, 256<<10)
		for sent := 0; sent < size; sent += len(buf) {
			if _, err := s.Write(buf); err != nil {
				return
			}
		}
	})
	ctx := context.Background()
	if err := hosts[0].Connect(ctx, peer.AddrInfo{ID: hosts[1].ID(), Addrs: hosts[1].Addrs()}); err != nil {
		b.Fatal(err)
	}
	return func() time.Duration {
		t0 := time.Now()
		s, err := hosts[0].NewStream(ctx, hosts[1].ID(), "/bench/1")
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		if n, err := io.Copy(io.Discard, s); err != nil || n != int64(size) {
			b.Fatalf("libp2p stream: %d bytes, %v", n, err)
		}
		return time.Since(t0)
	}
}
