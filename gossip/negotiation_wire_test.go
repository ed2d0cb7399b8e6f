package gossip

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

var negJob = JobID{0x6a, 0x6f, 0x62, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}

func negNeeds() Needs {
	return Needs{
		GPUs: 8, Class: "H100-80GB", Model: "H100", MinVRAMGB: 80, PerNode: 0,
		Placement: Spread, MaxPrice: 2_500_000, Unit: "USDC:6", LeaseSeconds: 3600,
	}
}

func sampleMessages() []Message {
	return []Message{
		&RequestForBids{Job: negJob, Submitter: testID(0), Needs: negNeeds(), Deadline: t0.Add(5e9).UnixMilli()},
		&Bid{Job: negJob, Provider: testID(1), Class: "H100-80GB", Model: "H100", VRAMGB: 80, GPUs: 8, Price: 2_100_000,
			LeaseSeconds: 86400, Zone: "eu-west/ams1", Addrs: []string{"/ip4/10.0.0.1/udp/4001/quic-v1"}, Expires: t0.Add(1e10).UnixMilli()},
		&Award{Job: negJob, Submitter: testID(0), Provider: testID(1), Class: "H100-80GB", GPUs: 4, Price: 2_100_000,
			LeaseExpires: t0.Add(36e11).UnixMilli(), Gang: negJob, GangSize: 2},
		&Acceptance{Job: negJob, Provider: testID(1), GPUs: 4, HoldUntil: t0.Add(1e10).UnixMilli()},
		&Refusal{Job: negJob, Provider: testID(1), Reason: "award refused: 2 GPUs of H100-80GB free, award of 4"},
		&Confirm{Job: negJob, Submitter: testID(0), Provider: testID(1)},
		&Release{Job: negJob, From: testID(0), Provider: testID(1), Reason: "cancelled"},
	}
}

func TestNegotiationMessagesRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		b, err := MarshalNegotiation(m)
		if err != nil {
			t.Fatalf("marshal %T: %v", m, err)
		}
		got, err := UnmarshalNegotiation(b)
		if err != nil {
			t.Fatalf("unmarshal %T: %v\n%s", m, err, b)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("round trip of %T:\n got %+v\nwant %+v", m, got, m)
		}
	}
}

func TestDecoderOfOneKindRejectsAnother(t *testing.T) {
	b, err := MarshalNegotiation(sampleMessages()[1]) // a bid
	if err != nil {
		t.Fatal(err)
	}
	if _, err := UnmarshalAward(b); !errors.Is(err, ErrBadNegotiation) || !strings.Contains(err.Error(), "kind 2, want 3") {
		t.Errorf("UnmarshalAward(bid) = %v, want kind error", err)
	}
}

