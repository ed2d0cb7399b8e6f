package jobwire

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/node/jobspec"
)

const wireJobID = "0123456789abcdef0123456789abcdef"

// wireSpec is a small valid job spec, as ParseJobSpec reads it.
func wireSpec(tb testing.TB) jobspec.Spec {
	tb.Helper()
	s, err := jobspec.Parse([]byte(`
name: wire-test
image: pytorch/pytorch:2.4.0
command: [torchrun, train.py, "<&>"]
env: {EPOCHS: "3", EMPTY: ""}
resources: {gpus: 16, gpu: {model: H100, minVRAM: 80GB}, perNode: 8}
placement: colocated
launcher: torchrun
maxPrice: 2.50
timeout: 2h
retries: 1
`), "yaml")
	if err != nil {
		tb.Fatalf("spec: %v", err)
	}
	return s
}

// wireReceipt is a receipt signed by its provider and countersigned by its
// consumer.
func wireReceipt(tb testing.TB) *receipt.Signed {
	tb.Helper()
	_, provider, err := ed25519.GenerateKey(nil)
	if err != nil {
		tb.Fatal(err)
	}
	_, consumer, err := ed25519.GenerateKey(nil)
	if err != nil {
		tb.Fatal(err)
	}
	r := receipt.Receipt{
		Version: receipt.Version, Job: wireJobID, Rank: 1,
		Provider: receipt.Address(provider), Consumer: receipt.Address(consumer),
		Class: "H100-80GB", Unit: "USDC", ExitCode: 0, ResultHash: receipt.ResultHash(0, nil), Util: -1,
	}
	start := time.UnixMilli(1_700_000_000_000)
	r.Meter(8, start, start.Add(time.Hour), 2_500_000)
	s, err := receipt.Sign(r, provider)
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Countersign(consumer); err != nil {
		tb.Fatal(err)
	}
	return &s
}

// wireFrames is a valid frame of every kind.
func wireFrames(tb testing.TB) []Frame {
	tb.Helper()
	sha := strings.Repeat("ab", 32)
	return []Frame{
		{T: KindStart, Start: &StartFrame{
			Job: wireJobID, Attempt: 1, Rank: 1, Members: 2, WorldGPUs: 16, Spec: wireSpec(tb),
			MasterAddr: "10.0.0.1", MasterPort: 29500, Rendezvous: true, Pays: true, Mint: "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v",
			Checkpoint: "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
		}},
		{T: KindReady, Port: 29500},
		{T: KindStarted, At: 1_700_000_000_000},
		{T: KindLog, Stream: "out", Data: []byte("epoch 1 loss 0.5\n")},
		{T: KindLog, Stream: "err", Data: []byte{0, 0xff, '\n'}},
		{T: KindHeartbeat, Seq: 7},
		{T: KindFile, File: &receipt.OutputFile{Path: "ckpt/model.pt", Size: 3, SHA256: sha}},
		{T: KindChunk, Data: []byte{1, 2, 3}},
		{T: KindExit, Exit: &ExitFrame{Code: 0, Start: 1_700_000_000_000, End: 1_700_003_600_000}},
		{T: KindExit, Exit: &ExitFrame{Code: 137, Start: 5, End: 5, TimedOut: true, Stopped: true}},
		{T: KindReceipt, Receipt: wireReceipt(tb)},
		{T: KindCountersign, Sig: bytes.Repeat([]byte{7}, 64)},
		{T: KindStop, Reason: "cancelled by the submitter"},
		{T: KindBill, Bill: &BillFrame{Interval: 2, Lamports: 583_334, Ref: wireJobID + "-0-1-2", Millis: 60_000}},
		{T: KindPaid, Paid: &PaidFrame{Interval: 2, Signature: "5ZDvFrd9x8r9bgy18XocGkGChCC2sTfYvgGYhDJnahcs"}},
		{T: KindError, Reason: "no such image"},
		{T: KindCheckpoint, Ckpt: &CheckpointFrame{CID: "bafkreie5cvv4h45feudyquutohfkvo6wnbo56v6zhcqqvdu26nxdfggdhm", Bytes: 12, Files: 1}},
		{T: KindHeartbeat, Seq: 8, Net: &NetMeter{SentBytes: 5, ReceivedBytes: 9, Direct: 1, Relayed: 1}},
	}
}

