package jobspec

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/gpumesh/gpumesh/gossip"
)

// resnet is the spec of testdata/resnet.yaml, the issue's example.
func resnet() Spec {
	return Spec{
		Name:    "resnet-train",
		Image:   "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime",
		Command: []string{"torchrun", "train.py"},
		Env:     map[string]string{"EPOCHS": "3"},
		Resources: Resources{
			GPUs:    8,
			GPU:     GPU{Model: "H100", MinVRAM: "80GB"},
			PerNode: 8,
		},
		Placement: gossip.Colocated,
		Launcher:  "torchrun",
		MaxPrice:  "2.50",
		Timeout:   "2h",
	}
}

func readResnet(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/resnet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestJobSpecOfTheIssueParsesValidatesAndBecomesNeeds(t *testing.T) {
	got, err := Parse(readResnet(t), "yaml")
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if want := resnet(); !reflect.DeepEqual(got, want) {
		t.Fatalf("parsed\n%+v\nwant\n%+v", got, want)
	}
	if err := got.Validate(gossip.DefaultUnit); err != nil {
		t.Fatalf("validate: %v", err)
	}
	needs, err := got.Needs(gossip.DefaultUnit)
	if err != nil {
		t.Fatalf("needs: %v", err)
	}
	want := gossip.Needs{
		GPUs:         8,
		Model:        "H100",
		MinVRAMGB:    80,
		PerNode:      8,
		Placement:    gossip.Colocated,
		MaxPrice:     2_500_000,
		Unit:         "USDC:6",
		LeaseSeconds: 2 * 60 * 60,
	}
	if needs != want {
		t.Fatalf("needs\n%+v\nwant\n%+v", needs, want)
	}
	if err := needs.Check(); err != nil {
		t.Fatalf("needs do not pass the negotiation's check: %v", err)
	}
}

func TestJobSpecAsJSONIsTheSameSpec(t *testing.T) {
	js := `{
		"name": "resnet-train",
		"image": "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime",
		"command": ["torchrun", "train.py"],
		"env": {"EPOCHS": "3"},
		"resources": {"gpus": 8, "gpu": {"model": "H100", "minVRAM": "80GB"}, "perNode": 8},
		"placement": "colocated",
		"launcher": "torchrun",
		"maxPrice": 2.50,
		"timeout": "2h"
	}`
	fromJSON, err := Parse([]byte(js), "json")
	if err != nil {
		t.Fatal(err)
	}
	fromYAML, err := Parse(readResnet(t), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromJSON, fromYAML) {
		t.Fatalf("json gives\n%+v\nyaml gives\n%+v", fromJSON, fromYAML)
	}
	// And what the API writes back reads as the same spec.
	out, err := json.Marshal(fromJSON)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(out, "json")
	if err != nil || !reflect.DeepEqual(again, fromJSON) {
		t.Fatalf("re-read %s: %+v, %v", out, again, err)
	}
}

func TestJobSpecMaxPriceIsExactWhetherNumberOrString(t *testing.T) {
	six := gossip.DefaultUnit
	nine := gossip.Unit{Token: "SOL", Decimals: 9}
	for _, tc := range []struct {
		yaml string
		unit gossip.Unit
		want uint64
	}{
		{"2.50", six, 2_500_000},
		{`"2.50"`, six, 2_500_000},
		{"'2.50'", six, 2_500_000},
		{"3", six, 3_000_000},
		{"0.000001", six, 1},
		{"0.1", six, 100_000},              // 0.1 is not exact as a float64
		{"0.30000000", six, 300_000},       // zeros beyond the unit's decimals
		{"0.123456789", nine, 123_456_789}, // all nine decimals of SOL
		{"123456789.123456", six, 123_456_789_123_456},
	} {
		doc := strings.Replace(string(readResnet(t)), "maxPrice: 2.50", "maxPrice: "+tc.yaml, 1)
		s, err := Parse([]byte(doc), "yaml")
		if err != nil {
			t.Fatalf("maxPrice: %s: %v", tc.yaml, err)
		}
		n, err := s.Needs(tc.unit)
		if err != nil {
			t.Fatalf("maxPrice: %s: %v", tc.yaml, err)
		}
		if n.MaxPrice != tc.want {
			t.Errorf("maxPrice: %s in %s is %d, want %d", tc.yaml, tc.unit, n.MaxPrice, tc.want)
		}
	}
}

func TestJobSpecMinVRAMIsGB(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want uint32
	}{
		{"80GB", 80},
		{"80 GB", 80},
		{`"80 GB"`, 80},
		{"80gb", 80},
		{"80", 80},
		{"0", 0},
		{"~", 0},
	} {
		doc := strings.Replace(string(readResnet(t)), "minVRAM: 80GB", "minVRAM: "+tc.yaml, 1)
		s, err := Parse([]byte(doc), "yaml")
		if err != nil {
			t.Fatalf("minVRAM: %s: %v", tc.yaml, err)
		}
		n, err := s.Needs(gossip.DefaultUnit)
		if err != nil {
			t.Fatalf("minVRAM: %s: %v", tc.yaml, err)
		}
		if n.MinVRAMGB != tc.want {
			t.Errorf("minVRAM: %s is %d GB, want %d", tc.yaml, n.MinVRAMGB, tc.want)
		}
	}
}

