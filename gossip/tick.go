package gossip

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Bounds of a price tick. A tick past any of them is rejected by every
// peer's validator, so no peer forwards it.
const (
	MaxTickSize  = 384  // bytes of an encoded tick
	MaxAvailable = 4096 // GPUs of one class on one provider
	maxClassLen  = 64   // bytes of a GPU class name
	maxIDLen     = 64   // bytes of a peer ID

	// A tick lists at most MaxTickAddrs of the provider's addresses, of at
	// most maxAddrLen bytes each and MaxTickAddrBytes together (binary
	// multiaddrs: /ip4/…/tcp/… is 8 bytes, a relayed address ~50).
	MaxTickAddrs     = 4
	MaxTickAddrBytes = 192
	maxAddrLen       = 96

	// MaxTickLife bounds how long after its time a tick may say it
	// stands (Until): a decoder's bound. A board keeps a quote no longer
	// than its own maximum (BoardConfig.TTL), whatever the tick says.
	MaxTickLife = 6 * time.Hour
)

// tickVersion is the first byte of every encoded tick. Version 2 added
// Until, version 3 the provider's addresses; an older peer's strict
// decoder rejects a newer tick (and would blame the peer that delivered
// it), so each version travels on its own topic, prices/3 now (see
// TopicName): old and new peers do not see each other's prices, and
// neither penalizes the other.
const tickVersion = 3

// ErrBadTick marks a tick that cannot be decoded or breaks a bound.
var ErrBadTick = errors.New("bad price tick")

// Tick is one provider's ask for one GPU class at one moment: the message of
// the swarm's price topic. The provider signs it: GossipSub's strict signing
// covers the whole message, and the validator checks that the signer is the
// provider the tick names.
type Tick struct {
	Provider  peer.ID   `json:"provider"`
	Class     string    `json:"class"`     // canonical GPU class, e.g. "H100-80GB"
	Unit      Unit      `json:"unit"`      // what Ask counts
	Ask       uint64    `json:"ask"`       // per GPU-hour, in Unit's smallest unit; 1..MaxPrice
	Available uint32    `json:"available"` // GPUs of Class free now; 0..MaxAvailable
	Seq       uint64    `json:"seq"`       // grows with every tick of the provider; > 0
	Time      time.Time `json:"time"`      // when the provider made it; millisecond precision on the wire
	Until     time.Time `json:"until"`     // the quote stands until then unless a newer tick replaces it; after Time, at most MaxTickLife later

	// Addrs is where the provider says it can be reached (at most
	// MaxTickAddrs; none is valid): a peer that names it in a search or a
	// request for bids dials these instead of walking the DHT to its peer
	// ID first. The provider's signature covers them, so they are its own
	// word, which a dial checks (the handshake proves the peer ID).
	Addrs []ma.Multiaddr `json:"addrs,omitempty"`
}

// The encoding is fixed and small, so that a decoder is easy to bound and to
// fuzz. Integers are big-endian; strings are a length byte and the bytes.
//
//	version   1 byte  = 1
//	provider  1+n     peer ID bytes, n in 1..64
//	class     1+n     GPU class, n in 1..64, of A-Z a-z 0-9 . _ + -
//	token     1+n     token symbol, n in 1..12, of A-Z 0-9
//	decimals  1       0..9
//	ask       8       1..MaxPrice
//	available 4       0..MaxAvailable
//	seq       8       > 0
//	time      8       unix milliseconds, > 0
//	until     8       unix milliseconds, > time, at most time + MaxTickLife
//	addrs     1       0..MaxTickAddrs, then each as 1+n: a binary multiaddr,
//	                  n in 1..96, not ending in /p2p, MaxTickAddrBytes in all
//
// Nothing may follow. The encoding of a valid tick is canonical: decoding
// and encoding again gives the same bytes.