// encodeFrame is a frame as Writer writes it.
func encodeFrame(tb testing.TB, f Frame) []byte {
	tb.Helper()
	var buf bytes.Buffer
	if err := (&Writer{w: &buf}).Write(f); err != nil {
		tb.Fatalf("write %s frame: %v", f.T, err)
	}
	return buf.Bytes()
}

// rawFrame is a frame of the given JSON, with its length.
func rawFrame(json string) []byte {
	return append(binary.AppendUvarint(nil, uint64(len(json))), json...)
}

func readOne(data []byte) (Frame, error) {
	return Read(bufio.NewReader(bytes.NewReader(data)))
}

// normalFrame makes the empty slices and maps of a frame nil, as writing
// it (omitempty) does.
func normalFrame(f Frame) Frame {
	if len(f.Data) == 0 {
		f.Data = nil
	}
	if len(f.Sig) == 0 {
		f.Sig = nil
	}
	if f.Receipt != nil {
		r := *f.Receipt
		if len(r.ProviderSig) == 0 {
			r.ProviderSig = nil
		}
		if len(r.ConsumerSig) == 0 {
			r.ConsumerSig = nil
		}
		f.Receipt = &r
	}
	if f.Start != nil {
		s := *f.Start
		if len(s.Spec.Command) == 0 {
			s.Spec.Command = nil
		}
		if len(s.Spec.Env) == 0 {
			s.Spec.Env = nil
		}
		f.Start = &s
	}
	return f
}

func sameFrame(a, b Frame) bool { return reflect.DeepEqual(normalFrame(a), normalFrame(b)) }

func FuzzReadFrame(f *testing.F) {
	var all []byte
	for _, fr := range wireFrames(f) {
		data := encodeFrame(f, fr)
		f.Add(data)
		f.Add(data[:len(data)-1]) // truncated body
		f.Add(data[:1])           // only the length
		all = append(all, data...)
	}
	f.Add(all) // every kind, one after another
	f.Add([]byte{})
	f.Add([]byte{0})
	f.Add(binary.AppendUvarint(nil, MaxFrame+1))
	f.Add(binary.AppendUvarint(nil, 1<<63))
	f.Add(bytes.Repeat([]byte{0xff}, 11)) // a uvarint that overflows
	f.Add(rawFrame(`{"t":"log","stream":"out","data":""}`))
	f.Add(rawFrame(`{"t":"exit","exit":{"code":0,"start":1,"end":2,"outputs":[]}}`))
	f.Add(rawFrame(`{"t":"hb","T":"stop","reason":"x"} trailing`))
	f.Add(rawFrame(`{"t":"start","start":{"job":"0123456789ABCDEF0123456789abcdef","rank":0,"members":1,"worldGPUs":1,"spec":{"name":"x","maxPrice":1.50,"command":[],"env":{}}}}`))
	f.Add(rawFrame(`{"t":"exit","exit":{"code":0,"start":1,"end":2,"outputs":[{"path":"a/../b"}]}}`))
	f.Add(rawFrame(`{"t":"ckpt","ckpt":{"cid":"bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy","bytes":1,"files":1}}`)) // dag-cbor: refused
	f.Add(rawFrame(`{"t":"ckpt","ckpt":{"cid":"x","bytes":-1}}`))

	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		for i := 0; ; i++ {
			got, err := Read(r)
			if err != nil {
				return
			}
			if err := got.check(); err != nil {
				t.Fatalf("frame %d: Read accepted a frame that fails check: %v", i, err)
			}
			again := encodeFrame(t, got)
			back, err := readOne(again)
			if err != nil {
				t.Fatalf("frame %d: accepted %+v, but not its re-encoding %q: %v", i, got, again, err)
			}
			if !sameFrame(got, back) {
				t.Fatalf("frame %d: round trip changed the frame:\n%#v\n%#v", i, normalFrame(got), normalFrame(back))
			}
		}
	})
}

