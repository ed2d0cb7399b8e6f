package text

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits are the units of Size and ParseSize, powers of 1024.
var sizeUnits = []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}

// Size writes a count of bytes for a person: 512B, 4MiB, 1.5GiB.
func Size(b int64) string {
	v, i := float64(b), 0
	for math.Abs(v) >= 1024 && i < len(sizeUnits)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.4g%s", v, sizeUnits[i])
}

// ParseSize reads a count of bytes: a number with an optional unit, B,
// KiB, MiB, GiB, TiB or PiB (powers of 1024; K, M, G, T and P say the
// same), such as 512MiB, 1.5GiB or 4096.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	v, err := strconv.ParseFloat(num, 64)
	mult := -1.0
	for k, u := range sizeUnits {
		if strings.EqualFold(unit, u) || (k > 0 && strings.EqualFold(unit, u[:1])) || (k == 0 && unit == "") {
			mult = math.Pow(1024, float64(k))
		}
	}
	if err != nil || mult < 0 || v < 0 || v*mult >= math.MaxInt64 {
		return 0, fmt.Errorf("size %s: want a number of bytes with an optional unit (B, KiB, MiB, GiB, TiB; powers of 1024), such as 512MiB or 20GiB", Clip(s))
	}
	return int64(v * mult), nil
}
