package gossip

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
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

func TestLargestTickFitsTheBound(t *testing.T) {
	tk := sampleTick()
	tk.Class = strings.Repeat("A", maxClassLen)
	tk.Unit = Unit{Token: strings.Repeat("X", maxTokenLen), Decimals: maxDecimals}
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
		"version 3":   append([]byte{3}, good[1:]...),
		"truncated":   good[:len(good)-1],
		"trailing":    append(append([]byte{}, good...), 0),
		"oversized":   bytes.Repeat([]byte{1}, MaxTickSize+1),
		"only header": {1},
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
