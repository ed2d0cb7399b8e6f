package node

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// JobProtocol carries a job's run between its submitter and one member: the
// submitter opens one stream a member and sends start; the member answers
// with ready (member 0 of a multi-member job: its rendezvous port),
// started, logs, heartbeats, its outputs (file, then chunks), exit and its
// signed receipt; the submitter may send stop at any time and sends its
// countersignature last. Frames are a uvarint length and a JSON object.
const JobProtocol = protocol.ID("/gpumesh/job/1.0.0")

// Frame kinds.
const (
	frameStart       = "start"       // submitter → member
	frameStop        = "stop"        // submitter → member
	frameCountersign = "countersign" // submitter → member
	frameReady       = "ready"       // member → submitter
	frameStarted     = "started"
	frameLog         = "log"
	frameHeartbeat   = "hb"
	frameFile        = "file"
	frameChunk       = "chunk"
	frameExit        = "exit"
	frameReceipt     = "receipt"
	frameError       = "error"
	frameBill        = "bill" // member → submitter: pay for an interval
	framePaid        = "paid" // submitter → member: it is paid
)

// Bounds of the job protocol.
const (
	maxFrame      = 1 << 20   // bytes of one frame
	maxChunk      = 256 << 10 // bytes of output data in one frame
	maxLogChunk   = 64 << 10  // bytes of log data in one frame
	maxFrameText  = 1024      // bytes of a reason
	maxRank       = 4096
	maxOutputPath = exec.MaxOutputPath
)

// errBadFrame marks a frame that breaks the job protocol.
var errBadFrame = errors.New("bad job frame")

// frame is one message of the job protocol; T says which fields it uses.
type frame struct {
	T       string              `json:"t"`
	Start   *startFrame         `json:"start,omitempty"`
	Port    int                 `json:"port,omitempty"`   // ready
	At      int64               `json:"at,omitempty"`     // started: unix ms
	Stream  string              `json:"stream,omitempty"` // log: "out" or "err"
	Data    []byte              `json:"data,omitempty"`   // log, chunk
	File    *exec.OutputFile    `json:"file,omitempty"`
	Exit    *exitFrame          `json:"exit,omitempty"`
	Receipt *exec.SignedReceipt `json:"receipt,omitempty"`
	Sig     []byte              `json:"sig,omitempty"`    // countersign
	Reason  string              `json:"reason,omitempty"` // stop, error
	Bill    *billFrame          `json:"bill,omitempty"`
	Paid    *paidFrame          `json:"paid,omitempty"`
}

// startFrame is what a member runs.
type startFrame struct {
	Job        string  `json:"job"`
	Attempt    int     `json:"attempt"`
	Rank       int     `json:"rank"`
	Members    int     `json:"members"`
	WorldGPUs  int     `json:"worldGPUs"`
	Spec       JobSpec `json:"spec"`
	MasterAddr string  `json:"masterAddr,omitempty"`
	MasterPort int     `json:"masterPort,omitempty"` // 0 on member 0 of a multi-member job: it picks one and says ready
	Rendezvous bool    `json:"rendezvous"`           // the members meet over the network (several members, or a launcher)
	Pays       bool    `json:"pays,omitempty"`       // the submitter pays bills on chain as the job runs
}

// exitFrame is how a member's work ended.
type exitFrame struct {
	Code     int    `json:"code"`
	Start    int64  `json:"start"` // unix ms
	End      int64  `json:"end"`
	TimedOut bool   `json:"timedOut,omitempty"`
	Stopped  bool   `json:"stopped,omitempty"`
	Reason   string `json:"reason,omitempty"` // why the member stopped it (an unpaid bill)
}

