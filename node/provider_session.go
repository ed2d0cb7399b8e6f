package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/internal/pipe"
	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node/sessionwire"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"
)

// The provider's side of sessions (sessionwire): a running member's
// submitter, and no other peer, may run commands in it (job exec) and
// reach the ports its work listens on (job port-forward). Every session
// ends when the member's work ends.

// Bounds of sessions into one member.
const (
	maxMemberExecs = 8   // execs at once
	maxMemberConns = 128 // forwarded connections at once
	// sessionOpens is how many sessions a member's submitter may open a
	// second, and at once (the burst): a browser opens a few dozen
	// connections to a notebook at once.
	sessionOpens     = 50
	sessionOpenBurst = 200
	sessionResizes   = 20 // terminal resizes a second; more are dropped
	openTimeout      = 10 * time.Second
	portDialTimeout  = 10 * time.Second
	sessionWrite     = 30 * time.Second // one frame to a submitter that stops reading
)

// sessionState is the provider's record of the members that can be
// entered now.
type sessionState struct {
	liveMu sync.Mutex
	live   map[string]*liveMember // by liveKey; members whose work runs
	// refusals bounds the log lines of refused sessions, so a stranger
	// cannot fill the log.
	refusals *rate.Limiter
}

// liveMember is a member whose work runs.
type liveMember struct {
	job       string
	rank      int
	submitter peer.ID
	task      string
	att       exec.Attacher
	ctx       context.Context // ends when the work ends
	cancel    context.CancelFunc
	opens     *rate.Limiter

	mu           sync.Mutex // guards execs and conns
	execs, conns int
}

func liveKey(job string, attempt, rank int) string {
	return job + "/" + strconv.Itoa(attempt) + "/" + strconv.Itoa(rank)
}

// addLive makes a member whose work has started reachable by its
// submitter, until dropLive. Executors that cannot attach are left out.
func (n *Node) addLive(ctx context.Context, job string, attempt, rank int, submitter peer.ID, task string, ex exec.Executor) {
	att, ok := ex.(exec.Attacher)
	if !ok {
		return
	}
	lctx, cancel := context.WithCancel(ctx)
	lm := &liveMember{job: job, rank: rank, submitter: submitter, task: task, att: att, ctx: lctx, cancel: cancel,
		opens: rate.NewLimiter(sessionOpens, sessionOpenBurst)}
	n.liveMu.Lock()
	defer n.liveMu.Unlock()
	if n.live == nil {
		n.live = map[string]*liveMember{}
	}
	if old := n.live[liveKey(job, attempt, rank)]; old != nil {
		old.cancel()
	}
	n.live[liveKey(job, attempt, rank)] = lm
}

// dropLive ends the sessions of a member whose work has ended.
func (n *Node) dropLive(job string, attempt, rank int) {
	n.liveMu.Lock()
	defer n.liveMu.Unlock()
	if lm := n.live[liveKey(job, attempt, rank)]; lm != nil {
		lm.cancel()
		delete(n.live, liveKey(job, attempt, rank))
	}
}

func (n *Node) handleSession(s network.Stream) {
	n.serveSession(s, s.Conn().RemotePeer())
}

// serveSession serves one session from the peer from.
func (n *Node) serveSession(rw io.ReadWriteCloser, from peer.ID) {
	defer rw.Close()
	dl, _ := rw.(interface{ SetReadDeadline(time.Time) error })
	if dl != nil {
		_ = dl.SetReadDeadline(time.Now().Add(openTimeout))
	}
	br := bufio.NewReader(rw)
	o, err := sessionwire.ReadOpen(br)
	if err != nil {
		n.refused(from, "", "a bad open: "+err.Error())
		_ = sessionwire.WriteReply(rw, sessionwire.Reply{Error: err.Error()})
		return
	}
	if dl != nil {
		_ = dl.SetReadDeadline(time.Time{})
	}
	lm, release, why := n.admitSession(o, from)
	if why != "" {
		_ = sessionwire.WriteReply(rw, sessionwire.Reply{Error: why})
		return
	}
	defer release()
	switch o.Kind {
	case sessionwire.KindExec:
		n.serveExec(lm, o, rw, br)
	case sessionwire.KindForward:
		n.serveForward(lm, o, rw, br)
	}
}

// refused logs a refused session, at most a few a second.
func (n *Node) refused(from peer.ID, job, why string) {
	n.liveMu.Lock()
	if n.refusals == nil {
		n.refusals = rate.NewLimiter(1, 10)
	}
	ok := n.refusals.Allow()
	n.liveMu.Unlock()
	if ok {
		n.log.Warn("session refused", "peer", from, "job", job, "why", why)
	}
}

// admitSession decides whether from may open o: only into a member that
// runs here, only its own submitter, within the member's bounds. It returns
// the member and what gives its place back, or why not.
func (n *Node) admitSession(o sessionwire.Open, from peer.ID) (*liveMember, func(), string) {
	n.liveMu.Lock()
	lm := n.live[liveKey(o.Job, o.Attempt, o.Rank)]
	n.liveMu.Unlock()
	// A stranger learns no more than the submitter of a member that is not
	// here: the same answer.
	nothing := fmt.Sprintf("no running member %d of job %s (attempt %d) submitted by this peer is on this provider; `gpumesh job status ID` says whether the job runs and where", o.Rank, text.Clip(o.Job), o.Attempt)
	switch {
	case lm == nil:
		n.refused(from, o.Job, "no such member running")
		return nil, nil, nothing
	case lm.submitter != from:
		n.refused(from, o.Job, "not the job's submitter ("+lm.submitter.String()+")")
		return nil, nil, nothing
	case !lm.opens.Allow():
		return nil, nil, fmt.Sprintf("too many sessions opened into this member: at most %d a second (%d at once)", sessionOpens, sessionOpenBurst)
	}
	lm.mu.Lock()
	defer lm.mu.Unlock()
	if o.Kind == sessionwire.KindExec {
		if lm.execs >= maxMemberExecs {
			return nil, nil, fmt.Sprintf("%d execs run in this member already, the most at once; end one first", maxMemberExecs)
		}
		lm.execs++
		return lm, func() { lm.mu.Lock(); lm.execs--; lm.mu.Unlock() }, ""
	}
	if lm.conns >= maxMemberConns {
		return nil, nil, fmt.Sprintf("%d forwarded connections into this member are open already, the most at once", maxMemberConns)
	}
	lm.conns++
	return lm, func() { lm.mu.Lock(); lm.conns--; lm.mu.Unlock() }, ""
}

