// Package jobwire is the job protocol between a job's submitter and each
// member's provider: length-prefixed JSON frames (start, ready, started,
// logs, heartbeats, outputs, exit, receipt, bills, payments, stop,
// countersign), each checked against its bounds as it is read. It links
// neither the node nor the executors, so a client can speak it.
package jobwire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Protocol carries a job's run between its submitter and one member: the
// submitter opens one stream a member and sends start; the member answers
// with ready (member 0 of a multi-member job: its rendezvous port),
// started, logs, heartbeats, its outputs (file, then chunks), exit and its
// signed receipt; the submitter may send stop at any time and sends its
// countersignature last. Frames are a uvarint length and a JSON object.
const Protocol = protocol.ID("/gpumesh/job/1.0.0")

// Protocol11 is Protocol whose submitter reads a receipt's
// checkpointBytes (receipt.Receipt.CheckpointBytes): a provider sends them
// only on a stream of this version, since a submitter of 1.0.0 decodes
// receipts strictly and would refuse the frame. A submitter offers both,
// this one first.
const Protocol11 = protocol.ID("/gpumesh/job/1.1.0")

// Kinds of frame.
const (
	KindStart       = "start"       // submitter → member
	KindStop        = "stop"        // submitter → member
	KindCountersign = "countersign" // submitter → member
	KindReady       = "ready"       // member → submitter
	KindStarted     = "started"
	KindLog         = "log"
	KindHeartbeat   = "hb"
	KindFile        = "file"
	KindChunk       = "chunk"
	KindExit        = "exit"
	KindReceipt     = "receipt"
	KindError       = "error"
	KindBill        = "bill" // member → submitter: pay for an interval
	KindPaid        = "paid" // submitter → member: it is paid
	KindCheckpoint  = "ckpt" // member → submitter: its checkpoint folder, synced to its store: fetch it by CID
)

// KindImage: member → submitter: where its image came from, before it
// starts (ImageFrame).
const KindImage = "image"

// Bounds of the job protocol.
const (
	MaxFrame      = 1 << 20   // bytes of one frame
	MaxChunk      = 256 << 10 // bytes of output data in one frame
	MaxLogChunk   = 64 << 10  // bytes of log data in one frame
	MaxText       = 1024      // bytes of a reason
	MaxRank       = 4096
	MaxSeq        = 1 << 53 // a heartbeat's sequence number (a year of heartbeats is 2^25)
	maxOutputPath = receipt.MaxOutputPath
)

// ErrBadFrame marks a frame that breaks the job protocol.
var ErrBadFrame = errors.New("bad job frame")

// Frame is one message of the job protocol; T says which fields it uses.
type Frame struct {
	T       string              `json:"t"`
	Start   *StartFrame         `json:"start,omitempty"`
	Port    int                 `json:"port,omitempty"`   // ready
	At      int64               `json:"at,omitempty"`     // started: unix ms
	Stream  string              `json:"stream,omitempty"` // log: "out" or "err"
	Data    []byte              `json:"data,omitempty"`   // log, chunk
	File    *receipt.OutputFile `json:"file,omitempty"`
	Exit    *ExitFrame          `json:"exit,omitempty"`
	Receipt *receipt.Signed     `json:"receipt,omitempty"`
	Sig     []byte              `json:"sig,omitempty"`    // countersign
	Reason  string              `json:"reason,omitempty"` // stop, error
	Bill    *BillFrame          `json:"bill,omitempty"`
	Paid    *PaidFrame          `json:"paid,omitempty"`
	Seq     uint64              `json:"seq,omitempty"` // hb: one more than the last heartbeat's, from 1
	Net     *NetMeter           `json:"net,omitempty"` // hb, now and then: the member's job network so far
	Ckpt    *CheckpointFrame    `json:"ckpt,omitempty"`
	Image   *ImageFrame         `json:"image,omitempty"`
}

// ImageFrame says where a member's image came from and what moved for it.
type ImageFrame struct {
	Source string   `json:"source"`         // "provider" (its engine had it), "mesh", "registry"
	Bytes  int64    `json:"bytes"`          // of the image's config and layers (0: not known, a registry's)
	Moved  int64    `json:"moved"`          // of them, bytes fetched over the network
	From   []string `json:"from,omitempty"` // peer IDs blocks came from, most bytes first, at most MaxImagePeers
	Millis int64    `json:"millis"`
}

