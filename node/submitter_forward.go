package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gpumesh/gpumesh/internal/text"
)

// Open forwards: `gpumesh job port-forward` holds a call open on the
// local API (routeJobForward) for as long as it listens, and names it on
// each connection it forwards; this peer counts their connections and
// bytes, for the explorer. The connections themselves are sessions
// (submitter_session.go).
//
// Passing a connection: where the CLI reaches the node over its unix
// socket, it hands each accepted TCP connection itself to the node
// (SCM_RIGHTS) once the session is open, and the node copies between it
// and the session's stream: the CLI no longer copies every byte through
// one more socket pair. The CLI keeps the upgraded connection open while
// the forwarded one lasts: either end closing it ends the other.

// Bounds of forwards.
const (
	maxForwards     = 256 // forwards held open on this peer at once
	maxForwardLocal = 256 // bytes of a forward's local address
	passWait        = 10 * time.Second
)

// Headers of the forward calls.
const (
	forwardHeader  = "Gpumesh-Forward"   // the forward a session belongs to (its key)
	passConnHeader = "Gpumesh-Pass-Conn" // "1": the client will pass its connection (unix socket only)
)

// routeJobForward holds a forward open (apiRoutes): POST a
// ForwardRequest; the answer's Gpumesh-Forward header names it, and its
// body ends when the job stops running.
const routeJobForward = "/jobs/{id}/forwards"

// ForwardRequest is what `job port-forward` tells the node of itself.
type ForwardRequest struct {
	Rank  int    `json:"rank"`
	Port  int    `json:"port"`  // the member's
	Local string `json:"local"` // where it listens, e.g. 127.0.0.1:8888
}

// ForwardInfo is one open forward of a job and what went through it.
type ForwardInfo struct {
	Rank     int       `json:"rank"`
	Port     int       `json:"port"`
	Local    string    `json:"local"`
	Conns    int       `json:"conns"`    // open now
	Total    int       `json:"total"`    // connections forwarded since it began
	BytesIn  int64     `json:"bytesIn"`  // from the member
	BytesOut int64     `json:"bytesOut"` // to the member
	Since    time.Time `json:"since"`
}

// forward is an open forward; job and info's Rank, Port, Local and Since
// never change.
type forward struct {
	job               string
	info              ForwardInfo
	conns, total      atomic.Int64
	bytesIn, bytesOut atomic.Int64
}

// forwardBook is the submitter's record of open forwards.
type forwardBook struct {
	fwdMu sync.Mutex
	fwds  map[string]*forward // by key
}

// Forwards lists the open forwards of job id, oldest first.
func (n *Node) Forwards(id string) []ForwardInfo {
	n.fwdMu.Lock()
	var out []ForwardInfo
	for _, f := range n.fwds {
		if f.job == id {
			fi := f.info
			fi.Conns, fi.Total = int(f.conns.Load()), int(f.total.Load())
			fi.BytesIn, fi.BytesOut = f.bytesIn.Load(), f.bytesOut.Load()
			out = append(out, fi)
		}
	}
	n.fwdMu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Since.Equal(out[j].Since) {
			return out[i].Since.Before(out[j].Since)
		}
		return out[i].Local < out[j].Local
	})
	return out
}

