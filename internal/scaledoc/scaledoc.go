// Package scaledoc makes docs/scale.md's figures from the scale
// benchmark's JSON lines (docs/scale.jsonl, one line a run and size): the
// table between two marker lines of the Markdown file, and the plots in
// an SVG file beside it. The benchmark calls Update after it appends a
// line; `make scale-docs` calls it after the lines were edited by hand
// (a note added); a test keeps the committed files equal to what the
// lines make.
package scaledoc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/gpumesh/gpumesh/internal/atomicfile"
)

// Run is the figures of one JSON line that the docs show: one size in
// one run of the benchmark (node/meshtest's scaleResult embeds it and
// writes more; other fields are ignored here).
type Run struct {
	Note string `json:",omitempty"`
	// Clock is "virtual" for a run in a bubble of testing/synctest (its
	// times are of the bubble's clock: the protocol's on the simulated
	// links, not the one process's CPU) and empty for one in real time.
	Clock          string `json:",omitempty"`
	Peers          int
	LatencyMs      float64 // one-way, every simulated link
	SetupS         float64
	MemMBPerPeer   float64 // heap and stacks in use at rest, a peer
	RestGossipBps  float64 // bytes a second a peer sends, at rest
	RecordsPerPeer float64 // directory records a peer stores, mean
	RecordsMax     int
	LookupP50Ms    float64
	LookupP95Ms    float64
	LookupP99Ms    float64
	LookupHopsMean float64
	LookupHopsMax  int
	Log2N          float64
	OffersFound    float64 // share of live offers a lookup found, mean
	// Lookups for a count (FindGPUs(model=H100, count=8)): answered
	// among the price board's cheapest providers when they make the
	// count (dht.FindResult.Named), else from the index. 0: not measured.
	Lookup8P50Ms float64 `json:",omitempty"`
	Lookup8P95Ms float64 `json:",omitempty"`
	Lookup8P99Ms float64 `json:",omitempty"`
	Lookup8Named float64 `json:",omitempty"` // share answered among the board's cheapest
	TickTo99Ms   float64 // until 99% of peers have a new ask, mean of the ticks
	TickCopies   float64 // copies received per tick delivered, a peer
	Form8P50Ms   float64
	Form8P99Ms   float64
	Form8Msgs    float64
	Form8Failed  int
	Form64P50Ms  float64
	Form64P99Ms  float64
	Form64Msgs   float64
	Form64Failed int
}

// Sizes the issue asks for: a size with no run gets a row that says so.
var Sizes = []int{1000, 3000, 10000}

// Targets at 10,000 peers (issue 19): lookup p95, a price tick to 99% of
// peers, 8-GPU formation p99 (ms), resting gossip a peer (B/s).
const (
	TargetLookupP95Ms = 100
	TargetTickMs      = 1000
	TargetForm8P99Ms  = 1000
	TargetRestBps     = 2048
)

// maxLine bounds one JSON line (a run's line is ~2 KB).
const maxLine = 1 << 20

// Read parses JSON lines, one Run each; blank lines are skipped.
func Read(r io.Reader) ([]Run, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), maxLine)
	var runs []Run
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var run Run
		if err := json.Unmarshal(line, &run); err != nil {
			return nil, fmt.Errorf("line %d: %w (each line must be one JSON object, as the scale benchmark writes)", n, err)
		}
		if run.Peers <= 0 {
			return nil, fmt.Errorf("line %d: Peers is %d: each line must give the peer count it measured", n, run.Peers)
		}
		runs = append(runs, run)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading the scale figures: %w", err)
	}
	return runs, nil
}

// Begin and End are the marker lines around the generated figures in
// the Markdown file.
const (
	Begin = "<!-- scale figures: made by `make scale-docs` from docs/scale.jsonl; edit the lines, not this -->"
	End   = "<!-- end of scale figures -->"
)

// PlotFile is the SVG's name, beside the Markdown file.
const PlotFile = "scale.svg"

