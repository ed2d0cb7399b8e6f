// Package lazystream opens libp2p streams that send their first bytes at
// once.
//
// A libp2p host's NewStream waits, on a connection it has just dialed,
// for identify to finish (one round trip) before it sends the first byte
// on the stream. A stream from Open goes out at once, its protocol
// negotiated optimistically (multistream-select's lazy client: the
// protocol's name rides with the first write, and a peer that does not
// speak it answers with a refusal the first read reports); identify still
// runs beside it. The directory's requests and offer fetches and the
// negotiation's messages use it (docs/scale.md, "Lookup round trips").
package lazystream

import (
	"context"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	msmux "github.com/multiformats/go-multistream"
)

// CloseTimeout bounds Close's wait for the peer's answer to the
// protocol's name.
const CloseTimeout = 10 * time.Second

// Open opens a stream to p for proto without waiting for identify
// (dialing p if there is no connection), the protocol negotiated with the
// first write. With identifyFirst it is the host's NewStream.
func Open(ctx context.Context, h host.Host, p peer.ID, proto protocol.ID, identifyFirst bool) (network.Stream, error) {
	if identifyFirst {
		return h.NewStream(ctx, p, proto)
	}
	s, err := h.Network().NewStream(ctx, p)
	if err != nil {
		return nil, err
	}
	if err := s.SetProtocol(proto); err != nil {
		_ = s.Reset()
		return nil, err
	}
	return &stream{Stream: s, rw: msmux.NewMSSelect(s, proto)}, nil
}

// stream is a stream whose protocol is negotiated by its first write and
// read.
type stream struct {
	network.Stream
	rw msmux.LazyConn
}

func (s *stream) Read(b []byte) (int, error)  { return s.rw.Read(b) }
func (s *stream) Write(b []byte) (int, error) { return s.rw.Write(b) }

// CloseWrite sends what the negotiation holds back, then closes the
// write side.
func (s *stream) CloseWrite() error {
	_ = s.rw.Flush()
	return s.Stream.CloseWrite()
}

// Close waits for the negotiation's answer at most CloseTimeout.
func (s *stream) Close() error {
	_ = s.Stream.SetReadDeadline(time.Now().Add(CloseTimeout))
	return s.rw.Close()
}