func TestJobSpecDefaults(t *testing.T) {
	s := Spec{
		Name:      "tiny",
		Command:   []string{"python", "-c", "print(1)"},
		Resources: Resources{GPUs: 3, GPU: GPU{Model: "A100"}},
		MaxPrice:  "1",
		Timeout:   "90m",
	}
	n, err := s.Needs(gossip.DefaultUnit)
	if err != nil {
		t.Fatal(err)
	}
	want := gossip.Needs{
		GPUs:         3,
		Model:        "A100",
		Placement:    gossip.Spread, // no placement: anywhere
		MaxPrice:     1_000_000,
		Unit:         "USDC:6",
		LeaseSeconds: 90 * 60,
	}
	if n != want {
		t.Fatalf("needs\n%+v\nwant\n%+v", n, want)
	}
}

func TestJobSpecTimeoutRoundsUpToASecondOfLease(t *testing.T) {
	s := resnet()
	s.Timeout = "90.5s"
	n, err := s.Needs(gossip.DefaultUnit)
	if err != nil {
		t.Fatal(err)
	}
	if n.LeaseSeconds != 91 {
		t.Fatalf("lease of %d s for a timeout of 90.5s, want 91", n.LeaseSeconds)
	}
}

// Each case changes the issue's example and names every line of the error
// Validate must give.
func TestJobSpecValidationSaysWhatIsWrong(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Spec)
		want   []string
	}{
		{"no GPUs", func(s *Spec) { s.Resources.GPUs = 0; s.Resources.PerNode = 0 },
			[]string{"resources.gpus: must be 1..4096, got 0"}},
		{"too many GPUs", func(s *Spec) { s.Resources.GPUs = 4097; s.Resources.PerNode = 0 },
			[]string{"resources.gpus: must be 1..4096, got 4097"}},
		{"placement near", func(s *Spec) { s.Placement = "near" },
			[]string{`placement: must be colocated or spread, got "near"`}},
		{"price not a number", func(s *Spec) { s.MaxPrice = "cheap" },
			[]string{`maxPrice: want USDC per GPU-hour such as 2.50: "cheap": want a decimal number such as 2.10 (digits and one dot)`}},
		{"price finer than the unit", func(s *Spec) { s.MaxPrice = "2.1234567" },
			[]string{`maxPrice: want USDC per GPU-hour such as 2.50: "2.1234567": USDC has 6 decimals`}},
		{"price as a float exponent", func(s *Spec) { s.MaxPrice = "2.5e0" },
			[]string{`maxPrice: want USDC per GPU-hour such as 2.50: "2.5e0": want a decimal number such as 2.10 (digits and one dot)`}},
		{"negative price", func(s *Spec) { s.MaxPrice = "-1" },
			[]string{`maxPrice: want USDC per GPU-hour such as 2.50: "-1": want a decimal number such as 2.10 (digits and one dot)`}},
		{"free", func(s *Spec) { s.MaxPrice = "0.00" },
			[]string{`maxPrice: must be more than 0 USDC per GPU-hour, got "0.00"`}},
		{"no price", func(s *Spec) { s.MaxPrice = "" },
			[]string{"maxPrice: required, USDC per GPU-hour such as 2.50"}},
		{"timeout forever", func(s *Spec) { s.Timeout = "forever" },
			[]string{`timeout: must be a duration like 2h or 90m, 1s..720h, got "forever"`}},
		{"timeout too short", func(s *Spec) { s.Timeout = "900ms" },
			[]string{`timeout: must be a duration like 2h or 90m, 1s..720h, got "900ms"`}},
		{"timeout too long", func(s *Spec) { s.Timeout = "721h" },
			[]string{`timeout: must be a duration like 2h or 90m, 1s..720h, got "721h"`}},
		{"timeout without a unit", func(s *Spec) { s.Timeout = "90" },
			[]string{`timeout: must be a duration like 2h or 90m, 1s..720h, got "90"`}},
		{"no timeout", func(s *Spec) { s.Timeout = "" },
			[]string{`timeout: must be a duration like 2h or 90m, 1s..720h, got ""`}},
		{"neither image nor command", func(s *Spec) { s.Image = ""; s.Command = nil },
			[]string{"image or command: one is required (or keepAlive: true for an idle session)"}},
		{"keepAlive with a command", func(s *Spec) { s.KeepAlive = true },
			[]string{"keepAlive: pick one: a command of the job's own, or keepAlive (an idle session kept up until cancelled or its timeout), not both"}},
		{"keepAlive with an image", func(s *Spec) { s.KeepAlive, s.Command = true, nil }, nil},
		{"keepAlive alone (a process)", func(s *Spec) { s.KeepAlive, s.Command, s.Image = true, nil, "" }, nil},
		{"egress with an image", func(s *Spec) { s.Network = &Network{Egress: true} }, nil},
		{"egress without an image", func(s *Spec) { s.Network, s.Image = &Network{Egress: true}, "" },
			[]string{"network.egress: needs an image: the process executor's members have no egress of their own (give the job an image, or drop egress)"}},
		{"queue", func(s *Spec) { s.Queue = "30m" }, nil},
		{"queue without a unit", func(s *Spec) { s.Queue = "30" },
			[]string{`queue: must be a duration like 30m or 2h, 1s..168h: how long the job may wait for a cluster, got "30"`}},
		{"queue too long", func(s *Spec) { s.Queue = "169h" },
			[]string{`queue: must be a duration like 30m or 2h, 1s..168h: how long the job may wait for a cluster, got "169h"`}},
		{"negative queue", func(s *Spec) { s.Queue = "-1m" },
			[]string{`queue: must be a duration like 30m or 2h, 1s..168h: how long the job may wait for a cluster, got "-1m"`}},
		{"command alone", func(s *Spec) { s.Image = "" }, nil},
		{"image alone", func(s *Spec) { s.Command = nil }, nil},
		{"image with a space", func(s *Spec) { s.Image = "pytorch torch" },
			[]string{`image: want a reference such as pytorch/pytorch:2.4.0 (at most 512 printable characters, no spaces), got "pytorch torch"`}},
		{"empty program", func(s *Spec) { s.Command = []string{"", "train.py"} },
			[]string{"command[0]: the program must not be empty"}},
		{"NUL in an argument", func(s *Spec) { s.Command = []string{"torchrun", "a\x00b"} },
			[]string{"command[1]: must not contain a NUL byte"}},
		{"variable with a space", func(s *Spec) { s.Env["FOO BAR"] = "1" },
			[]string{"env.FOO BAR: not a valid variable name (want A-Z a-z 0-9 _, not starting with a digit)"}},
		{"variable starting with a digit", func(s *Spec) { s.Env["1X"] = "1" },
			[]string{"env.1X: not a valid variable name (want A-Z a-z 0-9 _, not starting with a digit)"}},
		{"variable with a newline stays on its line", func(s *Spec) { s.Env["A\nB"] = "1" },
			[]string{`env."A\nB": not a valid variable name (want A-Z a-z 0-9 _, not starting with a digit)`}},
		{"NUL in a value", func(s *Spec) { s.Env["EPOCHS"] = "3\x00" },
			[]string{"env.EPOCHS: value must not contain a NUL byte"}},
		{"perNode not dividing", func(s *Spec) { s.Resources.PerNode = 3 },
			[]string{"resources.perNode: must divide resources.gpus (8), got 3"}},
		{"perNode above gpus", func(s *Spec) { s.Resources.PerNode = 16 },
			[]string{"resources.perNode: must divide resources.gpus (8), got 16"}},
		{"negative perNode", func(s *Spec) { s.Resources.PerNode = -1 },
			[]string{"resources.perNode: must be 0 (any split) or 1..4096, got -1"}},
		{"minVRAM lots", func(s *Spec) { s.Resources.GPU.MinVRAM = "lots" },
			[]string{`resources.gpu.minVRAM: want GB such as 80GB, 0..4096, got "lots"`}},
		{"minVRAM in GiB", func(s *Spec) { s.Resources.GPU.MinVRAM = "80GiB" },
			[]string{`resources.gpu.minVRAM: want GB such as 80GB, 0..4096, got "80GiB"`}},
		{"minVRAM fractional", func(s *Spec) { s.Resources.GPU.MinVRAM = "79.5GB" },
			[]string{`resources.gpu.minVRAM: want GB such as 80GB, 0..4096, got "79.5GB"`}},
		{"no model", func(s *Spec) { s.Resources.GPU.Model = "" },
			[]string{"resources.gpu.model: required, a GPU family such as H100 or A100"}},
		{"model with a space", func(s *Spec) { s.Resources.GPU.Model = "RTX 4090" },
			[]string{`resources.gpu.model: want a GPU family such as H100 (A-Z a-z 0-9 . _ + -), got "RTX 4090"`}},
		{"name with capitals", func(s *Spec) { s.Name = "ResNet" },
			[]string{`name: must be 1..63 of a-z 0-9 -, starting and ending with a letter or digit, got "ResNet"`}},
		{"name ending in a dash", func(s *Spec) { s.Name = "resnet-" },
			[]string{`name: must be 1..63 of a-z 0-9 -, starting and ending with a letter or digit, got "resnet-"`}},
		{"no name", func(s *Spec) { s.Name = "" },
			[]string{`name: must be 1..63 of a-z 0-9 -, starting and ending with a letter or digit, got ""`}},
		{"name of 64", func(s *Spec) { s.Name = strings.Repeat("a", 64) },
			[]string{`name: must be 1..63 of a-z 0-9 -, starting and ending with a letter or digit, got "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa..."`}},
		{"name of 63", func(s *Spec) { s.Name = strings.Repeat("a", 63) }, nil},
		{"launcher mpi", func(s *Spec) { s.Launcher = "mpi" },
			[]string{`launcher: must be none, torchrun or ray, got "mpi"`}},
		{"launcher none", func(s *Spec) { s.Launcher = "none" }, nil},
		{"launcher ray", func(s *Spec) { s.Launcher = "ray" }, nil},
		{"retries", func(s *Spec) { s.Retries = 3 }, nil},
		{"too many retries", func(s *Spec) { s.Retries = 11 },
			[]string{"retries: must be 0..10, got 11"}},
		{"negative retries", func(s *Spec) { s.Retries = -1 },
			[]string{"retries: must be 0..10, got -1"}},
		{"every error at once, in the order of the fields", func(s *Spec) {
			s.Name = "Bad Name"
			s.Image, s.Command = "", nil
			s.Env["FOO BAR"] = "x"
			s.Resources.GPUs = 0
			s.Resources.GPU.MinVRAM = "lots"
			s.Placement = "near"
			s.MaxPrice = "two"
			s.Timeout = "forever"
		}, []string{
			`name: must be 1..63 of a-z 0-9 -, starting and ending with a letter or digit, got "Bad Name"`,
			"image or command: one is required (or keepAlive: true for an idle session)",
			"env.FOO BAR: not a valid variable name (want A-Z a-z 0-9 _, not starting with a digit)",
			"resources.gpus: must be 1..4096, got 0",
			`resources.gpu.minVRAM: want GB such as 80GB, 0..4096, got "lots"`,
			`placement: must be colocated or spread, got "near"`,
			`maxPrice: want USDC per GPU-hour such as 2.50: "two": want a decimal number such as 2.10 (digits and one dot)`,
			`timeout: must be a duration like 2h or 90m, 1s..720h, got "forever"`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := resnet()
			tc.change(&s)
			err := s.Validate(gossip.DefaultUnit)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("got\n%v\nwant no error", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("got no error, want\n%s", strings.Join(tc.want, "\n"))
			}
			if got, want := err.Error(), strings.Join(tc.want, "\n"); got != want {
				t.Fatalf("got\n%s\nwant\n%s", got, want)
			}
			if !errors.Is(err, ErrBad) {
				t.Errorf("%v is not ErrBad", err)
			}
			var list Errors
			if !errors.As(err, &list) || len(list) != len(tc.want) {
				t.Errorf("errors.As: %d field errors, want %d", len(list), len(tc.want))
			}
			if _, nerr := s.Needs(gossip.DefaultUnit); nerr == nil || nerr.Error() != err.Error() {
				t.Errorf("Needs fails with %v, want the same as Validate", nerr)
			}
		})
	}
}

