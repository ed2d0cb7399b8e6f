package jobnet

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Protocol carries the packets of one job's members from one provider to
// another: the opener sends a hello (the job and the attempt), then
// packets, each a 2-byte big-endian length and an IPv4 packet of at most
// MTU bytes. The other side only reads. A provider opens one stream to
// each other provider of a job it runs a member of, when a member first
// sends there.
const Protocol = protocol.ID("/gpumesh/jobnet/1.0.0")

// helloLen is the bytes of a hello: a job ID and an attempt (uint16).
const helloLen = 16 + 2

// MaxAttempt is the highest attempt a hello may name.
const MaxAttempt = 1000

// ErrBadFrame marks bytes that break the protocol.
var ErrBadFrame = errors.New("jobnet: bad frame")

// Hello opens a stream: which job's packets follow.
type Hello struct {
	Job     string // 32 hex digits
	Attempt int
}

// AppendHello encodes h.
func AppendHello(b []byte, h Hello) ([]byte, error) {
	var id gossip.JobID
	if err := id.UnmarshalText([]byte(h.Job)); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	if h.Attempt < 0 || h.Attempt > MaxAttempt {
		return nil, fmt.Errorf("%w: attempt %d, want 0..%d", ErrBadFrame, h.Attempt, MaxAttempt)
	}
	b = append(b, id[:]...)
	return binary.BigEndian.AppendUint16(b, uint16(h.Attempt)), nil
}

// ReadHello reads a stream's hello.
func ReadHello(r io.Reader) (Hello, error) {
	var b [helloLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return Hello{}, fmt.Errorf("%w: hello: %v", ErrBadFrame, err)
	}
	var id gossip.JobID
	copy(id[:], b[:16])
	a := int(binary.BigEndian.Uint16(b[16:]))
	if a > MaxAttempt {
		return Hello{}, fmt.Errorf("%w: hello names attempt %d, at most %d", ErrBadFrame, a, MaxAttempt)
	}
	return Hello{Job: id.String(), Attempt: a}, nil
}

// AppendPacket frames one packet.
func AppendPacket(b, pkt []byte) ([]byte, error) {
	if len(pkt) < minPacket || len(pkt) > MTU {
		return nil, fmt.Errorf("%w: packet of %d bytes, want %d..%d", ErrBadFrame, len(pkt), minPacket, MTU)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(pkt)))
	return append(b, pkt...), nil
}

// PacketReader reads a stream's packets in place, without copying them
// out of its buffer.
type PacketReader struct {
	br   *bufio.Reader // its buffer holds at least MTU+2 bytes
	last int           // bytes of the packet Next returned last, still buffered
}

// NewPacketReader reads packets from br, which must buffer at least MTU+2
// bytes (bufio.NewReaderSize).
func NewPacketReader(br *bufio.Reader) *PacketReader { return &PacketReader{br: br} }

// Next returns the next packet: valid until the next call. io.EOF marks a
// stream that ended cleanly between packets.
func (p *PacketReader) Next() ([]byte, error) {
	if p.last > 0 {
		if _, err := p.br.Discard(p.last); err != nil {
			return nil, err
		}
		p.last = 0
	}
	l, err := p.br.Peek(2)
	if err != nil {
		if errors.Is(err, io.EOF) && len(l) == 0 {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("%w: packet length: %v", ErrBadFrame, err)
	}
	n := int(binary.BigEndian.Uint16(l))
	if n < minPacket || n > MTU {
		return nil, fmt.Errorf("%w: packet of %d bytes, want %d..%d", ErrBadFrame, n, minPacket, MTU)
	}
	b, err := p.br.Peek(2 + n)
	if err != nil {
		return nil, fmt.Errorf("%w: packet of %d bytes: %v", ErrBadFrame, n, err)
	}
	p.last = 2 + n
	return b[2:], nil
}
