package node

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/host/autorelay"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	ma "github.com/multiformats/go-multiaddr"
)

// Relay service modes (Config.RelayService, --relay-service).
const (
	RelayAuto = "auto" // serve as a relay once AutoNAT finds this peer publicly reachable
	RelayOn   = "on"   // serve as a relay from the start
	RelayOff  = "off"  // never serve as a relay
)

// Limits of the relay service by default: the circuit relay's own, which
// make a relayed connection good for finding a peer and punching a hole to
// it, not for a job's data.
const (
	DefaultRelayReservations = 128
	DefaultRelayData         = 128 << 10       // bytes each way per relayed connection
	DefaultRelayDuration     = 2 * time.Minute // per relayed connection
)

// How AutoRelay, on a peer behind NAT, looks for relays among the peers it
// is connected to: how often it asks again, and how long it leaves a relay
// that refused it.
const (
	relaySearchInterval = 5 * time.Second
	relayBackoff        = time.Minute
)

// Connection kinds in Status.Connections.
const (
	ConnDirect      = "direct"       // dialled or accepted directly
	ConnHolePunched = "hole-punched" // direct, made by hole punching through NATs
	ConnRelayed     = "relayed"      // through a relay only
)

// PeerConn is how one connected peer is reached.
type PeerConn struct {
	Peer  string `json:"peer"`
	Kind  string `json:"kind"`            // ConnDirect, ConnHolePunched or ConnRelayed
	Relay string `json:"relay,omitempty"` // the relay's peer ID, for a relayed connection
}

// RelayStatus is this peer's side of relaying, for Status.
type RelayStatus struct {
	// Service: "off", "serving" (this peer relays for others), or
	// "standby" (auto mode: it will once AutoNAT finds it public).
	Service string `json:"service"`
	// Relays are the peers this peer holds a relay reservation with (it
	// advertises addresses through them).
	Relays []string `json:"relays,omitempty"`
}

// validateRelay checks the relay settings of c.
func (c *Config) validateRelay(bad func(flag, format string, args ...any)) {
	switch c.RelayService {
	case "", RelayAuto, RelayOn, RelayOff:
	default:
		bad("relay-service", "--relay-service %s: want auto (relay for others once AutoNAT finds this peer public), on or off", c.RelayService)
	}
	if c.RelayMaxReservations < 0 {
		bad("relay-max-reservations", "--relay-max-reservations %d: want a count of peers, at least 1 (0: %d)", c.RelayMaxReservations, DefaultRelayReservations)
	}
	if c.RelayData < 0 {
		bad("relay-data", "--relay-data %d: want bytes each way per relayed connection, at least 1 (0: %d)", c.RelayData, DefaultRelayData)
	}
	if c.RelayDuration < 0 {
		bad("relay-duration", "--relay-duration %v: want a positive duration such as 2m (0: %v)", c.RelayDuration, DefaultRelayDuration)
	}
}

// relayMode is the relay service mode, "" read as auto; without NAT
// traversal (NoNAT) there is no AutoNAT to wait for, so auto is off.
func (c *Config) relayMode() string {
	switch {
	case c.RelayService == "":
		if c.NoNAT {
			return RelayOff
		}
		return RelayAuto
	case c.RelayService == RelayAuto && c.NoNAT:
		return RelayOff
	}
	return c.RelayService
}

// relayResources are the relay service's limits from c.
func (c *Config) relayResources() relayv2.Resources {
	rc := relayv2.DefaultResources()
	if c.RelayMaxReservations > 0 {
		rc.MaxReservations = c.RelayMaxReservations
		// Peers behind one NAT share an address; the per-IP cap must not
		// be below the whole service's.
		rc.MaxReservationsPerIP = min(rc.MaxReservationsPerIP, c.RelayMaxReservations)
	}
	rc.Limit = relayv2.DefaultLimit()
	if c.RelayData > 0 {
		rc.Limit.Data = c.RelayData
	}
	if c.RelayDuration > 0 {
		rc.Limit.Duration = c.RelayDuration
	}
	return rc
}