// abortStream ends a stream at once: a reset where it has one.
func abortStream(rw io.Closer) {
	if r, ok := rw.(interface{ Reset() error }); ok {
		_ = r.Reset()
		return
	}
	_ = rw.Close()
}

// serveExec runs o's command in the member, its input and output over rw.
// The submitter's stream going away kills the command; so does the
// member's end.
func (n *Node) serveExec(lm *liveMember, o sessionwire.Open, rw io.ReadWriteCloser, br *bufio.Reader) {
	if sessionwire.WriteReply(rw, sessionwire.Reply{}) != nil {
		return
	}
	n.log.Info("exec into a job member", "job", lm.job, "rank", lm.rank, "command", text.Clip(fmt.Sprint(o.Command)), "tty", o.TTY)
	ctx, cancel := context.WithCancel(lm.ctx)
	defer cancel()
	stopAbort := context.AfterFunc(lm.ctx, func() { abortStream(rw) })
	defer stopAbort()
	fw := sessionwire.NewWriter(rw)
	fw.Timeout = sessionWrite

	var stdin io.Reader
	pr, pw := io.Pipe()
	defer pr.Close()
	if o.Stdin {
		stdin = pr
	}
	resize := make(chan exec.WinSize, 1)
	resizes := rate.NewLimiter(sessionResizes, sessionResizes)
	go func() { // what the submitter sends
		defer cancel()
		for {
			f, err := sessionwire.Read(br)
			if err != nil {
				_ = pw.CloseWithError(io.ErrUnexpectedEOF)
				return
			}
			switch f.Type {
			case sessionwire.Stdin:
				if !o.Stdin {
					continue
				}
				if _, err := pw.Write(f.Data); err != nil {
					continue // the command closed its stdin
				}
			case sessionwire.StdinEOF:
				_ = pw.Close()
			case sessionwire.Resize:
				if !o.TTY || !resizes.Allow() {
					continue
				}
				rows, cols := f.Size()
				select { // the newest size wins
				case <-resize:
				default:
				}
				resize <- exec.WinSize{Rows: uint16(rows), Cols: uint16(cols)}
			default: // a member's frame from the submitter
				_ = pw.CloseWithError(io.ErrUnexpectedEOF)
				return
			}
		}
	}()
	x := exec.ExecSpec{
		Command: o.Command, TTY: o.TTY, Size: exec.WinSize{Rows: uint16(o.Rows), Cols: uint16(o.Cols)},
		Resize: resize, Stdin: stdin,
		Stdout: sessionwire.DataWriter{FW: fw, Type: sessionwire.Stdout},
		Stderr: sessionwire.DataWriter{FW: fw, Type: sessionwire.Stderr},
	}
	var group *exec.ProcessGroup
	x.Spawned = func(g exec.ProcessGroup) error { // a terminal's session: recorded for a restart after a crash
		if err := n.recordExec(lm.task, g, true); err != nil {
			return err
		}
		group = &g
		return nil
	}
	code, err := lm.att.Exec(ctx, lm.task, x)
	if group != nil {
		if err := n.recordExec(lm.task, *group, false); err != nil {
			n.log.Warn("exec's record not removed", "task", lm.task, "err", err)
		}
	}
	if err != nil {
		if lm.ctx.Err() != nil {
			err = errors.New("the job's member ended")
		}
		_ = fw.Write(sessionwire.Frame{Type: sessionwire.Error, Data: []byte(text.Cut(err.Error(), sessionwire.MaxText))})
		return
	}
	_ = fw.Write(sessionwire.ExitFrame(code))
}

// serveForward connects rw to o's port of the member.
func (n *Node) serveForward(lm *liveMember, o sessionwire.Open, rw io.ReadWriteCloser, br *bufio.Reader) {
	dctx, cancel := context.WithTimeout(lm.ctx, portDialTimeout)
	c, err := lm.att.DialPort(dctx, lm.task, o.Port)
	cancel()
	if err != nil {
		_ = sessionwire.WriteReply(rw, sessionwire.Reply{Error: fmt.Sprintf("port %d of member %d: %v", o.Port, lm.rank, err)})
		return
	}
	defer c.Close()
	if sessionwire.WriteReply(rw, sessionwire.Reply{}) != nil {
		return
	}
	stop := context.AfterFunc(lm.ctx, func() { c.Close(); abortStream(rw) })
	defer stop()
	pipe.Join(&pipe.Conn{R: br, Raw: rw}, rw, c, c)
}

// LiveSessions is how many sessions (execs and forwarded connections) are
// open into this provider's members of job id.
func (n *Node) LiveSessions(job string) int {
	n.liveMu.Lock()
	defer n.liveMu.Unlock()
	total := 0
	for _, lm := range n.live {
		if lm.job == job {
			lm.mu.Lock()
			total += lm.execs + lm.conns
			lm.mu.Unlock()
		}
	}
	return total
}