// serveJobForward answers POST /v0/jobs/{id}/forwards: it records the
// forward, names it in the answer's header, and holds the answer open
// until the job stops running or the client goes.
func (n *Node) serveJobForward(w http.ResponseWriter, r *http.Request) {
	var fr ForwardRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 4<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fr); err != nil {
		writeError(w, http.StatusBadRequest, "forward: "+err.Error())
		return
	}
	if fr.Port < 1 || fr.Port > 65535 || fr.Rank < 0 || len(fr.Local) > maxForwardLocal {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("forward: port %d (want 1..65535), rank %d, a local address of %d bytes (at most %d)", fr.Port, fr.Rank, len(fr.Local), maxForwardLocal))
		return
	}
	id := r.PathValue("id")
	j, ok := n.Job(id)
	switch {
	case !ok:
		writeError(w, http.StatusNotFound, fmt.Sprintf("%v: %s (`gpumesh job ls` lists them)", ErrNoSuchJob, text.Clip(id)))
		return
	case j.State != JobRunning:
		writeError(w, http.StatusConflict, fmt.Sprintf("%v: job %s is %s; port-forward needs a running job", ErrJobNotRunning, j.ID, j.State))
		return
	}
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	key := hex.EncodeToString(raw[:])
	f := &forward{job: j.ID, info: ForwardInfo{Rank: fr.Rank, Port: fr.Port, Local: fr.Local, Since: time.Now().UTC()}}
	n.fwdMu.Lock()
	if len(n.fwds) >= maxForwards {
		n.fwdMu.Unlock()
		writeError(w, http.StatusTooManyRequests, fmt.Sprintf("forward: %d forwards are open on this peer, the most at once; stop one", maxForwards))
		return
	}
	if n.fwds == nil {
		n.fwds = map[string]*forward{}
	}
	n.fwds[key] = f
	n.fwdMu.Unlock()
	defer func() { // the explorer sees it go at its next snapshot (each second)
		n.fwdMu.Lock()
		delete(n.fwds, key)
		n.fwdMu.Unlock()
	}()
	w.Header().Set(forwardHeader, key)
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	if fl, ok := w.(http.Flusher); ok {
		fl.Flush()
	}
	for {
		moved := n.jobMoved()
		if j, ok := n.Job(id); !ok || j.State != JobRunning {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-moved:
		}
	}
}

// forwardOf is the open forward of job id named key, if any.
func (n *Node) forwardOf(id, key string) *forward {
	if key == "" {
		return nil
	}
	n.fwdMu.Lock()
	defer n.fwdMu.Unlock()
	if f := n.fwds[key]; f != nil && f.job == id {
		return f
	}
	return nil
}

// counted counts the bytes read from and written to a session's stream
// into its forward.
type counted struct {
	rw      io.ReadWriter
	in, out *atomic.Int64
}

func (c counted) Read(p []byte) (int, error) {
	k, err := c.rw.Read(p)
	c.in.Add(int64(k))
	return k, err
}

func (c counted) Write(p []byte) (int, error) {
	k, err := c.rw.Write(p)
	c.out.Add(int64(k))
	return k, err
}

// errNotTCP: a passed descriptor must be a TCP connection.
var errNotTCP = errors.New("the passed descriptor is not a TCP connection")

// receiveConn reads the connection a client passes over uc (one byte
// with one descriptor) within passWait.
func receiveConn(uc *net.UnixConn) (*net.TCPConn, error) {
	_ = uc.SetReadDeadline(time.Now().Add(passWait))
	defer func() { _ = uc.SetReadDeadline(time.Time{}) }()
	buf, oob := make([]byte, 1), make([]byte, syscall.CmsgSpace(4*4))
	_, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, fmt.Errorf("reading the passed connection: %w", err)
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, fmt.Errorf("the passed connection: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		if fs, err := syscall.ParseUnixRights(&m); err == nil {
			fds = append(fds, fs...)
		}
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			_ = syscall.Close(fd)
		}
		return nil, fmt.Errorf("%d descriptors passed, want 1", len(fds))
	}
	f := os.NewFile(uintptr(fds[0]), "forwarded")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("the passed connection: %w", err)
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, errNotTCP
	}
	return tc, nil
}

// PassConn hands c to the node over an upgraded forward session's
// connection uc (Client.ForwardConn, where TakesConn): the
// node then copies between c and the member. It waits until the node or
// ctx ends the forward, and closes uc; c is the caller's to close (the
// node holds a copy of its own).
func PassConn(ctx context.Context, uc net.Conn, c *net.TCPConn) error {
	u, ok := uc.(*upgradedConn)
	if !ok || !u.passes {
		return errors.New("pass: the node did not agree to take the connection")
	}
	unix, ok := u.Conn.(*net.UnixConn)
	if !ok {
		return errors.New("pass: the local API is not on a unix socket")
	}
	defer unix.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		_, _, serr = unix.WriteMsgUnix([]byte{1}, syscall.UnixRights(int(fd)), nil)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("pass: %w", serr)
	}
	stop := context.AfterFunc(ctx, func() { unix.Close() })
	defer stop()
	_, _ = io.Copy(io.Discard, u) // the node closes it when the forward ends
	return nil
}