func TestFrameRoundTrip(t *testing.T) {
	frames := wireFrames(t)
	var stream bytes.Buffer
	fw := &Writer{w: &stream}
	for _, f := range frames {
		if err := f.check(); err != nil {
			t.Fatalf("%s frame of the test does not check: %v", f.T, err)
		}
		got, err := readOne(encodeFrame(t, f))
		if err != nil {
			t.Fatalf("%s frame: %v", f.T, err)
		}
		if !reflect.DeepEqual(got, f) {
			t.Fatalf("%s frame came back as\n%#v\nwant\n%#v", f.T, got, f)
		}
		if err := fw.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	// One after another on one stream, then a clean end.
	r := bufio.NewReader(&stream)
	for _, f := range frames {
		got, err := Read(r)
		if err != nil || !reflect.DeepEqual(got, f) {
			t.Fatalf("%s frame on a stream: %+v, %v", f.T, got, err)
		}
	}
	if _, err := Read(r); err != io.EOF {
		t.Fatalf("after the last frame: %v, want EOF", err)
	}
	// The receipt still verifies on the other side.
	got, err := readOne(encodeFrame(t, frames[10]))
	if err != nil || got.T != KindReceipt || got.Receipt.Verify() != nil {
		t.Fatalf("receipt frame: %+v, %v", got, err)
	}
}

func TestFrameBounds(t *testing.T) {
	// Lengths.
	for _, tc := range []struct {
		name  string
		data  []byte
		isBad bool // wraps ErrBadFrame
		words string
	}{
		{"length 0", []byte{0}, true, "length 0, want 1..1048576"},
		{"length over MaxFrame", append(binary.AppendUvarint(nil, MaxFrame+1), '{'), true, "length 1048577, want 1..1048576"},
		{"length 2^63", binary.AppendUvarint(nil, 1<<63), true, "length 9223372036854775808"},
		{"length overflows", bytes.Repeat([]byte{0xff}, 11), false, "overflow"},
		{"length cut", []byte{0x80}, false, "EOF"},
		{"body cut", rawFrame(`{"t":"hb"}`)[:5], false, "unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readOne(tc.data)
			if err == nil {
				t.Fatal("accepted")
			}
			if errors.Is(err, ErrBadFrame) != tc.isBad || !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("error %q: want one saying %q (bad frame: %v)", err, tc.words, tc.isBad)
			}
		})
	}
	if _, err := readOne(nil); err != io.EOF {
		t.Fatalf("no frame: %v, want io.EOF", err)
	}
	// A frame of exactly MaxFrame bytes is read.
	pad := MaxFrame - len(`{"t":"hb","seq":1}`)
	if _, err := readOne(rawFrame(`{"t":"hb","seq":1}` + strings.Repeat(" ", pad))); err != nil {
		t.Fatalf("frame of MaxFrame bytes: %v", err)
	}

	sha := strings.Repeat("0", 64)
	long := strings.Repeat("x", MaxText+1)
	for _, tc := range []struct {
		name  string
		f     Frame
		words string
	}{
		{"unknown kind", Frame{T: "bogus"}, `unknown kind "bogus"`},
		{"no kind", Frame{}, `unknown kind ""`},
		{"log over MaxLogChunk", Frame{T: KindLog, Stream: "out", Data: make([]byte, MaxLogChunk+1)}, "65537 bytes of log, at most 65536"},
		{"log stream", Frame{T: KindLog, Stream: "in", Data: []byte("x")}, `stream "in", want out or err`},
		{"file ../x", Frame{T: KindFile, File: &receipt.OutputFile{Path: "../x", SHA256: sha}}, "stay inside the outputs folder"},
		{"file /abs", Frame{T: KindFile, File: &receipt.OutputFile{Path: "/abs", SHA256: sha}}, "must be relative"},
		{"file a//b", Frame{T: KindFile, File: &receipt.OutputFile{Path: "a//b", SHA256: sha}}, "must be relative"},
		{"file a/./b", Frame{T: KindFile, File: &receipt.OutputFile{Path: "a/./b", SHA256: sha}}, "must be relative"},
		{`file a\b`, Frame{T: KindFile, File: &receipt.OutputFile{Path: `a\b`, SHA256: sha}}, "backslash"},
		{"file NUL", Frame{T: KindFile, File: &receipt.OutputFile{Path: "a\x00", SHA256: sha}}, "control character"},
		{"file long path", Frame{T: KindFile, File: &receipt.OutputFile{Path: strings.Repeat("a", maxOutputPath+1), SHA256: sha}}, "path longer than 1024 bytes"},
		{"file no header", Frame{T: KindFile}, "no file"},
		{"file negative size", Frame{T: KindFile, File: &receipt.OutputFile{Path: "a", Size: -1, SHA256: sha}}, "size -1"},
		{"file short hash", Frame{T: KindFile, File: &receipt.OutputFile{Path: "a", SHA256: sha[:63]}}, "or SHA-256"},
		{"exit none", Frame{T: KindExit}, "exit frame: no exit"},
		{"exit end before start", Frame{T: KindExit, Exit: &ExitFrame{Start: 2, End: 1}}, "ends before it starts"},
		{"chunk empty", Frame{T: KindChunk}, "0 bytes of data, want 1..262144"},
		{"chunk over MaxChunk", Frame{T: KindChunk, Data: make([]byte, MaxChunk+1)}, "262145 bytes of data"},
		{"ready no port", Frame{T: KindReady}, "port 0"},
		{"ready port too big", Frame{T: KindReady, Port: 65536}, "port 65536"},
		{"started no time", Frame{T: KindStarted}, "no start time"},
		{"heartbeat unnumbered", Frame{T: KindHeartbeat}, "sequence number 0"},
		{"heartbeat number too big", Frame{T: KindHeartbeat, Seq: MaxSeq + 1}, "sequence number 9007199254740993"},
		{"heartbeat negative meter", Frame{T: KindHeartbeat, Seq: 1, Net: &NetMeter{SentBytes: -1}}, "negative job network meter"},
		{"heartbeat meter of too many providers", Frame{T: KindHeartbeat, Seq: 1, Net: &NetMeter{Direct: MaxRank, Relayed: 1}}, "negative job network meter"},
		{"countersign short", Frame{T: KindCountersign, Sig: make([]byte, 63)}, "signature of 63 bytes, want 64"},
		{"receipt none", Frame{T: KindReceipt}, "no receipt"},
		{"receipt bad", Frame{T: KindReceipt, Receipt: &receipt.Signed{}}, "bad receipt: version 0"},
		{"stop reason too long", Frame{T: KindStop, Reason: long}, "reason of 1025 bytes, at most 1024"},
		{"start none", Frame{T: KindStart}, "no start"},
		{"start rank", Frame{T: KindStart, Start: &StartFrame{Job: wireJobID, Rank: 2, Members: 2, WorldGPUs: 2}}, "rank 2 of 2 members"},
		{"start world", Frame{T: KindStart, Start: &StartFrame{Job: wireJobID, Members: 1}}, "world of 0 GPUs"},
		{"start port", Frame{T: KindStart, Start: &StartFrame{Job: wireJobID, Members: 1, WorldGPUs: 1, MasterPort: 70000}}, "master"},
		{"start job", Frame{T: KindStart, Start: &StartFrame{Job: "job-1", Members: 1, WorldGPUs: 1}}, `job ID "job-1"`},
		{"start mint", Frame{T: KindStart, Start: &StartFrame{Job: wireJobID, Members: 1, WorldGPUs: 1, Pays: true, Mint: strings.Repeat("M", 65)}}, "mint of 65 bytes, at most 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := encodeFrame(t, tc.f)
			_, err := readOne(data)
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("%q: error %v, want a bad frame", data, err)
			}
			if !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("error %q does not say %q", err, tc.words)
			}
		})
	}

	// Fields the protocol does not have, and JSON that is not a frame.
	for _, tc := range []struct{ json, words string }{
		{`{"t":"hb","extra":1}`, `unknown field "extra"`},
		{`{"t":"exit","exit":{"code":0,"start":1,"end":2,"signal":9}}`, `unknown field "signal"`},
		{`not json`, "invalid character"},
		{`{"t":"ready","port":"80"}`, "port"},
		{`[]`, "cannot unmarshal array"},
	} {
		_, err := readOne(rawFrame(tc.json))
		if !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), tc.words) {
			t.Errorf("%s: error %v, want a bad frame saying %q", tc.json, err, tc.words)
		}
	}

	// The bounds themselves are fine.
	for _, f := range []Frame{
		{T: KindLog, Stream: "out", Data: make([]byte, MaxLogChunk)},
		{T: KindLog, Stream: "err"},
		{T: KindChunk, Data: make([]byte, MaxChunk)},
		{T: KindReady, Port: 65535},
		{T: KindStop, Reason: long[:MaxText]},
		{T: KindFile, File: &receipt.OutputFile{Path: strings.Repeat("a", maxOutputPath), Size: receipt.MaxOutputBytes, SHA256: sha}},
		{T: KindFile, File: &receipt.OutputFile{Path: "..a/b../.c/...", SHA256: sha}},
	} {
		if _, err := readOne(encodeFrame(t, f)); err != nil {
			t.Errorf("%s frame at its bounds: %v", f.T, err)
		}
	}
}

