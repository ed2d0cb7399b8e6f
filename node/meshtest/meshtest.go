// Package meshtest starts many real gpumesh nodes in one test process on a
// simulated network (libp2p's mocknet): real hosts, DHT and GossipSub, with
// in-memory links instead of sockets, so tests of 50+ peers take seconds.
// Keys are derived from a seed, so a failing run can be replayed. With
// Options.TCP the nodes listen on loopback TCP instead, so that peers in
// another process can reach them.
package meshtest

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/libp2p/go-libp2p"
	ifconnmgr "github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

// Options of a Mesh. The zero value is a good default: nodes without GPUs,
// meshed and ready for jobs when Start returns. A test states what differs.
type Options struct {
	Seed  uint64 // derives the peers' keys and the dial pattern; 0 is a seed like any other
	Dials int    // peers each new node dials besides node 0; 0 means 2

	// Providers: nodes 0 to Providers-1 offer the GPUs of the go-nvml mock
	// machine named by GPUs ("" means "mock:dgxh100", 8x H100-80GB; or
	// "mock:dgxa100"), priced by Price ("fixed:2.10"; "" quotes nothing),
	// run by Executors (nil: the node's default, docker). The other nodes
	// have no GPUs.
	Providers int
	GPUs      string
	Price     string
	Executors []string

	// Private puts every node in one private swarm, its key derived from
	// Seed (a node offering the process executor must be in one).
	Private bool

	// MeshDHT is how many peers each node's DHT routing table must hold
	// before Start returns (at most n-1); 0 means 8.
	MeshDHT int

	// Latency delays every write on every simulated link by this much
	// (one way); 0: none. Many peers or a latency dial in parallel.
	Latency time.Duration

	// Config, if set, adjusts node i's config after the options above
	// (region, data dir, clock, ...).
	Config func(i int, c *node.Config)

	// ConnLow and ConnHigh give each node a connection manager (libp2p's,
	// as a real node has, node/host.go: 64 and 256) with these
	// watermarks: above ConnHigh connections the least useful are closed
	// down to ConnLow, sparing those younger than ConnGrace (0: 10 s). 0:
	// none, and mocknet keeps every connection a node ever made (at a few
	// hundred peers, nearly all pairs).
	ConnLow, ConnHigh int
	ConnGrace         time.Duration

	// LinkOnDial links two nodes when one first dials the other (with
	// the same Latency), rather than every pair at Start: mocknet's
	// LinkAll makes a link each way for every ordered pair, ~1 KB each
	// (about 1 GB at 1,000 peers, 9 GB at 3,000), where a node dials a
	// few dozen peers. What a dial or a stream sees is the same; Isolate
	// keeps a node off its links for good.
	LinkOnDial bool

	// CountProtocols counts the bytes each node writes on streams, by
	// protocol (Mesh.SentByProtocol): GossipSub, the DHT, gpumesh's own.
	// Identify and ping, which the host runs itself, are not counted.
	CountProtocols bool
	// DualStack gives each simulated node three addresses beside its own
	// (IPv4 QUIC, IPv6 TCP and QUIC), as a public dual-stack peer has:
	// what its price ticks, DHT records and identify carry. Dials on the
	// simulated network ignore addresses.
	DualStack bool

	// Waves starts the nodes in this many groups (0 or 1: all at once):
	// each group is started, dials, bootstraps and is meshed before the
	// next starts, as peers join a running swarm. The objects and
	// goroutines a group's joining makes and drops are then freed before
	// the next group's are made, and Go reuses their memory: the mesh's
	// peak, which the heap and the stacks keep after it, is a group's.
	Waves int

	// WaveGap is how long each group of Waves runs, once meshed, before
	// the next starts (0: none). Started in real time, a group of a large
	// mesh takes longer than the connection managers' grace to join, so
	// they trim its extra connections before the next group comes; in
	// virtual time (testing/synctest) a group joins in well under a
	// second, and without a gap every group's connections pile up.
	WaveGap time.Duration

	// TCP puts each node on a libp2p host of its own listening on a
	// loopback TCP port, as a node started by hand has, rather than on
	// the simulated network: peers in another process (a flood's, made
	// to spend its own CPU) can then reach the mesh. Net is unused; the
	// options that act on the simulated network (Latency, ConnHigh,
	// CountProtocols, LinkOnDial) cannot be used with it.
	TCP bool

	// Progress, if set, is told how Start is getting on (a line at each
	// tenth of the nodes started and dialed, and at each stage): a mesh of
	// thousands takes minutes.
	Progress func(format string, args ...any)
}

