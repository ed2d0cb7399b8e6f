package node

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/gpumesh/gpumesh/internal/pipe"
	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node/sessionwire"
)

// The submitter's side of sessions: job exec and job port-forward open a
// session into a member of a running job through this peer, the job's
// submitter, which alone the member's provider lets in. The local API
// hands the CLI the session's stream itself (an upgraded connection); the
// node only opens it and passes the bytes on.

// Errors of OpenSession, by what the caller can do about them.
var (
	ErrNoSuchJob      = errors.New("no such job on this peer")
	ErrJobNotRunning  = errors.New("job not running")
	ErrSessionRefused = errors.New("the member's provider refused the session")
)

// sessionUpgrade is the Upgrade header of the local API's session call.
const sessionUpgrade = "gpumesh-session/1"

// routeJobSession is the local API's session call (apiRoutes): POST a
// sessionwire.Open, upgraded.
const routeJobSession = "/jobs/{id}/session"

// OpenSession opens a session (o: exec or forward, rank and what to do;
// its Job and Attempt are filled in) into a member of job id, which this
// peer submitted and which runs now. The stream it returns has had its
// reply: what follows is the session's frames (exec) or the connection's
// bytes (forward).
func (n *Node) OpenSession(ctx context.Context, id string, o sessionwire.Open) (io.ReadWriteCloser, error) {
	j, ok := n.Job(id)
	if !ok {
		return nil, fmt.Errorf("%w: %s (`gpumesh job ls` lists them)", ErrNoSuchJob, text.Clip(id))
	}
	if j.State != JobRunning {
		return nil, fmt.Errorf("%w: job %s is %s; exec and port-forward need a running job", ErrJobNotRunning, j.ID, j.State)
	}
	if o.Rank < 0 || o.Rank >= len(j.Runs) {
		return nil, fmt.Errorf("%w: job %s has members 0 to %d, not %d; pick one with --rank", ErrJobNotRunning, j.ID, len(j.Runs)-1, o.Rank)
	}
	o.Job, o.Attempt = j.ID, j.Attempt
	if err := o.Check(); err != nil {
		return nil, err
	}
	provider := j.Runs[o.Rank].Provider
	var s io.ReadWriteCloser
	if provider == n.id.PeerID {
		a, b := net.Pipe()
		go n.serveSession(b, n.id.PeerID)
		s = a
	} else {
		sctx, cancel := context.WithTimeout(ctx, startTimeout)
		st, err := n.host.NewStream(sctx, provider, sessionwire.Protocol)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%w: member %d's provider %s cannot be reached: %v", ErrSessionRefused, o.Rank, provider, err)
		}
		s = st
	}
	// The open and its reply within openWait, and within ctx: a stream's
	// deadlines bound them where it has them; the timer where it has not
	// (a simulated network's streams), resetting the stream.
	const openWait = openTimeout + portDialTimeout
	if dl, ok := s.(interface{ SetDeadline(time.Time) error }); ok {
		_ = dl.SetDeadline(time.Now().Add(openWait))
		defer func() { _ = dl.SetDeadline(time.Time{}) }()
	}
	octx, cancel := context.WithTimeout(ctx, openWait)
	defer cancel()
	stop := context.AfterFunc(octx, func() { pipe.Abort(s) })
	fail := func(err error) (io.ReadWriteCloser, error) {
		stop()
		pipe.Abort(s)
		if octx.Err() != nil {
			err = fmt.Errorf("%w (no answer within %s)", err, openWait)
		}
		return nil, err
	}
	if err := sessionwire.WriteOpen(s, o); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrSessionRefused, err))
	}
	br := bufio.NewReader(s)
	rep, err := sessionwire.ReadReply(br)
	if err != nil {
		return fail(fmt.Errorf("%w: no answer from member %d's provider: %v", ErrSessionRefused, o.Rank, err))
	}
	if !stop() {
		return fail(fmt.Errorf("%w: no answer from member %d's provider", ErrSessionRefused, o.Rank))
	}
	if rep.Error != "" {
		pipe.Abort(s)
		return nil, fmt.Errorf("%w: %s", ErrSessionRefused, text.Line(rep.Error))
	}
	return &pipe.Conn{R: br, Raw: s}, nil
}

// serveJobSession answers POST /v0/jobs/{id}/session: the body is a
// sessionwire.Open; the answer is 101 Switching Protocols, and the
// connection then carries the session.
func (n *Node) serveJobSession(w http.ResponseWriter, r *http.Request) {
	var o sessionwire.Open
	dec := json.NewDecoder(io.LimitReader(r.Body, sessionwire.MaxOpen))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&o); err != nil {
		writeError(w, http.StatusBadRequest, "session: "+err.Error())
		return
	}
	if r.Header.Get("Upgrade") != sessionUpgrade {
		writeError(w, http.StatusBadRequest, "session: this call upgrades the connection; send 'Connection: Upgrade' and 'Upgrade: "+sessionUpgrade+"'")
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		writeError(w, http.StatusInternalServerError, "session: this connection cannot be upgraded")
		return
	}
	s, err := n.OpenSession(r.Context(), r.PathValue("id"), o)
	switch {
	case errors.Is(err, ErrNoSuchJob):
		writeError(w, http.StatusNotFound, err.Error())
		return
	case errors.Is(err, ErrJobNotRunning):
		writeError(w, http.StatusConflict, err.Error())
		return
	case errors.Is(err, sessionwire.ErrBadFrame):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	defer s.Close()
	conn, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	// A forward's connection may be passed to this peer (submitter_forward.go).
	uc, _ := conn.(*net.UnixConn)
	pass := o.Kind == sessionwire.KindForward && r.Header.Get(passConnHeader) == "1" && uc != nil && brw.Reader.Buffered() == 0
	head := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + sessionUpgrade + "\r\n"
	if pass {
		head += passConnHeader + ": 1\r\n"
	}
	if _, err := io.WriteString(conn, head+"\r\n"); err != nil {
		return
	}
	var member io.ReadWriter = s
	if f := n.forwardOf(r.PathValue("id"), r.Header.Get(forwardHeader)); f != nil && o.Kind == sessionwire.KindForward {
		f.conns.Add(1)
		f.total.Add(1)
		defer f.conns.Add(-1)
		member = counted{rw: s, in: &f.bytesIn, out: &f.bytesOut}
	}
	if !pass {
		pipe.Join(&pipe.Conn{R: brw.Reader, Raw: conn}, conn, member, s)
		return
	}
	tc, err := receiveConn(uc)
	if err != nil {
		n.log.Debug("port-forward: no connection passed", "err", err)
		return
	}
	defer tc.Close()
	watched := make(chan struct{})
	var joined atomic.Bool
	go func() { // the client closing its end first ends the forward at once
		defer close(watched)
		_, _ = io.Copy(io.Discard, uc)
		if !joined.Load() {
			pipe.Abort(tc)
			pipe.Abort(s)
		}
	}()
	pipe.Join(tc, tc, member, s)
	joined.Store(true)
	_ = conn.Close()
	<-watched
}
