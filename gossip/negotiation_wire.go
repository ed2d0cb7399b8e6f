package gossip

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Wire messages of cluster negotiation. Each is a kind byte followed by a
// JSON object with no unknown fields; MarshalNegotiation writes one and
// UnmarshalNegotiation (or the UnmarshalXxx of one kind) reads one back,
// bounding its size, its counts, its strings and its times.
//
// Signing: every message names its author (Submitter, Provider or From).
// The messages themselves carry no signature: the node checks at the edge
// that the peer who signed the carrier (GossipSub's strict signing for a
// RequestForBids on the rfb topic, a libp2p signed envelope or the
// authenticated stream's remote peer for the rest) is the author the
// message names, before it reaches Negotiation.Step or Reservations.

// Bounds of negotiation messages.
const (
	MaxNegotiationSize = 8 << 10               // bytes of an encoded message
	MaxJobGPUs         = 4096                  // GPUs of one job, and of one bid
	MaxLeaseSeconds    = 30 * 24 * 60 * 60     // longest lease, 30 days
	maxNegAddrs        = 16                    // addresses in one message
	maxNegAddrLen      = 256                   // bytes of one address
	maxZoneLen         = 64                    // bytes of a region/zone label
	maxReasonLen       = 256                   // bytes of a refusal or release reason
	maxUnixMilli       = 1_000_000_000_000_000 // about the year 33658
)

// ErrBadNegotiation marks a negotiation message that cannot be decoded or
// breaks a bound; the error wrapping it says what was wrong.
var ErrBadNegotiation = errors.New("bad negotiation message")

// JobID names a job across the swarm: 16 random bytes, hex on the wire.
type JobID [16]byte

func (j JobID) String() string { return hex.EncodeToString(j[:]) }

// MarshalText writes 32 hex digits.
func (j JobID) MarshalText() ([]byte, error) { return []byte(j.String()), nil }

// UnmarshalText reads exactly 32 hex digits.
func (j *JobID) UnmarshalText(b []byte) error {
	if len(b) != 2*len(j) {
		return fmt.Errorf("job ID of %d hex digits, want %d", len(b), 2*len(j))
	}
	if _, err := hex.Decode(j[:], b); err != nil {
		return fmt.Errorf("job ID: %v", err)
	}
	return nil
}

// Placement says where the members of a cluster may be.
type Placement string

const (
	Colocated Placement = "colocated" // all members in one region/zone
	Spread    Placement = "spread"    // members anywhere
)

// Needs is what a job asks for. Prices are per GPU-hour in Unit's smallest
// unit.
type Needs struct {
	GPUs         uint32    `json:"gpus"`             // 1..MaxJobGPUs, a multiple of PerNode
	Class        string    `json:"class"`            // canonical class, e.g. "H100-80GB"; "": any class of Model
	Model        string    `json:"model"`            // family, e.g. "H100"; "": any (then Class is required)
	MinVRAMGB    uint32    `json:"minVRAMGB"`        // memory per GPU, whole GB; 0: any
	PerNode      uint32    `json:"perNode"`          // GPUs of every member, exactly; 0: any split
	Placement    Placement `json:"placement"`        // colocated or spread
	MaxPrice     uint64    `json:"maxPrice"`         // 1..MaxPrice per GPU-hour
	Unit         string    `json:"unit"`             // unit of every price in the negotiation, "USDC:6"
	LeaseSeconds uint32    `json:"leaseSeconds"`     // how long the job needs its GPUs; 1..MaxLeaseSeconds
	Egress       bool      `json:"egress,omitempty"` // the job's members reach the internet (the spec's network.egress): only providers that give jobs egress bid
}