// setupTimeout bounds Start's wait for the mesh: a healthy start of 50 peers
// under the race detector on two cores takes a fraction of it.
const setupTimeout = 2 * time.Minute

// largeMesh is the size above which Start dials in parallel (as it does
// for any mesh with Latency) and waits setupPerPeer a peer for the mesh
// rather than setupTimeout (600 peers on two loaded cores took 5 minutes
// to mesh: its checks wait on each node's GossipSub loop).
const (
	largeMesh     = 200
	setupPerPeer  = time.Second
	parallelDials = 16
)

// Mesh is a running set of nodes on one simulated network.
type Mesh struct {
	Net   mocknet.Mocknet
	Nodes []*node.Node

	seed   uint64
	sent   []*ProtocolBytes // each node's, with Options.CountProtocols
	links  links            // with Options.LinkOnDial
	opts   Options          // as Start was given them, for Add
	swarm  string           // the swarm ID of node 0: the adversaries join its topics
	ctx    context.Context  // ends with Close: the adversaries' loops
	cancel context.CancelFunc
}

// Key returns the deterministic identity of peer i under seed.
func Key(seed uint64, i int) node.Identity {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], seed)
	binary.BigEndian.PutUint64(b[8:], uint64(i))
	s := sha256.Sum256(b[:])
	id, err := node.IdentityFromEd25519(ed25519.NewKeyFromSeed(s[:]))
	if err != nil {
		panic(err) // a seed always makes a valid key
	}
	return id
}

// SwarmOf is the private swarm of the meshes of seed.
func SwarmOf(seed uint64) node.Swarm {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], seed)
	copy(b[8:], "swarmkey")
	s := sha256.Sum256(b[:])
	return node.Swarm{PSK: s[:]}
}