func TestBadNegotiationMessagesSayWhatIsWrong(t *testing.T) {
	rfb := func(f func(*RequestForBids)) []byte {
		m := *sampleMessages()[0].(*RequestForBids)
		f(&m)
		js, _ := jsonOf(&m)
		return append([]byte{kindRequestForBids}, js...)
	}
	bid := func(f func(*Bid)) []byte {
		m := *sampleMessages()[1].(*Bid)
		f(&m)
		js, _ := jsonOf(&m)
		return append([]byte{kindBid}, js...)
	}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"unknown kind", []byte{99, '{', '}'}, "unknown kind 99"},
		{"too big", append([]byte{kindBid}, make([]byte, MaxNegotiationSize)...), "at most 8192"},
		{"trailing", append(bid(func(*Bid) {}), ' ', '{', '}'), "data after the message"},
		{"unknown field", []byte(string(kindConfirm) + `{"job":"6a6f62010203040506070809` + `0a0b0c0d","x":1}`), "unknown field"},
		{"short job ID", []byte(string(kindRelease) + `{"job":"abcd"}`), "job ID of 4 hex digits"},
		{"zero GPUs", rfb(func(m *RequestForBids) { m.Needs.GPUs = 0 }), "needs 0 GPUs"},
		{"too many GPUs", rfb(func(m *RequestForBids) { m.Needs.GPUs = 5000 }), "needs 5000 GPUs"},
		{"perNode not a divisor", rfb(func(m *RequestForBids) { m.Needs.PerNode = 3 }), "not a multiple of perNode 3"},
		{"placement", rfb(func(m *RequestForBids) { m.Needs.Placement = "nearby" }), `placement "nearby"`},
		{"no class", rfb(func(m *RequestForBids) { m.Needs.Class, m.Needs.Model = "", "" }), "neither a GPU class nor a model"},
		{"unit", rfb(func(m *RequestForBids) { m.Needs.Unit = "usdc" }), "unit"},
		{"deadline", rfb(func(m *RequestForBids) { m.Deadline = -1 }), "deadline -1 ms"},
		{"bid addrs", bid(func(m *Bid) { m.Addrs = []string{"not an addr"} }), `address "not an addr"`},
		{"too many bid addrs", bid(func(m *Bid) { m.Addrs = make([]string, 17) }), "17 addresses"},
		{"bid price", bid(func(m *Bid) { m.Price = 0 }), "price 0"},
		{"bid class", bid(func(m *Bid) { m.Class = "H100 80GB" }), "GPU class"},
		{"bid zone", bid(func(m *Bid) { m.Zone = "a\nb" }), "zone: control character"},
		{"bid lease", bid(func(m *Bid) { m.LeaseSeconds = 0 }), "lease of 0 s"},
		{"provider", bid(func(m *Bid) { m.Provider = "" }), "peer ID"},
		{"negative number", []byte(string(kindAccept) + `{"gpus":-1}`), "cannot unmarshal"},
	}
	for _, tt := range tests {
		_, err := UnmarshalNegotiation(tt.data)
		if !errors.Is(err, ErrBadNegotiation) {
			t.Errorf("%s: err = %v, want ErrBadNegotiation", tt.name, err)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %q, want it to say %q", tt.name, err, tt.want)
		}
	}
}

// fuzzDecoder checks that a decoder never panics, that what it accepts is
// within bounds and encodes to what decodes to the same message.
func fuzzDecoder[T any, P interface {
	*T
	Message
}](f *testing.F, decode func([]byte) (T, error)) {
	for _, m := range sampleMessages() {
		b, err := MarshalNegotiation(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{kindBid, '{', '}'})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decode(data)
		if err != nil {
			if !errors.Is(err, ErrBadNegotiation) {
				t.Fatalf("error %v does not wrap ErrBadNegotiation", err)
			}
			return
		}
		if err := P(&m).Check(); err != nil {
			t.Fatalf("decoded a message that fails its check: %v", err)
		}
		b, err := MarshalNegotiation(P(&m))
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		again, err := decode(b)
		if err != nil {
			t.Fatalf("decode of re-encoded: %v", err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("not stable:\n%+v\n%+v", m, again)
		}
	})
}

func FuzzUnmarshalRequestForBids(f *testing.F) { fuzzDecoder(f, UnmarshalRequestForBids) }
func FuzzUnmarshalBid(f *testing.F)            { fuzzDecoder(f, UnmarshalBid) }
func FuzzUnmarshalAward(f *testing.F)          { fuzzDecoder(f, UnmarshalAward) }
func FuzzUnmarshalAcceptance(f *testing.F)     { fuzzDecoder(f, UnmarshalAcceptance) }
func FuzzUnmarshalRefusal(f *testing.F)        { fuzzDecoder(f, UnmarshalRefusal) }
func FuzzUnmarshalConfirm(f *testing.F)        { fuzzDecoder(f, UnmarshalConfirm) }
func FuzzUnmarshalRelease(f *testing.F)        { fuzzDecoder(f, UnmarshalRelease) }

func FuzzUnmarshalNegotiation(f *testing.F) {
	for _, m := range sampleMessages() {
		b, _ := MarshalNegotiation(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := UnmarshalNegotiation(data)
		if err != nil {
			if !errors.Is(err, ErrBadNegotiation) {
				t.Fatalf("error %v does not wrap ErrBadNegotiation", err)
			}
			return
		}
		b, err := MarshalNegotiation(m)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		again, err := UnmarshalNegotiation(b)
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("not stable: %v\n%+v\n%+v", err, m, again)
		}
	})
}

func jsonOf(v any) ([]byte, error) { return json.Marshal(v) }
