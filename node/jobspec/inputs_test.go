package jobspec

import (
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/gossip"
)

const (
	goodCID = "bafkreie5cvv4h45feudyquutohfkvo6wnbo56v6zhcqqvdu26nxdfggdhm"
	goodSum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
)

func TestInputsParseAndValidate(t *testing.T) {
	y := `name: train
command: [python3, /inputs/train/train.py]
resources: {gpus: 1, gpu: {model: H100}}
maxPrice: 2.50
timeout: 1h
inputs:
  - {src: ./train/, dst: /inputs/train}
  - {url: "https://example.org/data.tar", sha256: ` + goodSum + `, dst: /inputs/data.tar}
  - {cid: ` + goodCID + `, dst: /inputs/w}
`
	s, err := Parse([]byte(y), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(gossip.DefaultUnit); err != nil {
		t.Fatal(err)
	}
	if len(s.Inputs) != 3 || s.Inputs[0].Src != "./train/" || s.Inputs[1].SHA256 != goodSum || s.Inputs[2].CID != goodCID {
		t.Fatalf("inputs %+v", s.Inputs)
	}
}

func TestInputValidationSaysWhatIsWrong(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []Input
		want string
	}{
		{"url without a hash", []Input{{URL: "https://example.org/d", Dst: "/d"}}, "inputs[0].sha256: required with url"},
		{"bad hash", []Input{{URL: "https://example.org/d", SHA256: "abc", Dst: "/d"}}, "inputs[0].sha256: want 64 hex digits"},
		{"ftp", []Input{{URL: "ftp://example.org/d", SHA256: goodSum, Dst: "/d"}}, "inputs[0].url: want an http:// or https:// URL"},
		{"no source", []Input{{Dst: "/d"}}, "inputs[0]: want exactly one of src"},
		{"two sources", []Input{{Src: "a", URL: "https://x/y", SHA256: goodSum, Dst: "/d"}}, "inputs[0]: want exactly one of src"},
		{"no dst", []Input{{Src: "a"}}, "inputs[0].dst: required"},
		{"relative dst", []Input{{Src: "a", Dst: "inputs"}}, "inputs[0].dst: want a clean absolute path"},
		{"dst with ..", []Input{{Src: "a", Dst: "/inputs/../etc"}}, "inputs[0].dst: want a clean absolute path"},
		{"dst root", []Input{{Src: "a", Dst: "/"}}, "inputs[0].dst: want a clean absolute path"},
		{"dst outputs", []Input{{Src: "a", Dst: "/outputs/x"}}, "inputs[0].dst: /outputs is where outputs go"},
		{"overlap", []Input{{Src: "a", Dst: "/in"}, {Src: "b", Dst: "/in/b"}}, "inputs[1].dst: /in/b overlaps /in"},
		{"bad cid", []Input{{CID: "nope", Dst: "/d"}}, "inputs[0].cid: want a CID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := resnet()
			s.Inputs = tc.in
			err := s.Validate(gossip.DefaultUnit)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestCheckpointValidation(t *testing.T) {
	for _, tc := range []struct {
		c    Checkpoint
		want string
	}{
		{Checkpoint{Path: "/checkpoints", Every: "5m"}, ""},
		{Checkpoint{Path: "/checkpoints"}, ""},
		{Checkpoint{}, "checkpoint.path: required"},
		{Checkpoint{Path: "ckpt"}, "checkpoint.path: want a clean absolute path"},
		{Checkpoint{Path: "/outputs/c"}, "checkpoint.path: /outputs is where outputs go"},
		{Checkpoint{Path: "/inputs/train/c"}, "checkpoint.path: /inputs/train/c overlaps the input at /inputs/train"},
		{Checkpoint{Path: "/c", Every: "10ms"}, "checkpoint.every: must be a duration like 5m, 1s..24h"},
		{Checkpoint{Path: "/c", Replicas: 3}, ""},
		{Checkpoint{Path: "/c", Replicas: 4}, "checkpoint.replicas: want 0..3"},
		{Checkpoint{Path: "/c", Replicas: -1}, "checkpoint.replicas: want 0..3"},
	} {
		s := resnet()
		s.Inputs = []Input{{Src: "a", Dst: "/inputs/train"}}
		c := tc.c
		s.Checkpoint = &c
		err := s.Validate(gossip.DefaultUnit)
		if tc.want == "" {
			if err != nil {
				t.Fatalf("%+v: %v", tc.c, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%+v: got %v, want %q", tc.c, err, tc.want)
		}
	}
}
