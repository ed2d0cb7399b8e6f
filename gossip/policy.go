package gossip

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ErrBadPolicy marks a pricing policy that cannot be parsed.
var ErrBadPolicy = errors.New("bad pricing policy")

// Policy sets a provider's ask for a GPU class. It is a pure function of
// the current ask, the class's local utilization and the market median: the
// node calls Next at each step and gossips the ask when it changes.
//
//	fixed:2.10                         always 2.10 per GPU-hour
//	auto:floor=1.50,target=0.7         follow the market, higher when busy
//	auto:floor=1.50,target=0.7,max=4,step=0.05
//
// auto aims at the market median (without this peer's own quote) scaled by
// 1 + Gain*(utilization - target): a peer busier than its target asks more
// than the market, an idler one less. Without a market it moves its own ask
// the same way. Each step moves the ask by at most Step of itself, never
// below Floor or above Max.
type Policy struct {
	Fixed  uint64  // the ask of a fixed policy; 0 for auto
	Floor  uint64  // auto: lowest ask, > 0
	Max    uint64  // auto: highest ask; 0 means MaxPrice
	Target float64 // auto: utilization aimed at, 0..1; default 0.7
	Step   float64 // auto: most the ask moves in one step, as a fraction of itself; default 0.05
	Gain   float64 // auto: how far from the market utilization moves the aim; default 0.5
}

// Defaults of an auto policy.
const (
	DefaultTarget = 0.7
	DefaultStep   = 0.05
	DefaultGain   = 0.5
)

// ParsePolicy reads a policy ("fixed:2.10", "auto:floor=1.50,target=0.7")
// with prices in unit u.
func ParsePolicy(s string, u Unit) (Policy, error) {
	bad := func(format string, a ...any) (Policy, error) {
		return Policy{}, fmt.Errorf("%w %q: %s", ErrBadPolicy, s, fmt.Sprintf(format, a...))
	}
	kind, args, _ := strings.Cut(s, ":")
	switch kind {
	case "fixed":
		p, err := u.Parse(args)
		if err != nil {
			return bad("%v", err)
		}
		if p == 0 {
			return bad("the price must be more than 0")
		}
		return Policy{Fixed: p}, nil
	case "auto":
	default:
		return bad("want fixed:PRICE (e.g. fixed:2.10) or auto:floor=PRICE,target=UTILIZATION (e.g. auto:floor=1.50,target=0.7)")
	}
	p := Policy{Target: DefaultTarget, Step: DefaultStep, Gain: DefaultGain}
	seen := map[string]bool{}
	for kv := range strings.SplitSeq(args, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || seen[k] {
			return bad("want key=value pairs floor, target, max, step, gain, each once")
		}
		seen[k] = true
		var err error
		switch k {
		case "floor":
			p.Floor, err = u.Parse(v)
		case "max":
			p.Max, err = u.Parse(v)
		case "target":
			p.Target, err = parseFraction(v, 0, 1)
		case "step":
			p.Step, err = parseFraction(v, 0.001, 1)
		case "gain":
			p.Gain, err = parseFraction(v, 0, 10)
		default:
			return bad("unknown key %q: want floor, target, max, step or gain", k)
		}
		if err != nil {
			return bad("%s: %v", k, err)
		}
	}
	switch {
	case p.Floor == 0:
		return bad("floor=PRICE is required and must be more than 0")
	case p.Max != 0 && p.Max < p.Floor:
		return bad("max %s is below floor %s", u.Format(p.Max), u.Format(p.Floor))
	}
	return p, nil
}

func parseFraction(s string, lo, hi float64) (float64, error) {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || v < lo || v > hi {
		return 0, fmt.Errorf("%q: want a number %g..%g", s, lo, hi)
	}
	return v, nil
}

// Auto reports whether the policy follows the market.
func (p Policy) Auto() bool { return p.Fixed == 0 }

// Format writes the policy as ParsePolicy reads it.
func (p Policy) Format(u Unit) string {
	if !p.Auto() {
		return "fixed:" + u.Format(p.Fixed)
	}
	s := fmt.Sprintf("auto:floor=%s,target=%g", u.Format(p.Floor), p.Target)
	if p.Max != 0 {
		s += ",max=" + u.Format(p.Max)
	}
	if p.Step != DefaultStep {
		s += fmt.Sprintf(",step=%g", p.Step)
	}
	if p.Gain != DefaultGain {
		s += fmt.Sprintf(",gain=%g", p.Gain)
	}
	return s
}

// Market is what a policy step knows of one class.
type Market struct {
	Utilization float64 // fraction of this peer's GPUs of the class in use, 0..1
	Median      uint64  // the market's median ask without this peer's; 0: unknown
}

// Next is the ask after current (0: none yet) given the market. It is always
// within 1..MaxPrice, and for auto within Floor..Max.
func (p Policy) Next(current uint64, m Market) uint64 {
	if !p.Auto() {
		return p.Fixed
	}
	hi := p.Max
	if hi == 0 {
		hi = MaxPrice
	}
	clamp := func(v uint64) uint64 { return min(max(v, p.Floor), hi) }
	u := m.Utilization
	if math.IsNaN(u) {
		u = 0
	}
	u = min(max(u, 0), 1)
	lean := 1 + p.Gain*(u-p.Target)
	if current == 0 {
		if m.Median > 0 {
			return clamp(RoundPrice(float64(m.Median) * lean))
		}
		return p.Floor
	}
	base := float64(current)
	if m.Median > 0 {
		base = float64(m.Median)
	}
	aim := base * lean
	cur := float64(current)
	next := min(max(aim, cur*(1-p.Step)), cur*(1+p.Step))
	return clamp(RoundPrice(next))
}
