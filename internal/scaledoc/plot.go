package scaledoc

import (
	"fmt"
	"html"
	"maps"
	"math"
	"slices"
	"strings"
)

// panel is one plot: a figure of each run against its peer count.
type panel struct {
	title  string
	get    func(Run) float64
	target float64 // 0: none
	logY   bool
}

var panels = []panel{
	{"lookup p95 (ms)", func(r Run) float64 { return r.LookupP95Ms }, TargetLookupP95Ms, true},
	{"lookup for 8 GPUs p95 (ms)", func(r Run) float64 { return r.Lookup8P95Ms }, TargetLookupP95Ms, true},
	{"price tick to 99% of peers (ms)", func(r Run) float64 { return r.TickTo99Ms }, TargetTickMs, true},
	{"8-GPU formation p99 (ms)", func(r Run) float64 { return r.Form8P99Ms }, TargetForm8P99Ms, true},
	{"resting gossip a peer (B/s)", func(r Run) float64 { return r.RestGossipBps }, TargetRestBps, true},
	{"memory a peer (MB)", func(r Run) float64 { return r.MemMBPerPeer }, 0, false},
	{"lookup hops, mean", func(r Run) float64 { return r.LookupHopsMean }, 0, false},
}

// The plot's layout, in SVG units.
const (
	cols, panelW, panelH   = 3, 300, 230
	padL, padR, padT, padB = 52, 26, 28, 34
)

// Plot draws each panel: every run a point (the latest run of a size
// filled, earlier ones hollow), the latest runs joined by a line, and
// the target dashed. The peer axis is logarithmic from 100 to 10,000 (or
// wider, to hold every run).
func Plot(runs []Run) []byte {
	rows := (len(panels) + cols - 1) / cols
	w, h := cols*panelW, rows*panelH+24
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="8" y="%d" fill="#555">filled: each size's latest run, joined; hollow: earlier runs; dashed red: the target at 10,000 peers. Made from docs/scale.jsonl.</text>`+"\n", h-8)
	xmin, xmax := 100.0, 10000.0
	for _, r := range runs {
		xmin, xmax = math.Min(xmin, float64(r.Peers)), math.Max(xmax, float64(r.Peers))
	}
	xmin, xmax = decadeFloor(xmin), decadeCeil(xmax)
	latest := map[int]int{} // peers → index of its last run
	for i, r := range runs {
		latest[r.Peers] = i
	}
	for pi, p := range panels {
		ox, oy := float64(pi%cols*panelW), float64(pi/cols*panelH)
		drawPanel(&b, p, runs, latest, ox, oy, xmin, xmax)
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}

func drawPanel(b *strings.Builder, p panel, runs []Run, latest map[int]int, ox, oy, xmin, xmax float64) {
	x0, x1 := ox+padL, ox+panelW-padR
	y0, y1 := oy+panelH-padB, oy+padT // y0 the bottom
	ymin, ymax := math.Inf(1), math.Inf(-1)
	for _, r := range runs {
		if v := p.get(r); v > 0 {
			ymin, ymax = math.Min(ymin, v), math.Max(ymax, v)
		}
	}
	if p.target > 0 {
		ymin, ymax = math.Min(ymin, p.target), math.Max(ymax, p.target)
	}
	if math.IsInf(ymin, 0) {
		ymin, ymax = 1, 10
	}
	var yticks []float64
	if p.logY {
		ymin, ymax = decadeFloor(ymin), decadeCeil(ymax)
		for t := ymin; t <= ymax*1.0001; t *= 10 {
			yticks = append(yticks, t)
		}
	} else {
		step := niceStep(ymax / 4)
		ymin, ymax = 0, math.Ceil(ymax/step)*step
		for t := 0.0; t <= ymax*1.0001; t += step {
			yticks = append(yticks, t)
		}
	}
	sx := func(v float64) float64 {
		return x0 + (math.Log10(v)-math.Log10(xmin))/(math.Log10(xmax)-math.Log10(xmin))*(x1-x0)
	}
	sy := func(v float64) float64 {
		var f float64
		if p.logY {
			f = (math.Log10(v) - math.Log10(ymin)) / (math.Log10(ymax) - math.Log10(ymin))
		} else {
			f = (v - ymin) / (ymax - ymin)
		}
		return y0 - f*(y0-y1)
	}
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-weight="bold">%s</text>`+"\n", x0, oy+16, html.EscapeString(p.title))
	fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#999"/>`+"\n", x0, y1, x1-x0, y0-y1)
	for _, t := range yticks {
		y := sy(t)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", x0, y, x1, y)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", x0-4, y+4, tickLabel(t))
	}
	for t := xmin; t <= xmax*1.0001; t *= 10 {
		for _, m := range []float64{1, 3} {
			v := t * m
			if v > xmax*1.0001 {
				break
			}
			x := sx(v)
			fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", x, y0, x, y1)
			fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, y0+14, num(v, 0))
		}
	}
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#555">peers</text>`+"\n", (x0+x1)/2, y0+28)
	if p.target > 0 {
		y := sy(p.target)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#c00" stroke-dasharray="5,3"/>`+"\n", x0, y, x1, y)
	}
	// The latest run of each size, in peer order, joined.
	var pts []string
	for _, n := range sortedKeys(latest) {
		r := runs[latest[n]]
		if v := p.get(r); v > 0 {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", sx(float64(n)), sy(v)))
		}
	}
	if len(pts) > 1 {
		fmt.Fprintf(b, `<polyline points="%s" fill="none" stroke="#1f5fa8" stroke-width="1.5"/>`+"\n", strings.Join(pts, " "))
	}
	for i, r := range runs {
		v := p.get(r)
		if v <= 0 {
			continue
		}
		fill := "white"
		if latest[r.Peers] == i {
			fill = "#1f5fa8"
		}
		fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s" stroke="#1f5fa8"><title>run %d: %s peers, %s</title></circle>`+"\n",
			sx(float64(r.Peers)), sy(v), fill, i+1, num(float64(r.Peers), 0), num(v, 1))
	}
}

func decadeFloor(v float64) float64 { return math.Pow(10, math.Floor(math.Log10(v))) }
func decadeCeil(v float64) float64  { return math.Pow(10, math.Ceil(math.Log10(v))) }

// niceStep rounds v up to 1, 2 or 5 times a power of ten.
func niceStep(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func tickLabel(v float64) string {
	if v >= 1 || v == 0 {
		return num(v, 0)
	}
	return num(v, 1)
}

func sortedKeys(m map[int]int) []int { return slices.Sorted(maps.Keys(m)) }
