package gossip

import (
	"testing"
	"time"
)

func TestResendIntervalSharesABudget(t *testing.T) {
	r := Resend{} // 0.25 re-sends a second, 30 s .. 1 h
	for _, c := range []struct {
		quotes int
		want   time.Duration
	}{
		{0, 30 * time.Second},
		{1, 30 * time.Second},
		{7, 30 * time.Second},
		{30, 120 * time.Second},
		{60, 240 * time.Second},
		{900, time.Hour},
		{1000, time.Hour},
		{1 << 40, time.Hour},
	} {
		if got := r.Interval(c.quotes); got != c.want {
			t.Errorf("Interval(%d) = %v, want %v", c.quotes, got, c.want)
		}
	}
	// Below the cap the swarm re-sends Budget ticks a second in all.
	for _, q := range []int{30, 60, 300} {
		if rate := float64(q) / r.Interval(q).Seconds(); rate != DefaultResend.Budget {
			t.Errorf("%d quotes: %v re-sends a second, want %v", q, rate, DefaultResend.Budget)
		}
	}
	if got := r.Until(t0, 30); !got.Equal(t0.Add(6 * time.Minute)) {
		t.Errorf("Until with 30 quotes: %v after, want 6m (three intervals)", got.Sub(t0))
	}
}

func TestResendWaitGrowsStepByStepWithinWhatWasPromised(t *testing.T) {
	r := Resend{}
	sent := sampleTick()
	sent.Until = r.Until(sent.Time, 0) // promised 90 s: an interval of 30 s
	due := func(quotes int, after time.Duration, jitter float64) bool {
		return r.Due(sent, quotes, sent.Time.Add(after), jitter)
	}
	if due(0, 29*time.Second, 1) || !due(0, 30*time.Second, 1) {
		t.Error("an empty board: want a re-send after 30 s, not before")
	}
	// The board grew to 1,000 quotes (an hour's interval): the wait doubles
	// at most, so the tick sent is re-sent before a board drops it.
	if due(1000, 59*time.Second, 1) || !due(1000, 60*time.Second, 1) {
		t.Error("a grown board: want the wait doubled (60 s), no more")
	}
	if !due(1000, 54*time.Second, 0.9) || due(1000, 53*time.Second, 0.9) {
		t.Error("jitter 0.9: want the wait cut to 54 s")
	}
	sent.Until = r.Until(sent.Time, 1000)
	if due(1000, 59*time.Minute, 1) || !due(1000, time.Hour, 1) {
		t.Error("a tick promised for 3 h on a steady board: want a re-send after the hour")
	}
	// A board that shrank shortens the wait at once.
	if !due(30, 2*time.Minute, 1) {
		t.Error("a shrunk board: want the shorter interval")
	}
}

func TestResendCheck(t *testing.T) {
	for _, bad := range []Resend{{Budget: -1}, {Floor: -1}, {Floor: time.Hour, Cap: time.Minute}, {Cap: 3 * time.Hour}} {
		if bad.Check() == nil {
			t.Errorf("%+v passed the check", bad)
		}
	}
	for _, good := range []Resend{{}, {Floor: 30 * time.Second, Cap: 30 * time.Second}, {Budget: 2, Cap: 2 * time.Hour}} {
		if err := good.Check(); err != nil {
			t.Errorf("%+v: %v", good, err)
		}
	}
}
