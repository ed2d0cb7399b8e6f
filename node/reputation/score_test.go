package reputation

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
)

func runs(provider string, outcomes ...Outcome) []Run {
	var out []Run
	for i, o := range outcomes {
		out = append(out, Run{Key: fmt.Sprintf("job%d-0-0", i), Provider: provider, Outcome: o, At: int64(i + 1)})
	}
	return out
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestAProviderNobodySawScoresThePrior(t *testing.T) {
	s := Compute(Params{}, "p", nil, nil)
	if !near(s.Score, 0.8) || !near(Params{}.Unknown(), 0.8) {
		t.Fatalf("score %v, unknown %v: want 0.8 (4 of 5)", s.Score, Params{}.Unknown())
	}
}

func TestFirstHandRunsMoveTheScore(t *testing.T) {
	for _, tt := range []struct {
		name string
		runs []Run
		want float64
	}{
		{"one finished", runs("p", Finished), 5.0 / 6},
		{"one lost", runs("p", Lost), 4.0 / 6},
		{"half failed", runs("p", Finished, ProviderFailed, Finished, Lost), 6.0 / 9},
		{"ten finished", runs("p", Finished, Finished, Finished, Finished, Finished, Finished, Finished, Finished, Finished, Finished), 14.0 / 15},
		{"another provider's runs", runs("q", Lost, Lost), 0.8},
	} {
		s := Compute(Params{}, "p", tt.runs, nil)
		if !near(s.Score, tt.want) {
			t.Errorf("%s: score %v, want %v (%s)", tt.name, s.Score, tt.want, s.Formula)
		}
	}
}

// A refused award counts against a provider, bounded: one takes an
// unknown provider below an unknown one's score (it is asked last) and a
// finished run makes up for it; a provider that refuses every award falls
// no further than one failed run takes it.
func TestRefusedAwardsCountALittleAndAtMostOneFailure(t *testing.T) {
	unknown := Params{}.Unknown()
	for _, tt := range []struct {
		name  string
		runs  []Run
		want  float64
		below bool // ranked below an unknown provider
	}{
		{"one refusal", runs("p", Refused), 4 / 5.2, true},
		{"one refusal, one finished run", runs("p", Refused, Finished), 5 / 6.2, false},
		{"a refusal among ten finished runs", runs("p", Finished, Finished, Finished, Finished, Finished, Refused, Finished, Finished, Finished, Finished, Finished), 14 / 15.2, false},
		{"five refusals", runs("p", Refused, Refused, Refused, Refused, Refused), 4.0 / 6, true},
		{"fifty refusals", runs("p", slices.Repeat([]Outcome{Refused}, 50)...), 4.0 / 6, true},
	} {
		s := Compute(Params{}, "p", tt.runs, nil)
		if !near(s.Score, tt.want) || (s.Rank() < unknown) != tt.below {
			t.Errorf("%s: score %v (rank %v), want %v, below the unknown %v: %v (%s)", tt.name, s.Score, s.Rank(), tt.want, unknown, tt.below, s.Formula)
		}
	}
	if s := Compute(Params{}, "p", runs("p", Refused, Lost), nil); s.Refused != 1 || s.Lost != 1 || !near(s.RefusedWeight, 0.2) {
		t.Errorf("counts: refused %d (weight %v), lost %d", s.Refused, s.RefusedWeight, s.Lost)
	}
}

// A provider failing every other job falls below an unknown provider at
// its first failure, and stays below one that finishes everything.
func TestHalfFailuresRankBelowUnknownAndHonest(t *testing.T) {
	var bad, good []Outcome
	for i := range 10 {
		good = append(good, Finished)
		bad = append(bad, []Outcome{Finished, Lost}[i%2])
		sb, sg := Compute(Params{}, "p", runs("p", bad...), nil), Compute(Params{}, "p", runs("p", good...), nil)
		if i >= 1 && (sb.Score >= sg.Score || sb.Score >= Params{}.Unknown()) {
			t.Fatalf("after %d jobs: half-failing %.3f, honest %.3f, unknown %.3f", i+1, sb.Score, sg.Score, Params{}.Unknown())
		}
	}
}

func TestTheSameRunCountsOnce(t *testing.T) {
	r := runs("p", Lost)
	if s := Compute(Params{}, "p", append(r, r...), nil); s.Lost != 1 {
		t.Fatalf("lost %d: a run named twice must count once", s.Lost)
	}
}

func receipt(key, consumer string, paid uint64) Receipt {
	return Receipt{Key: key, Provider: "p", Consumer: consumer, Paid: paid, Amount: paid, Cosigned: true}
}

func TestThirdPartyReceiptsCountAsMuchAsWasPaid(t *testing.T) {
	const unit = 1_000_000 // one USDC
	for _, tt := range []struct {
		name     string
		receipts []Receipt
		weight   float64
		counted  int
		ignored  int
	}{
		{"unpaid", []Receipt{receipt("a", "c1", 0)}, 0, 0, 0},
		{"a tenth paid", []Receipt{receipt("a", "c1", unit/10)}, 0.1, 1, 0},
		{"paid in full", []Receipt{receipt("a", "c1", unit)}, 1, 1, 0},
		{"paid ten times over", []Receipt{receipt("a", "c1", 10*unit)}, 1, 1, 0},
		{"one consumer, capped", []Receipt{receipt("a", "c1", unit), receipt("b", "c1", unit), receipt("c", "c1", unit), receipt("d", "c1", unit)}, 3, 4, 0},
		{"not countersigned", []Receipt{{Key: "a", Provider: "p", Consumer: "c1", Paid: unit}}, 0, 0, 1},
		{"self-paid", []Receipt{{Key: "a", Provider: "p", Consumer: "c1", Paid: unit, Cosigned: true, SelfPaid: true}}, 0, 0, 1},
		{"this peer's own job", []Receipt{{Key: "a", Provider: "p", Consumer: "me", Paid: unit, Cosigned: true, OwnJob: true}}, 0, 0, 1},
		{"the same receipt twice", []Receipt{receipt("a", "c1", unit), receipt("a", "c1", unit)}, 1, 1, 0},
	} {
		s := Compute(Params{}, "p", nil, tt.receipts)
		if !near(s.Weight, tt.weight) || s.Counted != tt.counted || s.Uncountable != tt.ignored {
			t.Errorf("%s: weight %v counted %d ignored %d, want %v %d %d", tt.name, s.Weight, s.Counted, s.Uncountable, tt.weight, tt.counted, tt.ignored)
		}
	}
}

// Fifty fresh identities co-signing each other's receipts without paying
// leave the score at the prior; paying a little each, it moves a little.
func TestARingOfFreshIdentitiesCountsForLittle(t *testing.T) {
	var ring []Receipt
	for i := range 50 {
		for k := 1; k <= 5; k++ {
			ring = append(ring, receipt(fmt.Sprintf("r%d-%d", i, k), fmt.Sprintf("c%d", (i+k)%50), 0))
		}
	}
	if s := Compute(Params{}, "p", nil, ring); !near(s.Score, 0.8) || s.Receipts != 250 {
		t.Fatalf("unpaid ring: score %v of %d receipts, want the prior 0.8", s.Score, s.Receipts)
	}
	for i := range ring {
		ring[i].Paid = 1000 // a thousandth of a USDC each
	}
	s := Compute(Params{}, "p", nil, ring)
	honest := Compute(Params{}, "h", runs("h", Finished, Finished), nil)
	if !near(s.Weight, 0.25) || s.Score >= honest.Score {
		t.Fatalf("ring paying 0.25 USDC in all: weight %v score %v; two first-hand jobs %v", s.Weight, s.Score, honest.Score)
	}
}

func TestScoresWithinAHundredthRankAlike(t *testing.T) {
	tiny := Compute(Params{}, "p", nil, []Receipt{receipt("a", "c", 1000)}) // a thousandth of a USDC
	if tiny.Score <= 0.8 || tiny.Rank() != 0.8 {
		t.Fatalf("score %v rank %v: want above 0.8, ranked as 0.8", tiny.Score, tiny.Rank())
	}
}

func TestTheFormulaShowsItsNumbers(t *testing.T) {
	s := Compute(Params{}, "p", runs("p", Finished, Lost), []Receipt{receipt("x", "c", 500_000)})
	want := "(4 prior + 1 finished + 0.500 third-party) / (4 prior + 1 finished + 0.500 third-party + 1 prior failed + 0 provider-failed + 1 lost + 0.000 refused) = 0.733"
	if s.Formula != want {
		t.Fatalf("formula\n%s\nwant\n%s", s.Formula, want)
	}
	if !strings.HasSuffix(s.Formula, fmt.Sprintf("%.3f", s.Score)) {
		t.Fatal("the formula's result is not the score")
	}
}
