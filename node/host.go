package node

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/prometheus/client_golang/prometheus"
)

// Connection manager watermarks: above High connections the least useful
// are trimmed down to Low; new ones are spared for the grace period.
const (
	connLow   = 64
	connHigh  = 256
	connGrace = time.Minute
)

// defaultListen is every interface on port, over TCP, and QUIC where the
// swarm allows it (a private swarm's PSK works only over TCP).
func defaultListen(port int, private bool) []string {
	p := strconv.Itoa(port)
	addrs := []string{"/ip4/0.0.0.0/tcp/" + p, "/ip6/::/tcp/" + p}
	if !private {
		addrs = append(addrs, "/ip4/0.0.0.0/udp/"+p+"/quic-v1", "/ip6/::/udp/"+p+"/quic-v1")
	}
	return addrs
}

// parseListen checks listen multiaddrs and says how to fix a wrong one.
func parseListen(addrs []string, private bool) ([]ma.Multiaddr, error) {
	out := make([]ma.Multiaddr, 0, len(addrs))
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("listen address %q: %v; want a multiaddr such as /ip4/0.0.0.0/tcp/%d", s, err, DefaultPort)
		}
		_, errTCP := a.ValueForProtocol(ma.P_TCP)
		_, errQUIC := a.ValueForProtocol(ma.P_QUIC_V1)
		switch {
		case errQUIC == nil && private:
			return nil, fmt.Errorf("listen address %q: a private swarm cannot use QUIC (its pre-shared key works only over TCP); use /tcp instead", s)
		case errTCP != nil && errQUIC != nil:
			return nil, fmt.Errorf("listen address %q: want a /tcp/PORT or /udp/PORT/quic-v1 address", s)
		}
		out = append(out, a)
	}
	return out, nil
}

// checkPortsFree turns "address already in use" into an error that names the
// address and the fix, before libp2p would quietly listen on the rest.
func checkPortsFree(addrs []ma.Multiaddr) error {
	for _, a := range addrs {
		na, err := manet.ToNetAddr(a)
		if err != nil {
			continue // QUIC and friends: libp2p reports those itself
		}
		var closer interface{ Close() error }
		switch na := na.(type) {
		case *net.TCPAddr:
			if na.Port == 0 {
				continue
			}
			closer, err = net.ListenTCP("tcp", na)
		default:
			continue
		}
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				return fmt.Errorf("listen on %s: port is already in use (another gpumesh node?); stop that process or pick another port with --listen", a)
			}
			continue // e.g. no IPv6 on this host: libp2p listens on the rest and says so
		}
		closer.Close()
	}
	return nil
}

// hostOptions builds the libp2p options of a peer.
func hostOptions(cfg *Config, id Identity, listen []ma.Multiaddr, reg prometheus.Registerer, extra []libp2p.Option) ([]libp2p.Option, error) {
	cm, err := connmgr.NewConnManager(connLow, connHigh, connmgr.WithGracePeriod(connGrace))
	if err != nil {
		return nil, err
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(rcmgr.DefaultLimits.AutoScale()))
	if err != nil {
		return nil, err
	}
	opts := []libp2p.Option{
		libp2p.Identity(id.Key),
		libp2p.ListenAddrs(listen...),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ConnectionManager(cm),
		libp2p.ResourceManager(rm),
		libp2p.Ping(true),
		libp2p.UserAgent("gpumesh/" + cfg.version()),
	}
	if reg != nil {
		opts = append(opts, libp2p.PrometheusRegisterer(reg))
	} else {
		opts = append(opts, libp2p.DisableMetrics())
	}
	if cfg.Swarm.Private() {
		opts = append(opts, libp2p.PrivateNetwork(cfg.Swarm.PSK))
	} else {
		opts = append(opts, libp2p.Transport(quic.NewTransport))
	}
	if cfg.NoNAT {
		opts = append(opts, libp2p.DisableRelay())
	}
	// NAT traversal (relay.go): AutoNAT, hole punching, AutoRelay, the
	// relay service. The relay client is libp2p's default.
	opts = append(opts, extra...)
	return opts, nil
}

// newHost starts the libp2p host of a peer.
func newHost(cfg *Config, id Identity, listen []ma.Multiaddr, reg prometheus.Registerer, extra []libp2p.Option) (host.Host, error) {
	if err := checkPortsFree(listen); err != nil {
		return nil, err
	}
	opts, err := hostOptions(cfg, id, listen, reg, extra)
	if err != nil {
		return nil, fmt.Errorf("libp2p options: %w", err)
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("start libp2p host: %w", err)
	}
	return h, nil
}
