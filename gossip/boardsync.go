package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
)

// Board sync: a peer that joins asks a few connected peers for the quotes
// their boards hold, rather than waiting for every provider's next re-send
// (up to Resend.Cap). A board hands on each quote as the GossipSub message
// its provider signed (SignedTick.Msg), and the newcomer checks each one
// as it checks a tick from the topic: the signature, the signer being the
// provider, the topic being its own swarm's price topic, the tick's bounds,
// unit, sequence and rate (TickValidator.ValidateStored), so a peer that
// answers can leave out quotes but cannot forge, alter or revive one.
//
//	request  version 1 byte = 1 | limit 2 bytes, 1..MaxSyncTicks
//	answer   version 1 byte = 1 | count 2 bytes, 0..MaxSyncTicks |
//	         count × (length 2 bytes, 1..MaxSignedTickSize | the signed tick)
//
// Integers are big-endian; nothing may follow.

// Bounds of a board sync.
const (
	MaxSyncTicks      = 2048                                   // quotes in one answer
	MaxSignedTickSize = 768                                    // bytes of one signed tick (GossipSub message: a tick of MaxTickSize, its author, topic and signature)
	MaxSyncAnswer     = 3 + MaxSyncTicks*(2+MaxSignedTickSize) // bytes of an answer
	SyncRequestSize   = 3                                      // bytes of a request
	syncVersion       = 1
)

// ErrBadSync marks a board-sync request or answer that cannot be decoded or
// breaks a bound.
var ErrBadSync = errors.New("bad board sync")

// ErrBadSignature marks a handed-on tick whose signature does not check.
var ErrBadSignature = errors.New("tick's signature does not check")

// SignedTick is a tick with the GossipSub message its provider signed (the
// encoded pb.Message: author, data, sequence number, topic, signature), which
// a board keeps to hand the quote on. Msg is nil for a tick not known that way.
type SignedTick struct {
	Tick Tick
	Msg  []byte
}

// MarshalSyncRequest encodes a request for at most limit quotes.
func MarshalSyncRequest(limit int) ([]byte, error) {
	if limit < 1 || limit > MaxSyncTicks {
		return nil, fmt.Errorf("%w: limit %d, want 1..%d", ErrBadSync, limit, MaxSyncTicks)
	}
	return binary.BigEndian.AppendUint16([]byte{syncVersion}, uint16(limit)), nil
}

// UnmarshalSyncRequest decodes a request; limit is in 1..MaxSyncTicks.
func UnmarshalSyncRequest(data []byte) (limit int, err error) {
	switch {
	case len(data) != SyncRequestSize:
		return 0, fmt.Errorf("%w: request of %d bytes, want %d", ErrBadSync, len(data), SyncRequestSize)
	case data[0] != syncVersion:
		return 0, fmt.Errorf("%w: request version %d, want %d (upgrade gpumesh?)", ErrBadSync, data[0], syncVersion)
	}
	limit = int(binary.BigEndian.Uint16(data[1:]))
	if limit < 1 || limit > MaxSyncTicks {
		return 0, fmt.Errorf("%w: limit %d, want 1..%d", ErrBadSync, limit, MaxSyncTicks)
	}
	return limit, nil
}

// MarshalSyncAnswer encodes signed ticks as an answer; it fails on more
// than MaxSyncTicks of them or one that is empty or over MaxSignedTickSize.
func MarshalSyncAnswer(ticks [][]byte) ([]byte, error) {
	if len(ticks) > MaxSyncTicks {
		return nil, fmt.Errorf("%w: %d ticks, at most %d", ErrBadSync, len(ticks), MaxSyncTicks)
	}
	n := 3
	for i, t := range ticks {
		if len(t) == 0 || len(t) > MaxSignedTickSize {
			return nil, fmt.Errorf("%w: tick %d of %d bytes, want 1..%d", ErrBadSync, i, len(t), MaxSignedTickSize)
		}
		n += 2 + len(t)
	}
	b := make([]byte, 0, n)
	b = append(b, syncVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(len(ticks)))
	for _, t := range ticks {
		b = binary.BigEndian.AppendUint16(b, uint16(len(t)))
		b = append(b, t...)
	}
	return b, nil
}