func TestJobSpecParserRefusesWhatItCannotRead(t *testing.T) {
	for _, tc := range []struct {
		name, format, doc, want string
	}{
		{"misspelt yaml field", "yaml", "name: a\nmaxprice: 2.50\n", "field maxprice not found"},
		{"misspelt nested yaml field", "yaml", "resources: {gpu: {modle: H100}}\n", "field modle not found"},
		{"misspelt json field", "json", `{"name":"a","timout":"2h"}`, `unknown field "timout"`},
		{"two yaml documents", "yaml", "name: a\n---\nname: b\n", "more than one document"},
		{"json after json", "json", `{"name":"a"} {"name":"b"}`, "data after the spec"},
		{"empty yaml", "yaml", "", "empty"},
		{"empty json", "json", "", "empty"},
		{"gpus as a word", "yaml", "resources: {gpus: eight}\n", "cannot unmarshal"},
		{"maxPrice as a list", "yaml", "maxPrice: [2]\n", "want a number or a string"},
		{"maxPrice as a bool in json", "json", `{"maxPrice": true}`, "want a number or a string"},
		{"duplicate key", "yaml", "name: a\nname: b\n", "already defined"},
		{"toml", "toml", "name = 'a'", `format "toml", want yaml or json`},
		{"bytes that are not text", "yaml", "command: [!!binary /w==]\n", "command[0]: not UTF-8 text"},
		{"too big", "yaml", "name: a\n" + strings.Repeat("#", MaxSize), "at most 65536 (64 KiB)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc), tc.format)
			if err == nil {
				t.Fatalf("parsed, want an error with %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %q, want it to say %q", err, tc.want)
			}
			if !errors.Is(err, ErrBad) {
				t.Errorf("%v is not ErrBad", err)
			}
			if strings.Contains(err.Error(), "node.Job") {
				t.Errorf("%q names a Go type", err)
			}
		})
	}
}