// relayState is the node's NAT traversal: the relay service it may run,
// where AutoRelay finds relays, and which connections hole punching made.
type relayState struct {
	relayHost atomic.Pointer[host.Host] // set once the host exists; read by the peer source
	relaySvc  io.Closer                 // the relay of --relay-service on; nil otherwise
	punches   punchLog
}

// natOptions are the libp2p options of NAT traversal: the AutoNAT service
// for other peers (and AutoNAT v2 in the public swarm), hole punching,
// the relay client with AutoRelay fed by connected peers, and the relay
// service in auto mode. In a private swarm relays are members (the swarm
// key admits no one else) and everything runs over TCP.
// autonatChecksPerMinute is how many reachability checks this peer answers
// for others each minute, all askers together.
const autonatChecksPerMinute = 150

func (n *Node) natOptions(cfg *Config) []libp2p.Option {
	var opts []libp2p.Option
	if cfg.relayMode() == RelayAuto {
		opts = append(opts, libp2p.EnableRelayService(relayv2.WithResources(cfg.relayResources())))
	}
	if cfg.NoNAT {
		return opts
	}
	// Our tracer replaces libp2p's own metrics tracer unless given both.
	punchTracer := holepunch.WithTracer(&n.punches)
	if n.reg != nil {
		punchTracer = holepunch.WithMetricsAndEventTracer(holepunch.NewMetricsTracer(holepunch.WithRegisterer(n.reg)), &n.punches)
	}
	opts = append(opts,
		libp2p.EnableNATService(),
		// A public peer answers the reachability checks of every NATed peer
		// that meets it: at libp2p's default of 30 a minute, 100 new peers
		// behind NAT wait ~4 minutes to learn they need a relay. Each check
		// is one dial back to the asker's own observed address, at most 3 a
		// minute per asker, so a higher total sends nothing to third parties.
		libp2p.AutoNATServiceRateLimit(autonatChecksPerMinute, 3, time.Minute),
		libp2p.EnableHolePunching(punchTracer),
		libp2p.EnableAutoRelayWithPeerSource(n.relayCandidates,
			autorelay.WithMinCandidates(1),
			autorelay.WithBootDelay(0),
			autorelay.WithMinInterval(relaySearchInterval),
			autorelay.WithBackoff(relayBackoff)),
	)
	if !cfg.Swarm.Private() {
		opts = append(opts, libp2p.EnableAutoNATv2())
	}
	return opts
}

// startRelay runs what needs the host: the peer source's view of it and,
// with --relay-service on, the relay service.
func (n *Node) startRelay(h host.Host) error {
	n.relayHost.Store(&h)
	if n.cfg.relayMode() != RelayOn {
		return nil
	}
	opts := []relayv2.Option{relayv2.WithResources(n.cfg.relayResources())}
	if n.reg != nil {
		// Relayed bytes and connections, as in auto mode (libp2p_relaysvc_*).
		opts = append(opts, relayv2.WithMetricsTracer(relayv2.NewMetricsTracer(relayv2.WithRegisterer(n.reg))))
	}
	r, err := relayv2.New(h, opts...)
	if err != nil {
		return fmt.Errorf("relay service: %w", err)
	}
	n.relaySvc = r
	return nil
}

// closeRelay stops the relay service of --relay-service on.
func (n *Node) closeRelay() error {
	if n.relaySvc == nil {
		return nil
	}
	return n.relaySvc.Close()
}

// relayCandidates is AutoRelay's peer source: up to num connected peers
// that offer the relay service (identify lists its protocol).
func (n *Node) relayCandidates(ctx context.Context, num int) <-chan peer.AddrInfo {
	out := make(chan peer.AddrInfo, max(num, 0))
	defer close(out)
	hp := n.relayHost.Load()
	if hp == nil {
		return out
	}
	h := *hp
	for _, p := range h.Network().Peers() {
		if len(out) >= num {
			break
		}
		if ps, err := h.Peerstore().SupportsProtocols(p, proto.ProtoIDv2Hop); err != nil || len(ps) == 0 {
			continue
		}
		out <- peer.AddrInfo{ID: p, Addrs: h.Peerstore().Addrs(p)}
	}
	return out
}

