package gossip

import (
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

func encode(t *testing.T, tk Tick) []byte {
	t.Helper()
	data, err := tk.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestValidatorVerdicts(t *testing.T) {
	p, relay := testID(1), testID(2)
	tick := func(mut func(*Tick)) Tick {
		tk := sampleTick()
		tk.Provider = p
		if mut != nil {
			mut(&tk)
		}
		return tk
	}
	for _, tc := range []struct {
		name    string
		data    []byte
		signer  peer.ID
		now     time.Time
		want    Verdict
		wantErr error
	}{
		{"fresh tick from its provider", encode(t, tick(nil)), p, t0, Accept, nil},
		{"relayed tick", encode(t, tick(nil)), p, t0.Add(time.Second), Accept, nil},
		{"garbage", []byte("hello"), p, t0, Reject, ErrBadTick},
		{"oversized", make([]byte, MaxTickSize+1), p, t0, Reject, ErrBadTick},
		{"signed by another peer", encode(t, tick(nil)), relay, t0, Reject, ErrForgedTick},
		{"another unit", encode(t, tick(func(t *Tick) { t.Unit = Unit{"SOL", 9} })), p, t0, Ignore, ErrOtherUnit},
		{"31 s ahead", encode(t, tick(nil)), p, t0.Add(-31 * time.Second), Ignore, ErrFutureTick},
		{"30 s ahead", encode(t, tick(nil)), p, t0.Add(-30 * time.Second), Accept, nil},
		{"61 s old", encode(t, tick(nil)), p, t0.Add(61 * time.Second), Ignore, ErrStaleTick},
		{"60 s old", encode(t, tick(nil)), p, t0.Add(60 * time.Second), Accept, nil},
	} {
		v := NewTickValidator(ValidatorConfig{})
		_, got, err := v.Validate(tc.data, tc.signer, relay, tc.now)
		if got != tc.want || !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: %v, %v; want %v, %v", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestReplayedAndOlderTicksAreIgnored(t *testing.T) {
	v := NewTickValidator(ValidatorConfig{})
	p := testID(1)
	tk := sampleTick()
	tk.Seq = 10
	if _, got, err := v.Validate(encode(t, tk), p, p, t0); got != Accept {
		t.Fatalf("first tick: %v, %v", got, err)
	}
	if _, got, err := v.Validate(encode(t, tk), p, p, t0); got != Ignore || !errors.Is(err, ErrReplay) {
		t.Fatalf("same tick again: %v, %v; want ignore, ErrReplay", got, err)
	}
	tk.Seq = 9
	if _, got, err := v.Validate(encode(t, tk), p, p, t0); got != Ignore || !errors.Is(err, ErrReplay) {
		t.Fatalf("older tick: %v, %v; want ignore, ErrReplay", got, err)
	}
	// Sequences are per class: a tick of another class validated out of
	// order (GossipSub validates concurrently) is not lost.
	other := tk
	other.Class = "A100-40GB"
	if _, got, err := v.Validate(encode(t, other), p, p, t0); got != Accept {
		t.Fatalf("other class, lower sequence: %v, %v; want accept", got, err)
	}
	tk.Seq = 11
	if _, got, err := v.Validate(encode(t, tk), p, p, t0); got != Accept {
		t.Fatalf("newer tick: %v, %v", got, err)
	}
}

func TestRateLimitBlamesOnlyTheProviderItself(t *testing.T) {
	v := NewTickValidator(ValidatorConfig{Burst: 3, Rate: 1})
	p, relay := testID(1), testID(2)
	send := func(seq uint64, from peer.ID, now time.Time) (Verdict, error) {
		tk := sampleTick()
		tk.Seq = seq
		_, got, err := v.Validate(encode(t, tk), p, from, now)
		return got, err
	}
	for seq := uint64(1); seq <= 3; seq++ {
		if got, err := send(seq, relay, t0); got != Accept {
			t.Fatalf("tick %d of the burst: %v, %v", seq, got, err)
		}
	}
	if got, err := send(4, relay, t0); got != Ignore || !errors.Is(err, ErrRateLimited) {
		t.Fatalf("over the burst through a relay: %v, %v; want ignore, ErrRateLimited", got, err)
	}
	if got, err := send(5, p, t0); got != Reject || !errors.Is(err, ErrRateLimited) {
		t.Fatalf("over the burst from the provider itself: %v, %v; want reject, ErrRateLimited", got, err)
	}
	// One token a second comes back.
	if got, err := send(6, relay, t0.Add(time.Second)); got != Accept {
		t.Fatalf("a second later: %v, %v; want accept", got, err)
	}
	if got, _ := send(7, relay, t0.Add(time.Second)); got != Ignore {
		t.Fatalf("second tick a second later: %v; want ignore", got)
	}
}

func TestValidatorBoundsClassesAndProviders(t *testing.T) {
	v := NewTickValidator(ValidatorConfig{MaxClasses: 2, MaxProviders: 3})
	p := testID(1)
	for i, class := range []string{"A", "B", "C"} {
		tk := sampleTick()
		tk.Class = class
		_, got, err := v.Validate(encode(t, tk), p, p, t0)
		if want := map[bool]Verdict{true: Accept, false: Ignore}[i < 2]; got != want {
			t.Fatalf("class %d: %v, %v; want %v", i+1, got, err, want)
		}
	}
	for i := 2; i <= 10; i++ {
		tk := sampleTick()
		tk.Provider = testID(i)
		if _, got, err := v.Validate(encode(t, tk), testID(i), testID(i), t0); got != Accept {
			t.Fatalf("provider %d: %v, %v", i, got, err)
		}
	}
	if got := v.Providers(); got != 3 {
		t.Fatalf("remembers %d providers, want at most 3", got)
	}
}

// FuzzValidate: whatever arrives, the validator does not panic, accepts
// only ticks that decode and name their signer, and never accepts the same
// tick twice.
func FuzzValidate(f *testing.F) {
	tk := sampleTick()
	good, _ := tk.Marshal()
	f.Add(good, int64(0))
	f.Add([]byte{1, 2, 3}, int64(time.Minute))
	f.Fuzz(func(t *testing.T, data []byte, skew int64) {
		v := NewTickValidator(ValidatorConfig{})
		now := t0.Add(time.Duration(skew))
		got, verdict, err := v.Validate(data, testID(1), testID(2), now)
		if verdict != Accept {
			if err == nil {
				t.Fatalf("verdict %v without a reason", verdict)
			}
			return
		}
		if got.Provider != testID(1) || got.Check() != nil {
			t.Fatalf("accepted %+v", got)
		}
		if _, again, _ := v.Validate(data, testID(1), testID(2), now); again == Accept {
			t.Fatal("accepted the same tick twice")
		}
	})
}
