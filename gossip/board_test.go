package gossip

import (
	"fmt"
	"math"
	"slices"
	"testing"
	"time"
)

// usd is a price in USDC units: usd(2.10) = 2_100_000.
func usd(v float64) uint64 { return uint64(math.Round(v * 1e6)) }

// quote is a tick of test provider id for class H100-80GB.
func quote(id int, ask uint64, avail uint32, seq uint64, at time.Time) Tick {
	return Tick{Provider: testID(id), Class: "H100-80GB", Unit: DefaultUnit, Ask: ask, Available: avail, Seq: seq, Time: at, Until: at.Add(90 * time.Second)}
}

// long is a tick that says it stands an hour.
func long(t Tick) Tick {
	t.Until = t.Time.Add(time.Hour)
	return t
}

// instant counts every provider at full weight right away.
var instant = BoardConfig{Probation: time.Nanosecond, Maturity: time.Nanosecond}

func TestBoardStatistics(t *testing.T) {
	type q struct {
		ask   float64
		avail uint32
	}
	for _, tc := range []struct {
		name                   string
		quotes                 []q
		best, median, mean     float64
		gpus                   uint64
		depth                  []Level
		providers, counted     int
		cfg                    BoardConfig
		wantMedianWithoutFirst float64
	}{
		{
			name:   "five equal providers",
			quotes: []q{{1.00, 8}, {2.00, 8}, {2.10, 8}, {2.20, 8}, {9.00, 8}},
			best:   1.00, median: 2.10, mean: 2.10, gpus: 40, providers: 5, counted: 5,
			depth: []Level{{usd(1), 8}, {usd(2), 16}, {usd(2.1), 24}, {usd(2.2), 32}, {usd(9), 40}},
			cfg:   instant, wantMedianWithoutFirst: 2.10,
		},
		{
			name: "weighted by GPUs available",
			// 2.00 holds 24 of 40 GPUs, all of the trimmed band [8, 32].
			quotes: []q{{1.00, 8}, {2.00, 24}, {3.00, 8}},
			best:   1.00, median: 2.00, mean: 2.00, gpus: 40, providers: 3, counted: 3,
			depth: []Level{{usd(1), 8}, {usd(2), 32}, {usd(3), 40}},
			cfg:   instant, wantMedianWithoutFirst: 2.00,
		},
		{
			name: "one provider's weight is capped",
			// 4000 GPUs at 50.00 weigh 64, less than the others' 72, so
			// the median stays; the trimmed band [27.2, 108.8] of the
			// weight 136 holds 20.8 of 2.10, 24 of 2.20 and 36.8 of 50.00.
			quotes: []q{{2.00, 24}, {2.10, 24}, {2.20, 24}, {50.00, 4000}},
			best:   2.00, median: 2.20, gpus: 4072, providers: 4, counted: 4,
			mean:  (2.10*20.8 + 2.20*24 + 50.00*36.8) / 81.6,
			depth: []Level{{usd(2), 24}, {usd(2.1), 48}, {usd(2.2), 72}, {usd(50), 4072}},
			cfg:   instant, wantMedianWithoutFirst: 50.00,
		},
		{
			name:   "equal asks make one depth level",
			quotes: []q{{2.00, 4}, {2.00, 4}, {3.00, 4}},
			best:   2.00, median: 2.00, mean: 2.00 + 1.00*(12*0.8-8)/(12*0.6), gpus: 12, providers: 3, counted: 3,
			depth: []Level{{usd(2), 8}, {usd(3), 12}},
			cfg:   instant, wantMedianWithoutFirst: 2.00,
		},
		{
			name:   "fully booked providers are listed, not counted",
			quotes: []q{{0.50, 0}, {2.00, 8}},
			best:   2.00, median: 2.00, mean: 2.00, gpus: 8, providers: 2, counted: 1,
			depth: []Level{{usd(2), 8}},
			cfg:   instant, wantMedianWithoutFirst: 2.00,
		},
		{
			name:   "no trim",
			quotes: []q{{1.00, 1}, {2.00, 1}, {6.00, 1}},
			best:   1.00, median: 2.00, mean: 3.00, gpus: 3, providers: 3, counted: 3,
			depth: []Level{{usd(1), 1}, {usd(2), 2}, {usd(6), 3}},
			cfg:   BoardConfig{Probation: 1, Maturity: 1, Trim: 1e-12}, wantMedianWithoutFirst: 2.00,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewPriceBoard(tc.cfg)
			for i, x := range tc.quotes {
				if !b.Apply(quote(i+1, usd(x.ask), x.avail, 1, t0), t0) {
					t.Fatalf("quote %d not applied", i+1)
				}
			}
			now := t0.Add(time.Second)
			got, ok := b.Quote("H100-80GB", now)
			if !ok {
				t.Fatal("no quote for the class")
			}
			want := Quote{
				Class: "H100-80GB", Providers: tc.providers, Counted: tc.counted, Mature: tc.counted, GPUs: tc.gpus,
				Best: usd(tc.best), Median: usd(tc.median), Mean: usd(tc.mean), EWMA: usd(tc.median), Depth: tc.depth, Updated: t0,
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("quote\n got  %+v\n want %+v", got, want)
			}
			if m, _ := b.Median("H100-80GB", now, testID(1)); m != usd(tc.wantMedianWithoutFirst) {
				t.Errorf("median without provider 1 = %d, want %d", m, usd(tc.wantMedianWithoutFirst))
			}
		})
	}
}

