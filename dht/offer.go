package dht

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
	ma "github.com/multiformats/go-multiaddr"
)

// Bounds of an offer. A record past any of them is rejected by every peer's
// validator, so none can be made to store or forward it.
const (
	MaxOfferSize   = 4096           // bytes of the signed envelope
	MaxOfferTTL    = 24 * time.Hour // furthest expiry from now a record may claim
	maxClasses     = 16             // GPU classes in one offer
	maxAddrs       = 16             // provider addresses
	maxExecutors   = 8              // executor names
	maxLabel       = 64             // bytes of a class, region, executor or token name
	maxGPUsPerHost = 4096           // GPUs of one class on one provider
)

// offerNamespace is the DHT namespace of offer records:
// "/gpumesh-offer/<provider peer ID bytes>".
const offerNamespace = "gpumesh-offer"

// offerDomain and offerCodec tag the signed envelope of an offer, so a
// signature over an offer can never be replayed as another kind of record.
const offerDomain = "gpumesh-offer"

var offerCodec = []byte("/gpumesh/offer/1")

// ErrBadOffer marks an offer record that must not be stored or used.
var ErrBadOffer = errors.New("dht: bad offer")

// GPUOffer is what a provider offers of one GPU class.
type GPUOffer struct {
	Class     string `json:"class"`     // canonical class, e.g. "H100-80GB"
	Model     string `json:"model"`     // family, e.g. "H100"
	Available uint32 `json:"available"` // GPUs free to lease now
	Total     uint32 `json:"total"`     // GPUs of this class on the provider
	VRAMGB    uint32 `json:"vramGB"`    // memory per GPU, whole GB
	Compute   string `json:"compute"`   // CUDA compute capability, e.g. "9.0"
	Price     uint64 `json:"price"`     // ask per GPU-hour in the token's smallest unit; 0: no fixed ask
}

// Offer is a provider's signed statement of the GPUs it offers. It is stored
// in the DHT under the provider's peer ID, signed by the provider's key.
type Offer struct {
	Provider  peer.ID    `json:"provider"`
	Addrs     []string   `json:"addrs"`               // multiaddrs to reach the provider
	Region    string     `json:"region,omitempty"`    // provider's region/zone label, e.g. "eu-west/ams1"
	Executors []string   `json:"executors,omitempty"` // e.g. "docker", "process"
	Token     string     `json:"token,omitempty"`     // unit of Price, "TOKEN:DECIMALS", e.g. "USDC:6"
	GPUs      []GPUOffer `json:"gpus"`
	Seq       uint64     `json:"seq"`     // higher replaces lower
	Expires   int64      `json:"expires"` // unix seconds; an expired offer is ignored
}

var _ record.Record = (*Offer)(nil)

// Domain, Codec, MarshalRecord and UnmarshalRecord make an Offer a libp2p
// signed-envelope record.
func (o *Offer) Domain() string { return offerDomain }
func (o *Offer) Codec() []byte  { return offerCodec }

func (o *Offer) MarshalRecord() ([]byte, error) { return json.Marshal(o) }

func (o *Offer) UnmarshalRecord(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(o); err != nil {
		return fmt.Errorf("%w: %v", ErrBadOffer, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after the offer", ErrBadOffer)
	}
	return nil
}

// ExpiresAt is Expires as a time.
func (o *Offer) ExpiresAt() time.Time { return time.Unix(o.Expires, 0) }

// AvailableGPUs sums the GPUs available in the offer.
func (o *Offer) AvailableGPUs() int {
	n := 0
	for _, g := range o.GPUs {
		n += int(g.Available)
	}
	return n
}

// Check says what is wrong with an offer at time now, if anything.
func (o *Offer) Check(now time.Time) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadOffer, fmt.Sprintf(format, a...))
	}
	switch {
	case o.Provider == "":
		return bad("no provider")
	case o.Seq == 0:
		return bad("sequence 0")
	case o.ExpiresAt().Before(now):
		return bad("expired at %s", o.ExpiresAt().UTC().Format(time.RFC3339))
	case o.ExpiresAt().After(now.Add(MaxOfferTTL)):
		return bad("expiry %s is more than %v ahead", o.ExpiresAt().UTC().Format(time.RFC3339), MaxOfferTTL)
	case len(o.GPUs) > maxClasses:
		return bad("%d GPU classes, at most %d", len(o.GPUs), maxClasses)
	case len(o.Addrs) > maxAddrs:
		return bad("%d addresses, at most %d", len(o.Addrs), maxAddrs)
	case len(o.Executors) > maxExecutors:
		return bad("%d executors, at most %d", len(o.Executors), maxExecutors)
	case len(o.Region) > maxLabel || len(o.Token) > maxLabel:
		return bad("region or token longer than %d bytes", maxLabel)
	}
	for _, l := range []struct{ what, s, extra string }{{"region", o.Region, "/"}, {"token", o.Token, ":"}} {
		if !safeLabel(l.s, l.extra) {
			return bad("%s %q: only letters, digits and . _ + - %s", l.what, l.s, l.extra)
		}
	}
	for _, a := range o.Addrs {
		if _, err := ma.NewMultiaddr(a); err != nil {
			return bad("address %q: %v", a, err)
		}
	}
	for _, e := range o.Executors {
		if e == "" || len(e) > maxLabel || !safeLabel(e, "") {
			return bad("executor name %q: 1..%d of only letters, digits and . _ + -", e, maxLabel)
		}
	}
	seen := map[string]bool{}
	for _, g := range o.GPUs {
		switch {
		case g.Class == "" || len(g.Class) > maxLabel || g.Model == "" || len(g.Model) > maxLabel || len(g.Compute) > maxLabel:
			return bad("GPU class %q model %q: empty or too long", g.Class, g.Model)
		case !safeLabel(g.Class, "") || !safeLabel(g.Model, "") || !safeLabel(g.Compute, ""):
			return bad("GPU class %q model %q compute %q: only letters, digits and . _ + -", g.Class, g.Model, g.Compute)
		case seen[g.Class]:
			return bad("class %s listed twice", g.Class)
		case g.Total == 0 || g.Total > maxGPUsPerHost:
			return bad("class %s: total %d, want 1..%d", g.Class, g.Total, maxGPUsPerHost)
		case g.Available > g.Total:
			return bad("class %s: %d available of %d", g.Class, g.Available, g.Total)
		}
		seen[g.Class] = true
	}
	return nil
}

