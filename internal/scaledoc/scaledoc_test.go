package scaledoc

import (
	"bytes"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The committed docs are what the committed lines make: a line added or
// a note edited without `make scale-docs`, or the table edited by hand,
// fails here.
func TestDocsAreWhatTheLinesMake(t *testing.T) {
	f, err := os.Open("../../docs/scale.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	runs, err := Read(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) == 0 {
		t.Fatal("docs/scale.jsonl has no runs")
	}
	md, err := os.ReadFile("../../docs/scale.md")
	if err != nil {
		t.Fatal(err)
	}
	want, err := Splice(string(md), Figures(runs))
	if err != nil {
		t.Fatal(err)
	}
	if want != string(md) {
		t.Error("docs/scale.md's figures are not what docs/scale.jsonl makes: run `make scale-docs`")
	}
	svg, err := os.ReadFile("../../docs/" + PlotFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(svg, Plot(runs)) {
		t.Errorf("docs/%s is not what docs/scale.jsonl makes: run `make scale-docs`", PlotFile)
	}
}

func TestReadSaysWhichLineIsWrong(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"Peers":100}` + "\n" + `{"Peers":` + "\n", "line 2:"},
		{`{"Peers":100}` + "\n\n" + `{"LookupP50Ms":3}`, "line 3: Peers is 0"},
		{`[1,2]`, "line 1:"},
	} {
		_, err := Read(strings.NewReader(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Read(%q) = %v, want an error with %q", tc.in, err, tc.want)
		}
	}
	runs, err := Read(strings.NewReader(`{"Peers":100,"Unknown":1}` + "\n\n" + `{"Peers":300,"Note":"x"}` + "\n"))
	if err != nil || len(runs) != 2 || runs[1].Note != "x" {
		t.Fatalf("Read = %+v, %v; want two runs, the second noted x", runs, err)
	}
}

func TestFiguresListEveryRunAndTheSizesNotMeasured(t *testing.T) {
	runs := []Run{
		{Peers: 1000, Note: "first", LatencyMs: 20, Form8P50Ms: 113, Form8P99Ms: 1234.4, OffersFound: 1, Lookup8P50Ms: 40, Lookup8P95Ms: 120, Lookup8P99Ms: 160, Lookup8Named: 1},
		{Peers: 1000, Note: "", LatencyMs: 20, Form8Failed: 1, Form64Failed: 2},
		{Peers: 3000, Note: "in a bubble", LatencyMs: 20, Clock: "virtual"},
	}
	got := Figures(runs)
	for _, want := range []string{
		"| 1 | 1,000 |", "| 2 | 1,000 |", "/ 1,234 |", "| 3 |", // failed jobs: 1 + 2
		"| – | 10,000 | not measured",
		"| 40 / 120 / 160 (100% named) |", "| 113 / 1,234 |", // run 1: lookups for 8, formation
		"| – / – |", // run 3 formed no job: not measured, not 0
		"1. 1,000 peers, 20 ms links: first", "2. 1,000 peers, 20 ms links: no note",
		"| 3 (v) | 3,000 |", "3. 3,000 peers, 20 ms links, virtual time: in a bubble",
		"](" + PlotFile + ")",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the figures lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "| – | 1,000 |") || strings.Contains(got, "| – | 3,000 |") {
		t.Errorf("a size with runs is listed as not measured:\n%s", got)
	}
}

func TestSpliceReplacesOnlyBetweenTheMarkers(t *testing.T) {
	md := "# a\n\n" + Begin + "\nold table\n" + End + "\n\nafter\n"
	got, err := Splice(md, "new\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := "# a\n\n" + Begin + "\nnew\n" + End + "\n\nafter\n"; got != want {
		t.Errorf("Splice = %q, want %q", got, want)
	}
	if _, err := Splice("# no markers\n", "x"); err == nil || !strings.Contains(err.Error(), "put them where the table goes") {
		t.Errorf("Splice without markers: %v, want an error that says where to put them", err)
	}
}

func TestUpdateWritesTheTableAndThePlot(t *testing.T) {
	dir := t.TempDir()
	jsonl, md := filepath.Join(dir, "scale.jsonl"), filepath.Join(dir, "scale.md")
	if err := os.WriteFile(jsonl, []byte(`{"Peers":300,"LookupP95Ms":250}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(md, []byte("x\n"+Begin+"\n"+End+"\ny\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Update(jsonl, md); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(md)
	if !strings.Contains(string(got), "| 1 | 300 |") || !strings.HasSuffix(string(got), End+"\ny\n") {
		t.Errorf("scale.md after Update:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(dir, PlotFile)); err != nil {
		t.Errorf("no plot beside scale.md: %v", err)
	}
}

// The plot is well-formed SVG with a point a run and panel (a figure of
// 0, not measured, draws none), each inside its panel, the peer axis
// widened for a run past 10,000.
func TestPlotHasAPointForEachFigureInsideItsPanel(t *testing.T) {
	runs := []Run{
		{Peers: 100, LookupP95Ms: 50, Lookup8P95Ms: 30, TickTo99Ms: 40, Form8P99Ms: 200, RestGossipBps: 900, MemMBPerPeer: 9, LookupHopsMean: 2},
		{Peers: 1000, LookupP95Ms: 600, Lookup8P95Ms: 60, TickTo99Ms: 1100, Form8P99Ms: 0, RestGossipBps: 1400, MemMBPerPeer: 4.7, LookupHopsMean: 2.5},
		{Peers: 30000, LookupP95Ms: 900, Lookup8P95Ms: 80, TickTo99Ms: 3000, Form8P99Ms: 20000, RestGossipBps: 30000, MemMBPerPeer: 5, LookupHopsMean: 3.4},
	}
	var doc struct {
		Width   float64 `xml:"width,attr"`
		Height  float64 `xml:"height,attr"`
		Circles []struct {
			CX float64 `xml:"cx,attr"`
			CY float64 `xml:"cy,attr"`
		} `xml:"circle"`
	}
	if err := xml.Unmarshal(Plot(runs), &doc); err != nil {
		t.Fatalf("the plot is not XML: %v", err)
	}
	if want := len(runs)*len(panels) - 1; len(doc.Circles) != want {
		t.Fatalf("%d points, want %d (one a run and panel, none for a figure of 0)", len(doc.Circles), want)
	}
	for _, c := range doc.Circles {
		if c.CX < padL || c.CX > doc.Width-padR || c.CY < padT || c.CY > doc.Height {
			t.Errorf("a point at (%v, %v) lies outside the plot (%v × %v)", c.CX, c.CY, doc.Width, doc.Height)
		}
	}
	if !bytes.Contains(Plot(runs), []byte(">100,000</text>")) {
		t.Error("a run at 30,000 peers did not widen the peer axis to 100,000")
	}
}

func TestNumSeparatesThousands(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.25: "1,234,567", -12345: "-12,345"} {
		if got := num(v, 0); got != want {
			t.Errorf("num(%v) = %q, want %q", v, got, want)
		}
	}
	if got := num(4.705, 1); got != "4.7" {
		t.Errorf("num(4.705, 1) = %q", got)
	}
	if got := num(10049.5, 2); got != "10,049.50" {
		t.Errorf("num(10049.5, 2) = %q", got)
	}
}
