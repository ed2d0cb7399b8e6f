package gossip

import (
	"errors"
	"testing"
)

func TestPricesParseExactlyIntoSmallestUnits(t *testing.T) {
	usdc := DefaultUnit
	sol := Unit{Token: "SOL", Decimals: 9}
	whole := Unit{Token: "PTS", Decimals: 0}
	for _, tc := range []struct {
		unit Unit
		in   string
		want uint64
	}{
		{usdc, "2.10", 2_100_000},
		{usdc, "2.1", 2_100_000},
		{usdc, "2", 2_000_000},
		{usdc, "0.000001", 1},
		{usdc, "0.1", 100_000},
		{usdc, "0.29", 290_000}, // 0.29*1e6 is 289999.99999999997 in float64
		{usdc, "1.1000000", 1_100_000},
		{usdc, "007.5", 7_500_000},
		{usdc, "0", 0},
		{usdc, "1000000000", 1_000_000_000_000_000},
		{sol, "0.000000001", 1},
		{sol, "1.5", 1_500_000_000},
		{whole, "42", 42},
		{whole, "42.000", 42},
	} {
		got, err := tc.unit.Parse(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("%s.Parse(%q) = %d, %v; want %d", tc.unit, tc.in, got, err, tc.want)
		}
	}
}

func TestBadPricesAreRefusedWithAReason(t *testing.T) {
	for _, in := range []string{
		"", ".5", "2.", "-1", "+1", "1e3", "2,10", "2.10 USDC", " 2", "0x10", "NaN", "∞",
		"0.0000001",            // a seventh decimal of USDC
		"1000000000.000001",    // above MaxPrice
		"99999999999999999999", // overflows uint64
	} {
		if v, err := DefaultUnit.Parse(in); !errors.Is(err, ErrBadPrice) {
			t.Errorf("Parse(%q) = %d, %v; want ErrBadPrice", in, v, err)
		}
	}
}

func TestPricesFormatWithTheUnitsDecimals(t *testing.T) {
	for _, tc := range []struct {
		unit Unit
		in   uint64
		want string
	}{
		{DefaultUnit, 2_100_000, "2.10"},
		{DefaultUnit, 2_000_000, "2.00"},
		{DefaultUnit, 2_123_456, "2.123456"},
		{DefaultUnit, 1, "0.000001"},
		{DefaultUnit, 0, "0.00"},
		{Unit{"SOL", 9}, 1_500_000_000, "1.50"},
		{Unit{"X", 1}, 15, "1.5"},
		{Unit{"PTS", 0}, 42, "42"},
	} {
		if got := tc.unit.Format(tc.in); got != tc.want {
			t.Errorf("%s.Format(%d) = %q, want %q", tc.unit, tc.in, got, tc.want)
		}
		if back, err := tc.unit.Parse(tc.unit.Format(tc.in)); err != nil || back != tc.in {
			t.Errorf("%s: Parse(Format(%d)) = %d, %v", tc.unit, tc.in, back, err)
		}
	}
}

func TestUnitsParse(t *testing.T) {
	for in, want := range map[string]Unit{"": DefaultUnit, "USDC:6": DefaultUnit, "SOL:9": {"SOL", 9}, "PTS:0": {"PTS", 0}} {
		if got, err := ParseUnit(in); err != nil || got != want {
			t.Errorf("ParseUnit(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"USDC", "usdc:6", "USDC:10", "USDC:-1", ":6", "TOOLONGTOKEN1:6", "US DC:6"} {
		if u, err := ParseUnit(in); err == nil {
			t.Errorf("ParseUnit(%q) = %v, want an error", in, u)
		}
	}
	if got := DefaultUnit.PerHour(); got != "USDC/GPU-h" {
		t.Errorf("PerHour = %q", got)
	}
}

func TestRoundPriceStepsByAThousandthOfThePriceAtMost(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want uint64
	}{
		{2_104_499, 2_104_000},
		{2_104_500, 2_105_000},
		{999, 999},
		{12_344, 12_340},
		{12_345, 12_350},
		{0.2, 1},
		{-5, 1},
		{2e18, MaxPrice},
	} {
		if got := RoundPrice(tc.in); got != tc.want {
			t.Errorf("RoundPrice(%v) = %d, want %d", tc.in, got, tc.want)
		}
	}
}
