// Package pipe joins two connections both ways: the hops of a forwarded
// TCP connection (job port-forward: the CLI, the local API, the session
// stream, the member's port). Each hop copies with large buffers, and
// with the kernel's splice where both ends are sockets; bytes that a
// reader read ahead with a header (an HTTP response, a session's reply)
// go first, and then the connection under it is read itself.
package pipe

import (
	"bufio"
	"io"
	"net"
	"sync"
)

// BufSize is the bytes of one copy's buffer: larger than io.Copy's 32
// KiB, so a libp2p stream gets fewer, larger writes (each a frame of the
// muxer, sealed by the security transport) and a socket fewer calls.
const BufSize = 256 << 10

var bufs = sync.Pool{New: func() any { b := make([]byte, BufSize); return &b }}

// ReadAheader is a connection read through a bufio.Reader that may hold
// its first bytes: ReadAhead returns that reader and the connection under
// it, which the reader reads and which writes go to. Copy writes what the
// reader holds and then reads the connection itself.
type ReadAheader interface {
	ReadAhead() (*bufio.Reader, io.ReadWriter)
}

// Conn is a ReadAheader over any stream.
type Conn struct {
	R   *bufio.Reader // reads Raw
	Raw io.ReadWriteCloser
}

func (c *Conn) Read(p []byte) (int, error)                { return c.R.Read(p) }
func (c *Conn) Write(p []byte) (int, error)               { return c.Raw.Write(p) }
func (c *Conn) Close() error                              { return c.Raw.Close() }
func (c *Conn) ReadAhead() (*bufio.Reader, io.ReadWriter) { return c.R, c.Raw }

// CloseWrite half-closes Raw where it can be, else closes it.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Raw.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Raw.Close()
}

// Reset ends Raw at once, telling its far end that it did not end well
// (Abort).
func (c *Conn) Reset() error {
	Abort(c.Raw)
	return nil
}

// Abort ends a connection at once, so that its far end sees an error
// rather than a clean end, and no one waits on it: a libp2p stream (or
// anything with Reset) is reset, a TCP connection closed with a reset
// (linger 0), anything else closed.
func Abort(c any) {
	switch v := c.(type) {
	case interface{ Reset() error }:
		_ = v.Reset()
	case *net.TCPConn:
		_ = v.SetLinger(0)
		_ = v.Close()
	case io.Closer:
		_ = v.Close()
	}
}

// Copy copies src to dst until src ends (io.EOF is no error) or a side
// fails, and says how many bytes it copied. A src or dst that is a
// ReadAheader is copied through its connection (after what its reader
// holds); between a TCP and a unix or TCP socket the kernel splices;
// anything else goes through a BufSize buffer, whatever ReaderFrom or
// WriterTo either side has (theirs would use 32 KiB, or less).
// Only one Copy may read a given src at a time.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	var n int64
	if ra, ok := src.(ReadAheader); ok {
		ahead, raw := ra.ReadAhead()
		if k := ahead.Buffered(); k > 0 {
			held, _ := ahead.Peek(k)
			m, err := dst.Write(held)
			_, _ = ahead.Discard(m)
			n += int64(m)
			if err != nil {
				return n, err
			}
		}
		src = raw
	}
	if ra, ok := dst.(ReadAheader); ok {
		_, dst = ra.ReadAhead()
	}
	switch d := dst.(type) {
	case *net.TCPConn:
		if isSocket(src) {
			m, err := d.ReadFrom(src)
			return n + m, err
		}
	case *net.UnixConn:
		if s, ok := src.(*net.TCPConn); ok {
			m, err := s.WriteTo(d)
			return n + m, err
		}
	}
	buf := bufs.Get().(*[]byte)
	defer bufs.Put(buf)
	m, err := io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *buf)
	return n + m, err
}

func isSocket(r io.Reader) bool {
	switch r.(type) {
	case *net.TCPConn, *net.UnixConn:
		return true
	}
	return false
}

// writerOnly and readerOnly hide ReaderFrom and WriterTo from
// io.CopyBuffer, so that it uses the buffer it is given.
type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

// Join copies a to b and b to a until both directions are done: the end
// of one direction half-closes the other side's writing (CloseWrite on
// aRaw or bRaw, a's and b's own values, where they have it), so a
// half-closed connection still reads its answer; a side with no
// half-close closes both. An error (a side reset, a write to a side
// gone) aborts both (Abort): their far ends see the connection fail, not
// end cleanly, so a cut transfer never looks whole, and a stream's far
// end stops writing into a stream no one reads. It closes neither at the
// end.
func Join(a io.ReadWriter, aRaw any, b io.ReadWriter, bRaw any) {
	done := make(chan struct{})
	half := func(dst io.Writer, dstRaw any, src io.Reader, srcRaw any) {
		_, err := Copy(dst, src)
		if err != nil {
			Abort(dstRaw)
			Abort(srcRaw)
			return
		}
		if cw, ok := dstRaw.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
			return
		}
		for _, c := range []any{dstRaw, srcRaw} {
			if c, ok := c.(io.Closer); ok {
				_ = c.Close()
			}
		}
	}
	go func() { defer close(done); half(b, bRaw, a, aRaw) }()
	half(a, aRaw, b, bRaw)
	<-done
}
