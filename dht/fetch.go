package dht

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/gpumesh/gpumesh/internal/lazystream"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// fetchTimeout bounds asking a provider for its offer directly.
const fetchTimeout = 3 * time.Second

// offerProtocol is "/gpumesh/<swarm>/offer/1.0.0": a peer opens a stream, and
// the provider answers with its current sealed offer (at most MaxOfferSize
// bytes) and closes it. The answer is checked like a DHT record.
func offerProtocol(swarm string) protocol.ID {
	return ProtocolPrefix(swarm) + "/offer/1.0.0"
}

// serveOffer answers a direct request for this peer's offer.
func (d *Directory) serveOffer(s network.Stream) {
	defer s.Close()
	d.mu.Lock()
	own := d.own
	d.mu.Unlock()
	if own == nil {
		_ = s.Reset()
		return
	}
	_ = s.SetWriteDeadline(time.Now().Add(fetchTimeout))
	if _, err := s.Write(own); err != nil {
		_ = s.Reset()
	}
}

// fetchTiming is where one offer fetch's time went.
type fetchTiming struct {
	dialed     bool          // no connection to the provider before
	open, read time.Duration // opening the stream; reading the offer
}

// fetchOffer asks a provider for its offer over a direct stream: one round
// trip instead of a DHT value lookup, and as fresh as it gets.
func (d *Directory) fetchOffer(ctx context.Context, info peer.AddrInfo, ft *fetchTiming) (*Offer, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	if len(info.Addrs) > 0 {
		d.host.Peerstore().AddAddrs(info.ID, info.Addrs, time.Minute)
	}
	ft.dialed = d.host.Network().Connectedness(info.ID) != network.Connected
	t0 := time.Now()
	s, err := lazystream.Open(ctx, d.host, info.ID, d.offerProto, d.lookup.IdentifyFirst)
	ft.open = time.Since(t0)
	if err != nil {
		return nil, err
	}
	defer func() { ft.read = time.Since(t0) - ft.open }()
	// Not every transport honours deadlines; the context ends the stream too.
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	_ = s.SetReadDeadline(time.Now().Add(fetchTimeout))
	_ = s.CloseWrite()
	data, err := io.ReadAll(io.LimitReader(s, MaxOfferSize+1))
	_ = s.Close()
	if err != nil {
		return nil, err
	}
	o, err := d.validator.open(OfferKey(info.ID), data)
	if err != nil {
		return nil, fmt.Errorf("offer from %s: %w", info.ID, err)
	}
	return o, nil
}
