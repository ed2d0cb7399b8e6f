package gossip

import (
	"errors"
	"testing"
)

func TestPoliciesParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Policy
		back string
	}{
		{"fixed:2.10", Policy{Fixed: usd(2.10)}, "fixed:2.10"},
		{"auto:floor=1.50,target=0.7", Policy{Floor: usd(1.5), Target: 0.7, Step: DefaultStep, Gain: DefaultGain}, "auto:floor=1.50,target=0.7"},
		{"auto:floor=1.5", Policy{Floor: usd(1.5), Target: DefaultTarget, Step: DefaultStep, Gain: DefaultGain}, "auto:floor=1.50,target=0.7"},
		{"auto:target=0.9,floor=1,max=4.25,step=0.1,gain=1", Policy{Floor: usd(1), Max: usd(4.25), Target: 0.9, Step: 0.1, Gain: 1}, "auto:floor=1.00,target=0.9,max=4.25,step=0.1,gain=1"},
	} {
		got, err := ParsePolicy(tc.in, DefaultUnit)
		if err != nil || got != tc.want {
			t.Errorf("ParsePolicy(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		if s := got.Format(DefaultUnit); s != tc.back {
			t.Errorf("Format = %q, want %q", s, tc.back)
		}
	}
}

func TestBadPoliciesSayWhatToWrite(t *testing.T) {
	for _, in := range []string{
		"", "2.10", "fixed", "fixed:", "fixed:0", "fixed:-1", "fixed:2.1234567",
		"auto", "auto:", "auto:target=0.7", "auto:floor=0", "auto:floor=2,max=1",
		"auto:floor=1,target=1.5", "auto:floor=1,target=NaN", "auto:floor=1,step=0",
		"auto:floor=1,floor=2", "auto:floor=1,speed=3", "auto:floor=1,", "market:2",
	} {
		if p, err := ParsePolicy(in, DefaultUnit); !errors.Is(err, ErrBadPolicy) {
			t.Errorf("ParsePolicy(%q) = %+v, %v; want ErrBadPolicy", in, p, err)
		}
	}
}

func TestPolicySteps(t *testing.T) {
	auto := Policy{Floor: usd(1.50), Target: 0.7, Step: 0.05, Gain: 0.5}
	capped := auto
	capped.Max = usd(2.20)
	for _, tc := range []struct {
		name    string
		policy  Policy
		current uint64
		market  Market
		want    uint64
	}{
		{"fixed ignores everything", Policy{Fixed: usd(2.10)}, usd(9), Market{Utilization: 1, Median: usd(5)}, usd(2.10)},
		{"auto starts at the floor without a market", auto, 0, Market{Utilization: 0.2}, usd(1.50)},
		{"auto starts at the market, leaning with utilization", auto, 0, Market{Utilization: 0.7, Median: usd(2)}, usd(2)},
		{"auto starts idle below the market", auto, 0, Market{Utilization: 0.5, Median: usd(2)}, usd(1.80)},
		{"auto starts no lower than the floor", auto, 0, Market{Utilization: 0, Median: usd(1)}, usd(1.50)},
		{"at target with no market it holds", auto, usd(2), Market{Utilization: 0.7}, usd(2)},
		{"busy with no market it rises one step", auto, usd(2), Market{Utilization: 1}, usd(2.10)},
		{"idle with no market it falls one step", auto, usd(2), Market{Utilization: 0}, usd(1.90)},
		{"a little busy, a little rise", auto, usd(2), Market{Utilization: 0.8}, usd(2.10)},
		{"at target it moves to the market", auto, usd(2), Market{Utilization: 0.7, Median: usd(2.04)}, usd(2.04)},
		{"at most one step toward the market", auto, usd(2), Market{Utilization: 0.7, Median: usd(3)}, usd(2.10)},
		{"busy aims above the market", auto, usd(2.30), Market{Utilization: 0.9, Median: usd(2)}, usd(2.20)},
		{"never below the floor", auto, usd(1.55), Market{Utilization: 0, Median: usd(1)}, usd(1.50)},
		{"never above max", capped, usd(2.15), Market{Utilization: 1}, usd(2.20)},
		{"utilization past 1 counts as 1", auto, usd(2), Market{Utilization: 7}, usd(2.10)},
		{"utilization NaN counts as 0", auto, usd(2), Market{Utilization: nan()}, usd(1.90)},
		{"steps are rounded to a thousandth", auto, usd(2.111111), Market{Utilization: 0.75}, usd(2.164)},
	} {
		if got := tc.policy.Next(tc.current, tc.market); got != tc.want {
			t.Errorf("%s: Next(%d, %+v) = %d, want %d", tc.name, tc.current, tc.market, got, tc.want)
		}
	}
}

func nan() float64 { var z float64; return z / z }

func TestAutoPolicySettlesAtTheMarketWhenAtTarget(t *testing.T) {
	p := Policy{Floor: usd(1), Target: 0.7, Step: 0.05, Gain: 0.5}
	ask := usd(1)
	for range 50 {
		ask = p.Next(ask, Market{Utilization: 0.7, Median: usd(2.50)})
	}
	if ask != usd(2.50) {
		t.Fatalf("after 50 steps the ask is %d, want the market's %d", ask, usd(2.50))
	}
	// And stays there: no churn to gossip.
	if next := p.Next(ask, Market{Utilization: 0.7, Median: usd(2.50)}); next != ask {
		t.Fatalf("settled ask moved from %d to %d", ask, next)
	}
}

func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{"fixed:2.10", "auto:floor=1.50,target=0.7", "auto:floor=1,max=2,step=0.1,gain=2", "fixed:0.000001"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePolicy(s, DefaultUnit)
		if err != nil {
			return
		}
		again, err := ParsePolicy(p.Format(DefaultUnit), DefaultUnit)
		if err != nil || again != p {
			t.Fatalf("%q: Format gives %q, which parses to %+v, %v", s, p.Format(DefaultUnit), again, err)
		}
		for _, m := range []Market{{}, {Utilization: 1, Median: MaxPrice}, {Utilization: 0.5, Median: 1}} {
			for _, cur := range []uint64{0, 1, MaxPrice} {
				if v := p.Next(cur, m); v == 0 || v > MaxPrice || (p.Auto() && (v < p.Floor || (p.Max > 0 && v > p.Max))) {
					t.Fatalf("%q: Next(%d, %+v) = %d out of bounds", s, cur, m, v)
				}
			}
		}
	})
}

func FuzzParsePrice(f *testing.F) {
	for _, s := range []string{"2.10", "0", "1000000000", "0.000001", "1.1000000"} {
		f.Add(s, uint8(6))
	}
	f.Fuzz(func(t *testing.T, s string, dec uint8) {
		u := Unit{Token: "T", Decimals: dec % (maxDecimals + 1)}
		v, err := u.Parse(s)
		if err != nil {
			return
		}
		if v > MaxPrice {
			t.Fatalf("%q parsed to %d, above MaxPrice", s, v)
		}
		if back, err := u.Parse(u.Format(v)); err != nil || back != v {
			t.Fatalf("%q = %d formats as %q, which parses to %d, %v", s, v, u.Format(v), back, err)
		}
	})
}
