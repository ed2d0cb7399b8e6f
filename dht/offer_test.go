package dht

import (
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

func newKey(t testing.TB) (crypto.PrivKey, peer.ID) {
	t.Helper()
	sk, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(sk)
	return sk, id
}

var t0 = time.Unix(1_800_000_000, 0)

func testOffer(id peer.ID, seq uint64) *Offer {
	return &Offer{
		Provider:  id,
		Addrs:     []string{"/ip4/127.0.0.1/tcp/4021"},
		Region:    "eu-west/ams1",
		Executors: []string{"docker"},
		Token:     "USDC:6",
		GPUs: []GPUOffer{{
			Class: "H100-80GB", Model: "H100", Available: 8, Total: 8, VRAMGB: 80, Compute: "9.0", Price: 2_100_000,
		}},
		Seq:     seq,
		Expires: t0.Add(10 * time.Minute).Unix(),
	}
}

func seal(t testing.TB, o *Offer, sk crypto.PrivKey) []byte {
	t.Helper()
	data, err := SealOffer(o, sk)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestValidatorAcceptsAGoodOffer(t *testing.T) {
	sk, id := newKey(t)
	v := offerValidator{now: func() time.Time { return t0 }}
	data := seal(t, testOffer(id, 1), sk)
	if err := v.Validate(OfferKey(id), data); err != nil {
		t.Fatalf("good offer rejected: %v", err)
	}
	o, err := OpenOffer(data)
	if err != nil || o.Provider != id || o.GPUs[0].Price != 2_100_000 {
		t.Fatalf("OpenOffer = %+v, %v", o, err)
	}
}

func TestValidatorRejectsBadOffers(t *testing.T) {
	sk, id := newKey(t)
	otherSK, otherID := newKey(t)
	now := func() time.Time { return t0 }
	v := offerValidator{now: now}

	// A forger signs an offer that names the victim: the envelope's signer
	// and the provider differ.
	forged := testOffer(id, 5)
	forgedData := func() []byte {
		o := *forged
		o.Provider = otherID
		data := seal(t, &o, otherSK)
		return data
	}()

	expired := testOffer(id, 2)
	expired.Expires = t0.Add(-time.Second).Unix()
	tooFar := testOffer(id, 2)
	tooFar.Expires = t0.Add(MaxOfferTTL + time.Hour).Unix()
	overbooked := testOffer(id, 2)
	overbooked.GPUs[0].Available = 9
	huge := testOffer(id, 2)
	for i := range 200 {
		huge.Addrs = append(huge.Addrs, "/ip4/127.0.0.1/tcp/"+strings.Repeat("1", 4)+string(rune('0'+i%10)))
	}

	for _, tc := range []struct {
		name string
		key  string
		data func() []byte
		want string
	}{
		{"offer of another peer under the victim's key", OfferKey(id), func() []byte { return forgedData }, "stored under the key"},
		{"garbage", OfferKey(id), func() []byte { return []byte("not an envelope") }, "bad offer"},
		{"expired", OfferKey(id), func() []byte { return seal(t, expired, sk) }, "expired"},
		{"expiry too far", OfferKey(id), func() []byte { return seal(t, tooFar, sk) }, "more than"},
		{"more available than total", OfferKey(id), func() []byte { return seal(t, overbooked, sk) }, "9 available of 8"},
		{"oversized", OfferKey(id), func() []byte { return make([]byte, MaxOfferSize+1) }, "at most"},
		{"key of no peer", "/gpumesh-offer/xyz", func() []byte { return seal(t, testOffer(id, 1), sk) }, "does not name a peer"},
		{"wrong namespace", "/pk/" + string(id), func() []byte { return seal(t, testOffer(id, 1), sk) }, "not in"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := v.Validate(tc.key, tc.data())
			if !errors.Is(err, ErrBadOffer) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrBadOffer saying %q", err, tc.want)
			}
		})
	}

	// A tampered byte breaks the signature.
	good := seal(t, testOffer(id, 1), sk)
	bad := append([]byte{}, good...)
	i := strings.Index(string(bad), "H100-80GB")
	bad[i] = 'A'
	if err := v.Validate(OfferKey(id), bad); !errors.Is(err, ErrBadOffer) {
		t.Fatalf("tampered offer: err = %v", err)
	}

	// Sealing an offer with a key other than its provider's is refused.
	if _, err := SealOffer(testOffer(id, 1), otherSK); !errors.Is(err, ErrBadOffer) {
		t.Fatalf("seal with a foreign key: err = %v", err)
	}
	// And one too big to store says so.
	if _, err := SealOffer(huge, sk); !errors.Is(err, ErrBadOffer) || !strings.Contains(err.Error(), "bytes") {
		t.Fatalf("seal oversized: err = %v", err)
	}
}

func TestSelectKeepsTheHighestSequence(t *testing.T) {
	sk, id := newKey(t)
	v := offerValidator{now: func() time.Time { return t0 }}
	old := seal(t, testOffer(id, 3), sk)
	newer := seal(t, testOffer(id, 9), sk)
	junk := []byte("junk")
	i, err := v.Select(OfferKey(id), [][]byte{old, junk, newer})
	if err != nil || i != 2 {
		t.Fatalf("Select = %d, %v; want 2 (seq 9)", i, err)
	}
	// A replayed older record never beats the newer one.
	i, err = v.Select(OfferKey(id), [][]byte{newer, old})
	if err != nil || i != 0 {
		t.Fatalf("Select with replay = %d, %v; want 0", i, err)
	}
	if _, err := v.Select(OfferKey(id), [][]byte{junk}); err == nil {
		t.Fatal("Select of only junk succeeded")
	}
}