// Start starts n nodes, links every pair (or, with LinkOnDial, each pair
// as it dials), has each node dial node 0 and a
// few earlier ones, and waits until they are meshed (every DHT routing table
// holds opts.MeshDHT peers, every node has a GossipSub peer) and every node
// hears requests for bids (a peer on topic "rfb"). Everything is stopped
// when the test ends.
func Start(t testing.TB, n int, opts Options) *Mesh {
	t.Helper()
	if opts.Dials == 0 {
		opts.Dials = 2
	}
	setup := setupTimeout
	if opts.GPUs == "" {
		opts.GPUs = "mock:dgxh100"
	}
	if opts.TCP && (opts.Latency > 0 || opts.ConnHigh > 0 || opts.CountProtocols || opts.LinkOnDial) {
		t.Fatal("meshtest: Options.TCP puts the nodes on real sockets: Latency, ConnHigh, CountProtocols and LinkOnDial act on the simulated network only; leave them unset")
	}
	m := &Mesh{Net: mocknet.New(), seed: opts.Seed, opts: opts}
	m.links.net = m.Net
	m.ctx, m.cancel = context.WithCancel(context.Background())
	t.Cleanup(func() {
		if err := m.close(); err != nil {
			t.Error(err)
		}
	})
	ctx := context.Background()
	say := func(format string, args ...any) {
		if opts.Progress != nil {
			opts.Progress(format, args...)
		}
	}
	if opts.Latency > 0 {
		m.Net.SetLinkDefaults(mocknet.LinkOptions{Latency: opts.Latency})
	}
	rng := rand.New(rand.NewPCG(opts.Seed, 0x6d657368))
	var dials [][2]int
	for i := 1; i < n; i++ {
		targets := map[int]bool{0: true}
		for range opts.Dials {
			targets[rng.IntN(i)] = true
		}
		for j := range targets {
			dials = append(dials, [2]int{i, j})
		}
	}
	if n > largeMesh {
		setup = max(setup, time.Duration(n)*setupPerPeer)
	}
	if opts.MeshDHT == 0 {
		opts.MeshDHT = 8
	}
	waves := min(max(opts.Waves, 1), n)
	tenth := max(n/10, 1)
	for w := range waves {
		lo, hi := w*n/waves, (w+1)*n/waves
		for i := lo; i < hi; i++ {
			nd, err := m.startNode(ctx, i, i < opts.Providers)
			if err != nil {
				t.Fatal(err)
			}
			if (i+1)%tenth == 0 {
				say("%d of %d nodes started", i+1, n)
			}
			if i == 0 {
				m.swarm = nd.Info().Swarm
			}
			m.Nodes = append(m.Nodes, nd)
		}
		switch {
		case opts.LinkOnDial || opts.TCP: // linked as they dial, or not on the simulated network
		case w == 0:
			if err := m.Net.LinkAll(); err != nil {
				t.Fatalf("meshtest: link: %v", err)
			}
		default:
			for i := lo; i < hi; i++ { // each new node to every node before it
				for j := range i {
					if _, err := m.Net.LinkPeers(m.Nodes[i].Host().ID(), m.Nodes[j].Host().ID()); err != nil {
						t.Fatalf("meshtest: link: %v", err)
					}
				}
			}
		}
		var wave [][2]int // the dials of this wave's nodes (each dials earlier nodes only)
		for _, d := range dials {
			if d[0] >= lo && d[0] < hi {
				wave = append(wave, d)
			}
		}
		if n <= largeMesh && opts.Latency == 0 {
			for _, d := range wave { // a small mesh dials as it always has: one at a time
				if err := m.Connect(ctx, d[0], d[1]); err != nil {
					t.Fatalf("meshtest: connect %d to %d: %v", d[0], d[1], err)
				}
			}
		} else if err := m.connectAll(ctx, wave, say); err != nil {
			t.Fatal(err)
		}
		say("%d dials made; DHT bootstrap", len(wave))
		for _, nd := range m.Nodes[lo:hi] {
			if err := nd.Directory().Bootstrap(ctx); err != nil {
				t.Fatalf("meshtest: dht bootstrap: %v", err)
			}
		}
		if w == waves-1 {
			break
		}
		wctx, cancel := context.WithTimeout(ctx, max(setupTimeout, time.Duration(hi)*setupPerPeer))
		say("wave %d of %d (nodes %d to %d): waiting for them to hold %d DHT peers and a GossipSub peer", w+1, waves, lo, hi-1, min(opts.MeshDHT, hi-1))
		err := m.waitMeshedOf(wctx, lo, hi, min(opts.MeshDHT, hi-1))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if opts.WaveGap > 0 { // the mesh runs on its own meanwhile
			gap := time.NewTimer(opts.WaveGap)
			select {
			case <-gap.C:
			case <-m.ctx.Done():
				gap.Stop()
			}
		}
	}
	wctx, cancel := context.WithTimeout(ctx, setup)
	defer cancel()
	say("waiting for every node to hold %d DHT peers and a GossipSub peer", min(opts.MeshDHT, n-1))
	if err := m.waitMeshed(wctx, opts.MeshDHT); err != nil {
		t.Fatal(err)
	}
	say("waiting for every node to have a peer on the rfb topic")
	if err := m.waitTopic(wctx, "rfb"); err != nil {
		t.Fatal(err)
	}
	return m
}

