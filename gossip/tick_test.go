package gossip

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// testKey is the deterministic key of test peer i.
func testKey(i int) crypto.PrivKey {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(i))
	seed := sha256.Sum256(append([]byte("gossip-test"), b[:]...))
	k, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed[:]))
	if err != nil {
		panic(err)
	}
	return k
}

// testID is the peer ID of test peer i.
func testID(i int) peer.ID {
	id, err := peer.IDFromPrivateKey(testKey(i))
	if err != nil {
		panic(err)
	}
	return id
}

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func sampleTick() Tick {
	return Tick{
		Provider:  testID(1),
		Class:     "H100-80GB",
		Unit:      DefaultUnit,
		Ask:       2_100_000,
		Available: 8,
		Seq:       1,
		Time:      t0,
		Until:     t0.Add(90 * time.Second),
	}
}

func TestTickRoundTrips(t *testing.T) {
	in := sampleTick()
	data, err := in.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > MaxTickSize {
		t.Fatalf("%d bytes, more than MaxTickSize %d", len(data), MaxTickSize)
	}
	out, err := UnmarshalTick(data)
	if err != nil {
		t.Fatal(err)
	}
	if out.Provider != in.Provider || out.Class != in.Class || out.Unit != in.Unit || out.Ask != in.Ask ||
		out.Available != in.Available || out.Seq != in.Seq || !out.Time.Equal(in.Time) || !out.Until.Equal(in.Until) {
		t.Fatalf("got %+v, want %+v", out, in)
	}
}

func sampleAddrs() []ma.Multiaddr {
	return []ma.Multiaddr{
		ma.StringCast("/ip4/203.0.113.7/tcp/4001"),
		ma.StringCast("/ip4/203.0.113.7/udp/4001/quic-v1"),
		ma.StringCast("/ip4/198.51.100.1/tcp/4001/p2p/" + testID(9).String() + "/p2p-circuit"),
	}
}

func TestATickCarriesItsProvidersAddresses(t *testing.T) {
	in := sampleTick()
	in.Addrs = sampleAddrs()
	data, err := in.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	out, err := UnmarshalTick(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Addrs) != len(in.Addrs) {
		t.Fatalf("decoded %d addresses, want %d", len(out.Addrs), len(in.Addrs))
	}
	for i := range in.Addrs {
		if !out.Addrs[i].Equal(in.Addrs[i]) {
			t.Errorf("address %d: %s, want %s", i, out.Addrs[i], in.Addrs[i])
		}
	}
}

func TestTickAddrsPicksWhatFits(t *testing.T) {
	relay := "/ip4/198.51.100.1/tcp/4001/p2p/" + testID(9).String() + "/p2p-circuit"
	in := []ma.Multiaddr{
		ma.StringCast("/ip4/127.0.0.1/tcp/4001"),
		ma.StringCast("/ip4/0.0.0.0/tcp/4001"),
		ma.StringCast("/ip4/192.168.1.5/tcp/4001"),
		ma.StringCast(relay),
		ma.StringCast("/ip4/1.2.3.4/tcp/4001"),
		ma.StringCast("/ip4/1.2.3.4/tcp/4001"),
		ma.StringCast("/ip4/1.2.3.5/tcp/4001/p2p/" + testID(1).String()),
		ma.StringCast("/ip6/2600::1/udp/4001/quic-v1"),
	}
	got := TickAddrs(in)
	// The same whatever order the host lists them in: a provider compares
	// them with its last tick's.
	slices.Reverse(in)
	if again := TickAddrs(in); !slices.EqualFunc(again, got, ma.Multiaddr.Equal) {
		t.Fatalf("in another order: %v, was %v", again, got)
	}
	want := []string{"/ip4/1.2.3.4/tcp/4001", "/ip6/2600::1/udp/4001/quic-v1", relay, "/ip4/192.168.1.5/tcp/4001"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	tk := sampleTick()
	tk.Addrs = got
	if _, err := tk.Marshal(); err != nil {
		t.Fatalf("picked addresses do not encode: %v", err)
	}
	// Only loopback (one machine's swarm): that is what it lists.
	if got := TickAddrs([]ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/4001")}); len(got) != 1 {
		t.Fatalf("loopback alone: got %v", got)
	}
	// Many long addresses: the byte bound holds.
	var long []ma.Multiaddr
	for i := range 8 {
		long = append(long, ma.StringCast(fmt.Sprintf("/ip4/198.51.100.%d/tcp/4001/p2p/%s/p2p-circuit", i, testID(i))))
	}
	n := 0
	for _, a := range TickAddrs(long) {
		n += len(a.Bytes())
	}
	if n > MaxTickAddrBytes || n == 0 {
		t.Fatalf("%d bytes of addresses, want 1..%d", n, MaxTickAddrBytes)
	}
}

func TestLargestTickFitsTheBound(t *testing.T) {
	tk := sampleTick()
	tk.Class = strings.Repeat("A", maxClassLen)
	tk.Unit = Unit{Token: strings.Repeat("X", maxTokenLen), Decimals: maxDecimals}
	long := ma.StringCast("/ip6/2001:db8::1/udp/4001/quic-v1/p2p/" + testID(9).String() + "/p2p-circuit")
	for total := 0; total+len(long.Bytes()) <= MaxTickAddrBytes && len(tk.Addrs) < MaxTickAddrs; total += len(long.Bytes()) {
		tk.Addrs = append(tk.Addrs, long)
	}
	data, err := tk.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > MaxTickSize {
		t.Fatalf("largest tick is %d bytes, MaxTickSize %d", len(data), MaxTickSize)
	}
}

func TestTicksBreakingABoundDoNotEncode(t *testing.T) {
	for name, mut := range map[string]func(*Tick){
		"no provider":    func(t *Tick) { t.Provider = "" },
		"junk provider":  func(t *Tick) { t.Provider = "not a peer id" },
		"no class":       func(t *Tick) { t.Class = "" },
		"class spaces":   func(t *Tick) { t.Class = "H100 80GB" },
		"class too long": func(t *Tick) { t.Class = strings.Repeat("A", maxClassLen+1) },
		"zero ask":       func(t *Tick) { t.Ask = 0 },
		"huge ask":       func(t *Tick) { t.Ask = MaxPrice + 1 },
		"many GPUs":      func(t *Tick) { t.Available = MaxAvailable + 1 },
		"seq 0":          func(t *Tick) { t.Seq = 0 },
		"year 1960":      func(t *Tick) { t.Time = time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC) },
		"no until":       func(t *Tick) { t.Until = time.Time{} },
		"until at time":  func(t *Tick) { t.Until = t.Time },
		"until too far":  func(t *Tick) { t.Until = t.Time.Add(MaxTickLife + time.Millisecond) },
		"lower token":    func(t *Tick) { t.Unit.Token = "usdc" },
		"10 decimals":    func(t *Tick) { t.Unit.Decimals = 10 },
		"5 addresses":    func(t *Tick) { t.Addrs = append(sampleAddrs(), sampleAddrs()[:2]...) },
		"peer ID at end": func(t *Tick) {
			t.Addrs = []ma.Multiaddr{ma.StringCast("/ip4/203.0.113.7/tcp/4001/p2p/" + testID(1).String())}
		},
		"empty address": func(t *Tick) { t.Addrs = []ma.Multiaddr{{}} },
		"address bytes": func(t *Tick) {
			long := ma.StringCast("/ip6/2001:db8::1/udp/4001/quic-v1/p2p/" + testID(9).String() + "/p2p-circuit")
			t.Addrs = []ma.Multiaddr{long, long, long, long}
		},
	} {
		tk := sampleTick()
		mut(&tk)
		if _, err := tk.Marshal(); !errors.Is(err, ErrBadTick) {
			t.Errorf("%s: Marshal error %v, want ErrBadTick", name, err)
		}
	}
}