// Check says what is wrong with needs, if anything.
func (n *Needs) Check() error {
	switch {
	case n.GPUs == 0 || n.GPUs > MaxJobGPUs:
		return badNeg("needs %d GPUs, want 1..%d", n.GPUs, MaxJobGPUs)
	case n.Class == "" && n.Model == "":
		return badNeg("needs neither a GPU class nor a model")
	case n.Class != "" && !ValidClass(n.Class):
		return badNeg("GPU class %q: want 1..%d of A-Z a-z 0-9 . _ + -", n.Class, maxClassLen)
	case n.Model != "" && !ValidClass(n.Model):
		return badNeg("GPU model %q: want 1..%d of A-Z a-z 0-9 . _ + -", n.Model, maxClassLen)
	case n.PerNode > n.GPUs:
		return badNeg("perNode %d is more than the %d GPUs needed", n.PerNode, n.GPUs)
	case n.PerNode != 0 && n.GPUs%n.PerNode != 0:
		return badNeg("%d GPUs is not a multiple of perNode %d", n.GPUs, n.PerNode)
	case n.Placement != Colocated && n.Placement != Spread:
		return badNeg("placement %q, want colocated or spread", n.Placement)
	case n.MaxPrice == 0 || n.MaxPrice > MaxPrice:
		return badNeg("max price %d, want 1..%d", n.MaxPrice, uint64(MaxPrice))
	case n.Unit == "":
		return badNeg("no price unit")
	case n.LeaseSeconds == 0 || n.LeaseSeconds > MaxLeaseSeconds:
		return badNeg("lease of %d s, want 1..%d", n.LeaseSeconds, MaxLeaseSeconds)
	}
	if _, err := ParseUnit(n.Unit); err != nil {
		return fmt.Errorf("%w: %w", ErrBadNegotiation, err)
	}
	return nil
}

// unit is the parsed Unit of checked needs.
func (n *Needs) unit() Unit {
	u, err := ParseUnit(n.Unit)
	if err != nil {
		return DefaultUnit
	}
	return u
}

// Message is one negotiation message. Its author is the peer that must have
// signed it (see the note on signing above).
type Message interface {
	JobID() JobID
	Author() peer.ID
	Check() error
	kind() byte
}

// Kind bytes, the first byte of every encoded message.
const (
	kindRequestForBids byte = 1 + iota
	kindBid
	kindAward
	kindAccept
	kindRefuse
	kindConfirm
	kindRelease
)

// RequestForBids is the submitter's broadcast on the swarm's rfb topic. It
// names no address: a provider answers only a submitter it is connected to
// or finds by peer ID in the DHT, so a request cannot make providers dial a
// third party.
type RequestForBids struct {
	Job       JobID   `json:"job"`
	Submitter peer.ID `json:"submitter"`
	Needs     Needs   `json:"needs"`
	Deadline  int64   `json:"deadline"` // unix ms: bids after it are not taken, and a cluster that cannot form by then fails
}

// Bid is a provider's answer to a RequestForBids, sent to the submitter.
// Price is in the request's unit. A bid does not reserve anything: the
// provider reserves only on an Award.
type Bid struct {
	Job          JobID    `json:"job"`
	Provider     peer.ID  `json:"provider"`
	Class        string   `json:"class"`        // canonical class, e.g. "H100-80GB"
	Model        string   `json:"model"`        // family, e.g. "H100"
	VRAMGB       uint32   `json:"vramGB"`       // memory per GPU, whole GB
	GPUs         uint32   `json:"gpus"`         // 1..MaxJobGPUs; the submitter may take fewer
	Price        uint64   `json:"price"`        // per GPU-hour; 1..MaxPrice
	LeaseSeconds uint32   `json:"leaseSeconds"` // longest lease granted; 1..MaxLeaseSeconds
	Zone         string   `json:"zone"`         // region/zone label, e.g. "eu-west/ams1"; "": unknown
	Addrs        []string `json:"addrs"`
	Expires      int64    `json:"expires"` // unix ms; an award after it is refused
	// HostNet: this provider cannot give its member a job network of its
	// own; as one of several members it meets the others over its host's
	// network (see HostNetwork). Sent only in a private swarm: a
	// submitter in the public swarm takes no such bid.
	HostNet bool `json:"hostNet,omitempty"`
	// NoHostNet: this provider runs no member of several on its host's
	// network (--no-host-network): the submitter never puts it in a
	// cluster with a HostNet bid, where every member would run there. Sent
	// only in a private swarm, the one place such clusters form. A peer of
	// a version before it decodes bids strictly and would drop such a bid:
	// the node sends it the bid without the mark.
	NoHostNet bool `json:"noHostNet,omitempty"`
}

