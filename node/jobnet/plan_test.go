package jobnet_test

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/gpumesh/gpumesh/node/jobnet"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

const testJob = "0123456789abcdef0123456789abcdef"

func peerID(t testing.TB) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// packet is an IPv4 header (no options) from src to dst with n bytes of
// payload.
func packet(src, dst netip.Addr, n int) []byte {
	b := make([]byte, 20+n)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[9] = 17
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	return b
}

func TestEveryProviderFindsTheSameAddresses(t *testing.T) {
	sub := jobnet.Subnet(testJob)
	if sub.Bits() != 16 || !netip.MustParsePrefix("10.0.0.0/8").Contains(sub.Addr()) {
		t.Fatalf("subnet %s, want a /16 in 10.0.0.0/8", sub)
	}
	if jobnet.Subnet(testJob) != sub {
		t.Fatal("the subnet of a job changes")
	}
	seen := map[netip.Addr]bool{}
	for _, r := range []int{0, 1, 2, 253, 254, 300, jobnet.MaxMembers - 1} {
		a := jobnet.Addr(testJob, r)
		if !sub.Contains(a) || seen[a] {
			t.Fatalf("rank %d: address %s outside %s or taken", r, a, sub)
		}
		seen[a] = true
		last := a.As4()
		if (last[2] == 0 && last[3] < 2) || (last[2] == 255 && last[3] == 255) {
			t.Errorf("rank %d: %s is the network, .1 or the broadcast address", r, a)
		}
	}
	if got := jobnet.Addr(testJob, 0).As4(); got[2] != 0 || got[3] != 2 {
		t.Errorf("member 0 is %v, want .0.2", got)
	}
}

func TestThePlanDecidesEveryPacket(t *testing.T) {
	a, b, c, stranger := peerID(t), peerID(t), peerID(t), peerID(t)
	// b runs members 1 and 2; a runs 0, c runs 3.
	plan, err := jobnet.NewPlan(testJob, 1, []string{a.String(), b.String(), b.String(), c.String()}, b)
	if err != nil {
		t.Fatal(err)
	}
	addr := plan.Addr
	outside := netip.MustParseAddr("127.0.0.1")
	for _, tc := range []struct {
		name string
		rank int // the member of b that sent it, for outbound
		from peer.ID
		pkt  []byte
		to   int
		err  error
	}{
		{"member 1 to member 0", 1, "", packet(addr(1), addr(0), 10), 0, nil},
		{"member 2 to member 3", 2, "", packet(addr(2), addr(3), 10), 3, nil},
		{"member 1 to member 2 on the same provider", 1, "", packet(addr(1), addr(2), 10), 2, nil},
		{"spoofed source", 1, "", packet(addr(2), addr(0), 10), -1, jobnet.ErrBadPacket},
		{"to itself", 1, "", packet(addr(1), addr(1), 10), -1, jobnet.ErrNotMember},
		{"to the host's loopback", 1, "", packet(addr(1), outside, 10), -1, jobnet.ErrNotMember},
		{"to an address past the last member", 1, "", packet(addr(1), addr(4), 10), -1, jobnet.ErrNotMember},
		{"too big", 1, "", packet(addr(1), addr(0), jobnet.MTU), -1, jobnet.ErrBadPacket},

		{"from a's member to ours", -1, a, packet(addr(0), addr(1), 10), 1, nil},
		{"from c's member to our other", -1, c, packet(addr(3), addr(2), 10), 2, nil},
		{"a stranger", -1, stranger, packet(addr(0), addr(1), 10), -1, jobnet.ErrNotMember},
		{"a claims c's member", -1, a, packet(addr(3), addr(1), 10), -1, jobnet.ErrNotMember},
		{"to a member we do not run", -1, a, packet(addr(0), addr(3), 10), -1, jobnet.ErrNotMember},
		{"to the host", -1, a, packet(addr(0), outside, 10), -1, jobnet.ErrNotMember},
		{"IPv6", -1, a, append([]byte{0x60}, make([]byte, 40)...), -1, jobnet.ErrBadPacket},
		{"length lies", -1, a, packet(addr(0), addr(1), 10)[:25], -1, jobnet.ErrBadPacket},
	} {
		var to int
		var err error
		if tc.rank >= 0 {
			to, err = plan.Outbound(tc.rank, tc.pkt)
		} else {
			to, err = plan.Inbound(tc.from, tc.pkt)
		}
		if to != tc.to || !errors.Is(err, tc.err) {
			t.Errorf("%s: member %d, %v; want %d, %v", tc.name, to, err, tc.to, tc.err)
		}
	}
	if _, err := jobnet.NewPlan(testJob, 1, []string{a.String()}, a); err == nil {
		t.Error("a plan of one member was made")
	}
	if _, err := jobnet.NewPlan(testJob, 1, []string{a.String(), "not-a-peer"}, a); err == nil {
		t.Error("a plan naming no peer was made")
	}
}
