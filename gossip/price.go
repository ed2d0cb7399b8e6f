package gossip

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Prices are integers of a token's smallest unit per GPU-hour, everywhere:
// on the wire, on the board, in offers. With the default unit (USDC, 6
// decimals) 2.10 USDC per GPU-hour is 2_100_000. Floats appear only inside
// the board's statistics and the pricing policy, and their results are
// rounded back to integers.

// MaxPrice bounds every price, in the smallest unit per GPU-hour. It keeps
// prices exact in a float64 (below 2^53), which the board's statistics use.
const MaxPrice = 1_000_000_000_000_000

// maxDecimals bounds Unit.Decimals: SPL tokens have at most 9.
const maxDecimals = 9

// maxTokenLen bounds a token symbol, in bytes.
const maxTokenLen = 12

// ErrBadPrice marks a price or unit that cannot be parsed or is out of bounds.
var ErrBadPrice = errors.New("bad price")

// Unit is what prices are counted in: a token and the number of decimals of
// its smallest unit. The zero value is not a unit; DefaultUnit is USDC.
type Unit struct {
	Token    string // symbol, 1..12 of A-Z and 0-9, e.g. "USDC"
	Decimals uint8  // 6 means 1 token = 1_000_000 units; 0..9
}

// DefaultUnit is the unit of a swarm that names none: USDC, 6 decimals.
var DefaultUnit = Unit{Token: "USDC", Decimals: 6}

// ParseUnit reads "TOKEN:DECIMALS" (e.g. "USDC:6", "SOL:9"); "" is DefaultUnit.
func ParseUnit(s string) (Unit, error) {
	if s == "" {
		return DefaultUnit, nil
	}
	tok, dec, ok := strings.Cut(s, ":")
	if !ok {
		return Unit{}, fmt.Errorf("%w: unit %q: want TOKEN:DECIMALS, e.g. USDC:6", ErrBadPrice, s)
	}
	d, err := strconv.ParseUint(dec, 10, 8)
	if err != nil {
		return Unit{}, fmt.Errorf("%w: unit %q: decimals must be a number 0..%d", ErrBadPrice, s, maxDecimals)
	}
	u := Unit{Token: tok, Decimals: uint8(d)}
	if err := u.check(); err != nil {
		return Unit{}, err
	}
	return u, nil
}

func (u Unit) check() error {
	if !validToken(u.Token) {
		return fmt.Errorf("%w: token %q: want 1..%d of A-Z and 0-9", ErrBadPrice, u.Token, maxTokenLen)
	}
	if u.Decimals > maxDecimals {
		return fmt.Errorf("%w: %d decimals: at most %d", ErrBadPrice, u.Decimals, maxDecimals)
	}
	return nil
}

func validToken(s string) bool {
	if len(s) == 0 || len(s) > maxTokenLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// String is "TOKEN:DECIMALS", what ParseUnit reads.
func (u Unit) String() string { return fmt.Sprintf("%s:%d", u.Token, u.Decimals) }

// PerHour names the price unit for people: "USDC/GPU-h".
func (u Unit) PerHour() string { return u.Token + "/GPU-h" }

// Parse reads a decimal amount of tokens ("2.10", "0.5", "3") into smallest
// units, exactly: no float is involved. More fractional digits than the unit
// has are an error unless they are zeros. The result is at most MaxPrice.
func (u Unit) Parse(s string) (uint64, error) {
	bad := func(why string) (uint64, error) {
		return 0, fmt.Errorf("%w: %q: %s", ErrBadPrice, s, why)
	}
	if err := u.check(); err != nil {
		return 0, err
	}
	whole, frac, dot := strings.Cut(s, ".")
	if whole == "" || (dot && frac == "") {
		return bad("want a decimal number such as 2.10")
	}
	if !allDigits(whole) || !allDigits(frac) {
		return bad("want a decimal number such as 2.10 (digits and one dot)")
	}
	if len(frac) > int(u.Decimals) {
		if strings.Trim(frac[u.Decimals:], "0") != "" {
			return bad(fmt.Sprintf("%s has %d decimals", u.Token, u.Decimals))
		}
		frac = frac[:u.Decimals]
	}
	frac += strings.Repeat("0", int(u.Decimals)-len(frac))
	digits := strings.TrimLeft(whole+frac, "0")
	if digits == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || v > MaxPrice {
		return bad(fmt.Sprintf("too large (at most %s)", u.Format(MaxPrice)))
	}
	return v, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Format writes an amount in smallest units as tokens, with at least two
// decimals (or none for a unit without decimals): 2_100_000 is "2.10",
// 2_123_456 is "2.123456".
func (u Unit) Format(v uint64) string {
	if u.Decimals == 0 {
		return strconv.FormatUint(v, 10)
	}
	p := pow10(u.Decimals)
	frac := fmt.Sprintf("%0*d", int(u.Decimals), v%p)
	keep := len(strings.TrimRight(frac, "0"))
	keep = max(keep, min(2, int(u.Decimals)))
	return strconv.FormatUint(v/p, 10) + "." + frac[:keep]
}

func pow10(n uint8) uint64 {
	p := uint64(1)
	for range n {
		p *= 10
	}
	return p
}

// RoundPrice rounds a price (a float of smallest units) to a step that is
// the largest power of ten no more than a thousandth of it (2_104_499 to
// 2_104_000), so an automatic policy moves in steps that mean something and
// does not gossip changes of a millionth. The result is within 1..MaxPrice.
func RoundPrice(v float64) uint64 {
	if math.IsNaN(v) || v < 1 {
		return 1
	}
	if v >= MaxPrice {
		return MaxPrice
	}
	q := 1.0
	if v >= 1000 {
		q = math.Pow(10, math.Floor(math.Log10(v/1000)))
	}
	r := math.Round(v/q) * q
	return min(max(uint64(r), 1), MaxPrice)
}