func TestQueryPicksTheNarrowestIndexKey(t *testing.T) {
	for _, tc := range []struct {
		q    Query
		want string
	}{
		{Query{}, "any"},
		{Query{Model: "h100"}, "model/H100"},
		{Query{Model: "H100-80GB", MinVRAMGB: 80}, "class/H100-80GB"},
		{Query{MinVRAMGB: 80}, "vram/80"},
		{Query{MinVRAMGB: 79}, "vram/48"},
		{Query{MinVRAMGB: 4}, "any"},
	} {
		if got := tc.q.lookupKey(); got != tc.want {
			t.Errorf("%+v: key %q, want %q", tc.q, got, tc.want)
		}
	}
	// Every provider a query matches is listed under the query's key.
	g := GPUOffer{Class: "H100-80GB", Model: "H100", VRAMGB: 80, Available: 1, Total: 1}
	keys := map[string]bool{}
	for _, k := range IndexKeys(g) {
		keys[k] = true
	}
	for _, q := range []Query{{}, {Model: "H100"}, {Model: "h100-80gb"}, {MinVRAMGB: 80}, {MinVRAMGB: 60}, {MinVRAMGB: 8}} {
		if !keys[q.lookupKey()] {
			t.Errorf("query %+v looks under %q, which an H100-80GB provider does not announce", q, q.lookupKey())
		}
	}
}

func TestQueryMatches(t *testing.T) {
	_, id := newKey(t)
	o := testOffer(id, 1)
	g := o.GPUs[0]
	for _, tc := range []struct {
		q    Query
		want bool
	}{
		{Query{}, true},
		{Query{Model: "H100"}, true},
		{Query{Model: "A100"}, false},
		{Query{MinVRAMGB: 80}, true},
		{Query{MinVRAMGB: 81}, false},
		{Query{Region: "eu"}, true},
		{Query{Region: "us"}, false},
		{Query{MaxPrice: 2_100_000, Unit: "USDC:6"}, true},
		{Query{MaxPrice: 2_099_999, Unit: "USDC:6"}, false},
		// An ask in another unit never passes a price limit: 2_100_000
		// smallest units of SOL:9 are not 2.10 USDC.
		{Query{MaxPrice: 2_100_000, Unit: "SOL:9"}, false},
	} {
		if got := tc.q.matches(o, g); got != tc.want {
			t.Errorf("%+v matches = %v, want %v", tc.q, got, tc.want)
		}
	}
	g.Available = 0
	if (Query{}).matches(o, g) {
		t.Error("a withdrawn offer (0 available) matched")
	}
}

func FuzzOpenOffer(f *testing.F) {
	sk, id := newKey(f)
	f.Add(seal(f, testOffer(id, 1), sk))
	f.Add([]byte{})
	f.Add([]byte("\x0a\x00"))
	v := offerValidator{now: func() time.Time { return t0 }}
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := OpenOffer(data)
		if err != nil {
			if !errors.Is(err, ErrBadOffer) {
				t.Fatalf("error %v does not wrap ErrBadOffer", err)
			}
			return
		}
		// Whatever opens was signed by the provider it names; the validator
		// agrees or gives a reason.
		if err := v.Validate(OfferKey(o.Provider), data); err != nil && !errors.Is(err, ErrBadOffer) {
			t.Fatalf("validator error %v does not wrap ErrBadOffer", err)
		}
	})
}

func TestLabelsWithControlCharactersAreRejected(t *testing.T) {
	sk, id := newKey(t)
	v := offerValidator{now: func() time.Time { return t0 }}
	for name, mutate := range map[string]func(o *Offer){
		"escape in region":  func(o *Offer) { o.Region = "\x1b[2Jeu-west" },
		"OSC in compute":    func(o *Offer) { o.GPUs[0].Compute = "\x1b]52;c;aGk=\x07" },
		"newline in class":  func(o *Offer) { o.GPUs[0].Class = "H100\n80GB" },
		"space in executor": func(o *Offer) { o.Executors = []string{"docker run"} },
		"slash in token":    func(o *Offer) { o.Token = "USDC/6" },
	} {
		t.Run(name, func(t *testing.T) {
			o := testOffer(id, 1)
			mutate(o)
			data, err := SealOffer(o, sk)
			if err != nil {
				t.Fatal(err)
			}
			if err := v.Validate(OfferKey(id), data); !errors.Is(err, ErrBadOffer) || !strings.Contains(err.Error(), "only letters") {
				t.Fatalf("err = %v, want a refusal naming the allowed characters", err)
			}
		})
	}
}

func TestMatchesInAnotherUnitSortLast(t *testing.T) {
	_, a := newKey(t)
	_, b := newKey(t)
	_, c := newKey(t)
	cheapForeign := testOffer(a, 1)
	cheapForeign.Token, cheapForeign.GPUs[0].Price = "USDC:0", 3 // 3 whole USDC, not 0.000003
	mid := testOffer(b, 1)
	mid.GPUs[0].Price = 2_000_000
	high := testOffer(c, 1)
	high.GPUs[0].Price = 2_500_000
	m := []Match{{cheapForeign, cheapForeign.GPUs[0]}, {high, high.GPUs[0]}, {mid, mid.GPUs[0]}}
	sortMatches(m, "USDC:6")
	got := []peer.ID{m[0].Offer.Provider, m[1].Offer.Provider, m[2].Offer.Provider}
	if got[0] != b || got[1] != c || got[2] != a {
		t.Fatalf("order %v, want mid, high, then the foreign unit", got)
	}
}