// startNode makes and starts node i on the mesh's network (a provider as
// the options say, if provider), not yet linked to the others.
func (m *Mesh) startNode(ctx context.Context, i int, provider bool) (*node.Node, error) {
	opts := m.opts
	id := Key(opts.Seed, i)
	if opts.TCP {
		h, err := tcpHost(id, opts)
		if err != nil {
			return nil, fmt.Errorf("meshtest: host of peer %d: %w", i, err)
		}
		return m.newNode(ctx, i, provider, node.Config{Host: h, Identity: &id, NoMDNS: true, NoNAT: true, GPUs: "none"})
	}
	addr := ma.StringCast(fmt.Sprintf("/ip4/127.%d.%d.%d/tcp/4021", (i>>16)&0xff, (i>>8)&0xff, i&0xff))
	var h host.Host
	h, err := m.Net.AddPeer(id.Key, addr)
	if err != nil {
		return nil, fmt.Errorf("meshtest: add peer %d: %w", i, err)
	}
	if opts.DualStack {
		v4 := fmt.Sprintf("127.%d.%d.%d", (i>>16)&0xff, (i>>8)&0xff, i&0xff)
		v6 := fmt.Sprintf("fd00::%x:%x", i>>16, i&0xffff)
		for _, a := range []string{"/ip4/" + v4 + "/udp/4021/quic-v1", "/ip6/" + v6 + "/tcp/4021", "/ip6/" + v6 + "/udp/4021/quic-v1"} {
			h.Peerstore().AddAddr(h.ID(), ma.StringCast(a), peerstore.PermanentAddrTTL)
		}
	}
	if opts.ConnHigh > 0 || opts.CountProtocols || opts.LinkOnDial || opts.Latency > 0 {
		sh := &simHost{Host: h, latency: opts.Latency}
		if opts.LinkOnDial {
			sh.links = &m.links
		}
		if opts.ConnHigh > 0 {
			sh.cm, err = connmgr.NewConnManager(opts.ConnLow, opts.ConnHigh, connmgr.WithGracePeriod(cmp.Or(opts.ConnGrace, 10*time.Second)))
			if err != nil {
				return nil, fmt.Errorf("meshtest: connection manager of peer %d: %w", i, err)
			}
			h.Network().Notify(sh.cm.Notifee())
		}
		if opts.CountProtocols {
			sh.sent = &ProtocolBytes{}
			m.sent = append(m.sent, sh.sent)
		}
		h = sh
	}
	return m.newNode(ctx, i, provider, node.Config{Host: h, Identity: &id, NoMDNS: true, NoNAT: true, GPUs: "none"})
}

// tcpHost is a node's libp2p host on a loopback TCP port (Options.TCP),
// made as a node makes its own with NAT traversal off (node/host.go: TCP,
// Noise, yamux, the swarm's PSK, the same connection manager and
// resource limits), and with its reachability set rather than probed:
// libp2p's AutoNAT client, which NoNAT does not stop, can deadlock with
// identify on Close (its subscription closed while an identify push
// emits to it), leaving a node that never closes.
func tcpHost(id node.Identity, opts Options) (host.Host, error) {
	cm, err := connmgr.NewConnManager(64, 256, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		return nil, err
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(rcmgr.DefaultLimits.AutoScale()))
	if err != nil {
		return nil, err
	}
	o := []libp2p.Option{
		libp2p.Identity(id.Key),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ConnectionManager(cm),
		libp2p.ResourceManager(rm),
		libp2p.Ping(true),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
		libp2p.ForceReachabilityPublic(),
	}
	if opts.Private {
		o = append(o, libp2p.PrivateNetwork(SwarmOf(opts.Seed).PSK))
	}
	return libp2p.New(o...)
}

// newNode makes and starts node i from cfg and the mesh's options.
func (m *Mesh) newNode(ctx context.Context, i int, provider bool, cfg node.Config) (*node.Node, error) {
	opts := m.opts
	if opts.Private {
		cfg.Swarm = SwarmOf(opts.Seed)
	}
	if provider {
		cfg.GPUs, cfg.Price, cfg.Executors = opts.GPUs, opts.Price, opts.Executors
	}
	if opts.Config != nil {
		opts.Config(i, &cfg)
	}
	nd, err := node.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("meshtest: node %d: %w", i, err)
	}
	if err := nd.Start(ctx); err != nil {
		return nil, fmt.Errorf("meshtest: start node %d: %w", i, err)
	}
	return nd, nil
}