// SealOffer signs an offer with the provider's key into the bytes stored in
// the DHT. The key must be the one the offer's Provider ID names.
func SealOffer(o *Offer, key crypto.PrivKey) ([]byte, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, err
	}
	if id != o.Provider {
		return nil, fmt.Errorf("%w: signing key is %s, offer names %s", ErrBadOffer, id, o.Provider)
	}
	env, err := record.Seal(o, key)
	if err != nil {
		return nil, fmt.Errorf("seal offer: %w", err)
	}
	data, err := env.Marshal()
	if err != nil {
		return nil, err
	}
	if len(data) > MaxOfferSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d: offer fewer classes or addresses", ErrBadOffer, len(data), MaxOfferSize)
	}
	return data, nil
}

// OpenOffer checks the signature of a sealed offer and that its signer is
// the provider it names, and decodes it. It does not check expiry (Check does).
func OpenOffer(data []byte) (*Offer, error) {
	if len(data) > MaxOfferSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrBadOffer, len(data), MaxOfferSize)
	}
	o := &Offer{}
	env, err := record.ConsumeTypedEnvelope(data, o)
	if err != nil {
		if errors.Is(err, ErrBadOffer) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", ErrBadOffer, err)
	}
	signer, err := peer.IDFromPublicKey(env.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: signer: %v", ErrBadOffer, err)
	}
	if signer != o.Provider {
		return nil, fmt.Errorf("%w: signed by %s but names provider %s", ErrBadOffer, signer, o.Provider)
	}
	return o, nil
}

// OfferKey is the DHT key of a provider's offer.
func OfferKey(provider peer.ID) string {
	return "/" + offerNamespace + "/" + string(provider)
}

// offerValidator guards the offer namespace of every peer's DHT: a record is
// stored, forwarded or returned only if it is signed by the peer its key
// names, unexpired and within bounds; of several, the highest sequence wins.
type offerValidator struct {
	now func() time.Time
}

func (v offerValidator) Validate(key string, value []byte) error {
	_, err := v.open(key, value)
	return err
}

func (v offerValidator) open(key string, value []byte) (*Offer, error) {
	prefix := "/" + offerNamespace + "/"
	if len(key) <= len(prefix) || key[:len(prefix)] != prefix {
		return nil, fmt.Errorf("%w: key %q is not in /%s/", ErrBadOffer, key, offerNamespace)
	}
	keyID, err := peer.IDFromBytes([]byte(key[len(prefix):]))
	if err != nil {
		return nil, fmt.Errorf("%w: key does not name a peer: %v", ErrBadOffer, err)
	}
	o, err := OpenOffer(value)
	if err != nil {
		return nil, err
	}
	if o.Provider != keyID {
		return nil, fmt.Errorf("%w: offer of %s stored under the key of %s", ErrBadOffer, o.Provider, keyID)
	}
	if err := o.Check(v.now()); err != nil {
		return nil, err
	}
	return o, nil
}

func (v offerValidator) Select(key string, values [][]byte) (int, error) {
	best, bestSeq := -1, uint64(0)
	for i, val := range values {
		o, err := v.open(key, val)
		if err != nil {
			continue
		}
		if best < 0 || o.Seq > bestSeq {
			best, bestSeq = i, o.Seq
		}
	}
	if best < 0 {
		return 0, fmt.Errorf("%w: none of %d records is valid", ErrBadOffer, len(values))
	}
	return best, nil
}

// safeLabel reports whether s holds only letters, digits, ". _ + -" and the
// extra characters: labels end up on people's terminals, so no control
// characters or escapes get in.
func safeLabel(s, extra string) bool {
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("._+-"+extra, r):
		default:
			return false
		}
	}
	return true
}