// Check says what is wrong with a tick, if anything.
func (t *Tick) Check() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadTick, fmt.Sprintf(format, a...))
	}
	switch {
	case len(t.Provider) == 0 || len(t.Provider) > maxIDLen:
		return bad("provider ID of %d bytes, want 1..%d", len(t.Provider), maxIDLen)
	case !ValidClass(t.Class):
		return bad("GPU class %q: want 1..%d of A-Z a-z 0-9 . _ + -", t.Class, maxClassLen)
	case t.Ask == 0 || t.Ask > MaxPrice:
		return bad("ask %d, want 1..%d", t.Ask, uint64(MaxPrice))
	case t.Available > MaxAvailable:
		return bad("%d GPUs available, at most %d", t.Available, MaxAvailable)
	case t.Seq == 0:
		return bad("sequence 0")
	case t.Time.UnixMilli() <= 0:
		return bad("time %s before 1970", t.Time.UTC().Format(time.RFC3339))
	case t.Until.UnixMilli() <= t.Time.UnixMilli():
		return bad("until %s not after its time %s", t.Until.UTC().Format(time.RFC3339Nano), t.Time.UTC().Format(time.RFC3339Nano))
	case t.Until.UnixMilli()-t.Time.UnixMilli() > MaxTickLife.Milliseconds():
		return bad("stands for %v, at most %v", t.Until.Sub(t.Time).Round(time.Second), MaxTickLife)
	}
	if err := t.Unit.check(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadTick, err)
	}
	if _, err := peer.IDFromBytes([]byte(t.Provider)); err != nil {
		return bad("provider: %v", err)
	}
	return checkTickAddrs(t.Addrs)
}

// checkTickAddrs says what is wrong with a tick's addresses, if anything.
func checkTickAddrs(addrs []ma.Multiaddr) error {
	if len(addrs) > MaxTickAddrs {
		return fmt.Errorf("%w: %d addresses, at most %d", ErrBadTick, len(addrs), MaxTickAddrs)
	}
	total := 0
	for i, a := range addrs {
		n := len(a.Bytes())
		total += n
		switch {
		case n == 0 || n > maxAddrLen:
			return fmt.Errorf("%w: address %d of %d bytes, want 1..%d", ErrBadTick, i+1, n, maxAddrLen)
		case a[len(a)-1].Code() == ma.P_P2P:
			return fmt.Errorf("%w: address %s ends in a peer ID (the tick's provider is the peer)", ErrBadTick, a)
		case total > MaxTickAddrBytes:
			return fmt.Errorf("%w: addresses of %d bytes or more, at most %d", ErrBadTick, total, MaxTickAddrBytes)
		}
	}
	return nil
}

// TickAddrs picks from a peer's addresses what its ticks list: public ones
// first, then relayed, private and the rest (loopback), each kind in
// byte order, as many as fit
// MaxTickAddrs and MaxTickAddrBytes; none that is unspecified, ends in a
// peer ID or is longer than a tick takes.
func TickAddrs(addrs []ma.Multiaddr) []ma.Multiaddr {
	rank := func(a ma.Multiaddr) int {
		_, err := a.ValueForProtocol(ma.P_CIRCUIT)
		switch {
		case err == nil:
			return 1
		case manet.IsIPLoopback(a):
			return 3
		case manet.IsPublicAddr(a):
			return 0
		}
		return 2
	}
	// In a fixed order, whatever order the host gives them in: a
	// provider compares its addresses with its last tick's.
	sorted := slices.Clone(addrs)
	slices.SortFunc(sorted, func(a, b ma.Multiaddr) int {
		if d := rank(a) - rank(b); d != 0 {
			return d
		}
		return bytes.Compare(a.Bytes(), b.Bytes())
	})
	var out []ma.Multiaddr
	total := 0
	for _, a := range sorted {
		n := len(a.Bytes())
		if len(a) == 0 || n > maxAddrLen || total+n > MaxTickAddrBytes || a[len(a)-1].Code() == ma.P_P2P ||
			manet.IsIPUnspecified(a) || slices.ContainsFunc(out, a.Equal) {
			continue
		}
		out = append(out, a)
		total += n
		if len(out) == MaxTickAddrs {
			break
		}
	}
	return out
}

// ValidClass reports whether s can name a GPU class on the wire.
func ValidClass(s string) bool {
	if len(s) == 0 || len(s) > maxClassLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == '+', c == '-':
		default:
			return false
		}
	}
	return true
}