func TestNewProvidersCountOnlyAfterProbation(t *testing.T) {
	b := NewPriceBoard(BoardConfig{Probation: time.Minute, Maturity: time.Minute})
	b.Apply(quote(1, usd(2), 8, 1, t0), t0)
	q, _ := b.Quote("H100-80GB", t0.Add(59*time.Second))
	if q.Providers != 1 || q.Counted != 0 || q.Median != 0 || q.Mean != 0 || q.EWMA != 0 {
		t.Fatalf("in probation: %+v; want listed, not counted", q)
	}
	// Its ask shows at once, outside the index.
	if q.Best != usd(2) || q.GPUs != 8 || len(q.Depth) != 1 || q.Depth[0] != (Level{usd(2), 8}) {
		t.Fatalf("in probation: best %d, GPUs %d, depth %v; want the ask 2.00 for 8 GPUs shown", q.Best, q.GPUs, q.Depth)
	}
	q, _ = b.Quote("H100-80GB", t0.Add(60*time.Second))
	if q.Counted != 1 || q.Median != usd(2) {
		t.Fatalf("after probation: %+v; want counted", q)
	}
}

func TestTrustedBoardCountsEveryQuoteAtOnce(t *testing.T) {
	b := NewPriceBoard(BoardConfig{Trusted: true})
	b.Apply(quote(1, usd(2), 8, 1, t0), t0)
	b.Apply(quote(2, usd(3), 8, 1, t0), t0)
	q, _ := b.Quote("H100-80GB", t0)
	if q.Providers != 2 || q.Counted != 2 || q.Mature != 2 || q.Best != usd(2) || q.Median != usd(2) {
		t.Fatalf("trusted board, first ticks: %+v; want both counted at full weight", q)
	}
}

func TestQuotesExpireAndAReturnStartsOver(t *testing.T) {
	b := NewPriceBoard(BoardConfig{TTL: 90 * time.Second, Probation: time.Minute, Maturity: time.Minute})
	b.Apply(quote(1, usd(2), 8, 1, t0), t0)
	b.Apply(quote(1, usd(2), 8, 2, t0.Add(60*time.Second)), t0.Add(60*time.Second))
	if q, _ := b.Quote("H100-80GB", t0.Add(149*time.Second)); q.Counted != 1 {
		t.Fatalf("kept alive by its second tick: %+v", q)
	}
	if _, ok := b.Quote("H100-80GB", t0.Add(150*time.Second)); ok {
		t.Fatal("quote outlived its TTL")
	}
	b.Advance(t0.Add(150 * time.Second))
	if b.Len() != 0 {
		t.Fatalf("Advance kept %d expired quotes", b.Len())
	}
	// Back after a gap: probation again.
	back := t0.Add(200 * time.Second)
	b.Apply(quote(1, usd(2), 8, 3, back), back)
	if q, _ := b.Quote("H100-80GB", back.Add(time.Second)); q.Counted != 0 {
		t.Fatalf("a returning provider skipped probation: %+v", q)
	}
	// A tick already past its TTL is not taken.
	if b.Apply(quote(2, usd(2), 8, 1, back.Add(-91*time.Second)), back) {
		t.Fatal("applied an expired tick")
	}
}

func TestOlderSequencesDoNotReplaceNewerQuotes(t *testing.T) {
	b := NewPriceBoard(instant)
	b.Apply(quote(1, usd(2), 8, 5, t0), t0)
	if b.Apply(quote(1, usd(9), 8, 4, t0), t0) || b.Apply(quote(1, usd(9), 8, 5, t0), t0) {
		t.Fatal("took an older or equal sequence")
	}
	if !b.Apply(quote(1, usd(3), 8, 6, t0), t0) {
		t.Fatal("refused a newer sequence")
	}
	if q, _ := b.Quote("H100-80GB", t0.Add(time.Second)); q.Median != usd(3) {
		t.Fatalf("median %d, want the newest ask %d", q.Median, usd(3))
	}
}