// Award is the submitter's lease offer to one member of a gang. Every member
// of a gang is awarded together; the gang holds GPUs only once all accept
// and the submitter confirms.
type Award struct {
	Job          JobID   `json:"job"`
	Submitter    peer.ID `json:"submitter"`
	Provider     peer.ID `json:"provider"`
	Class        string  `json:"class"`
	GPUs         uint32  `json:"gpus"`         // 1..MaxJobGPUs, at most the bid's
	Price        uint64  `json:"price"`        // per GPU-hour, the bid's price
	LeaseExpires int64   `json:"leaseExpires"` // unix ms
	Gang         JobID   `json:"gang"`         // the all-or-nothing group; one gang per job, named by the job's ID
	GangSize     uint32  `json:"gangSize"`     // members of the gang when this award was sent
}

// Acceptance says a provider has reserved the GPUs of an award. The
// reservation lapses at HoldUntil unless the submitter confirms it.
type Acceptance struct {
	Job       JobID   `json:"job"`
	Provider  peer.ID `json:"provider"`
	GPUs      uint32  `json:"gpus"`
	HoldUntil int64   `json:"holdUntil"` // unix ms
}

// Refusal says a provider will not take an award, and why.
type Refusal struct {
	Job      JobID   `json:"job"`
	Provider peer.ID `json:"provider"`
	Reason   string  `json:"reason"`
}

// Confirm tells a member that every member of its gang accepted: its
// reservation now holds until the lease expires.
type Confirm struct {
	Job       JobID   `json:"job"`
	Submitter peer.ID `json:"submitter"`
	Provider  peer.ID `json:"provider"`
}

// Release tells a provider to drop its reservation for a job.
type Release struct {
	Job      JobID   `json:"job"`
	From     peer.ID `json:"from"`     // the submitter
	Provider peer.ID `json:"provider"` // whose reservation goes
	Reason   string  `json:"reason"`
}

func (m *RequestForBids) JobID() JobID { return m.Job }
func (m *Bid) JobID() JobID            { return m.Job }
func (m *Award) JobID() JobID          { return m.Job }
func (m *Acceptance) JobID() JobID     { return m.Job }
func (m *Refusal) JobID() JobID        { return m.Job }
func (m *Confirm) JobID() JobID        { return m.Job }
func (m *Release) JobID() JobID        { return m.Job }

func (m *RequestForBids) Author() peer.ID { return m.Submitter }
func (m *Bid) Author() peer.ID            { return m.Provider }
func (m *Award) Author() peer.ID          { return m.Submitter }
func (m *Acceptance) Author() peer.ID     { return m.Provider }
func (m *Refusal) Author() peer.ID        { return m.Provider }
func (m *Confirm) Author() peer.ID        { return m.Submitter }
func (m *Release) Author() peer.ID        { return m.From }

func (*RequestForBids) kind() byte { return kindRequestForBids }
func (*Bid) kind() byte            { return kindBid }
func (*Award) kind() byte          { return kindAward }
func (*Acceptance) kind() byte     { return kindAccept }
func (*Refusal) kind() byte        { return kindRefuse }
func (*Confirm) kind() byte        { return kindConfirm }
func (*Release) kind() byte        { return kindRelease }

func badNeg(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrBadNegotiation, fmt.Sprintf(format, a...))
}

func checkPeer(what string, id peer.ID) error {
	if len(id) == 0 || len(id) > maxIDLen {
		return badNeg("%s ID of %d bytes, want 1..%d", what, len(id), maxIDLen)
	}
	if _, err := peer.IDFromBytes([]byte(id)); err != nil {
		return badNeg("%s: %v", what, err)
	}
	return nil
}

func checkMillis(what string, ms int64) error {
	if ms <= 0 || ms > maxUnixMilli {
		return badNeg("%s %d ms, want 1..%d", what, ms, int64(maxUnixMilli))
	}
	return nil
}