// simHost is a mocknet host with what mocknet's lacks: a connection
// manager, if cm is set (mocknet's hosts have none, so the DHT's and
// GossipSub's tags would go nowhere), and a count of the bytes written on
// its streams by protocol, if sent is set.
type simHost struct {
	host.Host
	cm    *connmgr.BasicConnMgr
	sent  *ProtocolBytes
	links *links // with Options.LinkOnDial: links made as the host dials
	// latency is Options.Latency: a stream closed waits until what was
	// written on it has arrived (simStream).
	latency time.Duration
	once    sync.Once
}

// links are the pairs of nodes linked so far, with Options.LinkOnDial.
type links struct {
	net      mocknet.Mocknet
	mu       sync.Mutex
	made     map[[2]peer.ID]struct{} // each pair once, the lesser ID first
	isolated map[peer.ID]bool        // nodes Isolate cut off: never linked again
}

// linkTo links the host to p if nothing links them yet and p is a node of the
// mesh, unless either is isolated; a dial to p then goes as on LinkAll's
// links (and fails as an unlinked dial does where it did not link).
func (h *simHost) linkTo(p peer.ID) {
	if h.links == nil || h.Host.Network().Connectedness(p) == network.Connected {
		return
	}
	l, self := h.links, h.ID()
	key := [2]peer.ID{self, p}
	if p < self {
		key = [2]peer.ID{p, self}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.made[key]; ok || l.isolated[self] || l.isolated[p] || p == self {
		return
	}
	if _, err := l.net.LinkPeers(self, p); err == nil { // an error: p is no node of this network
		if l.made == nil {
			l.made = map[[2]peer.ID]struct{}{}
		}
		l.made[key] = struct{}{}
	}
}

func (h *simHost) Connect(ctx context.Context, pi peer.AddrInfo) error {
	h.linkTo(pi.ID)
	return h.Host.Connect(ctx, pi)
}

// Network is the host's network, linking (with Options.LinkOnDial) and
// counting as the host does when a dial or a stream is opened on it
// directly (the directory opens its streams there, without waiting for
// identify).
func (h *simHost) Network() network.Network { return simNet{Network: h.Host.Network(), h: h} }

// simNet is a simHost's network.
type simNet struct {
	network.Network
	h *simHost
}

func (n simNet) DialPeer(ctx context.Context, p peer.ID) (network.Conn, error) {
	n.h.linkTo(p)
	return n.Network.DialPeer(ctx, p)
}

func (n simNet) NewStream(ctx context.Context, p peer.ID) (network.Stream, error) {
	n.h.linkTo(p)
	s, err := n.Network.NewStream(ctx, p)
	if err != nil {
		return s, err
	}
	return n.h.wrapOpened(s), nil
}

func (h *simHost) ConnManager() ifconnmgr.ConnManager {
	if h.cm == nil {
		return h.Host.ConnManager()
	}
	return h.cm
}

func (h *simHost) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	h.linkTo(p)
	s, err := h.Host.NewStream(ctx, p, pids...)
	if err != nil {
		return s, err
	}
	return h.wrapOpened(s), nil
}

func (h *simHost) SetStreamHandler(pid protocol.ID, handler network.StreamHandler) {
	h.Host.SetStreamHandler(pid, h.counted(handler))
}

func (h *simHost) SetStreamHandlerMatch(pid protocol.ID, match func(protocol.ID) bool, handler network.StreamHandler) {
	h.Host.SetStreamHandlerMatch(pid, match, h.counted(handler))
}

func (h *simHost) counted(handler network.StreamHandler) network.StreamHandler {
	if h.sent == nil && h.latency == 0 {
		return handler
	}
	return func(s network.Stream) { handler(h.wrap(s)) }
}

// Close stops the connection manager, then the host.
func (h *simHost) Close() error {
	h.once.Do(func() {
		if h.cm != nil {
			h.cm.Close()
		}
	})
	return h.Host.Close()
}

// ProtocolBytes counts the bytes a host wrote on streams, by protocol.
type ProtocolBytes struct {
	m sync.Map // protocol.ID -> *atomic.Uint64
}