// check says what is wrong with a frame that decoded.
func (f *frame) check() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s frame: %s", errBadFrame, f.T, fmt.Sprintf(format, a...))
	}
	if len(f.Reason) > maxFrameText {
		return bad("reason of %d bytes, at most %d", len(f.Reason), maxFrameText)
	}
	switch f.T {
	case frameStart:
		s := f.Start
		if s == nil {
			return bad("no start")
		}
		if s.Rank < 0 || s.Rank >= maxRank || s.Members < 1 || s.Members > maxRank || s.Rank >= s.Members {
			return bad("rank %d of %d members", s.Rank, s.Members)
		}
		if s.WorldGPUs < 1 || s.WorldGPUs > 1<<20 || s.Attempt < 0 || s.Attempt > 1000 {
			return bad("world of %d GPUs, attempt %d", s.WorldGPUs, s.Attempt)
		}
		if s.MasterPort < 0 || s.MasterPort > 65535 || len(s.MasterAddr) > 256 {
			return bad("master %q:%d", clipRaw(s.MasterAddr), s.MasterPort)
		}
		var jid gossip.JobID
		if jid.UnmarshalText([]byte(s.Job)) != nil {
			return bad("job ID %s", clip(s.Job))
		}
	case frameStop, frameHeartbeat, frameError:
	case frameReady:
		if f.Port < 1 || f.Port > 65535 {
			return bad("port %d", f.Port)
		}
	case frameStarted:
		if f.At <= 0 {
			return bad("no start time")
		}
	case frameLog:
		if f.Stream != "out" && f.Stream != "err" {
			return bad("stream %s, want out or err", clip(f.Stream))
		}
		if len(f.Data) > maxLogChunk {
			return bad("%d bytes of log, at most %d", len(f.Data), maxLogChunk)
		}
	case frameFile:
		if f.File == nil {
			return bad("no file")
		}
		if err := exec.CheckOutputPath(f.File.Path); err != nil {
			return bad("%v", err)
		}
		if f.File.Size < 0 || f.File.Size > exec.MaxOutputBytes || len(f.File.SHA256) != 64 {
			return bad("file %s: size %d or SHA-256 %q", clip(f.File.Path), f.File.Size, clipRaw(f.File.SHA256))
		}
	case frameChunk:
		if len(f.Data) == 0 || len(f.Data) > maxChunk {
			return bad("%d bytes of data, want 1..%d", len(f.Data), maxChunk)
		}
	case frameExit:
		if f.Exit == nil || f.Exit.End < f.Exit.Start || f.Exit.Start <= 0 || len(f.Exit.Reason) > maxFrameText {
			return bad("no exit, or it ends before it starts")
		}
	case frameReceipt:
		if f.Receipt == nil {
			return bad("no receipt")
		}
		if err := f.Receipt.Receipt.Check(); err != nil {
			return bad("%v", err)
		}
	case frameBill:
		b := f.Bill
		if b == nil || b.Interval < 1 || b.Interval > 1<<20 || b.Lamports == 0 || len(b.Ref) == 0 || len(b.Ref) > 128 {
			return bad("no bill, or one with interval 0, nothing to pay or a bad reference")
		}
	case framePaid:
		p := f.Paid
		if p == nil || p.Interval < 1 || p.Signature == "" || len(p.Signature) > 100 {
			return bad("no payment, or a bad interval or signature")
		}
	case frameCountersign:
		if len(f.Sig) != 64 {
			return bad("signature of %d bytes, want 64", len(f.Sig))
		}
	default:
		return fmt.Errorf("%w: unknown kind %s", errBadFrame, clip(f.T))
	}
	return nil
}

// validOutputPath is exec's rule for an output's path.
func validOutputPath(p string) bool { return exec.CheckOutputPath(p) == nil }

// readFrame reads and checks one frame.
func readFrame(r *bufio.Reader) (frame, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return frame{}, err
	}
	if n == 0 || n > maxFrame {
		return frame{}, fmt.Errorf("%w: length %d, want 1..%d", errBadFrame, n, maxFrame)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return frame{}, err
	}
	var f frame
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return frame{}, fmt.Errorf("%w: %v", errBadFrame, err)
	}
	if dec.More() {
		return frame{}, fmt.Errorf("%w: data after the frame", errBadFrame)
	}
	if err := f.check(); err != nil {
		return frame{}, err
	}
	return f, nil
}

// frameWriter writes frames from several goroutines, one whole frame at a
// time.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (fw *frameWriter) write(f frame) error {
	data, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if len(data) > maxFrame {
		return fmt.Errorf("%w: %s frame of %d bytes, at most %d", errBadFrame, f.T, len(data), maxFrame)
	}
	buf := binary.AppendUvarint(make([]byte, 0, len(data)+binary.MaxVarintLen64), uint64(len(data)))
	buf = append(buf, data...)
	fw.mu.Lock()
	defer fw.mu.Unlock()
	_, err = fw.w.Write(buf)
	return err
}

// logWriter turns a task's output into log frames.
type logWriter struct {
	fw     *frameWriter
	stream string
}

func (l logWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += maxLogChunk {
		end := min(off+maxLogChunk, len(p))
		if err := l.fw.write(frame{T: frameLog, Stream: l.stream, Data: p[off:end]}); err != nil {
			return off, err
		}
	}
	return len(p), nil
}
