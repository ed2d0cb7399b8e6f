package dht

import (
	"context"

	"fmt"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/routing"

	kaddht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p-kad-dht/dual"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Names of a directory's halves.
const (
	HalfLAN   = "lan"   // peers with private or loopback addresses: one LAN, one machine
	HalfWAN   = "wan"   // peers with public addresses: the internet
	HalfSwarm = "swarm" // a private swarm's one DHT: every member, any address
)

// half is one Kademlia DHT of a directory with its own shard of records.
type half struct {
	name  string
	kad   *kaddht.IpfsDHT
	store *shardStore
	proto protocol.ID // its DHT protocol
}

// HalfStatus is what one half of the directory is doing now.
type HalfStatus struct {
	Name   string `json:"name"`   // "lan", "wan" or "swarm"
	Server bool   `json:"server"` // serves directory records to others
	Peers  int    `json:"peers"`  // routing table size
}

// router is what Find, FindPeer and Bootstrap use of the DHT: the dual DHT
// (both halves, merged) or a private swarm's one DHT.
type router interface {
	FindProvidersAsync(context.Context, cid.Cid, int) <-chan peer.AddrInfo
	FindPeer(context.Context, peer.ID) (peer.AddrInfo, error)
	GetValue(context.Context, string, ...routing.Option) ([]byte, error)
	Bootstrap(context.Context) error
}

// halfOptions are the options every half runs with: its own bounded shard
// (admitting remote puts by sender through the request hook) and the offer
// validator.
func (d *Directory) halfOptions(store *shardStore, cfg Config) []kaddht.Option {
	refresh := cfg.RefreshPeriod
	if refresh == 0 {
		refresh = DefaultRefreshPeriod
	}
	opts := []kaddht.Option{
		kaddht.ProtocolPrefix(ProtocolPrefix(cfg.Swarm)),
		kaddht.RoutingTableRefreshPeriod(refresh),
		kaddht.Datastore(store),
		// The store admits each remote PUT_VALUE by its sender (shard.go).
		kaddht.OnRequestHook(store.onRequest),
		// No offer is valid longer than MaxOfferTTL after it was received.
		kaddht.MaxRecordAge(MaxOfferTTL),
		kaddht.ValueGCInterval(time.Hour),
		// Offers only: no /pk or /ipns records for anyone to fill us with.
		kaddht.Validator(record.NamespacedValidator{offerNamespace: d.validator}),
	}
	// Each request on a stream of its own, sent without waiting for
	// identify, its answer shown to the lookup (messenger.go).
	opts = append(opts, kaddht.WithCustomMessageSender(newMessenger(cfg.Lookup.IdentifyFirst)))
	return opts
}

func kadMode(m Mode) (kaddht.ModeOpt, error) {
	switch m {
	case ModeServer:
		return kaddht.ModeServer, nil
	case ModeClient:
		return kaddht.ModeClient, nil
	case ModeAuto, "":
		return kaddht.ModeAuto, nil
	}
	return 0, fmt.Errorf("dht: unknown mode %q", m)
}

// startHalves starts a private swarm's one DHT, or the LAN and WAN halves.
//
// The WAN half takes cfg.Mode and keeps to public addresses (its routing
// table holds only peers it reached at one). The LAN half holds peers it
// reached at a private or loopback address, and serves records unless
// cfg.Mode is client: on a LAN no one can tell from outside whether a peer is
// reachable, and its neighbours reach it the way they reached it before.
//
// A private swarm has one DHT over every address, every member a server by
// default: members are trusted (they hold the swarm key) and reach each
// other across LANs and the internet alike.
func (d *Directory) startHalves(h host.Host, cfg Config, lim shardLimits, now func() time.Time) error {
	mode, err := kadMode(cfg.Mode)
	if err != nil {
		return err
	}
	newStore := func() *shardStore { return newShardStore(h.ID(), lim, MaxStoredProviders, now) }
	if cfg.Private {
		store := newStore()
		kad, err := kaddht.New(h, append(d.halfOptions(store, cfg), kaddht.Mode(mode))...)
		if err != nil {
			return fmt.Errorf("dht: %w", err)
		}
		d.halves = []*half{{name: HalfSwarm, kad: kad, store: store, proto: ProtocolPrefix(cfg.Swarm) + "/kad/1.0.0"}}
		d.route = kad
		return nil
	}
	lanMode := kaddht.ModeServer
	if cfg.Mode == ModeClient {
		lanMode = kaddht.ModeClient
	}
	lan, wan := newStore(), newStore()
	dd, err := dual.New(h,
		dual.WanDHTOption(append(d.halfOptions(wan, cfg), kaddht.Mode(mode))...),
		dual.LanDHTOption(append(d.halfOptions(lan, cfg),
			// After our prefix, which replaced the one dual.New extended.
			kaddht.ProtocolExtension(dual.LanExtension),
			kaddht.Mode(lanMode),
			// Peers on one machine have only loopback addresses to give.
			kaddht.AddressFilter(lanAddrs))...),
	)
	if err != nil {
		return fmt.Errorf("dht: %w", err)
	}
	d.halves = []*half{
		{name: HalfLAN, kad: dd.LAN, store: lan, proto: ProtocolPrefix(cfg.Swarm) + dual.LanExtension + "/kad/1.0.0"},
		{name: HalfWAN, kad: dd.WAN, store: wan, proto: ProtocolPrefix(cfg.Swarm) + "/kad/1.0.0"},
	}
	d.route = dd
	return nil
}

// lanAddrs is the LAN half's filter of the addresses it hands out and
// takes in: a peer's loopback addresses are left out when it has others (a
// LAN neighbour cannot use them), and kept when they are all it has (peers
// on one machine).
func lanAddrs(addrs []ma.Multiaddr) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, a := range addrs {
		if !manet.IsIPLoopback(a) {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return addrs
	}
	return out
}

// Halves says, for each half of the directory, whether it serves records
// and how many peers its routing table holds: "lan" then "wan", or "swarm"
// alone in a private swarm.
func (d *Directory) Halves() []HalfStatus {
	out := make([]HalfStatus, 0, len(d.halves))
	for _, x := range d.halves {
		out = append(out, HalfStatus{Name: x.name, Server: x.kad.Mode() == kaddht.ModeServer, Peers: x.kad.RoutingTable().Size()})
	}
	return out
}

// half returns the half of that name, or nil.
func (d *Directory) half(name string) *half {
	for _, x := range d.halves {
		if x.name == name {
			return x
		}
	}
	return nil
}

// active is the halves with peers in their routing tables, where puts and
// announcements go; when none has any, every half (each stores locally and
// says it found no peer).
func (d *Directory) active() []*half {
	var out []*half
	for _, x := range d.halves {
		if x.kad.RoutingTable().Size() > 0 {
			out = append(out, x)
		}
	}
	if len(out) == 0 {
		return d.halves
	}
	return out
}
