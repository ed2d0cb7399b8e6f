package meshtest_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// floodChildEnv, set in this test binary's environment, makes it a flood
// process (runFloodChild) rather than a test run: the value is the order,
// a floodOrder as JSON.
const floodChildEnv = "GPUMESH_MESHTEST_FLOOD"

func TestMain(m *testing.M) {
	if order := os.Getenv(floodChildEnv); order != "" {
		os.Exit(runFloodChild(order, os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

// floodOrder is what a flood process is told: who floods, how much, and
// which mesh (on TCP) it floods.
type floodOrder struct {
	Identities int      // flooders, each a libp2p host of its own
	Per        int      // requests each sends
	Direct     bool     // to the providers on RFBProtocol, not on the topic
	First      int64    // the first flooder's number (which mesh peers it dials)
	PSK        []byte   // the mesh's private swarm
	Topic      string   // the request-for-bids topic
	Peers      []string // every mesh peer, /ip4/…/tcp/…/p2p/ID
	Providers  int      // Peers[:Providers] are the providers
}

// processFlood is a flood sent by another process: this test binary run
// again as a flood process (floodChildEnv), at the lowest CPU priority
// (nice 19), speaking the real protocol to the mesh's TCP hosts over
// loopback. Its routers, signing and sending then spend that process's
// CPU, and only what the machine has to spare: on a real network an
// attacker's machines are not its victims'. What the mesh's peers do
// with the flood (validate, forward, answer) is still the mesh's.
//
// The process speaks lines: it writes "ready" once every flooder has a
// topic peer, floods when it reads "go", writes "sent NANOS" when the
// flood is out, and on the end of its input writes "bids N" and exits.
type processFlood struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *tailBuffer
	took   time.Duration
	cpu    time.Duration // the flood process's, once it exited
}

// newProcessFlood starts a flood process of n flooders against m (a mesh
// on TCP, Options.TCP, in the private swarm of seed, its first providers
// nodes the providers), each to send per requests, and waits until it is
// ready.
func newProcessFlood(b testing.TB, ctx context.Context, m *meshtest.Mesh, seed uint64, providers, n, per int, direct bool, made *atomic.Int64) *processFlood {
	b.Helper()
	o := floodOrder{Identities: n, Per: per, Direct: direct, First: made.Add(int64(n)) - int64(n) + 1, Providers: providers,
		PSK: meshtest.SwarmOf(seed).PSK, Topic: gossip.TopicName(meshtest.SwarmOf(seed).ID(), gossip.RFBTopic)}
	for _, nd := range m.Nodes {
		addrs, err := peer.AddrInfoToP2pAddrs(&peer.AddrInfo{ID: nd.Host().ID(), Addrs: nd.Host().Addrs()})
		if err != nil || len(addrs) == 0 {
			b.Fatalf("mesh peer %s has no address to give the flood process: %v", nd.Host().ID(), err)
		}
		o.Peers = append(o.Peers, addrs[0].String())
	}
	order, err := json.Marshal(o)
	if err != nil {
		b.Fatal(err)
	}
	nice, err := exec.LookPath("nice")
	if err != nil {
		b.Fatalf("the flood process runs under nice (coreutils): %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	f := &processFlood{lines: make(chan string, 4), stderr: &tailBuffer{max: 16 << 10}}
	f.cmd = exec.Command(nice, "-n", "19", self)
	f.cmd.Env = append(os.Environ(), floodChildEnv+"="+string(order))
	f.cmd.Stderr = f.stderr
	if f.stdin, err = f.cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	out, err := f.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		b.Fatalf("start the flood process: %v", err)
	}
	go func() {
		defer close(f.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f.lines <- sc.Text()
		}
	}()
	b.Cleanup(func() { f.stop() })
	if line := f.line(ctx, 2*time.Minute); line != "ready" {
		b.Fatalf("the flood process said %q, not ready; its stderr: %s", line, f.stderr)
	}
	return f
}

// line is the flood process's next line, or "" if it ended or said
// nothing within wait.
func (f *processFlood) line(ctx context.Context, wait time.Duration) string {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case l := <-f.lines:
		return l
	case <-t.C:
	case <-ctx.Done():
	}
	return ""
}

// start tells the process to flood; the channel is closed once it says
// the flood is sent (or it ended).
func (f *processFlood) start(ctx context.Context, _ int) <-chan struct{} {
	done := make(chan struct{})
	if _, err := io.WriteString(f.stdin, "go\n"); err != nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		l := f.line(ctx, 10*time.Minute)
		if ns, ok := strings.CutPrefix(l, "sent "); ok {
			d, _ := strconv.ParseInt(ns, 10, 64)
			f.took = time.Duration(d)
		}
	}()
	return done
}

// close ends the flood process and returns the bids its flooders got and
// how long the flood took to send (0 if it did not say, or failed).
func (f *processFlood) close() (int64, time.Duration) {
	f.stdin.Close()
	var bids int64
	if n, ok := strings.CutPrefix(f.line(context.Background(), time.Minute), "bids "); ok {
		bids, _ = strconv.ParseInt(n, 10, 64)
	}
	f.stop()
	if f.cmd.ProcessState.ExitCode() != 0 {
		return bids, 0 // not a whole flood
	}
	return bids, f.took
}

// stop waits for the process to exit (killing it after a minute) once.
func (f *processFlood) stop() {
	if f.cmd.ProcessState != nil {
		return
	}
	f.stdin.Close()
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		_ = f.cmd.Wait()
	}()
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		_ = f.cmd.Process.Kill()
		<-exited
	}
	if ru, ok := f.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		f.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}