func (b *ProtocolBytes) add(p protocol.ID, n int) {
	c, ok := b.m.Load(p)
	if !ok {
		c, _ = b.m.LoadOrStore(p, new(atomic.Uint64))
	}
	c.(*atomic.Uint64).Add(uint64(n))
}

// wrap wraps a stream of the host's in a simStream, if it counts bytes
// or has a latency.
func (h *simHost) wrap(s network.Stream) network.Stream {
	if h.sent == nil && h.latency == 0 {
		return s
	}
	return &simStream{Stream: s, sent: h.sent, latency: h.latency}
}

// wrapOpened wraps a stream the host opened: its protocol's negotiation
// may be written below the wrapper, when it is closed (an empty request),
// so it counts as written when opened.
func (h *simHost) wrapOpened(s network.Stream) network.Stream {
	w := h.wrap(s)
	if st, ok := w.(*simStream); ok && h.latency > 0 {
		st.lastWrite.Store(time.Now().UnixNano())
	}
	return w
}

// simStream counts what is written on it (if sent is set), and closes
// (CloseWrite, Close) only once the last write has arrived: mocknet
// delivers a write of under 256 bytes at its arrival time, unless the
// stream is closed first, when it delivers it at once. A request written
// and closed (as the directory's are) would cross a link of any latency
// in no time.
type simStream struct {
	network.Stream
	sent      *ProtocolBytes
	latency   time.Duration
	lastWrite atomic.Int64 // ns since the epoch
}

func (s *simStream) Write(p []byte) (int, error) {
	n, err := s.Stream.Write(p)
	if s.sent != nil {
		s.sent.add(s.Protocol(), n)
	}
	if s.latency > 0 {
		s.lastWrite.Store(time.Now().UnixNano())
	}
	return n, err
}

// arrived waits until the last write has crossed the link.
func (s *simStream) arrived() {
	if last := s.lastWrite.Load(); last > 0 {
		if d := time.Until(time.Unix(0, last).Add(s.latency)); d > 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			<-t.C
		}
	}
}

func (s *simStream) CloseWrite() error {
	s.arrived()
	return s.Stream.CloseWrite()
}

func (s *simStream) Close() error {
	s.arrived()
	return s.Stream.Close()
}

// SentByProtocol is what the nodes have written on streams since they
// started, all together, by protocol (with Options.CountProtocols; nil
// without).
func (m *Mesh) SentByProtocol() map[protocol.ID]uint64 {
	if len(m.sent) == 0 {
		return nil
	}
	out := map[protocol.ID]uint64{}
	for _, b := range m.sent {
		b.m.Range(func(k, v any) bool {
			out[k.(protocol.ID)] += v.(*atomic.Uint64).Load()
			return true
		})
	}
	return out
}

// Add starts one more node, a provider as Start's options say if provider
// is true, links it to every node and has it dial node 0 and the nodes
// dials names (node 0 alone when none), as a peer joining a running swarm
// does. It returns once the new node is in node 0's DHT routing table and
// has a peer on the request-for-bids topic; it is stopped with the mesh.
func (m *Mesh) Add(t testing.TB, provider bool, dials ...int) *node.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	i := len(m.Nodes)
	nd, err := m.startNode(ctx, i, provider)
	if err != nil {
		t.Fatal(err)
	}
	m.Nodes = append(m.Nodes, nd)
	if !m.opts.LinkOnDial && !m.opts.TCP {
		if err := m.Net.LinkAll(); err != nil {
			t.Fatalf("meshtest: link: %v", err)
		}
	}
	for _, j := range append([]int{0}, dials...) {
		if err := m.Connect(ctx, i, j); err != nil {
			t.Fatalf("meshtest: connect %d to %d: %v", i, j, err)
		}
	}
	if err := nd.Directory().Bootstrap(ctx); err != nil {
		t.Fatalf("meshtest: dht bootstrap: %v", err)
	}
	topic := nd.Gossip().Topic("rfb")
	err = testwait.Poll(ctx, func() (bool, string) {
		if len(nd.Gossip().PubSub().ListPeers(topic)) == 0 {
			return false, "the new node has no peer on the rfb topic"
		}
		return true, ""
	})
	if err != nil {
		t.Fatalf("meshtest: node %d joining: %v", i, err)
	}
	return nd
}