// MaxImagePeers is the most peers an image frame names.
const MaxImagePeers = 16

// CheckpointFrame names a member's checkpoint folder as it was at a sync.
type CheckpointFrame struct {
	CID   string `json:"cid"`   // its root in the member's content store
	Bytes int64  `json:"bytes"` // of its files
	Files int    `json:"files"`
}

// StartFrame is what a member runs.
type StartFrame struct {
	Job        string       `json:"job"`
	Attempt    int          `json:"attempt"`
	Rank       int          `json:"rank"`
	Members    int          `json:"members"`
	WorldGPUs  int          `json:"worldGPUs"`
	Spec       jobspec.Spec `json:"spec"`
	MasterAddr string       `json:"masterAddr,omitempty"`
	MasterPort int          `json:"masterPort,omitempty"` // 0 on member 0 of a multi-member job: it picks one and says ready
	Rendezvous bool         `json:"rendezvous"`           // the members meet over the network (several members, or a launcher)
	Pays       bool         `json:"pays,omitempty"`       // the submitter pays bills on chain as the job runs
	Mint       string       `json:"mint,omitempty"`       // what it pays in: an SPL token's mint (base58); "" for SOL
	Checkpoint string       `json:"checkpoint,omitempty"` // CID of the job's latest checkpoint, to restore at the spec's checkpoint path (a retry)
	// Net, when set, gives the members a network of their own (package
	// node/jobnet): the provider of each member, by rank, and where it
	// listens. MasterAddr is then member 0's job address.
	Net []NetMember `json:"net,omitempty"`
}

// NetMember is where one member of a job network runs.
type NetMember struct {
	Peer  string   `json:"peer"`            // its provider's peer ID
	Addrs []string `json:"addrs,omitempty"` // its provider's multiaddrs, as the submitter knows them
}

// Bounds of a start frame's job network.
const (
	MaxNetAddrs   = 16
	maxNetAddrLen = 256
)

// ExitFrame is how a member's work ended.
type ExitFrame struct {
	Code     int    `json:"code"`
	Start    int64  `json:"start"` // unix ms
	End      int64  `json:"end"`
	TimedOut bool   `json:"timedOut,omitempty"`
	Stopped  bool   `json:"stopped,omitempty"`
	Reason   string `json:"reason,omitempty"` // why the member stopped it (an unpaid bill)
	// Net is what crossed the member's job network interface, as its
	// provider metered it; nil: the member had none.
	Net *NetMeter `json:"net,omitempty"`
}

// NetMeter is a member's traffic on its job network.
type NetMeter struct {
	SentBytes     int64 `json:"sent"`     // the member sent, forwarded to other members
	ReceivedBytes int64 `json:"received"` // other members sent it
	Dropped       int64 `json:"dropped"`  // packets for it dropped (over its rates) or of it refused (not for a member of its job)
	// Direct and Relayed: the job's other providers its provider reached
	// directly (or hole-punched), or only through a relay, when metered
	// (in a heartbeat: as it runs; in the exit frame: as it ended).
	Direct  int `json:"direct,omitempty"`
	Relayed int `json:"relayed,omitempty"`
}

// ok says whether a meter (nil: none) has no negative count and no more
// providers than a job can have.
func (m *NetMeter) ok() bool {
	return m == nil || m.SentBytes >= 0 && m.ReceivedBytes >= 0 && m.Dropped >= 0 &&
		m.Direct >= 0 && m.Relayed >= 0 && m.Direct+m.Relayed <= MaxRank
}