// Figures is the Markdown put between Begin and End: the table, the
// targets, the runs' notes and the plots' image.
func Figures(runs []Run) string {
	var b strings.Builder
	b.WriteString("| run | peers | MB/peer | rest gossip B/s/peer | records/peer | lookup p50/p95/p99 ms | hops (log2 N) | offers found | lookup for 8 GPUs p50/p95/p99 ms | tick to 99% ms | copies/tick | 8-GPU p50/p99 ms | msgs/8-GPU | 64-GPU p50/p99 ms | msgs/64-GPU | failed jobs | setup s |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	measured := map[int]bool{}
	for i, r := range runs {
		measured[r.Peers] = true
		lookup8 := "–"
		if r.Lookup8P95Ms > 0 {
			lookup8 = fmt.Sprintf("%s / %s / %s (%s%% named)", num(r.Lookup8P50Ms, 0), num(r.Lookup8P95Ms, 0), num(r.Lookup8P99Ms, 0), num(100*r.Lookup8Named, 0))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s (max %d) | %s / %s / %s | %s, max %d (%s) | %s | %s | %s | %s | %s / %s | %s | %s / %s | %s | %d | %s |\n",
			runLabel(i, r), num(float64(r.Peers), 0), num(r.MemMBPerPeer, 1), num(r.RestGossipBps, 0),
			num(r.RecordsPerPeer, 1), r.RecordsMax,
			num(r.LookupP50Ms, 0), num(r.LookupP95Ms, 0), num(r.LookupP99Ms, 0),
			num(r.LookupHopsMean, 2), r.LookupHopsMax, num(r.Log2N, 0),
			num(100*r.OffersFound, 0)+"%", lookup8, measured0(r.TickTo99Ms, 0), measured0(r.TickCopies, 1),
			measured0(r.Form8P50Ms, 0), measured0(r.Form8P99Ms, 0), measured0(r.Form8Msgs, 1),
			measured0(r.Form64P50Ms, 0), measured0(r.Form64P99Ms, 0), measured0(r.Form64Msgs, 0),
			r.Form8Failed+r.Form64Failed, num(r.SetupS, 0))
	}
	for _, n := range Sizes {
		if !measured[n] {
			fmt.Fprintf(&b, "| – | %s | not measured | | | | | | | | | | | | | | |\n", num(float64(n), 0))
		}
	}
	fmt.Fprintf(&b, "| target | 10,000 | | < %s | | p95 < %s | | | p95 < %s | < %s | | p99 < %s | | | | | |\n",
		num(TargetRestBps, 0), num(TargetLookupP95Ms, 0), num(TargetLookupP95Ms, 0), num(TargetTickMs, 0), num(TargetForm8P99Ms, 0))
	b.WriteString("\nRuns (the line's note, in `docs/scale.jsonl`):\n\n")
	for i, r := range runs {
		note := r.Note
		if note == "" {
			note = "no note"
		}
		clock := ""
		if r.Clock != "" {
			clock = ", " + r.Clock + " time"
		}
		fmt.Fprintf(&b, "%d. %s peers, %s ms links%s: %s\n", i+1, num(float64(r.Peers), 0), num(r.LatencyMs, 0), clock, note)
	}
	fmt.Fprintf(&b, "\n![The figures against the peer count, with the targets](%s)\n", PlotFile)
	return b.String()
}

// runLabel is a run's number in the table, marked "v" for virtual time.
func runLabel(i int, r Run) string {
	if r.Clock == "virtual" {
		return strconv.Itoa(i+1) + " (v)"
	}
	return strconv.Itoa(i + 1)
}

// Splice puts figures between the Begin and End lines of md, replacing
// what was there.
func Splice(md, figures string) (string, error) {
	i := strings.Index(md, Begin+"\n")
	j := strings.Index(md, "\n"+End)
	if i < 0 || j < 0 || j < i {
		return "", fmt.Errorf("the Markdown file has no lines %q ... %q around its figures: put them where the table goes", Begin, End)
	}
	return md[:i+len(Begin)+1] + figures + md[j+1:], nil
}

// Update reads the JSON lines at jsonl and rewrites the figures of the
// Markdown file md and the plots beside it.
func Update(jsonl, md string) error {
	f, err := os.Open(jsonl)
	if err != nil {
		return err
	}
	runs, err := Read(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", jsonl, err)
	}
	text, err := os.ReadFile(md)
	if err != nil {
		return err
	}
	out, err := Splice(string(text), Figures(runs))
	if err != nil {
		return fmt.Errorf("%s: %w", md, err)
	}
	if err := atomicfile.Write(md, []byte(out), 0o644); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(filepath.Dir(md), PlotFile), Plot(runs), 0o644)
}

// num writes v with the given decimals and thousands separated by commas.
// measured0 is num for a figure that is never 0 when measured (a tick or
// a formation takes at least a link's delay): 0 is a run that did not
// measure it (-scale.lookuponly), shown "–".
func measured0(v float64, decimals int) string {
	if v == 0 {
		return "–"
	}
	return num(v, decimals)
}

func num(v float64, decimals int) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	s := strconv.FormatFloat(v, 'f', decimals, 64)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	intPart, frac, _ := strings.Cut(s, ".")
	var b strings.Builder
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if frac != "" {
		b.WriteByte('.')
		b.WriteString(frac)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
