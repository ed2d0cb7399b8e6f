// Package dht is the GPU directory: a Kademlia DHT (go-libp2p-kad-dht) whose
// protocol carries the swarm's ID, so two swarms never share a routing table.
// Every peer in server mode holds a shard of it. Signed GPU offers and the
// class index are stored here by the directory issue; this file only starts
// and sizes the DHT.
package dht

import (
	"context"
	"errors"
	"fmt"

	kaddht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Mode says whether a peer serves DHT records to others.
type Mode string

// Modes. Auto serves only once the peer learns it is publicly reachable, so a
// peer behind NAT does not hold shards it cannot serve.
const (
	ModeAuto   Mode = "auto"
	ModeServer Mode = "server"
	ModeClient Mode = "client"
)

// ParseMode turns a flag value into a Mode.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeServer, ModeClient:
		return m, nil
	}
	return "", fmt.Errorf("dht mode %q: want auto, server or client", s)
}

// Config of a Directory. The zero value is an auto-mode DHT of the public
// swarm. Seeding it is the caller's: connect to peers, then call Bootstrap.
type Config struct {
	Swarm string // swarm ID; "" means "public"
	Mode  Mode   // "" means ModeAuto
}

// ProtocolPrefix is "/gpumesh/<swarm>", so the DHT protocol is
// "/gpumesh/<swarm>/kad/1.0.0".
func ProtocolPrefix(swarm string) protocol.ID {
	if swarm == "" {
		swarm = "public"
	}
	return protocol.ID("/gpumesh/" + swarm)
}

// Directory is the swarm's DHT on one peer.
type Directory struct {
	kad *kaddht.IpfsDHT
}

// New starts the DHT on h. Close stops it.
func New(ctx context.Context, h host.Host, cfg Config) (*Directory, error) {
	mode := kaddht.ModeAuto
	switch cfg.Mode {
	case ModeServer:
		mode = kaddht.ModeServer
	case ModeClient:
		mode = kaddht.ModeClient
	case ModeAuto, "":
	default:
		return nil, fmt.Errorf("dht: unknown mode %q", cfg.Mode)
	}
	kad, err := kaddht.New(h,
		kaddht.Mode(mode),
		kaddht.ProtocolPrefix(ProtocolPrefix(cfg.Swarm)),
	)
	if err != nil {
		return nil, fmt.Errorf("dht: %w", err)
	}
	return &Directory{kad: kad}, nil
}

// Bootstrap refreshes the routing table from the peers connected so far.
func (d *Directory) Bootstrap(ctx context.Context) error {
	return d.kad.Bootstrap(ctx)
}

// Refresh runs a routing table refresh and waits for it.
func (d *Directory) Refresh(ctx context.Context) error {
	select {
	case err := <-d.kad.RefreshRoutingTable():
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RoutingTableSize is the number of peers in this peer's routing table.
func (d *Directory) RoutingTableSize() int {
	return d.kad.RoutingTable().Size()
}

// Server reports whether this peer currently serves DHT records.
func (d *Directory) Server() bool {
	return d.kad.Mode() == kaddht.ModeServer
}

// Close stops the DHT. It is safe to call twice.
func (d *Directory) Close() error {
	if d == nil || d.kad == nil {
		return nil
	}
	err := d.kad.Close()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
