package reputation

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestFramesRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteFrame(&buf, Request{V: 1, Max: 10}); err != nil {
		t.Fatal(err)
	}
	if err := WriteFrame(&buf, Response{V: 1, Proofs: []json.RawMessage{json.RawMessage(`{"v":1}`)}, Total: 3}); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(&buf)
	req, err := ReadRequest(br)
	if err != nil || req.Max != 10 {
		t.Fatalf("request %+v, %v", req, err)
	}
	resp, err := ReadResponse(br, req.Max)
	if err != nil || len(resp.Proofs) != 1 || resp.Total != 3 {
		t.Fatalf("response %+v, %v", resp, err)
	}
}

func TestBadFramesSayWhatIsWrong(t *testing.T) {
	for _, tt := range []struct {
		name, data, want string
		resp             bool
	}{
		{"old version", `{"v":2,"max":1}`, "version 2", false},
		{"too many asked", `{"v":1,"max":65}`, "want 1..64", false},
		{"unknown field", `{"v":1,"max":1,"x":1}`, "unknown field", false},
		{"trailing data", `{"v":1,"max":1}{}`, "data after", false},
		{"more proofs than asked", `{"v":1,"proofs":[{},{}],"total":2}`, "asked for 1", true},
		{"total below count", `{"v":1,"proofs":[{}],"total":0}`, "total of 0", true},
		{"a proof that is no object", `{"v":1,"proofs":[""],"total":1}`, "proof 0 is not a JSON object", true},
	} {
		var err error
		if tt.resp {
			_, err = DecodeResponse([]byte(tt.data), 1)
		} else {
			_, err = DecodeRequest([]byte(tt.data))
		}
		if !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want ErrBadFrame saying %q", tt.name, err, tt.want)
		}
	}
}

func TestAFrameLongerThanItsBoundIsNotRead(t *testing.T) {
	var buf bytes.Buffer
	buf.Write([]byte{0xff, 0xff, 0xff, 0x7f}) // a length of 256 MiB, no data
	if _, err := ReadResponse(bufio.NewReader(&buf), 1); !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), "want 1..") {
		t.Fatalf("%v: want the length refused before any read", err)
	}
}

// FuzzEvidenceFrames feeds the decoders anything: they return an error or
// a frame within its bounds, and never panic.
func FuzzEvidenceFrames(f *testing.F) {
	f.Add([]byte(`{"v":1,"max":5}`), 5)
	f.Add([]byte(`{"v":1,"proofs":[{"v":1}],"total":1}`), 1)
	f.Add([]byte("\x05{}"), 1)
	f.Fuzz(func(t *testing.T, data []byte, asked int) {
		if req, err := DecodeRequest(data); err == nil && (req.Max < 1 || req.Max > MaxProofs) {
			t.Fatalf("request %+v accepted out of bounds", req)
		}
		if resp, err := DecodeResponse(data, asked); err == nil {
			if len(resp.Proofs) > MaxProofs || len(resp.Proofs) > max(asked, 0) || resp.Total < len(resp.Proofs) {
				t.Fatalf("response of %d proofs (total %d) accepted for %d asked", len(resp.Proofs), resp.Total, asked)
			}
		}
		br := bufio.NewReader(bytes.NewReader(data))
		if resp, err := ReadResponse(br, MaxProofs); err == nil && len(resp.Proofs) > MaxProofs {
			t.Fatalf("framed response of %d proofs", len(resp.Proofs))
		}
	})
}