func TestFrameLogWriterSplits(t *testing.T) {
	var buf bytes.Buffer
	lw := LogWriter{fw: &Writer{w: &buf}, stream: "err"}
	p := make([]byte, 3*MaxLogChunk+5)
	for i := range p {
		p[i] = byte(i * 7)
	}
	n, err := lw.Write(p)
	if n != len(p) || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	r := bufio.NewReader(&buf)
	var got []byte
	var sizes []int
	for {
		f, err := Read(r)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("frame %d: %v", len(sizes), err)
		}
		if f.T != KindLog || f.Stream != "err" {
			t.Fatalf("frame %d: %s on %q", len(sizes), f.T, f.Stream)
		}
		sizes = append(sizes, len(f.Data))
		got = append(got, f.Data...)
	}
	if want := []int{MaxLogChunk, MaxLogChunk, MaxLogChunk, 5}; !reflect.DeepEqual(sizes, want) {
		t.Fatalf("frames of %v bytes, want %v", sizes, want)
	}
	if !bytes.Equal(got, p) {
		t.Fatal("the frames' data is not what was written")
	}

	// Exactly one chunk is one frame; nothing is no frame.
	for _, c := range []struct{ size, frames int }{{MaxLogChunk, 1}, {MaxLogChunk + 1, 2}, {1, 1}, {0, 0}} {
		buf.Reset()
		if n, err := lw.Write(make([]byte, c.size)); n != c.size || err != nil {
			t.Fatalf("write %d bytes: %d, %v", c.size, n, err)
		}
		r := bufio.NewReader(&buf)
		frames := 0
		for {
			if _, err := Read(r); err == io.EOF {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			frames++
		}
		if frames != c.frames {
			t.Errorf("%d bytes: %d frames, want %d", c.size, frames, c.frames)
		}
	}

	// A failing stream stops the writer at the chunk it failed on.
	fail := LogWriter{fw: &Writer{w: &failAfter{n: 2}}, stream: "out"}
	if n, err := fail.Write(p); err == nil || n != 2*MaxLogChunk {
		t.Fatalf("write to a stream that fails on the third frame: %d, %v; want %d and an error", n, err, 2*MaxLogChunk)
	}
}

