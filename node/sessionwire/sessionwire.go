// Package sessionwire is the session protocol between a job's submitter and
// one member's provider: a way into a running member, to run a command in
// it (job exec) or to reach a TCP port of it (job port-forward). Every
// session is one libp2p stream: an Open frame from the submitter, a Reply
// from the provider, then, for exec, binary frames (stdin, resize, stdout,
// stderr, exit) and, for a forward, the connection's raw bytes both ways.
// Each frame is checked against its bounds as it is read. It links neither
// the node nor the executors, so a client (the CLI, a test's hostile peer)
// can speak it.
package sessionwire

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Protocol carries one session into a running member.
const Protocol = protocol.ID("/gpumesh/session/1.0.0")

// Kinds of session.
const (
	KindExec    = "exec"    // run a command in the member
	KindForward = "forward" // one TCP connection to a port of the member
)

// Bounds of the session protocol.
const (
	MaxOpen    = 16 << 10 // bytes of an Open or Reply frame
	MaxArgs    = 256      // arguments of an exec's command
	MaxArgLen  = 4096     // bytes of one argument
	MaxData    = 32 << 10 // bytes of stdin, stdout or stderr in one frame
	MaxText    = 1024     // bytes of a reason
	MaxRank    = 4096
	MaxAttempt = 1000
	MaxWinSide = 1000 // rows or columns of a terminal
)

// ErrBadFrame marks a frame that breaks the session protocol.
var ErrBadFrame = errors.New("bad session frame")

// Open is the first frame of a session, submitter → provider: which member
// and what to do in it.
type Open struct {
	Kind    string   `json:"kind"` // KindExec or KindForward
	Job     string   `json:"job"`
	Attempt int      `json:"attempt"`
	Rank    int      `json:"rank"`
	Command []string `json:"command,omitempty"` // exec: argv
	Stdin   bool     `json:"stdin,omitempty"`   // exec: the command reads Stdin frames (else its stdin is empty)
	TTY     bool     `json:"tty,omitempty"`     // exec: under a terminal (stdout and stderr are one)
	Rows    int      `json:"rows,omitempty"`    // exec with TTY: the terminal's first size
	Cols    int      `json:"cols,omitempty"`
	Port    int      `json:"port,omitempty"` // forward: the member's TCP port
}

// Check says what is wrong with an Open, in words a person can act on.
func (o Open) Check() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: open: %s", ErrBadFrame, fmt.Sprintf(format, a...))
	}
	if o.Job == "" || len(o.Job) > 128 {
		return bad("job ID of %d bytes", len(o.Job))
	}
	if o.Rank < 0 || o.Rank >= MaxRank || o.Attempt < 0 || o.Attempt > MaxAttempt {
		return bad("rank %d, attempt %d", o.Rank, o.Attempt)
	}
	switch o.Kind {
	case KindExec:
		if len(o.Command) == 0 || len(o.Command) > MaxArgs || o.Command[0] == "" {
			return bad("a command of %d arguments; give 1 to %d, the first not empty", len(o.Command), MaxArgs)
		}
		for _, a := range o.Command {
			if len(a) > MaxArgLen {
				return bad("an argument of %d bytes, at most %d", len(a), MaxArgLen)
			}
		}
		if o.Rows < 0 || o.Rows > MaxWinSide || o.Cols < 0 || o.Cols > MaxWinSide || (!o.TTY && (o.Rows != 0 || o.Cols != 0)) {
			return bad("terminal of %dx%d (tty %v)", o.Cols, o.Rows, o.TTY)
		}
		if o.Port != 0 {
			return bad("an exec with a port")
		}
	case KindForward:
		if o.Port < 1 || o.Port > 65535 {
			return bad("port %d, want 1..65535", o.Port)
		}
		if len(o.Command) != 0 || o.TTY || o.Stdin || o.Rows != 0 || o.Cols != 0 {
			return bad("a forward with a command or a terminal")
		}
	default:
		return fmt.Errorf("%w: open: unknown kind %s, want exec or forward", ErrBadFrame, text.Clip(o.Kind))
	}
	return nil
}

// Reply is the provider's answer to an Open: "" is yes, anything else says
// why not.
type Reply struct {
	Error string `json:"error,omitempty"`
}

// WriteOpen writes an Open frame; ReadOpen reads and checks one.
func WriteOpen(w io.Writer, o Open) error { return writeJSON(w, o) }

// ReadOpen reads and checks an Open frame.
func ReadOpen(r *bufio.Reader) (Open, error) {
	var o Open
	if err := readJSON(r, &o); err != nil {
		return Open{}, err
	}
	return o, o.Check()
}