// connectAll makes the dials of a large mesh, parallelDials at a time,
// trying each up to three times (a dial on a loaded machine may time out).
func (m *Mesh) connectAll(ctx context.Context, dials [][2]int, say func(string, ...any)) error {
	var (
		done  atomic.Int64
		tenth = int64(max(len(dials)/10, 1))
		wg    sync.WaitGroup
		sem   = make(chan struct{}, parallelDials)
		errMu sync.Mutex
		first error
	)
	for _, d := range dials {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var err error
			for range 3 {
				if err = m.Connect(ctx, d[0], d[1]); err == nil {
					if k := done.Add(1); k%tenth == 0 {
						say("%d of %d dials made", k, len(dials))
					}
					return
				}
			}
			errMu.Lock()
			first = cmp.Or(first, fmt.Errorf("meshtest: connect %d to %d: %w", d[0], d[1], err))
			errMu.Unlock()
		}()
	}
	wg.Wait()
	return first
}

// Connect dials node j from node i.
func (m *Mesh) Connect(ctx context.Context, i, j int) error {
	h := m.Nodes[j].Host()
	return m.Nodes[i].Connect(ctx, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()})
}

// waitMeshed waits until every node has at least min(minDHT, n-1) peers in
// its DHT routing table and at least one GossipSub peer, or ctx ends.
func (m *Mesh) waitMeshed(ctx context.Context, minDHT int) error {
	return m.waitMeshedOf(ctx, 0, len(m.Nodes), min(minDHT, len(m.Nodes)-1))
}

// waitMeshedOf waits until each of nodes lo to hi-1 has at least want
// peers in its DHT routing table and, in a mesh of more than one, a
// GossipSub peer.
func (m *Mesh) waitMeshedOf(ctx context.Context, lo, hi, want int) error {
	err := PollBounded(ctx, func(at *Step) (bool, string) {
		for i := lo; i < hi; i++ {
			nd := m.Nodes[i]
			at.Set("asking node %d for its DHT and GossipSub peers", i)
			dht, gossip := nd.Directory().RoutingTableSize(), nd.Gossip().Peers()
			if dht < want || (len(m.Nodes) > 1 && gossip == 0) {
				return false, fmt.Sprintf("node %d has %d DHT peers (want %d) and %d gossip peers", i, dht, want, gossip)
			}
		}
		return true, ""
	})
	if err != nil {
		return fmt.Errorf("meshtest: not meshed: %w", err)
	}
	return nil
}

// waitTopic waits until every node has a GossipSub peer on the swarm topic
// name (e.g. "rfb"), or ctx ends.
func (m *Mesh) waitTopic(ctx context.Context, name string) error {
	if len(m.Nodes) < 2 {
		return nil
	}
	topic := m.Nodes[0].Gossip().Topic(name)
	err := PollBounded(ctx, func(at *Step) (bool, string) {
		for i, nd := range m.Nodes {
			at.Set("asking node %d's GossipSub for its peers on the topic", i)
			if len(nd.Gossip().PubSub().ListPeers(topic)) == 0 {
				return false, fmt.Sprintf("node %d has no peer on it", i)
			}
		}
		return true, ""
	})
	if err != nil {
		return fmt.Errorf("meshtest: topic %s: %w", topic, err)
	}
	return nil
}

// Step is what a check of PollBounded is doing now (safe to set from the
// check while the waiter reads it).
type Step struct{ v atomic.Pointer[string] }

// Set says what the check is doing now.
func (s *Step) Set(format string, args ...any) {
	d := fmt.Sprintf(format, args...)
	s.v.Store(&d)
}

func (s *Step) String() string {
	if d := s.v.Load(); d != nil {
		return *d
	}
	return "starting"
}