func TestAFullBoardKeepsItsQuotes(t *testing.T) {
	b := NewPriceBoard(BoardConfig{Probation: 1, Maturity: 1, MaxEntries: 2})
	b.Apply(quote(1, usd(2), 8, 1, t0), t0)
	b.Apply(quote(2, usd(2), 8, 1, t0), t0)
	if b.Apply(quote(3, usd(1), 8, 1, t0), t0) {
		t.Fatal("a full board took a new quote")
	}
	if !b.Apply(quote(1, usd(3), 8, 2, t0), t0) {
		t.Fatal("a full board refused an update of a quote it holds")
	}
	later := t0.Add(2 * time.Minute) // both expired: room again
	if !b.Apply(quote(3, usd(1), 8, 1, later), later) {
		t.Fatal("no room after the old quotes expired")
	}
}

func TestEWMAFollowsTheMedianWithItsHalfLife(t *testing.T) {
	b := NewPriceBoard(BoardConfig{Probation: 1, Maturity: 1, HalfLife: 10 * time.Minute, TTL: time.Hour})
	b.Apply(long(quote(1, usd(2), 8, 1, t0)), t0)
	if q, _ := b.Quote("H100-80GB", t0.Add(time.Second)); q.EWMA != usd(2) {
		t.Fatalf("first EWMA %d, want the median %d", q.EWMA, usd(2))
	}
	b.Apply(long(quote(1, usd(4), 8, 2, t0.Add(time.Second))), t0.Add(time.Second))
	b.Advance(t0.Add(time.Second)) // the median is 4.00 from here
	q, _ := b.Quote("H100-80GB", t0.Add(time.Second+10*time.Minute))
	if q.Median != usd(4) || q.EWMA != usd(3) {
		t.Fatalf("one half-life after a step from 2 to 4: median %d, EWMA %d; want %d, %d", q.Median, q.EWMA, usd(4), usd(3))
	}
}

// honestMarket is 20 providers asking 1.90, 1.91, ... 2.09 with 8 GPUs each.
func honestMarket(b *PriceBoard, seq uint64, now time.Time) {
	for i := range 20 {
		b.Apply(quote(i+1, usd(1.90+0.01*float64(i)), 8, seq, now), now)
	}
}

func TestASybilFloodBarelyMovesTheIndex(t *testing.T) {
	cfg := BoardConfig{} // the defaults: 2 min probation, 1 h maturity
	for _, absurd := range []float64{1_000_000, 0.000001} {
		t.Run(fmt.Sprintf("sybils ask %v", absurd), func(t *testing.T) {
			b := NewPriceBoard(cfg)
			now, seq := t0, uint64(1)
			step := func(d time.Duration, sybils bool) {
				for end := now.Add(d); now.Before(end); now = now.Add(time.Minute) {
					honestMarket(b, seq, now)
					if sybils {
						for s := range 100 {
							// Fresh identities claiming every GPU they can.
							b.Apply(quote(1000+s, usd(absurd), MaxAvailable, seq, now), now)
						}
					}
					seq++
				}
			}
			step(time.Hour+time.Minute, false)
			before, _ := b.Quote("H100-80GB", now)
			if before.Mature != 20 {
				t.Fatalf("honest market not mature after an hour: %+v", before)
			}
			flood := now
			for _, after := range []time.Duration{time.Minute, 5 * time.Minute, 30 * time.Minute, 59 * time.Minute} {
				step(flood.Add(after).Sub(now), true)
				q, _ := b.Quote("H100-80GB", now)
				if q.Providers != 120 {
					t.Fatalf("%v into the flood: %d providers listed, want 120", after, q.Providers)
				}
				for name, pair := range map[string][2]uint64{"median": {before.Median, q.Median}, "mean": {before.Mean, q.Mean}, "ewma": {before.EWMA, q.EWMA}} {
					move := math.Abs(float64(pair[1])/float64(pair[0]) - 1)
					t.Logf("%v into the flood the %s moved %.2f%% (%d to %d)", after, name, 100*move, pair[0], pair[1])
					if move >= 0.05 {
						t.Errorf("%v into the flood the %s moved %.1f%% (%d to %d)", after, name, 100*move, pair[0], pair[1])
					}
				}
			}
		})
	}
}