// WriteReply writes a Reply frame.
func WriteReply(w io.Writer, rep Reply) error {
	rep.Error = text.Cut(rep.Error, MaxText)
	return writeJSON(w, rep)
}

// ReadReply reads and checks a Reply frame.
func ReadReply(r *bufio.Reader) (Reply, error) {
	var rep Reply
	if err := readJSON(r, &rep); err != nil {
		return Reply{}, err
	}
	if len(rep.Error) > MaxText {
		return Reply{}, fmt.Errorf("%w: reply: reason of %d bytes, at most %d", ErrBadFrame, len(rep.Error), MaxText)
	}
	return rep, nil
}

func writeJSON(w io.Writer, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(data) > MaxOpen {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrBadFrame, len(data), MaxOpen)
	}
	buf := binary.AppendUvarint(make([]byte, 0, len(data)+binary.MaxVarintLen64), uint64(len(data)))
	_, err = w.Write(append(buf, data...))
	return err
}

func readJSON(r *bufio.Reader, v any) error {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return err
	}
	if n == 0 || n > MaxOpen {
		return fmt.Errorf("%w: length %d, want 1..%d", ErrBadFrame, n, MaxOpen)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: data after the frame", ErrBadFrame)
	}
	return nil
}

// Type is the kind of an exec frame.
type Type byte

// Exec frames: a type byte, a uvarint length, the payload.
const (
	Stdin    Type = 1  // submitter → member: bytes for the command's stdin
	StdinEOF Type = 2  // submitter → member: no more stdin (no payload)
	Resize   Type = 3  // submitter → member: the terminal's size (rows, cols: two big-endian uint16)
	Stdout   Type = 16 // member → submitter: the command's output (all of it, under a TTY)
	Stderr   Type = 17 // member → submitter
	Exit     Type = 18 // member → submitter: its exit code (big-endian int32); the last frame
	Error    Type = 19 // member → submitter: why the command could not run (text); the last frame
)

// Frame is one exec frame.
type Frame struct {
	Type Type
	Data []byte
}

// ResizeFrame is a Resize frame for a terminal of rows × cols.
func ResizeFrame(rows, cols int) Frame {
	return Frame{Type: Resize, Data: binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, uint16(rows)), uint16(cols))}
}

// Size is a Resize frame's rows and columns.
func (f Frame) Size() (rows, cols int) {
	return int(binary.BigEndian.Uint16(f.Data)), int(binary.BigEndian.Uint16(f.Data[2:]))
}

// ExitFrame is an Exit frame with code.
func ExitFrame(code int) Frame {
	return Frame{Type: Exit, Data: binary.BigEndian.AppendUint32(nil, uint32(int32(code)))}
}

// Code is an Exit frame's exit code.
func (f Frame) Code() int { return int(int32(binary.BigEndian.Uint32(f.Data))) }

// check says what is wrong with a frame's length for its type.
func check(t Type, n uint64) error {
	bad := func(want string) error {
		return fmt.Errorf("%w: frame of type %d with %d bytes, want %s", ErrBadFrame, t, n, want)
	}
	switch t {
	case Stdin, Stdout, Stderr:
		if n < 1 || n > MaxData {
			return bad(fmt.Sprintf("1..%d", MaxData))
		}
	case StdinEOF:
		if n != 0 {
			return bad("0")
		}
	case Resize, Exit:
		if n != 4 {
			return bad("4")
		}
	case Error:
		if n > MaxText {
			return bad(fmt.Sprintf("at most %d", MaxText))
		}
	default:
		return fmt.Errorf("%w: unknown frame type %d", ErrBadFrame, t)
	}
	return nil
}

// Read reads and checks one exec frame.
func Read(r *bufio.Reader) (Frame, error) {
	b, err := r.ReadByte()
	if err != nil {
		return Frame{}, err
	}
	t := Type(b)
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return Frame{}, noEOF(err)
	}
	if err := check(t, n); err != nil {
		return Frame{}, err
	}
	f := Frame{Type: t, Data: make([]byte, n)}
	if _, err := io.ReadFull(r, f.Data); err != nil {
		return Frame{}, noEOF(err)
	}
	if t == Resize {
		if rows, cols := f.Size(); rows < 1 || rows > MaxWinSide || cols < 1 || cols > MaxWinSide {
			return Frame{}, fmt.Errorf("%w: terminal of %dx%d", ErrBadFrame, cols, rows)
		}
	}
	return f, nil
}