// PollBounded is testwait.Poll for checks that may block (a node's
// GossipSub answers ListPeers from its event loop, which a loaded machine
// can keep busy for minutes): each check runs apart from the waiter, so
// the wait ends at ctx's end even while a check is still running, and
// then says what the check was doing (what it last passed to at.Set) and
// what the last finished check saw.
func PollBounded(ctx context.Context, cond func(at *Step) (ok bool, seen string)) error {
	type result struct {
		ok   bool
		seen string
	}
	var last string
	return testwait.Poll(ctx, func() (bool, string) {
		at := &Step{}
		done := make(chan result, 1)
		go func() {
			ok, seen := cond(at)
			done <- result{ok, seen}
		}()
		select {
		case r := <-done:
			last = r.seen
			return r.ok, r.seen
		case <-ctx.Done():
			return false, fmt.Sprintf("a check still running at the deadline, %s (the last one finished saw: %s)", at, cmp.Or(last, "nothing yet"))
		}
	})
}

// Isolate cuts node i off from every other node, as if its machine fell off
// the network: no goodbye, nothing withdrawn.
func (m *Mesh) Isolate(i int) error {
	if m.opts.TCP {
		return errors.New("meshtest: Isolate cuts links of the simulated network; a mesh on TCP (Options.TCP) has none")
	}
	id := m.Nodes[i].Host().ID()
	m.links.mu.Lock()
	if m.links.isolated == nil {
		m.links.isolated = map[peer.ID]bool{}
	}
	m.links.isolated[id] = true
	m.links.mu.Unlock()
	for _, nd := range m.Nodes {
		other := nd.Host().ID()
		if other == id || m.Net.LinksBetweenPeers(id, other) == nil { // never linked (Options.LinkOnDial)
			continue
		}
		if err := m.Net.UnlinkPeers(id, other); err != nil {
			return err
		}
		_ = m.Net.DisconnectPeers(id, other)
	}
	return nil
}

// closeTimeout bounds Close's wait for the nodes to stop (closePerPeer a
// node beyond that for a large mesh): they stop all at once, each in well
// under a second when healthy (a withdrawal bounded at 5 s among them).
const (
	closeTimeout = 2 * time.Minute
	closePerPeer = 200 * time.Millisecond
)

// Close stops every node, all at once. Safe to call twice. A node that has
// not stopped after closeTimeout is left running (Start's cleanup then
// fails the test naming it, with every goroutine's stack on stderr).
func (m *Mesh) Close() { _ = m.close() }

// CloseInBubble closes a mesh started in a bubble of testing/synctest, from
// the bubble's own goroutine, and then lets the bubble's clock run a
// second: streams the nodes closed on the way out wait out their link's
// delay, and the clock moves only while this goroutine is there to wait.
// Deferred right after Start, it runs on a failed assertion too (else the
// bubble would end with goroutines blocked and crash the test binary).
// Outside a bubble the second is a real one.
func (m *Mesh) CloseInBubble() {
	m.Close()
	time.Sleep(time.Second)
}

func (m *Mesh) close() error {
	m.cancel()
	say := func(format string, args ...any) {
		if m.opts.Progress != nil {
			m.opts.Progress(format, args...)
		}
	}
	say("closing %d nodes", len(m.Nodes))
	closing := make([]atomic.Bool, len(m.Nodes))
	var wg sync.WaitGroup
	for i, nd := range m.Nodes {
		wg.Add(1)
		closing[i].Store(true)
		go func() {
			defer wg.Done()
			nd.Close()
			closing[i].Store(false)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	timeout := max(closeTimeout, time.Duration(len(m.Nodes))*closePerPeer)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		var stuck []string
		for i := range closing {
			if closing[i].Load() {
				stuck = append(stuck, fmt.Sprint(i))
			}
		}
		_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
		return fmt.Errorf("meshtest: %d of %d nodes not closed after %v (nodes %s); every goroutine's stack is on stderr",
			len(stuck), len(m.Nodes), timeout, strings.Join(stuck[:min(len(stuck), 20)], " "))
	}
	say("nodes closed; closing the network")
	err := m.Net.Close()
	say("network closed")
	return err
}