func TestMalformedTicksDoNotDecode(t *testing.T) {
	good, _ := func() ([]byte, error) { tk := sampleTick(); return tk.Marshal() }()
	cases := map[string][]byte{
		"empty":       {},
		"version 1":   append([]byte{1}, good[1:]...), // an old peer's tick
		"version 2":   append([]byte{2}, good[1:]...), // before the addresses
		"version 4":   append([]byte{4}, good[1:]...),
		"truncated":   good[:len(good)-1],
		"trailing":    append(append([]byte{}, good...), 0),
		"oversized":   bytes.Repeat([]byte{1}, MaxTickSize+1),
		"only header": {1},
	}
	withAddr := func(n byte, addr []byte) []byte {
		b := append(append([]byte{}, good[:len(good)-1]...), n)
		return append(append(b, byte(len(addr))), addr...)
	}
	okAddr := ma.StringCast("/ip4/203.0.113.7/tcp/4001").Bytes()
	cases["5 addresses"] = append(withAddr(5, okAddr), bytes.Repeat(append([]byte{byte(len(okAddr))}, okAddr...), 4)...)
	cases["junk address"] = withAddr(1, []byte{0xff, 0xff, 0xff})
	cases["empty address"] = withAddr(1, nil)
	cases["address cut short"] = withAddr(1, okAddr)[:len(good)+3]
	cases["non-minimal varint"] = withAddr(1, append([]byte{0x84, 0x00}, okAddr[1:]...)) // ip4's code in two bytes
	if _, err := UnmarshalTick(withAddr(1, okAddr)); err != nil {
		t.Fatalf("the well-formed tick these cases break: %v", err)
	}
	for name, data := range cases {
		if _, err := UnmarshalTick(data); !errors.Is(err, ErrBadTick) {
			t.Errorf("%s: error %v, want ErrBadTick", name, err)
		}
	}
}

// FuzzUnmarshalTick: the decoder never panics, never accepts more than
// MaxTickSize bytes, and what it accepts is valid and encodes back to the
// same bytes.
func FuzzUnmarshalTick(f *testing.F) {
	tk := sampleTick()
	good, _ := tk.Marshal()
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{1, 0})
	f.Add(good[:20])
	tk.Addrs = sampleAddrs()
	withAddrs, _ := tk.Marshal()
	f.Add(withAddrs)
	f.Fuzz(func(t *testing.T, data []byte) {
		tk, err := UnmarshalTick(data)
		if err != nil {
			if !errors.Is(err, ErrBadTick) {
				t.Fatalf("error %v does not wrap ErrBadTick", err)
			}
			return
		}
		if len(data) > MaxTickSize {
			t.Fatalf("accepted %d bytes", len(data))
		}
		if err := tk.Check(); err != nil {
			t.Fatalf("accepted an invalid tick: %v", err)
		}
		again, err := tk.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("not canonical:\n in  %x\n out %x", data, again)
		}
	})
}