func checkAddrs(addrs []string) error {
	if len(addrs) > maxNegAddrs {
		return badNeg("%d addresses, at most %d", len(addrs), maxNegAddrs)
	}
	for _, a := range addrs {
		if len(a) > maxNegAddrLen {
			return badNeg("address of %d bytes, at most %d", len(a), maxNegAddrLen)
		}
		if _, err := ma.NewMultiaddr(a); err != nil {
			return badNeg("address %q: %v", a, err)
		}
	}
	return nil
}

func checkText(what, s string, maxLen int) error {
	if len(s) > maxLen || !utf8.ValidString(s) {
		return badNeg("%s: want at most %d bytes of UTF-8", what, maxLen)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return badNeg("%s: control character %U", what, r)
		}
	}
	return nil
}

// Check says what is wrong with a request for bids, if anything.
func (m *RequestForBids) Check() error {
	if err := checkPeer("submitter", m.Submitter); err != nil {
		return err
	}
	if err := m.Needs.Check(); err != nil {
		return err
	}
	return checkMillis("deadline", m.Deadline)
}

// DeadlineTime is Deadline as a time.
func (m *RequestForBids) DeadlineTime() time.Time { return time.UnixMilli(m.Deadline) }

// Check says what is wrong with a bid, if anything.
func (m *Bid) Check() error {
	if err := checkPeer("provider", m.Provider); err != nil {
		return err
	}
	switch {
	case !ValidClass(m.Class):
		return badNeg("GPU class %q: want 1..%d of A-Z a-z 0-9 . _ + -", m.Class, maxClassLen)
	case m.Model != "" && !ValidClass(m.Model):
		return badNeg("GPU model %q: want 1..%d of A-Z a-z 0-9 . _ + -", m.Model, maxClassLen)
	case m.GPUs == 0 || m.GPUs > MaxJobGPUs:
		return badNeg("bid of %d GPUs, want 1..%d", m.GPUs, MaxJobGPUs)
	case m.Price == 0 || m.Price > MaxPrice:
		return badNeg("price %d, want 1..%d", m.Price, uint64(MaxPrice))
	case m.LeaseSeconds == 0 || m.LeaseSeconds > MaxLeaseSeconds:
		return badNeg("lease of %d s, want 1..%d", m.LeaseSeconds, MaxLeaseSeconds)
	case m.HostNet && m.NoHostNet:
		return badNeg("bid both for the host network and refusing it (hostNet and noHostNet)")
	}
	if err := checkText("zone", m.Zone, maxZoneLen); err != nil {
		return err
	}
	if err := checkMillis("expiry", m.Expires); err != nil {
		return err
	}
	return checkAddrs(m.Addrs)
}

// Check says what is wrong with an award, if anything.
func (m *Award) Check() error {
	if err := checkPeer("submitter", m.Submitter); err != nil {
		return err
	}
	if err := checkPeer("provider", m.Provider); err != nil {
		return err
	}
	switch {
	case !ValidClass(m.Class):
		return badNeg("GPU class %q: want 1..%d of A-Z a-z 0-9 . _ + -", m.Class, maxClassLen)
	case m.GPUs == 0 || m.GPUs > MaxJobGPUs:
		return badNeg("award of %d GPUs, want 1..%d", m.GPUs, MaxJobGPUs)
	case m.Price == 0 || m.Price > MaxPrice:
		return badNeg("price %d, want 1..%d", m.Price, uint64(MaxPrice))
	case m.GangSize == 0 || m.GangSize > MaxJobGPUs:
		return badNeg("gang of %d, want 1..%d", m.GangSize, MaxJobGPUs)
	}
	return checkMillis("lease expiry", m.LeaseExpires)
}

// Check says what is wrong with an accept, if anything.
func (m *Acceptance) Check() error {
	if err := checkPeer("provider", m.Provider); err != nil {
		return err
	}
	if m.GPUs == 0 || m.GPUs > MaxJobGPUs {
		return badNeg("accept of %d GPUs, want 1..%d", m.GPUs, MaxJobGPUs)
	}
	return checkMillis("hold", m.HoldUntil)
}

