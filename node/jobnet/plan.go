package jobnet

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Bounds of a job network.
const (
	// MTU is the job interface's MTU, bytes: the largest packet a member
	// sends or is sent. Large, since every packet costs a read, a frame
	// and a write on each provider whatever its size.
	MTU = 65000
	// MaxMembers is the most members a job network numbers (a /16 less
	// the network, the gateway-less .1 and the broadcast address).
	MaxMembers = 1<<16 - 3
	// minPacket is the smallest IPv4 packet: its header.
	minPacket = 20
	// Bits is the prefix length of a job's subnet.
	Bits = 16
)

// Errors of the checks; each wraps one of these.
var (
	ErrNotMember = errors.New("jobnet: not a member of this job")
	ErrBadPacket = errors.New("jobnet: bad packet")
)

// Subnet is a job's private subnet: 10.X.0.0/16, X from the job's ID, so
// each provider of the job finds the same one alone. It exists only in the
// members' own network namespaces, which have no other route, so it need
// not avoid any provider's own addresses, nor other jobs'.
func Subnet(job string) netip.Prefix {
	h := sha256.Sum256([]byte("gpumesh-jobnet\x00" + job))
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, h[0], 0, 0}), Bits)
}

// Addr is the job address of a member: the subnet's (rank+2)th address
// (.0.2 for member 0).
func Addr(job string, rank int) netip.Addr {
	b := Subnet(job).Addr().As4()
	n := uint16(rank + 2)
	b[2], b[3] = byte(n>>8), byte(n)
	return netip.AddrFrom4(b)
}

// Plan is one attempt of a job's network as one provider sees it: where
// each member runs (Peers, by rank) and which of them run here (Local).
// Every decision about a packet is a method of it, with no I/O.
type Plan struct {
	Job     string
	Attempt int
	Peers   []peer.ID // the provider of each member, by rank
	Local   peer.ID   // this provider
	subnet  netip.Prefix
}

// NewPlan checks a job's member list (the start frame's) and makes its plan.
func NewPlan(job string, attempt int, peers []string, local peer.ID) (*Plan, error) {
	if len(peers) < 2 || len(peers) > MaxMembers {
		return nil, fmt.Errorf("jobnet: %d members; a job network has 2..%d", len(peers), MaxMembers)
	}
	p := &Plan{Job: job, Attempt: attempt, Local: local, subnet: Subnet(job), Peers: make([]peer.ID, len(peers))}
	for i, s := range peers {
		id, err := peer.Decode(s)
		if err != nil {
			return nil, fmt.Errorf("jobnet: member %d's provider %.60q is no peer ID: %w", i, s, err)
		}
		p.Peers[i] = id
	}
	return p, nil
}

// Addr is a member's job address.
func (p *Plan) Addr(rank int) netip.Addr { return Addr(p.Job, rank) }

// Prefix is a member's address with the subnet's length, as its
// interface gets it.
func (p *Plan) Prefix(rank int) netip.Prefix { return netip.PrefixFrom(p.Addr(rank), Bits) }

// Rank is the member holding a job address, or -1.
func (p *Plan) Rank(a netip.Addr) int {
	if !p.subnet.Contains(a) {
		return -1
	}
	b := a.As4()
	r := int(binary.BigEndian.Uint16(b[2:])) - 2
	if r < 0 || r >= len(p.Peers) {
		return -1
	}
	return r
}

// header reads the source and destination of an IPv4 packet, checking
// that it is one whole packet of at most MTU bytes.
func header(pkt []byte) (src, dst netip.Addr, err error) {
	if len(pkt) < minPacket || len(pkt) > MTU {
		return src, dst, fmt.Errorf("%w: %d bytes, want %d..%d", ErrBadPacket, len(pkt), minPacket, MTU)
	}
	if v := pkt[0] >> 4; v != 4 {
		return src, dst, fmt.Errorf("%w: IP version %d, want 4", ErrBadPacket, v)
	}
	if ihl := int(pkt[0]&0xf) * 4; ihl < minPacket || ihl > len(pkt) {
		return src, dst, fmt.Errorf("%w: header of %d bytes in a packet of %d", ErrBadPacket, ihl, len(pkt))
	}
	if total := int(binary.BigEndian.Uint16(pkt[2:4])); total != len(pkt) {
		return src, dst, fmt.Errorf("%w: says %d bytes, has %d", ErrBadPacket, total, len(pkt))
	}
	src = netip.AddrFrom4([4]byte(pkt[12:16]))
	dst = netip.AddrFrom4([4]byte(pkt[16:20]))
	return src, dst, nil
}

// Outbound decides a packet that member rank (of this provider) wrote to
// its interface: the member it goes to. A member may send only from its
// own address, only to another member of its job.
func (p *Plan) Outbound(rank int, pkt []byte) (to int, err error) {
	src, dst, err := header(pkt)
	if err != nil {
		return -1, err
	}
	if src != p.Addr(rank) {
		return -1, fmt.Errorf("%w: member %d sent from %s, its address is %s", ErrBadPacket, rank, src, p.Addr(rank))
	}
	to = p.Rank(dst)
	if to < 0 || to == rank {
		return -1, fmt.Errorf("%w: member %d sent to %s, no other member of job %s", ErrNotMember, rank, dst, p.Job)
	}
	return to, nil
}

// Inbound decides a packet that peer from sent for this job: the member of
// this provider it goes to. It must come from a member that from runs, to
// a member that this provider runs.
func (p *Plan) Inbound(from peer.ID, pkt []byte) (to int, err error) {
	src, dst, err := header(pkt)
	if err != nil {
		return -1, err
	}
	if r := p.Rank(src); r < 0 || p.Peers[r] != from {
		return -1, fmt.Errorf("%w: %s sent a packet from %s, no member it runs in job %s", ErrNotMember, from, src, p.Job)
	}
	to = p.Rank(dst)
	if to < 0 || p.Peers[to] != p.Local {
		return -1, fmt.Errorf("%w: %s sent a packet to %s, no member this provider runs in job %s", ErrNotMember, from, dst, p.Job)
	}
	return to, nil
}

// Runs reports whether peer id runs a member of the job.
func (p *Plan) Runs(id peer.ID) bool {
	for _, q := range p.Peers {
		if q == id {
			return true
		}
	}
	return false
}
