package jobnet_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node/jobnet"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/vishvananda/netns"
)

// namespace makes a network namespace (removed at the end of the test) and
// returns its name and a handle on it.
func namespace(t testing.TB) (string, netns.NsHandle) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("job networks need root (TUN devices, network namespaces)")
	}
	if err := jobnet.Probe(); err != nil {
		t.Skipf("job networks: %v", err)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "gpmjt" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return name, h
}

func newHost(t testing.TB) host.Host {
	t.Helper()
	// As a node's host: noise and yamux over TCP.
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(),
		libp2p.Security(noise.ID, noise.New), libp2p.Muxer(yamux.ID, yamux.DefaultTransport), libp2p.Transport(tcp.NewTCPTransport))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func connect(t testing.TB, a, b host.Host) {
	t.Helper()
	if err := a.Connect(context.Background(), peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

// provider is one provider's job network with its members' namespaces.
type provider struct {
	h   host.Host
	net *jobnet.Net
}

func newProvider(t testing.TB, cfg jobnet.Config) *provider {
	h := newHost(t)
	n := jobnet.New(h, cfg)
	n.Start()
	t.Cleanup(n.Close)
	return &provider{h: h, net: n}
}

// member puts member rank of a job of the providers ps on p, in a new
// namespace whose name it returns.
func (p *provider) member(t testing.TB, ps []*provider, rank int) (string, *jobnet.Member) {
	t.Helper()
	var ids []string
	for _, q := range ps {
		ids = append(ids, q.h.ID().String())
	}
	plan, err := jobnet.NewPlan(testJob, 1, ids, p.h.ID())
	if err != nil {
		t.Fatal(err)
	}
	name, ns := namespace(t)
	iface, err := jobnet.Attach(ns, plan.Prefix(rank), jobnet.MTU)
	if err != nil {
		t.Fatal(err)
	}
	m, err := p.net.Join(plan, rank, iface)
	if err != nil {
		iface.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Leave() })
	return name, m
}

// lockedBuffer is a buffer a command writes while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Len() int { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Len() }

func (l *lockedBuffer) bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.b.Bytes())
}

func inNS(ns string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
}

// Two providers, a member on each: data sent to member 0's job address
// arrives whole, and the bytes are metered on both sides.
func TestMembersOnTwoProvidersReachEachOther(t *testing.T) {
	a, b := newProvider(t, jobnet.Config{}), newProvider(t, jobnet.Config{})
	connect(t, a.h, b.h)
	ps := []*provider{a, b}
	ns0, m0 := a.member(t, ps, 0)
	ns1, m1 := b.member(t, ps, 1)
	addr0 := jobnet.Addr(testJob, 0).String()

	data := bytes.Repeat([]byte("job network "), 50_000) // 600 kB
	var got lockedBuffer
	srv := inNS(ns0, "busybox", "nc", "-l", "-p", "5000")
	srv.Stdout = &got
	hold, err := srv.StdinPipe() // nc ends at its stdin's end: it must wait for the data
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Wait() }()
	defer func() { _ = srv.Process.Kill(); <-done }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	testwait.Until(t, ctx, "member 1 sends to member 0's job address", func() (bool, string) {
		c := inNS(ns1, "busybox", "nc", "-w", "2", addr0, "5000")
		c.Stdin = bytes.NewReader(data)
		out, err := c.CombinedOutput()
		return err == nil, fmt.Sprintf("%v: %s", err, out)
	})
	testwait.Until(t, ctx, "member 0 has every byte", func() (bool, string) {
		return got.Len() == len(data), fmt.Sprintf("%d of %d bytes", got.Len(), len(data))
	})
	if !bytes.Equal(got.bytes(), data) {
		t.Fatalf("member 0 got %d bytes, want the %d sent", got.Len(), len(data))
	}
	s0, s1 := m0.Meter(), m1.Meter()
	if s1.SentBytes < int64(len(data)) || s0.ReceivedBytes < int64(len(data)) || s0.SentPackets == 0 || s1.ReceivedPackets == 0 ||
		s0.Refused+s0.Dropped+s1.Refused+s1.Dropped != 0 || s0.Direct != 1 || s0.Relayed != 0 {
		t.Errorf("meters: member 0 %+v, member 1 %+v; want each side's bytes counted", s0, s1)
	}
	t.Logf("member 0 %+v; member 1 %+v", s0, s1)

	// Nothing but the job's subnet: no route to anything else.
	out, err := inNS(ns1, "busybox", "nc", "-w", "1", "127.0.0.1", "22").CombinedOutput()
	if err == nil {
		t.Errorf("member 1 reached its namespace's loopback port 22: %s", out)
	}
	out, _ = inNS(ns1, "ip", "route").CombinedOutput()
	if r := strings.TrimSpace(string(out)); r != jobnet.Subnet(testJob).String()+" dev jobnet0 proto kernel scope link src "+jobnet.Addr(testJob, 1).String() {
		t.Errorf("member 1's routes:\n%s\nwant only its job's subnet", r)
	}
}

