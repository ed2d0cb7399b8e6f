package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
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
func BenchmarkPortForward(b *testing.B) {
	if testing.Short() {
		b.Skip("starts real nodes and containers")
	}
	const size = 64 << 20
	testdocker.EnsureImage(b)
	_, sub := jobSwarm(b, 1)
	j := runningServer(b, sub)
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
	var fwdT, directT, p2pT time.Duration
	for b.Loop() {
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
		p2pT += streamOne()
	}
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / 1e6 / d.Seconds() }
	b.SetBytes(size)
	b.ReportMetric(mbps(fwdT), "forward-MB/s")
	b.ReportMetric(mbps(directT), "direct-MB/s")
	b.ReportMetric(mbps(p2pT), "libp2p-MB/s")
	b.ReportMetric(mbps(fwdT)/mbps(directT), "forward/direct")
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
