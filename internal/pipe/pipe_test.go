package pipe

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// socketPair connects two sockets of network ("tcp" or "unix") on this
// machine.
func socketPair(t *testing.T, network string) (client, server net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s")
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err = net.Dial(network, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func closeWrite(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
}

// Every pair of ends a forward's hops have: bytes arrive whole and in
// order, whether the kernel splices them (socket to TCP, TCP to a unix
// socket) or a buffer carries them, and Copy counts them all.
func TestCopyCarriesEveryByteBetweenEachKindOfEnd(t *testing.T) {
	data := make([]byte, 5<<20+123)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, from, to string }{
		{"tcp to tcp", "tcp", "tcp"},
		{"unix to tcp", "unix", "tcp"},
		{"tcp to unix", "tcp", "unix"},
		{"unix to unix", "unix", "unix"},
		{"pipe to tcp", "pipe", "tcp"},
		{"tcp to pipe", "tcp", "pipe"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var src io.Reader
			var feed io.WriteCloser
			if tc.from == "pipe" {
				pr, pw := io.Pipe()
				src, feed = pr, pw
			} else {
				w, r := socketPair(t, tc.from)
				src, feed = r, struct {
					io.Writer
					io.Closer
				}{w, closer(func() error { closeWrite(t, w); return nil })}
			}
			var dst io.Writer
			got := make(chan []byte, 1)
			if tc.to == "pipe" {
				var buf bytes.Buffer
				dst = &buf
				defer func() { got <- buf.Bytes() }()
			} else {
				w, r := socketPair(t, tc.to)
				dst = w
				go func() { b, _ := io.ReadAll(r); got <- b }()
			}
			go func() { _, _ = feed.Write(data); feed.Close() }()
			n, err := Copy(dst, src)
			if err != nil || n != int64(len(data)) {
				t.Fatalf("Copy = %d, %v; want %d bytes", n, err, len(data))
			}
			if tc.to != "pipe" {
				closeWrite(t, dst.(net.Conn))
				if b := <-got; !bytes.Equal(b, data) {
					t.Fatalf("%d bytes arrived, not the %d sent", len(b), len(data))
				}
			} else if b := dst.(*bytes.Buffer).Bytes(); !bytes.Equal(b, data) {
				t.Fatalf("%d bytes arrived, not the %d sent", len(b), len(data))
			}
		})
	}
}

type closer func() error

func (c closer) Close() error { return c() }

// A connection whose reader read ahead past its header: what the reader
// holds goes first, then the connection's own bytes, none lost or doubled.
func TestCopyOfAReadAheaderSendsWhatItsReaderHoldsFirst(t *testing.T) {
	for _, to := range []string{"tcp", "unix", "buffer"} {
		t.Run(to, func(t *testing.T) {
			w, r := socketPair(t, "tcp")
			want := append([]byte("HEADER\n"), bytes.Repeat([]byte("0123456789"), 100_000)...)
			go func() { _, _ = w.Write(want); closeWrite(t, w) }()
			br := bufio.NewReader(r)
			if line, err := br.ReadString('\n'); err != nil || line != "HEADER\n" {
				t.Fatalf("header %q, %v", line, err)
			}
			if br.Buffered() == 0 {
				t.Fatal("the reader holds nothing ahead: the test tests nothing")
			}
			src := &Conn{R: br, Raw: r}
			var got []byte
			if to == "buffer" {
				var buf bytes.Buffer
				if _, err := Copy(&buf, src); err != nil {
					t.Fatal(err)
				}
				got = buf.Bytes()
			} else {
				dw, dr := socketPair(t, to)
				done := make(chan []byte, 1)
				go func() { b, _ := io.ReadAll(dr); done <- b }()
				if _, err := Copy(dw, src); err != nil {
					t.Fatal(err)
				}
				closeWrite(t, dw)
				got = <-done
			}
			if !bytes.Equal(got, want[len("HEADER\n"):]) {
				t.Fatalf("got %d bytes, want the %d after the header", len(got), len(want)-len("HEADER\n"))
			}
		})
	}
}