// failAfter takes n writes, then fails.
type failAfter struct{ n int }

func (w *failAfter) Write(p []byte) (int, error) {
	if w.n == 0 {
		return 0, errors.New("stream reset")
	}
	w.n--
	return len(p), nil
}

// A writer with a timeout gives up on a peer that stops reading: the frame
// fails with the deadline's error instead of blocking for good, and the
// next frame to a reading peer goes through.
func TestWriterTimeoutBoundsAPeerThatDoesNotRead(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	fw := NewWriter(a)
	fw.SetTimeout(50 * time.Millisecond)
	err := fw.Write(Frame{T: KindHeartbeat, Seq: 1}) // nobody reads b
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write to a peer that does not read: %v, want the deadline exceeded", err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := Read(bufio.NewReader(b))
		got <- err
	}()
	if err := fw.Write(Frame{T: KindHeartbeat, Seq: 2}); err != nil {
		t.Fatalf("write to a reading peer: %v", err)
	}
	if err := <-got; err != nil {
		t.Fatalf("read: %v", err)
	}
}

// stuckWriter blocks every write until it is closed, like a stream whose
// peer stopped reading and whose deadlines do nothing.
type stuckWriter struct{ closed chan struct{} }

func (s stuckWriter) Write([]byte) (int, error) { <-s.closed; return 0, io.ErrClosedPipe }
func (s stuckWriter) Close() error              { close(s.closed); return nil }

// Without a write deadline the timeout still holds: the stream is closed
// under the stuck write.
func TestWriterTimeoutClosesAStreamWithoutDeadlines(t *testing.T) {
	fw := NewWriter(stuckWriter{closed: make(chan struct{})})
	fw.SetTimeout(20 * time.Millisecond)
	if err := fw.Write(Frame{T: KindHeartbeat, Seq: 1}); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("stuck write: %v, want it ended by closing the stream", err)
	}
}