// punchLog remembers, per peer, when a hole punch to it last succeeded,
// to tell a hole-punched connection from one dialled directly.
type punchLog struct {
	mu      sync.Mutex // guards punched
	punched map[peer.ID]time.Time
}

// maxPunchLog bounds the log: past it, the oldest half is forgotten.
const maxPunchLog = 4 * connHigh

// Trace records successful hole punches (holepunch.EventTracer).
func (l *punchLog) Trace(evt *holepunch.Event) {
	end, ok := evt.Evt.(*holepunch.EndHolePunchEvt)
	if !ok || !end.Success {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.punched == nil {
		l.punched = map[peer.ID]time.Time{}
	}
	if len(l.punched) >= maxPunchLog {
		l.forgetOldest()
	}
	l.punched[evt.Remote] = time.Unix(0, evt.Timestamp).Add(-end.EllapsedTime)
}

// forgetOldest drops the older half of the log.
func (l *punchLog) forgetOldest() {
	times := make([]time.Time, 0, len(l.punched))
	for _, t := range l.punched {
		times = append(times, t)
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	cut := times[len(times)/2]
	for p, t := range l.punched {
		if t.Before(cut) {
			delete(l.punched, p)
		}
	}
}

// punchedSince is when the last successful hole punch to p began.
func (l *punchLog) punchedSince(p peer.ID) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.punched[p]
	return t, ok
}

var _ holepunch.EventTracer = (*punchLog)(nil)

// isRelayed says whether a is a relayed (p2p-circuit) address, and names
// the relay (the /p2p/ before /p2p-circuit).
func isRelayed(a ma.Multiaddr) (relay string, ok bool) {
	before, _ := ma.SplitFunc(a, func(c ma.Component) bool { return c.Protocol().Code == ma.P_CIRCUIT })
	if len(before) == len(a) {
		return "", false
	}
	if id, err := before.ValueForProtocol(ma.P_P2P); err == nil {
		return id, true
	}
	return "", true
}

// connKind classifies the connections to one peer: direct (or
// hole-punched) if any is direct, relayed otherwise.
func (n *Node) connKind(p peer.ID, conns []network.Conn) PeerConn {
	pc := PeerConn{Peer: p.String(), Kind: ConnRelayed}
	for _, c := range conns {
		if relay, ok := isRelayed(c.RemoteMultiaddr()); ok {
			if pc.Relay == "" {
				pc.Relay = relay
			}
			continue
		}
		pc.Kind, pc.Relay = ConnDirect, ""
		// A direct connection opened after a hole punch began (with a
		// second of slack for clocks of events) is the punch's.
		if since, ok := n.punches.punchedSince(p); ok && !c.Stat().Opened.Before(since.Add(-time.Second)) {
			pc.Kind = ConnHolePunched
		}
		break
	}
	return pc
}

// connections lists how each connected peer is reached, by peer ID.
func (n *Node) connections() []PeerConn {
	out := []PeerConn{}
	for _, p := range n.host.Network().Peers() {
		conns := n.host.Network().ConnsToPeer(p)
		if len(conns) == 0 {
			continue
		}
		out = append(out, n.connKind(p, conns))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}

// relayStatus says whether this peer relays for others, and which relays
// it holds reservations with (read off its relayed addresses).
func (n *Node) relayStatus() RelayStatus {
	rs := RelayStatus{Service: RelayOff}
	switch n.cfg.relayMode() {
	case RelayOn:
		rs.Service = "serving"
	case RelayAuto:
		rs.Service = "standby"
		if r, ok := n.host.(interface{ Reachability() network.Reachability }); ok && r.Reachability() == network.ReachabilityPublic {
			rs.Service = "serving"
		}
	}
	seen := map[string]bool{}
	for _, a := range n.host.Addrs() {
		if relay, ok := isRelayed(a); ok && relay != "" && !seen[relay] {
			seen[relay] = true
			rs.Relays = append(rs.Relays, relay)
		}
	}
	sort.Strings(rs.Relays)
	return rs
}

// String is a PeerConn for people: "hole-punched", "relayed via ID".
func (pc PeerConn) String() string {
	if pc.Kind == ConnRelayed && pc.Relay != "" {
		return pc.Kind + " via " + pc.Relay
	}
	return pc.Kind
}