// Join half-closes: a client that ends its request still reads the whole
// answer through both hops.
func TestJoinPassesAHalfCloseAndTheAnswerBack(t *testing.T) {
	client, front := socketPair(t, "tcp")
	back, server := socketPair(t, "unix")
	joined := make(chan struct{})
	go func() { defer close(joined); Join(front, front, &Conn{R: bufio.NewReader(back), Raw: back}, back) }()
	go func() {
		req, _ := io.ReadAll(server) // until the client's half-close arrives
		_, _ = server.Write(append([]byte("answer to "), req...))
		closeWrite(t, server)
	}()
	if _, err := client.Write([]byte("question")); err != nil {
		t.Fatal(err)
	}
	closeWrite(t, client)
	_ = client.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "answer to question" {
		t.Fatalf("the client read %q, %v", got, err)
	}
	select {
	case <-joined:
	case <-time.After(20 * time.Second):
		t.Fatal("Join did not return after both directions ended")
	}
}

// A side that fails mid-transfer fails the other too: the server's
// connection reset while it sends reaches the client as a reset, not as a
// clean end that would make a cut answer look whole; and Join returns.
func TestJoinPassesAResetOnAsAReset(t *testing.T) {
	client, front := socketPair(t, "tcp")
	back, server := socketPair(t, "tcp")
	joined := make(chan struct{})
	go func() { defer close(joined); Join(front, front, back, back) }()
	if _, err := server.Write([]byte("the first half of an answer")); err != nil {
		t.Fatal(err)
	}
	_ = client.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(client, make([]byte, len("the first half of an answer"))); err != nil {
		t.Fatal(err)
	}
	Abort(server) // the server fails: a reset
	_, err := io.ReadAll(client)
	if err == nil || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the client's read after the server failed: %v, want a reset (a clean end hides the failure)", err)
	}
	select {
	case <-joined:
	case <-time.After(20 * time.Second):
		t.Fatal("Join did not return after a side failed")
	}
}

// resetter is a stream that records whether it was reset or closed.
type resetter struct {
	net.Conn
	reset, closed chan struct{}
	resetOnce     sync.Once
	closeOnce     sync.Once
}

func (r *resetter) Reset() error { r.resetOnce.Do(func() { close(r.reset) }); return r.Conn.Close() }
func (r *resetter) Close() error { r.closeOnce.Do(func() { close(r.closed) }); return r.Conn.Close() }

// A stream on a side that fails is reset, not closed: a libp2p stream's
// Close leaves its far end writing into a stream no one reads (until its
// window is full, then waiting forever); a reset tells it at once.
func TestJoinResetsAStreamWhenTheOtherSideFails(t *testing.T) {
	client, front := socketPair(t, "tcp")
	streamEnd, far := socketPair(t, "unix")
	s := &resetter{Conn: streamEnd, reset: make(chan struct{}), closed: make(chan struct{})}
	joined := make(chan struct{})
	go func() { defer close(joined); Join(front, front, s, s) }()
	go func() { _, _ = io.Copy(io.Discard, far) }()
	if _, err := far.Write([]byte("data for a client that goes")); err != nil {
		t.Fatal(err)
	}
	Abort(client)                         // the client fails
	_, _ = far.Write(make([]byte, 1<<20)) // more for it: the write to the client fails
	select {
	case <-s.reset:
	case <-s.closed:
		t.Fatal("the stream was closed, not reset, when the other side failed")
	case <-time.After(20 * time.Second):
		t.Fatal("the stream was neither reset nor closed 20 s after the other side failed")
	}
	select {
	case <-joined:
	case <-time.After(20 * time.Second):
		t.Fatal("Join did not return after a side failed")
	}
}