func TestSybilsThatKeepQuotingForMaturityCountFully(t *testing.T) {
	// The limit of the defence, stated: identities that quote for as long
	// as honest providers have weigh as much.
	b := NewPriceBoard(BoardConfig{Probation: time.Minute, Maturity: 2 * time.Minute, TTL: time.Hour})
	for i := range 3 {
		b.Apply(long(quote(i+1, usd(2), 8, 1, t0)), t0)
		b.Apply(long(quote(i+100, usd(50), 64, 1, t0)), t0)
	}
	if q, _ := b.Quote("H100-80GB", t0.Add(2*time.Minute)); q.Median != usd(50) {
		t.Fatalf("median %d, want the mature Sybils' %d", q.Median, usd(50))
	}
}

func TestQuotesListsEveryLiveClassInOrder(t *testing.T) {
	b := NewPriceBoard(instant)
	for i, class := range []string{"H100-80GB", "A100-40GB", "RTX4090-24GB"} {
		tk := quote(i+1, usd(1+float64(i)), 4, 1, t0)
		tk.Class = class
		b.Apply(tk, t0)
	}
	var classes []string
	for _, q := range b.Quotes(t0.Add(time.Second)) {
		classes = append(classes, q.Class)
	}
	if want := []string{"A100-40GB", "H100-80GB", "RTX4090-24GB"}; !slices.Equal(classes, want) {
		t.Fatalf("classes %v, want %v", classes, want)
	}
	if len(b.Quotes(t0.Add(time.Hour))) != 0 {
		t.Fatal("expired classes listed")
	}
}

func TestBoardConfigCheck(t *testing.T) {
	for _, bad := range []BoardConfig{{Trim: 0.5}, {Trim: -0.1}, {TTL: -1}, {NewcomerShare: -1}, {CapGPUs: -1}} {
		if bad.Check() == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
	if err := (BoardConfig{}).Check(); err != nil {
		t.Errorf("zero config: %v", err)
	}
}

func TestAQuoteStandsUntilItsTickSaysWithinTheBoardsBound(t *testing.T) {
	b := NewPriceBoard(BoardConfig{Probation: 1, Maturity: 1, TTL: time.Hour})
	tk := quote(1, usd(2), 8, 1, t0)
	tk.Until = t0.Add(40 * time.Minute)
	b.Apply(tk, t0)
	if _, ok := b.Quote("H100-80GB", t0.Add(39*time.Minute)); !ok {
		t.Fatal("dropped before its tick's Until")
	}
	if _, ok := b.Quote("H100-80GB", t0.Add(40*time.Minute)); ok {
		t.Fatal("kept past its tick's Until")
	}
	// A stranger saying its quote stands 6 h gets the board's hour.
	tk = quote(2, usd(2), 8, 1, t0)
	tk.Until = t0.Add(MaxTickLife)
	b.Apply(tk, t0)
	if _, ok := b.Quote("H100-80GB", t0.Add(59*time.Minute)); !ok {
		t.Fatal("dropped before the board's TTL")
	}
	if _, ok := b.Quote("H100-80GB", t0.Add(time.Hour)); ok {
		t.Fatal("kept past the board's TTL: a stranger's Until trusted blindly")
	}
	if d := NewPriceBoard(BoardConfig{}).cfg.TTL; d != 3*time.Hour {
		t.Fatalf("default TTL %v, want 3h (three of Resend's longest interval)", d)
	}
}

func TestSignedListsLiveSignedQuotesAvailableAndCheapestFirst(t *testing.T) {
	b := NewPriceBoard(instant)
	b.ApplySigned(SignedTick{Tick: quote(1, usd(3), 8, 1, t0), Msg: []byte("p1")}, t0)
	b.ApplySigned(SignedTick{Tick: quote(2, usd(1), 0, 1, t0), Msg: []byte("p2")}, t0) // none available
	b.ApplySigned(SignedTick{Tick: quote(3, usd(2), 8, 1, t0), Msg: []byte("p3")}, t0)
	b.Apply(quote(4, usd(1), 8, 1, t0), t0) // not known signed
	old := quote(5, usd(1), 8, 1, t0.Add(-80*time.Second))
	b.ApplySigned(SignedTick{Tick: old, Msg: []byte("p5")}, t0) // expires at t0+10s
	var got []string
	for _, m := range b.Signed(10, t0.Add(20*time.Second)) {
		got = append(got, string(m))
	}
	if want := []string{"p3", "p1", "p2"}; !slices.Equal(got, want) {
		t.Fatalf("Signed = %v, want %v", got, want)
	}
	if n := len(b.Signed(2, t0)); n != 2 {
		t.Fatalf("Signed(2) gave %d", n)
	}
}