// roundTrip writes s in format and reads it back.
func roundTrip(t *testing.T, s Spec, format string) Spec {
	t.Helper()
	var out []byte
	var err error
	if format == "json" {
		out, err = json.Marshal(s)
	} else {
		out, err = yaml.Marshal(s)
	}
	if err != nil {
		t.Fatalf("marshal %s: %v", format, err)
	}
	back, err := Parse(out, format)
	if err != nil {
		t.Fatalf("re-parse %s of %+v:\n%s\n%v", format, s, out, err)
	}
	return back
}

func FuzzParseJobSpec(f *testing.F) {
	data, err := os.ReadFile("testdata/resnet.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data, true)
	f.Add([]byte(`{"name":"a","command":["x"],"resources":{"gpus":4,"gpu":{"model":"A100","minVRAM":40}},"maxPrice":"1.5","timeout":"1h","retries":2}`), false)
	f.Add([]byte("env: {A: 1, B: ~, C: [x]}\nmaxPrice: 0x10\n"), true)
	f.Add([]byte("a: &a [*a, *a]\n"), true)
	f.Add([]byte("command: [!!binary /w==]\nname: !!binary aGk=\n"), true)
	f.Add([]byte("resources: {gpu: {minVRAM: 80 GB}}\ntimeout: 90\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, asYAML bool) {
		format := "json"
		if asYAML {
			format = "yaml"
		}
		s, err := Parse(data, format)
		if err != nil {
			return
		}
		verr := s.Validate(gossip.DefaultUnit)
		n, nerr := s.Needs(gossip.DefaultUnit)
		if (verr == nil) != (nerr == nil) {
			t.Fatalf("Validate: %v, Needs: %v", verr, nerr)
		}
		if nerr == nil {
			if err := n.Check(); err != nil {
				t.Fatalf("valid spec gives needs that fail the negotiation's check: %v", err)
			}
		}
		for _, f := range []string{"json", "yaml"} {
			if back := roundTrip(t, s, f); !reflect.DeepEqual(back, s) {
				t.Fatalf("through %s\n%#v\nbecomes\n%#v", f, s, back)
			}
		}
	})
}

func TestJobSpecAliasBombIsRefusedQuickly(t *testing.T) {
	// A billion laughs: 9^29 strings from 1.6 KB of YAML.
	doc := "env:\n  a0: &a0 [\"xxxxxxxxxxxxxxxx\"]\n"
	for i := 1; i < 30; i++ {
		doc += fmt.Sprintf("  a%d: &a%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*a%d,", i-1), 9), ","))
	}
	start := time.Now()
	_, err := Parse([]byte(doc), "yaml")
	if err == nil {
		t.Fatal("parsed an alias bomb")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v to refuse an alias bomb", d)
	}
	t.Logf("refused in %v: %v", time.Since(start), err)
}