// UnmarshalSyncAnswer decodes an answer into its signed ticks (not yet
// checked: see PriceFeed.CheckStored). Its errors wrap ErrBadSync and say
// what was wrong.
func UnmarshalSyncAnswer(data []byte) ([][]byte, error) {
	if len(data) > MaxSyncAnswer {
		return nil, fmt.Errorf("%w: answer of %d bytes, at most %d", ErrBadSync, len(data), MaxSyncAnswer)
	}
	r := reader{b: data}
	if v := r.byte("version"); v != syncVersion {
		if r.err != nil {
			return nil, fmt.Errorf("%w: empty answer", ErrBadSync)
		}
		return nil, fmt.Errorf("%w: answer version %d, want %d (upgrade gpumesh?)", ErrBadSync, v, syncVersion)
	}
	count := int(r.uint16("count"))
	if r.err == nil && count > MaxSyncTicks {
		return nil, fmt.Errorf("%w: %d ticks, at most %d", ErrBadSync, count, MaxSyncTicks)
	}
	out := make([][]byte, 0, min(count, len(data)/3))
	for i := 0; i < count && r.err == nil; i++ {
		n := int(r.uint16("a tick's length"))
		if r.err == nil && (n == 0 || n > MaxSignedTickSize) {
			return nil, fmt.Errorf("%w: tick %d of %d bytes, want 1..%d", ErrBadSync, i, n, MaxSignedTickSize)
		}
		if t := r.take(n, "a tick"); t != nil {
			out = append(out, t)
		}
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadSync, r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the answer", ErrBadSync, len(r.b))
	}
	return out, nil
}

func (r *reader) uint16(what string) uint16 {
	if v := r.take(2, what); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

// OpenSignedTick checks a handed-on tick's GossipSub message: its size, that
// it is of topic, and its author's signature (as GossipSub checks a message
// under strict signing). It returns the message's data and its author; the
// data is not yet checked as a tick.
func OpenSignedTick(raw []byte, topic string) (data []byte, author peer.ID, err error) {
	if len(raw) > MaxSignedTickSize {
		return nil, "", fmt.Errorf("%w: signed tick of %d bytes, at most %d", ErrBadSync, len(raw), MaxSignedTickSize)
	}
	var m pb.Message
	if err := proto.Unmarshal(raw, &m); err != nil {
		return nil, "", fmt.Errorf("%w: signed tick: %v", ErrBadSync, err)
	}
	if m.GetTopic() != topic {
		return nil, "", fmt.Errorf("%w: a tick of topic %q, want %q", ErrBadSync, m.GetTopic(), topic)
	}
	author, err = peer.IDFromBytes(m.GetFrom())
	if err != nil {
		return nil, "", fmt.Errorf("%w: author: %v", ErrBadSignature, err)
	}
	key, err := author.ExtractPublicKey()
	if err != nil || m.Key != nil {
		// gpumesh's keys are ed25519, whose public key is in the peer ID.
		return nil, "", fmt.Errorf("%w: author %s: want an ed25519 peer ID, with no key attached", ErrBadSignature, author)
	}
	sig := m.Signature
	m.Signature, m.Key = nil, nil
	unsigned, err := proto.Marshal(&m)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	if ok, err := key.Verify(append([]byte(pubsub.SignPrefix), unsigned...), sig); err != nil || !ok {
		return nil, "", fmt.Errorf("%w: author %s", ErrBadSignature, author)
	}
	return m.GetData(), author, nil
}

// SignTick signs an encoded tick as GossipSub signs a message of topic
// under strict signing, with seqno as its sequence number: the form a
// board hands on. Tools and tests use it; a node's own ticks are signed by
// GossipSub when published.
func SignTick(key crypto.PrivKey, topic string, data []byte, seqno uint64) ([]byte, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, err
	}
	m := &pb.Message{From: []byte(id), Data: data, Seqno: binary.BigEndian.AppendUint64(nil, seqno), Topic: &topic}
	unsigned, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	if m.Signature, err = key.Sign(append([]byte(pubsub.SignPrefix), unsigned...)); err != nil {
		return nil, err
	}
	return proto.Marshal(m)
}
