package jobqueue

import (
	"errors"
	"testing"
	"time"
)

func TestSplitClassReadsFamilyAndMemory(t *testing.T) {
	for _, tc := range []struct {
		class string
		model string
		gb    uint32
		ok    bool
	}{
		{"H100-80GB", "H100", 80, true},
		{"RTX4090-24GB", "RTX4090", 24, true},
		{"A100-SXM-40GB", "A100-SXM", 40, true},
		{"H100", "", 0, false},
		{"-80GB", "", 0, false},
		{"H100-GB", "", 0, false},
		{"H100-80TB", "", 0, false},
		{"H100-99999999999GB", "", 0, false},
	} {
		model, gb, ok := SplitClass(tc.class)
		if model != tc.model || gb != tc.gb || ok != tc.ok {
			t.Errorf("SplitClass(%q) = %q, %d, %v; want %q, %d, %v", tc.class, model, gb, ok, tc.model, tc.gb, tc.ok)
		}
	}
}

func TestAddPastMaxJobsIsErrFull(t *testing.T) {
	q := New(Config{MaxJobs: 2})
	w := Want{Model: "H100", Unit: "USDC:6", MaxPrice: 1}
	for _, id := range []string{"a", "b"} {
		if err := q.Add(id, w, t0.Add(time.Minute), "", false, t0); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Add("c", w, t0.Add(time.Minute), "", false, t0); !errors.Is(err, ErrFull) {
		t.Fatalf("third Add: %v, want ErrFull", err)
	}
	if err := q.Add("a", w, t0.Add(time.Minute), "", false, t0); err != nil {
		t.Fatalf("Add of a waiting job: %v, want an update", err)
	}
}

// Whatever quotes arrive, however often, the tries of all jobs together
// stay within the rate: Burst at once, then Rate a second.
func TestAFloodOfNewsNeverTriesFasterThanTheRate(t *testing.T) {
	q := New(Config{MaxJobs: 50, MaxOffers: 100})
	w := Want{Model: "H100", Unit: "USDC:6", MaxPrice: 10}
	for i := range 50 {
		if err := q.Add(string(rune('A'+i)), w, t0.Add(time.Hour), "", true, t0); err != nil {
			t.Fatal(err)
		}
	}
	tries := 0
	now := t0
	for i := range 6000 { // 60 s of a fresh provider every 10 ms
		now = now.Add(10 * time.Millisecond)
		q.Offer(Offer{Provider: string(rune(i)), Class: "H100-80GB", Unit: "USDC:6", Ask: 1, Available: 1}, now)
		q.Tick(now)
		rd := q.Ready()
		tries += len(rd.Try)
		for _, id := range rd.Try {
			q.Failed(id, "no", now)
		}
	}
	if max := 2 + 60; tries > max || tries < max-2 {
		t.Fatalf("%d tries in 60 s, want about %d (burst 2, 1 a second)", tries, max)
	}
	if len(q.seen) > 100 {
		t.Fatalf("%d quotes remembered, want at most 100", len(q.seen))
	}
}