func TestKeepAliveRunsTheIdleCommandAndQueueIsADuration(t *testing.T) {
	s, err := Parse([]byte("name: shell\nimage: busybox\nkeepAlive: true\nqueue: 2m\nresources: {gpus: 1, gpu: {model: H100}}\nmaxPrice: 2\ntimeout: 1h\n"), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(gossip.DefaultUnit); err != nil {
		t.Fatal(err)
	}
	if got := s.Argv(); !slices.Equal(got, IdleCommand) {
		t.Fatalf("Argv of a keepAlive spec: %q, want the idle command", got)
	}
	if got := s.QueueFor(); got != 2*time.Minute {
		t.Fatalf("QueueFor: %v, want 2m", got)
	}
	s.KeepAlive, s.Command, s.Queue = false, []string{"train"}, ""
	if got := s.Argv(); !slices.Equal(got, []string{"train"}) || s.QueueFor() != 0 {
		t.Fatalf("Argv %q, QueueFor %v: want the command and no queue", got, s.QueueFor())
	}
}

func TestNetworkEgressParses(t *testing.T) {
	for _, f := range []struct{ format, doc string }{
		{"yaml", "name: train\nimage: busybox\ncommand: [true]\nnetwork: {egress: true}\nresources: {gpus: 16, perNode: 8, gpu: {model: H100}}\nmaxPrice: 2\ntimeout: 1h\n"},
		{"json", `{"name":"train","image":"busybox","command":["true"],"network":{"egress":true},"resources":{"gpus":16,"perNode":8,"gpu":{"model":"H100"}},"maxPrice":"2","timeout":"1h"}`},
	} {
		s, err := Parse([]byte(f.doc), f.format)
		if err != nil {
			t.Fatalf("%s: %v", f.format, err)
		}
		if !s.WantsEgress() {
			t.Errorf("%s: network.egress parsed as %+v", f.format, s.Network)
		}
	}
	if _, err := Parse([]byte("name: train\nimage: busybox\nnetwork: {egres: true}\nresources: {gpus: 1, gpu: {model: H100}}\nmaxPrice: 2\ntimeout: 1h\n"), "yaml"); err == nil || !strings.Contains(err.Error(), "egres") {
		t.Errorf("a misspelt network field: %v, want an error naming it", err)
	}
	var none Spec
	if none.WantsEgress() {
		t.Error("a spec without network wants egress")
	}
}

// A model is read as `gpus find --model` reads it: in any case, and a
// class (what `gpus local` lists) asks for that class. A provider's bid
// names its class and family in upper case (exec.Class), and a need that
// spelled them otherwise would match no bid.
func TestJobSpecModelIsAFamilyOrAClassInAnyCase(t *testing.T) {
	for _, tc := range []struct{ model, class, family string }{
		{"H100", "", "H100"},
		{"h100", "", "H100"},
		{"H100-80GB", "H100-80GB", "H100"},
		{"h100-80gb", "H100-80GB", "H100"},
		{"RTX4090-24GB", "RTX4090-24GB", "RTX4090"},
	} {
		s := Spec{Name: "m", Command: []string{"true"}, Resources: Resources{GPUs: 1, GPU: GPU{Model: tc.model}}, MaxPrice: "1", Timeout: "1h"}
		n, err := s.Needs(gossip.DefaultUnit)
		if err != nil {
			t.Fatalf("model %q: %v", tc.model, err)
		}
		if n.Class != tc.class || n.Model != tc.family {
			t.Errorf("model %q: class %q family %q, want %q %q", tc.model, n.Class, n.Model, tc.class, tc.family)
		}
	}
	s := Spec{Name: "m", Command: []string{"true"}, Resources: Resources{GPUs: 1, GPU: GPU{Model: "-80GB"}}, MaxPrice: "1", Timeout: "1h"}
	if n, err := s.Needs(gossip.DefaultUnit); err != nil || n.Class != "" || n.Model != "-80GB" {
		t.Errorf("model -80GB: %+v %v; want it taken as a family (no class before the dash)", n, err)
	}
}