// check says what is wrong with a frame that decoded.
func (f *Frame) check() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s frame: %s", ErrBadFrame, f.T, fmt.Sprintf(format, a...))
	}
	if len(f.Reason) > MaxText {
		return bad("reason of %d bytes, at most %d", len(f.Reason), MaxText)
	}
	switch f.T {
	case KindStart:
		s := f.Start
		if s == nil {
			return bad("no start")
		}
		if s.Rank < 0 || s.Rank >= MaxRank || s.Members < 1 || s.Members > MaxRank || s.Rank >= s.Members {
			return bad("rank %d of %d members", s.Rank, s.Members)
		}
		if s.WorldGPUs < 1 || s.WorldGPUs > 1<<20 || s.Attempt < 0 || s.Attempt > 1000 {
			return bad("world of %d GPUs, attempt %d", s.WorldGPUs, s.Attempt)
		}
		if s.MasterPort < 0 || s.MasterPort > 65535 || len(s.MasterAddr) > 256 {
			return bad("master %q:%d", text.ClipRaw(s.MasterAddr), s.MasterPort)
		}
		if len(s.Mint) > 64 {
			return bad("mint of %d bytes, at most 64", len(s.Mint))
		}
		var jid gossip.JobID
		if jid.UnmarshalText([]byte(s.Job)) != nil {
			return bad("job ID %s", text.Clip(s.Job))
		}
		if len(s.Net) != 0 && len(s.Net) != s.Members {
			return bad("a job network of %d members in a job of %d", len(s.Net), s.Members)
		}
		for i, m := range s.Net {
			if len(m.Peer) == 0 || len(m.Peer) > 128 || len(m.Addrs) > MaxNetAddrs {
				return bad("job network member %d: peer of %d bytes, %d addresses (at most 128, %d)", i, len(m.Peer), len(m.Addrs), MaxNetAddrs)
			}
			for _, a := range m.Addrs {
				if len(a) > maxNetAddrLen {
					return bad("job network member %d: an address of %d bytes, at most %d", i, len(a), maxNetAddrLen)
				}
			}
		}
		if s.Checkpoint != "" {
			if _, err := jobspec.ParseCID(s.Checkpoint); err != nil {
				return bad("checkpoint %s: %v", text.Clip(s.Checkpoint), err)
			}
		}
	case KindStop, KindError:
	case KindHeartbeat:
		if f.Seq == 0 || f.Seq > MaxSeq {
			return bad("sequence number %d, want 1..%d", f.Seq, uint64(MaxSeq))
		}
		if !f.Net.ok() {
			return bad("a negative job network meter")
		}
	case KindReady:
		if f.Port < 1 || f.Port > 65535 {
			return bad("port %d", f.Port)
		}
	case KindStarted:
		if f.At <= 0 {
			return bad("no start time")
		}
	case KindLog:
		if f.Stream != "out" && f.Stream != "err" {
			return bad("stream %s, want out or err", text.Clip(f.Stream))
		}
		if len(f.Data) > MaxLogChunk {
			return bad("%d bytes of log, at most %d", len(f.Data), MaxLogChunk)
		}
	case KindFile:
		if f.File == nil {
			return bad("no file")
		}
		if err := receipt.CheckOutputPath(f.File.Path); err != nil {
			return bad("%v", err)
		}
		if f.File.Size < 0 || f.File.Size > receipt.MaxOutputBytes || len(f.File.SHA256) != 64 {
			return bad("file %s: size %d or SHA-256 %q", text.Clip(f.File.Path), f.File.Size, text.ClipRaw(f.File.SHA256))
		}
	case KindChunk:
		if len(f.Data) == 0 || len(f.Data) > MaxChunk {
			return bad("%d bytes of data, want 1..%d", len(f.Data), MaxChunk)
		}
	case KindExit:
		if f.Exit == nil || f.Exit.End < f.Exit.Start || f.Exit.Start <= 0 || len(f.Exit.Reason) > MaxText {
			return bad("no exit, or it ends before it starts")
		}
		if !f.Exit.Net.ok() {
			return bad("a negative job network meter")
		}
	case KindReceipt:
		if f.Receipt == nil {
			return bad("no receipt")
		}
		if err := f.Receipt.Receipt.Check(); err != nil {
			return bad("%v", err)
		}
	case KindBill:
		b := f.Bill
		if b == nil || b.Interval < 1 || b.Interval > 1<<20 || b.Lamports == 0 || len(b.Ref) == 0 || len(b.Ref) > 128 {
			return bad("no bill, or one with interval 0, nothing to pay or a bad reference")
		}
	case KindPaid:
		p := f.Paid
		if p == nil || p.Interval < 1 || p.Signature == "" || len(p.Signature) > 100 {
			return bad("no payment, or a bad interval or signature")
		}
	case KindCheckpoint:
		c := f.Ckpt
		if c == nil || c.Bytes < 0 || c.Bytes > 1<<50 || c.Files < 0 || c.Files > 1<<30 {
			return bad("no checkpoint, or a size out of range")
		}
		if _, err := jobspec.ParseCID(c.CID); err != nil {
			return bad("checkpoint %s: %v", text.Clip(c.CID), err)
		}
	case KindImage:
		im := f.Image
		if im == nil || len(im.Source) > 16 || im.Bytes < 0 || im.Moved < 0 || im.Millis < 0 || len(im.From) > MaxImagePeers {
			return bad("no image report, or one out of range")
		}
		for _, p := range im.From {
			if len(p) > 128 {
				return bad("peer ID of %d bytes", len(p))
			}
		}
	case KindCountersign:
		if len(f.Sig) != 64 {
			return bad("signature of %d bytes, want 64", len(f.Sig))
		}
	default:
		return fmt.Errorf("%w: unknown kind %s", ErrBadFrame, text.Clip(f.T))
	}
	return nil
}