// Marshal encodes a tick; it fails if the tick breaks a bound.
func (t *Tick) Marshal() ([]byte, error) {
	if err := t.Check(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 57+len(t.Provider)+len(t.Class)+len(t.Unit.Token)+MaxTickAddrBytes)
	b = append(b, tickVersion)
	b = appendString(b, string(t.Provider))
	b = appendString(b, t.Class)
	b = appendString(b, t.Unit.Token)
	b = append(b, t.Unit.Decimals)
	b = binary.BigEndian.AppendUint64(b, t.Ask)
	b = binary.BigEndian.AppendUint32(b, t.Available)
	b = binary.BigEndian.AppendUint64(b, t.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(t.Time.UnixMilli()))
	b = binary.BigEndian.AppendUint64(b, uint64(t.Until.UnixMilli()))
	b = append(b, byte(len(t.Addrs)))
	for _, a := range t.Addrs {
		b = appendString(b, string(a.Bytes()))
	}
	return b, nil
}

func appendString(b []byte, s string) []byte {
	return append(append(b, byte(len(s))), s...)
}

// UnmarshalTick decodes and checks a tick. Its errors wrap ErrBadTick and
// say what was wrong.
func UnmarshalTick(data []byte) (Tick, error) {
	if len(data) > MaxTickSize {
		return Tick{}, fmt.Errorf("%w: %d bytes, at most %d", ErrBadTick, len(data), MaxTickSize)
	}
	r := reader{b: data}
	if v := r.byte("version"); v != tickVersion {
		if r.err != nil {
			return Tick{}, fmt.Errorf("%w: empty", ErrBadTick)
		}
		return Tick{}, fmt.Errorf("%w: version %d, want %d (upgrade gpumesh?)", ErrBadTick, v, tickVersion)
	}
	var t Tick
	t.Provider = peer.ID(r.string("provider"))
	t.Class = r.string("class")
	t.Unit.Token = r.string("token")
	t.Unit.Decimals = r.byte("decimals")
	t.Ask = r.uint64()
	t.Available = r.uint32()
	t.Seq = r.uint64()
	ms := r.uint64()
	until := r.uint64()
	naddrs := int(r.byte("addresses"))
	if r.err == nil && naddrs > MaxTickAddrs {
		return Tick{}, fmt.Errorf("%w: %d addresses, at most %d", ErrBadTick, naddrs, MaxTickAddrs)
	}
	for i := 0; i < naddrs && r.err == nil; i++ {
		raw := r.string("addresses")
		if r.err != nil {
			break
		}
		a, err := ma.NewMultiaddrBytes([]byte(raw))
		if err != nil {
			return Tick{}, fmt.Errorf("%w: address %d: %v", ErrBadTick, i+1, err)
		}
		if !bytes.Equal(a.Bytes(), []byte(raw)) {
			return Tick{}, fmt.Errorf("%w: address %d not in canonical form", ErrBadTick, i+1)
		}
		t.Addrs = append(t.Addrs, a)
	}
	if r.err != nil {
		return Tick{}, fmt.Errorf("%w: %w", ErrBadTick, r.err)
	}
	if len(r.b) != 0 {
		return Tick{}, fmt.Errorf("%w: %d bytes after the tick", ErrBadTick, len(r.b))
	}
	if ms > 1<<62 || until > 1<<62 {
		return Tick{}, fmt.Errorf("%w: time %d or until %d ms out of range", ErrBadTick, ms, until)
	}
	t.Time = time.UnixMilli(int64(ms))
	t.Until = time.UnixMilli(int64(until))
	if err := t.Check(); err != nil {
		return Tick{}, err
	}
	return t, nil
}

// reader takes fields off the front of b; the first short read sets err.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = fmt.Errorf("truncated in %s", what)
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte(what string) byte {
	if v := r.take(1, what); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) string(what string) string {
	n := r.take(1, what)
	if n == nil {
		return ""
	}
	return string(r.take(int(n[0]), what))
}

func (r *reader) uint64() uint64 {
	if v := r.take(8, "numbers"); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (r *reader) uint32() uint32 {
	if v := r.take(4, "numbers"); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}