// noEOF: a stream that ends inside a frame was cut.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Writer writes exec frames from several goroutines, one whole frame at a
// time.
type Writer struct {
	// Timeout bounds the writing of one frame where w has a write
	// deadline (a libp2p stream, a net.Conn): a peer that stops reading
	// fails the write then. 0: no bound.
	Timeout time.Duration

	mu sync.Mutex
	w  io.Writer
}

// NewWriter writes frames to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write writes one frame; data longer than one frame's bound is an error
// (DataWriter splits it).
func (fw *Writer) Write(f Frame) error {
	if err := check(f.Type, uint64(len(f.Data))); err != nil {
		return err
	}
	buf := make([]byte, 0, 1+binary.MaxVarintLen64+len(f.Data))
	buf = append(buf, byte(f.Type))
	buf = binary.AppendUvarint(buf, uint64(len(f.Data)))
	buf = append(buf, f.Data...)
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if wd, ok := fw.w.(interface{ SetWriteDeadline(time.Time) error }); ok && fw.Timeout > 0 {
		_ = wd.SetWriteDeadline(time.Now().Add(fw.Timeout))
		defer func() { _ = wd.SetWriteDeadline(time.Time{}) }()
	}
	_, err := fw.w.Write(buf)
	return err
}

// DataWriter turns what is written to it into frames of one type (Stdin,
// Stdout or Stderr), at most MaxData bytes each.
type DataWriter struct {
	FW   *Writer
	Type Type
}

func (d DataWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += MaxData {
		end := min(off+MaxData, len(p))
		if err := d.FW.Write(Frame{Type: d.Type, Data: p[off:end]}); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// ExecIO is the submitter's end of an exec session: where its input comes
// from and its output goes.
type ExecIO struct {
	Stdin  io.Reader     // nil: sends none (open the session without Stdin)
	Stdout io.Writer     // nil discards
	Stderr io.Writer     // nil discards
	Resize <-chan [2]int // the terminal's new sizes (rows, cols); may be nil
}

// ErrNoExit marks an exec session that ended without an exit code: the
// member, its provider or the way to it went away.
var ErrNoExit = errors.New("the exec session ended without an exit code")

// RunExec is the submitter's side of an open exec session on rw: it sends
// x.Stdin (then StdinEOF) and resizes, writes the command's output to
// x.Stdout and x.Stderr, and returns its exit code, or an error that says
// why the command could not run. Cancelling ctx ends rw at once (a reset
// where it has one, else a close).
func RunExec(ctx context.Context, rw io.ReadWriteCloser, x ExecIO) (int, error) {
	stop := context.AfterFunc(ctx, func() { // at once: a reset where rw has one
		if r, ok := rw.(interface{ Reset() error }); ok {
			_ = r.Reset()
			return
		}
		_ = rw.Close()
	})
	defer stop()
	fw := NewWriter(rw)
	done := make(chan struct{})
	defer close(done)
	if x.Stdin != nil {
		go func() {
			if _, err := io.Copy(DataWriter{FW: fw, Type: Stdin}, x.Stdin); err == nil {
				_ = fw.Write(Frame{Type: StdinEOF})
			}
		}()
	}
	if x.Resize != nil {
		go func() {
			for {
				select {
				case <-done:
					return
				case sz := <-x.Resize:
					if sz[0] > 0 && sz[1] > 0 && sz[0] <= MaxWinSide && sz[1] <= MaxWinSide {
						_ = fw.Write(ResizeFrame(sz[0], sz[1]))
					}
				}
			}
		}()
	}
	out, errw := x.Stdout, x.Stderr
	if out == nil {
		out = io.Discard
	}
	if errw == nil {
		errw = io.Discard
	}
	br := bufio.NewReader(rw)
	for {
		f, err := Read(br)
		if err != nil {
			if ctx.Err() != nil {
				return -1, ctx.Err()
			}
			return -1, fmt.Errorf("%w: %v", ErrNoExit, err)
		}
		switch f.Type {
		case Stdout:
			if _, err := out.Write(f.Data); err != nil {
				return -1, err
			}
		case Stderr:
			if _, err := errw.Write(f.Data); err != nil {
				return -1, err
			}
		case Exit:
			return f.Code(), nil
		case Error:
			return -1, fmt.Errorf("exec: %s", text.Line(string(f.Data)))
		default:
			return -1, fmt.Errorf("%w: a frame of type %d from the member", ErrBadFrame, f.Type)
		}
	}
}
