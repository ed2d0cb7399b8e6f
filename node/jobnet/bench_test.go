package jobnet_test

import (
	"io"
	"net"
	"os/exec"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node/jobnet"
	"github.com/vishvananda/netns"
)

// inNS runs fn on a thread in namespace ns: sockets it makes stay there.
func inNamespace(tb testing.TB, ns netns.NsHandle, fn func()) {
	tb.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		tb.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		tb.Fatal(err)
	}
	fn()
	if err := netns.Set(orig); err != nil {
		tb.Fatal(err) // the thread stays locked, and dies with the goroutine
	}
	runtime.UnlockOSThread()
}

// link is a TCP connection between two namespaces: c dialled from one to
// s accepted in the other.
type link struct{ c, s net.Conn }

func dialAcross(tb testing.TB, from, to netns.NsHandle, addr string) link {
	tb.Helper()
	var l net.Listener
	inNamespace(tb, to, func() {
		var err error
		if l, err = net.Listen("tcp", addr+":0"); err != nil {
			tb.Fatal(err)
		}
	})
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	var c net.Conn
	inNamespace(tb, from, func() {
		var err error
		// The far member's provider may take a moment to open its stream.
		d := net.Dialer{Timeout: 10 * time.Second}
		if c, err = d.Dial("tcp", l.Addr().String()); err != nil {
			tb.Fatal(err)
		}
	})
	s := <-accepted
	if s == nil {
		tb.Fatal("no connection accepted")
	}
	tb.Cleanup(func() { c.Close(); s.Close() })
	return link{c, s}
}

// throughput sends n bytes from c to s and says how long they took.
func (l link) throughput(tb testing.TB, n int64) time.Duration {
	buf := make([]byte, 256<<10)
	done := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, l.s, n)
		done <- err
	}()
	start := time.Now()
	for sent := int64(0); sent < n; {
		k, err := l.c.Write(buf[:min(int64(len(buf)), n-sent)])
		if err != nil {
			tb.Fatal(err)
		}
		sent += int64(k)
	}
	if err := <-done; err != nil {
		tb.Fatal(err)
	}
	return time.Since(start)
}

// rtt is the median of rounds round trips of one byte.
func (l link) rtt(tb testing.TB, rounds int) time.Duration {
	go func() {
		b := make([]byte, 1)
		for {
			if _, err := l.s.Read(b); err != nil {
				return
			}
			if _, err := l.s.Write(b); err != nil {
				return
			}
		}
	}()
	b := make([]byte, 1)
	var ts []time.Duration
	for range rounds {
		start := time.Now()
		if _, err := l.c.Write(b); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(l.c, b); err != nil {
			tb.Fatal(err)
		}
		ts = append(ts, time.Since(start))
	}
	slices.Sort(ts)
	return ts[len(ts)/2]
}

// The job network against a veth pair between two namespaces, on this
// machine, in the same run: TCP throughput (MB/s each, and their ratio;
// target ≥ 0.3) and the round trip it adds (target < 1 ms).
func BenchmarkJobNetAgainstVeth(b *testing.B) {
	// A veth pair: the baseline.
	vA, hA := namespace(b)
	vB, hB := namespace(b)
	for _, cmd := range [][]string{
		{"ip", "link", "add", "gpmjbA", "netns", vA, "type", "veth", "peer", "name", "gpmjbB", "netns", vB},
		{"ip", "-n", vA, "addr", "add", "192.168.213.1/24", "dev", "gpmjbA"},
		{"ip", "-n", vB, "addr", "add", "192.168.213.2/24", "dev", "gpmjbB"},
		{"ip", "-n", vA, "link", "set", "gpmjbA", "up"},
		{"ip", "-n", vB, "link", "set", "gpmjbB", "up"},
		{"ip", "-n", vA, "link", "set", "lo", "up"},
		{"ip", "-n", vB, "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%v: %v: %s", cmd, err, out)
		}
	}
	veth := dialAcross(b, hA, hB, "192.168.213.2")

	// Two providers on real libp2p hosts over 127.0.0.1, a member each.
	pa, pb := newProvider(b, jobnet.Config{}), newProvider(b, jobnet.Config{})
	connect(b, pa.h, pb.h)
	ps := []*provider{pa, pb}
	na, _ := pa.member(b, ps, 0)
	nb, _ := pb.member(b, ps, 1)
	ha, err := netns.GetFromName(na)
	if err != nil {
		b.Fatal(err)
	}
	defer ha.Close()
	hb, err := netns.GetFromName(nb)
	if err != nil {
		b.Fatal(err)
	}
	defer hb.Close()
	job := dialAcross(b, hb, ha, jobnet.Addr(testJob, 0).String())

	const size = 64 << 20
	var tVeth, tJob time.Duration
	b.ResetTimer()
	for range b.N {
		tVeth += veth.throughput(b, size)
		tJob += job.throughput(b, size)
	}
	b.StopTimer()
	mb := float64(size) * float64(b.N) / 1e6
	vethMBps, jobMBps := mb/tVeth.Seconds(), mb/tJob.Seconds()
	rttVeth, rttJob := veth.rtt(b, 500), job.rtt(b, 500)
	b.ReportMetric(vethMBps, "veth-MB/s")
	b.ReportMetric(jobMBps, "jobnet-MB/s")
	b.ReportMetric(jobMBps/vethMBps, "ratio")
	b.ReportMetric(float64(rttVeth.Microseconds()), "veth-rtt-µs")
	b.ReportMetric(float64(rttJob.Microseconds()), "jobnet-rtt-µs")
	b.ReportMetric(float64((rttJob - rttVeth).Microseconds()), "added-rtt-µs")
}