// Three providers, a member on each: every member pings every other.
func TestThreeMembersPingEachOther(t *testing.T) {
	ps := []*provider{newProvider(t, jobnet.Config{}), newProvider(t, jobnet.Config{}), newProvider(t, jobnet.Config{})}
	connect(t, ps[0].h, ps[1].h)
	connect(t, ps[0].h, ps[2].h)
	connect(t, ps[1].h, ps[2].h)
	var nss []string
	for i, p := range ps {
		ns, _ := p.member(t, ps, i)
		nss = append(nss, ns)
	}
	for i := range ps {
		for j := range ps {
			if i == j {
				continue
			}
			out, err := inNS(nss[i], "busybox", "ping", "-c", "2", "-W", "5", jobnet.Addr(testJob, j).String()).CombinedOutput()
			if err != nil {
				t.Errorf("member %d pinging member %d: %v\n%s", i, j, err, out)
			}
		}
	}
}

// A peer that speaks the protocol but runs no member of the job, or runs
// one and sends what it may not, is cut off; what a member of ours gets
// is only what the job's plan allows.
func TestAHostileProviderIsCutOff(t *testing.T) {
	a, b := newProvider(t, jobnet.Config{}), newProvider(t, jobnet.Config{})
	connect(t, a.h, b.h)
	_, m0 := a.member(t, []*provider{a, b}, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	hello, _ := jobnet.AppendHello(nil, jobnet.Hello{Job: testJob, Attempt: 1})
	send := func(from host.Host, hello []byte, pkts ...[]byte) network.Stream {
		t.Helper()
		s, err := from.NewStream(ctx, a.h.ID(), jobnet.Protocol)
		if err != nil {
			t.Fatal(err)
		}
		buf := append([]byte(nil), hello...)
		for _, p := range pkts {
			buf = append(buf, byte(len(p)>>8), byte(len(p)))
			buf = append(buf, p...)
		}
		_, _ = s.Write(buf)
		return s
	}
	reset := func(s network.Stream) bool {
		_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := s.Read(make([]byte, 1))
		return err != nil && !strings.Contains(err.Error(), "deadline")
	}
	addr := func(r int) [4]byte { return jobnet.Addr(testJob, r).As4() }
	_ = addr
	a0, a1 := jobnet.Addr(testJob, 0), jobnet.Addr(testJob, 1)

	stranger := newHost(t)
	connect(t, stranger, a.h)
	if s := send(stranger, hello, packet(a1, a0, 10)); !reset(s) {
		t.Error("a peer with no member in the job kept its stream")
	}
	other, _ := jobnet.AppendHello(nil, jobnet.Hello{Job: "ffffffffffffffffffffffffffffffff", Attempt: 1})
	if s := send(b.h, other, packet(a1, a0, 10)); !reset(s) {
		t.Error("a stream for a job this provider runs nothing of was kept")
	}
	if s := send(b.h, hello, packet(a0, a0, 10)); !reset(s) {
		t.Error("b sent from member 0's address (ours) and kept its stream")
	}
	if s := send(b.h, hello, packet(a1, jobnet.Addr(testJob, 1), 10)); !reset(s) {
		t.Error("b sent to its own member through us and kept its stream")
	}
	over := []byte{0xff, 0xff}
	if s := send(b.h, append(hello, over...)); !reset(s) {
		t.Error("b sent a frame over the MTU and kept its stream")
	}
	if got := m0.Meter().ReceivedPackets; got != 0 {
		t.Errorf("member 0 was written %d packets from hostile streams", got)
	}
	// b's own member, within the rules, is still heard.
	s := send(b.h, hello, packet(a1, a0, 10))
	defer s.Reset()
	testwait.Until(t, ctx, "a packet of b's member reaches member 0", func() (bool, string) {
		return m0.Meter().ReceivedPackets == 1, fmt.Sprintf("%+v", m0.Meter())
	})
}

// A member is sent no more than its rates allow, whoever floods it.
func TestAFloodIsBoundedByTheMembersRate(t *testing.T) {
	a, b := newProvider(t, jobnet.Config{RatePackets: 100}), newProvider(t, jobnet.Config{})
	connect(t, a.h, b.h)
	_, m0 := a.member(t, []*provider{a, b}, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := b.h.NewStream(ctx, a.h.ID(), jobnet.Protocol)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	buf, _ := jobnet.AppendHello(nil, jobnet.Hello{Job: testJob, Attempt: 1})
	const flood = 5000
	for range flood {
		buf, _ = jobnet.AppendPacket(buf, packet(jobnet.Addr(testJob, 1), jobnet.Addr(testJob, 0), 100))
	}
	start := time.Now()
	if _, err := s.Write(buf); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, ctx, "every packet of the flood handled", func() (bool, string) {
		m := m0.Meter()
		return m.ReceivedPackets+m.Dropped == flood, fmt.Sprintf("%+v", m)
	})
	m := m0.Meter()
	// The burst (100) and 100 a second since.
	if limit := 100 + int64(time.Since(start).Seconds()*100) + 1; m.ReceivedPackets > limit || m.Dropped == 0 {
		t.Errorf("member 0 was written %d of %d packets in %s, want at most %d", m.ReceivedPackets, flood, time.Since(start), limit)
	}
}

func TestProbeMakesAndRemovesATUNDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making a TUN device needs root")
	}
	before, _ := net.Interfaces()
	if err := jobnet.Probe(); err != nil {
		t.Fatalf("as root: %v", err)
	}
	after, _ := net.Interfaces()
	if len(after) != len(before) {
		t.Fatalf("the probe left interfaces: %d before, %d after", len(before), len(after))
	}
}