// runFloodChild is a flood process: it does what order says, speaking
// lines on in and out (see processFlood), and returns its exit code.
func runFloodChild(order string, in io.Reader, out io.Writer) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "flood process: "+format+"\n", args...)
		return 1
	}
	var o floodOrder
	if err := json.Unmarshal([]byte(order), &o); err != nil {
		return fail("order %s: %v", floodChildEnv, err)
	}
	var mesh []peer.AddrInfo
	for _, s := range o.Peers {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return fail("peer %q: %v", s, err)
		}
		ai, err := peer.AddrInfoFromP2pAddr(a)
		if err != nil {
			return fail("peer %q: %v", s, err)
		}
		mesh = append(mesh, *ai)
	}
	if len(mesh) < o.Providers || o.Providers == 0 {
		return fail("%d peers, %d of them providers: the order names too few", len(mesh), o.Providers)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var bids atomic.Int64
	type flooder struct {
		h     host.Host
		key   crypto.PrivKey
		topic *pubsub.Topic
	}
	var fl []flooder
	defer func() {
		for _, f := range fl {
			f.h.Close()
		}
	}()
	for i := range o.Identities {
		k := o.First + int64(i)
		sk, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			return fail("key: %v", err)
		}
		// As a stock libp2p peer of the swarm: TCP (a private swarm's PSK
		// works only there), Noise, yamux; no resource limits of its own.
		h, err := libp2p.New(libp2p.Identity(sk), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
			libp2p.Security(noise.ID, noise.New), libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
			libp2p.Transport(tcp.NewTCPTransport), libp2p.PrivateNetwork(o.PSK), libp2p.DisableRelay(),
			libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableMetrics())
		if err != nil {
			return fail("host: %v", err)
		}
		h.SetStreamHandler(node.NegotiateProtocol, func(s network.Stream) {
			bids.Add(1)
			_, _ = io.Copy(io.Discard, io.LimitReader(s, 64<<10))
			s.Close()
		})
		ps, err := pubsub.NewGossipSub(ctx, h, pubsub.WithFloodPublish(true), pubsub.WithPeerOutboundQueueSize(16384))
		if err != nil {
			h.Close()
			return fail("gossipsub: %v", err)
		}
		t, err := ps.Join(o.Topic)
		if err != nil {
			h.Close()
			return fail("join: %v", err)
		}
		if _, err := t.Subscribe(); err != nil {
			h.Close()
			return fail("subscribe: %v", err)
		}
		fl = append(fl, flooder{h, sk, t})
		for _, p := range mesh[:o.Providers] {
			h.Peerstore().AddAddrs(p.ID, p.Addrs, time.Hour)
		}
		for j := range 4 {
			p := mesh[(int(k)*7+j*13)%len(mesh)]
			cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
			err := h.Connect(cctx, p)
			ccancel()
			if err != nil {
				return fail("flooder %d connect to %s: %v", i, p.ID, err)
			}
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	err := testwait.Poll(wctx, func() (bool, string) {
		for i, f := range fl {
			if len(f.topic.ListPeers()) == 0 {
				return false, fmt.Sprintf("flooder %d has no peer on the request topic", i)
			}
		}
		return true, ""
	})
	wcancel()
	if err != nil {
		return fail("%v", err)
	}
	fmt.Fprintln(out, "ready")
	lines := bufio.NewScanner(in)
	if !lines.Scan() || lines.Text() != "go" {
		return 0 // told nothing: no flood
	}
	begin := time.Now()
	var wg sync.WaitGroup
	for i, f := range fl {
		id := f.h.ID()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range o.Per {
				rfb := gossip.RequestForBids{Submitter: id, Deadline: time.Now().Add(5 * time.Second).UnixMilli(), Needs: gossip.Needs{
					GPUs: 8, Model: "H100", Placement: gossip.Spread, MaxPrice: 2_500_000, Unit: "USDC:6", LeaseSeconds: 3600}}
				_, _ = rand.Read(rfb.Job[:8])
				rfb.Job[8], rfb.Job[9] = byte(n>>8), byte(n)
				if o.Direct {
					data, err := node.SealNegotiation(node.Identity{Key: f.key, PeerID: id}, &rfb)
					if err != nil {
						panic(err) // a request made here always encodes
					}
					if s, err := f.h.NewStream(ctx, mesh[(i+n)%o.Providers].ID, node.RFBProtocol); err == nil {
						_, _ = s.Write(data)
						_ = s.Close()
					}
					continue
				}
				data, err := gossip.MarshalNegotiation(&rfb)
				if err != nil {
					panic(err) // a request made here always encodes
				}
				if f.topic.Publish(ctx, data) != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	fmt.Fprintf(out, "sent %d\n", time.Since(begin).Nanoseconds())
	for lines.Scan() { // until the end of the input
	}
	fmt.Fprintf(out, "bids %d\n", bids.Load())
	return 0
}

// A mesh on TCP (Options.TCP) is reached from another process over
// loopback sockets: a flood process's requests for bids, sent on the
// topic with a stock GossipSub router, are checked by the mesh's peers.
func TestAFloodProcessReachesAMeshOnTCP(t *testing.T) {
	m := meshtest.Start(t, 4, meshtest.Options{Seed: 51, Private: true, TCP: true, Providers: 1, Price: "fixed:2.00", Executors: []string{"process"}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i, nd := range m.Nodes {
		conns := nd.Host().Network().Conns()
		if len(conns) == 0 {
			t.Fatalf("node %d has no connection", i)
		}
		for _, c := range conns {
			if _, err := c.RemoteMultiaddr().ValueForProtocol(ma.P_TCP); err != nil {
				t.Fatalf("node %d's connection to %s is at %s, not over TCP", i, c.RemotePeer(), c.RemoteMultiaddr())
			}
		}
	}
	before := m.Nodes[0].RFBValidations()
	var made atomic.Int64
	f := newProcessFlood(t, ctx, m, 51, 1, 2, 20, false, &made)
	select {
	case <-f.start(ctx, 20):
	case <-ctx.Done():
		t.Fatal("the flood process did not say its flood was sent")
	}
	bids, took := f.close()
	t.Logf("sent in %v, %d bids, flood process cpu %v", took, bids, f.cpu)
	if took <= 0 {
		t.Fatalf("the flood process reported no sending time; its stderr: %s", f.stderr)
	}
	if code := f.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("the flood process exited with %d; its stderr: %s", code, f.stderr)
	}
	testwait.Until(t, ctx, "the provider to check the flood process's requests", func() (bool, string) {
		got := m.Nodes[0].RFBValidations() - before
		return got > 0, fmt.Sprintf("%d checked", got)
	})
}
