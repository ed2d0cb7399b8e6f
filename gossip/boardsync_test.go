package gossip

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"google.golang.org/protobuf/proto"
)

const syncTopic = "/gpumesh/test/prices/3"

func signed(t testing.TB, key int, tk Tick) []byte {
	t.Helper()
	data, err := tk.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := SignTick(testKey(key), syncTopic, data, tk.Seq)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestSyncRequestAndAnswerRoundTrip(t *testing.T) {
	req, err := MarshalSyncRequest(100)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := UnmarshalSyncRequest(req); err != nil || n != 100 {
		t.Fatalf("request: %d, %v; want 100", n, err)
	}
	ticks := [][]byte{signed(t, 1, sampleTick()), bytes.Repeat([]byte{7}, MaxSignedTickSize)}
	ans, err := MarshalSyncAnswer(ticks)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalSyncAnswer(ans)
	if err != nil || len(got) != 2 || !bytes.Equal(got[0], ticks[0]) || !bytes.Equal(got[1], ticks[1]) {
		t.Fatalf("answer: %d ticks, %v", len(got), err)
	}
	// The largest answer fits its bound.
	full := make([][]byte, MaxSyncTicks)
	for i := range full {
		full[i] = ticks[1]
	}
	if ans, err := MarshalSyncAnswer(full); err != nil || len(ans) != MaxSyncAnswer {
		t.Fatalf("largest answer: %d bytes, %v; want %d", len(ans), err, MaxSyncAnswer)
	}
}

func TestMalformedSyncMessagesDoNotDecode(t *testing.T) {
	good, _ := MarshalSyncAnswer([][]byte{[]byte("abc")})
	for name, data := range map[string][]byte{
		"empty":         {},
		"version 2":     {2, 0, 0},
		"no count":      {1, 0},
		"truncated":     good[:len(good)-1],
		"trailing":      append(append([]byte{}, good...), 0),
		"zero length":   {1, 0, 1, 0, 0},
		"long tick":     binary.BigEndian.AppendUint16([]byte{1, 0, 1}, MaxSignedTickSize+1),
		"too many":      binary.BigEndian.AppendUint16([]byte{1}, MaxSyncTicks+1),
		"count lies":    {1, 0, 5, 0, 1, 'x'},
		"oversized":     make([]byte, MaxSyncAnswer+1),
		"only a header": {1},
	} {
		if _, err := UnmarshalSyncAnswer(data); !errors.Is(err, ErrBadSync) {
			t.Errorf("answer %s: error %v, want ErrBadSync", name, err)
		}
	}
	for name, data := range map[string][]byte{
		"empty": {}, "version 2": {2, 0, 1}, "limit 0": {1, 0, 0}, "limit too high": binary.BigEndian.AppendUint16([]byte{1}, MaxSyncTicks+1), "long": {1, 0, 1, 0},
	} {
		if _, err := UnmarshalSyncRequest(data); !errors.Is(err, ErrBadSync) {
			t.Errorf("request %s: error %v, want ErrBadSync", name, err)
		}
	}
}

func TestOpenSignedTickChecksTheProvidersSignature(t *testing.T) {
	tk := sampleTick() // provider testID(1)
	raw := signed(t, 1, tk)
	data, author, err := OpenSignedTick(raw, syncTopic)
	if err != nil || author != testID(1) {
		t.Fatalf("good tick: author %s, %v", author, err)
	}
	if got, err := UnmarshalTick(data); err != nil || got.Ask != tk.Ask {
		t.Fatalf("data: %+v, %v", got, err)
	}
	var m pb.Message
	if err := proto.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	edit := func(f func(*pb.Message)) []byte {
		c := proto.CloneOf(&m)
		f(c)
		b, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cheaper := tk
	cheaper.Ask = 1
	cheapData, _ := cheaper.Marshal()
	for name, c := range map[string]struct {
		raw  []byte
		want error
	}{
		"altered ask":     {edit(func(m *pb.Message) { m.Data = cheapData }), ErrBadSignature},
		"another author":  {edit(func(m *pb.Message) { m.From = []byte(testID(2)) }), ErrBadSignature},
		"no signature":    {edit(func(m *pb.Message) { m.Signature = nil }), ErrBadSignature},
		"key attached":    {edit(func(m *pb.Message) { m.Key = []byte{1, 2, 3} }), ErrBadSignature},
		"junk author":     {edit(func(m *pb.Message) { m.From = []byte("nobody") }), ErrBadSignature},
		"other topic":     {signedOn(t, "/gpumesh/other/prices/3", tk), ErrBadSync},
		"not a message":   {[]byte{0xff, 0xff, 0xff}, ErrBadSync},
		"over the bound":  {make([]byte, MaxSignedTickSize+1), ErrBadSync},
		"another's seqno": {edit(func(m *pb.Message) { m.Seqno = []byte{9} }), ErrBadSignature},
	} {
		if _, _, err := OpenSignedTick(c.raw, syncTopic); !errors.Is(err, c.want) {
			t.Errorf("%s: error %v, want %v", name, err, c.want)
		}
	}
}

func signedOn(t testing.TB, topic string, tk Tick) []byte {
	data, _ := tk.Marshal()
	raw, err := SignTick(testKey(1), topic, data, 1)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestStoredTicksMayBeOldButMustStillStand(t *testing.T) {
	v := NewTickValidator(ValidatorConfig{})
	tk := sampleTick()
	tk.Until = t0.Add(time.Hour)
	data, _ := tk.Marshal()
	now := t0.Add(30 * time.Minute) // past MaxAge, before Until
	if _, verdict, err := v.Validate(data, tk.Provider, tk.Provider, now); verdict != Ignore || !errors.Is(err, ErrStaleTick) {
		t.Fatalf("gossiped 30 min old: %v %v, want ignored as stale", verdict, err)
	}
	if _, verdict, err := v.ValidateStored(data, tk.Provider, testID(9), now); verdict != Accept {
		t.Fatalf("handed on 30 min old, standing: %v %v, want accepted", verdict, err)
	}
	if _, verdict, err := v.ValidateStored(data, tk.Provider, testID(9), now); verdict != Ignore || !errors.Is(err, ErrReplay) {
		t.Fatalf("handed on twice: %v %v, want a replay", verdict, err)
	}
	tk.Seq = 2
	data, _ = tk.Marshal()
	if _, verdict, err := v.ValidateStored(data, tk.Provider, testID(9), t0.Add(time.Hour)); verdict != Ignore || !errors.Is(err, ErrStaleTick) {
		t.Fatalf("handed on at its Until: %v %v, want ignored as stale", verdict, err)
	}
	if _, verdict, err := v.ValidateStored(data, testID(2), testID(9), now); verdict != Reject || !errors.Is(err, ErrForgedTick) {
		t.Fatalf("signed by another: %v %v, want rejected as forged", verdict, err)
	}
}

// FuzzUnmarshalSyncAnswer: the decoder never panics, accepts nothing over
// its bounds, and what it accepts encodes back to the same bytes.
func FuzzUnmarshalSyncAnswer(f *testing.F) {
	good, _ := MarshalSyncAnswer([][]byte{signed(f, 1, sampleTick()), []byte("x")})
	f.Add(good)
	f.Add([]byte{1, 0, 0})
	f.Add([]byte{1, 0xff, 0xff})
	f.Add([]byte{1, 0, 1, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		ticks, err := UnmarshalSyncAnswer(data)
		if err != nil {
			if !errors.Is(err, ErrBadSync) {
				t.Fatalf("error %v does not wrap ErrBadSync", err)
			}
			return
		}
		if len(data) > MaxSyncAnswer || len(ticks) > MaxSyncTicks {
			t.Fatalf("accepted %d bytes, %d ticks", len(data), len(ticks))
		}
		again, err := MarshalSyncAnswer(ticks)
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("not canonical: %v", err)
		}
		for _, raw := range ticks {
			_, _, _ = OpenSignedTick(raw, syncTopic) // never panics
		}
	})
}

// FuzzOpenSignedTick: whatever the bytes, opening never panics, and what
// opens was signed by the author it names (only the seed's key signs here).
func FuzzOpenSignedTick(f *testing.F) {
	f.Add(signed(f, 1, sampleTick()))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		_, author, err := OpenSignedTick(raw, syncTopic)
		if err == nil && author != testID(1) {
			t.Fatalf("opened a tick of %s", author)
		}
	})
}

func FuzzUnmarshalSyncRequest(f *testing.F) {
	f.Add([]byte{1, 0, 10})
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := UnmarshalSyncRequest(data)
		if err == nil && (n < 1 || n > MaxSyncTicks) {
			t.Fatalf("limit %d", n)
		}
	})
}