// ValidOutputPath is exec's rule for an output's path.
func ValidOutputPath(p string) bool { return receipt.CheckOutputPath(p) == nil }

// Read reads and checks one frame.
func Read(r *bufio.Reader) (Frame, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return Frame{}, err
	}
	if n == 0 || n > MaxFrame {
		return Frame{}, fmt.Errorf("%w: length %d, want 1..%d", ErrBadFrame, n, MaxFrame)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return Frame{}, err
	}
	var f Frame
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return Frame{}, fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	if dec.More() {
		return Frame{}, fmt.Errorf("%w: data after the frame", ErrBadFrame)
	}
	if err := f.check(); err != nil {
		return Frame{}, err
	}
	return f, nil
}

// Writer writes frames from several goroutines, one whole frame at a
// time.
type Writer struct {
	mu      sync.Mutex
	w       io.Writer
	timeout time.Duration // a frame not written in this long fails; 0: no bound
}

// SetTimeout bounds how long one frame may take to write, so a peer that
// stops reading holds a writer no longer: a frame not written within d
// fails, by the stream's write deadline where it has one (libp2p streams
// over real connections, net.Conn), and otherwise by resetting (or
// closing) the stream under it; after that the stream is useless. 0
// removes the bound.
func (fw *Writer) SetTimeout(d time.Duration) {
	fw.mu.Lock()
	fw.timeout = d
	fw.mu.Unlock()
}

type writeDeadliner interface{ SetWriteDeadline(time.Time) error }

type resetter interface{ Reset() error }

// abort ends a stream whose write is stuck.
func abort(w io.Writer) {
	switch s := w.(type) {
	case resetter:
		_ = s.Reset()
	case io.Closer:
		_ = s.Close()
	}
}

func (fw *Writer) Write(f Frame) error {
	data, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if len(data) > MaxFrame {
		return fmt.Errorf("%w: %s frame of %d bytes, at most %d", ErrBadFrame, f.T, len(data), MaxFrame)
	}
	buf := binary.AppendUvarint(make([]byte, 0, len(data)+binary.MaxVarintLen64), uint64(len(data)))
	buf = append(buf, data...)
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.timeout > 0 {
		if wd, ok := fw.w.(writeDeadliner); ok {
			_ = wd.SetWriteDeadline(time.Now().Add(fw.timeout))
			defer func() { _ = wd.SetWriteDeadline(time.Time{}) }()
		}
		// A stream whose deadline does nothing (or is not there) is ended
		// a little later.
		stuck := time.AfterFunc(fw.timeout+fw.timeout/4, func() { abort(fw.w) })
		defer stuck.Stop()
	}
	_, err = fw.w.Write(buf)
	return err
}

// LogWriter turns a task's output into log frames.
type LogWriter struct {
	fw     *Writer
	stream string
}

func (l LogWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += MaxLogChunk {
		end := min(off+MaxLogChunk, len(p))
		if err := l.fw.Write(Frame{T: KindLog, Stream: l.stream, Data: p[off:end]}); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// BillFrame asks the submitter to pay for one interval of a member's work.
type BillFrame struct {
	Interval int    `json:"interval"` // from 1
	Lamports uint64 `json:"lamports"` // the amount, in the price unit's smallest unit (lamports in SOL, a token's base units)
	Ref      string `json:"ref"`      // <job>-<attempt>-<rank>-<interval>: the payment's memo
	Millis   uint64 `json:"millis"`
}

// PaidFrame says a bill was paid.
type PaidFrame struct {
	Interval  int    `json:"interval"`
	Signature string `json:"signature"`
}

// NewWriter writes frames to w; its Write may be called from several
// goroutines.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// NewLogWriter turns what is written to it into log frames of stream
// ("out" or "err") on fw.
func NewLogWriter(fw *Writer, stream string) LogWriter { return LogWriter{fw: fw, stream: stream} }