// Check says what is wrong with a refusal, if anything.
func (m *Refusal) Check() error {
	if err := checkPeer("provider", m.Provider); err != nil {
		return err
	}
	return checkText("reason", m.Reason, maxReasonLen)
}

// Check says what is wrong with a confirmation, if anything.
func (m *Confirm) Check() error {
	if err := checkPeer("submitter", m.Submitter); err != nil {
		return err
	}
	return checkPeer("provider", m.Provider)
}

// Check says what is wrong with a release, if anything.
func (m *Release) Check() error {
	if err := checkPeer("from", m.From); err != nil {
		return err
	}
	if err := checkPeer("provider", m.Provider); err != nil {
		return err
	}
	return checkText("reason", m.Reason, maxReasonLen)
}

// MarshalNegotiation encodes a message; it fails if the message breaks a
// bound.
func MarshalNegotiation(m Message) ([]byte, error) {
	if err := m.Check(); err != nil {
		return nil, err
	}
	js, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadNegotiation, err)
	}
	b := append([]byte{m.kind()}, js...)
	if len(b) > MaxNegotiationSize {
		return nil, badNeg("%d bytes, at most %d: fewer addresses?", len(b), MaxNegotiationSize)
	}
	return b, nil
}

// UnmarshalNegotiation decodes and checks a message of any kind; the result
// is a *RequestForBids, *Bid, *Award, *Acceptance, *Refusal, *Confirm or
// *Release. Its errors wrap ErrBadNegotiation and say what was wrong.
func UnmarshalNegotiation(data []byte) (Message, error) {
	if len(data) == 0 {
		return nil, badNeg("empty")
	}
	var m Message
	switch data[0] {
	case kindRequestForBids:
		m = new(RequestForBids)
	case kindBid:
		m = new(Bid)
	case kindAward:
		m = new(Award)
	case kindAccept:
		m = new(Acceptance)
	case kindRefuse:
		m = new(Refusal)
	case kindConfirm:
		m = new(Confirm)
	case kindRelease:
		m = new(Release)
	default:
		return nil, badNeg("unknown kind %d (upgrade gpumesh?)", data[0])
	}
	if err := decodeInto(data, m); err != nil {
		return nil, err
	}
	return m, nil
}

func decodeInto(data []byte, m Message) error {
	if len(data) > MaxNegotiationSize {
		return badNeg("%d bytes, at most %d", len(data), MaxNegotiationSize)
	}
	if len(data) == 0 {
		return badNeg("empty")
	}
	if data[0] != m.kind() {
		return badNeg("kind %d, want %d", data[0], m.kind())
	}
	dec := json.NewDecoder(bytes.NewReader(data[1:]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(m); err != nil {
		return fmt.Errorf("%w: %v", ErrBadNegotiation, err)
	}
	if dec.More() {
		return badNeg("data after the message")
	}
	return m.Check()
}

func decodeAs[T any, P interface {
	*T
	Message
}](data []byte) (T, error) {
	var v T
	if err := decodeInto(data, P(&v)); err != nil {
		var zero T
		return zero, err
	}
	return v, nil
}

// UnmarshalRequestForBids decodes and checks a request for bids.
func UnmarshalRequestForBids(data []byte) (RequestForBids, error) {
	return decodeAs[RequestForBids](data)
}

// UnmarshalBid decodes and checks a bid.
func UnmarshalBid(data []byte) (Bid, error) { return decodeAs[Bid](data) }

// UnmarshalAward decodes and checks an award.
func UnmarshalAward(data []byte) (Award, error) { return decodeAs[Award](data) }

// UnmarshalAcceptance decodes and checks an acceptance.
func UnmarshalAcceptance(data []byte) (Acceptance, error) { return decodeAs[Acceptance](data) }

// UnmarshalRefusal decodes and checks a refusal.
func UnmarshalRefusal(data []byte) (Refusal, error) { return decodeAs[Refusal](data) }

// UnmarshalConfirm decodes and checks a confirmation.
func UnmarshalConfirm(data []byte) (Confirm, error) { return decodeAs[Confirm](data) }

// UnmarshalRelease decodes and checks a release.
func UnmarshalRelease(data []byte) (Release, error) { return decodeAs[Release](data) }
