package node

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// The submitter's side of running a job: once a cluster has formed, the
// submitter opens a job stream to every member, starts member 0 first when
// the members need a rendezvous (it answers with its port), then the rest;
// it gathers logs, outputs and receipts, notices a member that stops
// answering within three heartbeats, stops every member on cancel,
// failure or timeout, and records how the job ended.

// Member run states.
const (
	MemberStarting = "starting"
	MemberRunning  = "running"
	MemberExited   = "exited"
	MemberLost     = "lost"   // stopped answering
	MemberFailed   = "failed" // could not run
)

// MemberRun is one member's part of a job's run, as its submitter saw it.
type MemberRun struct {
	Rank     int                  `json:"rank"`
	Provider peer.ID              `json:"provider"`
	Class    string               `json:"class"`
	GPUs     uint32               `json:"gpus"`
	State    string               `json:"state"`
	ExitCode int                  `json:"exitCode"`
	Started  time.Time            `json:"started,omitzero"`
	Ended    time.Time            `json:"ended,omitzero"`
	Outputs  []receipt.OutputFile `json:"outputs,omitempty"`
	Receipt  string               `json:"receipt,omitempty"` // "countersigned", or why not
	Error    string               `json:"error,omitempty"`
	Paid     uint64               `json:"paid,omitempty"` // paid to its provider as it ran (settlement), in the unit's smallest unit
}

var (
	errCancelled = errors.New("cancelled by the submitter")
	errTimedOut  = errors.New("timed out")
)

// runState is the submitter's part of running jobs.
type runState struct {
	logsMu sync.Mutex
	logs   map[string]*jobLog

	runsMu sync.Mutex
	runs   map[string]*jobRun // jobs running now
}

type jobRun struct {
	cancel context.CancelCauseFunc
	done   chan struct{}
}

// memberEvent is a frame from a member, or the end of its stream.
type memberEvent struct {
	rank    int
	f       jobwire.Frame
	outputs []receipt.OutputFile // with an exit: the outputs received whole
	err     error
}

// startRun runs a formed job in the background.
func (n *Node) startRun(id string) {
	ctx, done := n.lifeContext()
	if ctx == nil {
		return
	}
	rctx, cancel := context.WithCancelCause(ctx)
	r := &jobRun{cancel: cancel, done: make(chan struct{})}
	n.runsMu.Lock()
	if n.runs == nil {
		n.runs = map[string]*jobRun{}
	}
	n.runs[id] = r
	n.runsMu.Unlock()
	go func() {
		defer done()
		defer close(r.done)
		defer func() {
			n.runsMu.Lock()
			delete(n.runs, id)
			n.runsMu.Unlock()
			cancel(nil)
		}()
		n.runJob(rctx, id)
	}()
}

// stopRun cancels a running job and waits until its members have stopped;
// false if the job is not running.
func (n *Node) stopRun(ctx context.Context, id string, cause error) (bool, error) {
	n.runsMu.Lock()
	r, ok := n.runs[id]
	n.runsMu.Unlock()
	if !ok {
		return false, nil
	}
	r.cancel(cause)
	select {
	case <-r.done:
		return true, nil
	case <-ctx.Done():
		return true, ctx.Err()
	}
}

// openedMember is a member's stream, once opened and started (or why not).
type openedMember struct {
	rank int
	c    *memberConn
	err  error
}

// memberConn is the submitter's stream to one member.
type memberConn struct {
	rw io.ReadWriteCloser
	fw *jobwire.Writer
	ip string // the member's address as this peer reaches it
}

// runJob drives one attempt of a formed job to its end.
func (n *Node) runJob(ctx context.Context, id string) {
	j, ok := n.Job(id)
	if !ok {
		return
	}
	jl, err := n.openLog(id)
	if err != nil {
		n.finishJob(id, JobFailed, fmt.Sprintf("job log: %v", err), nil)
		return
	}
	defer jl.end()
	timeout, _ := time.ParseDuration(j.Spec.Timeout)
	ctx, cancelTimeout := context.WithTimeoutCause(ctx, timeout+stopWait+startTimeout, errTimedOut)
	defer cancelTimeout()

	members := j.Members
	world := 0
	runs := make([]MemberRun, len(members))
	for i, m := range members {
		world += int(m.GPUs)
		runs[i] = MemberRun{Rank: i, Provider: m.Provider, Class: m.Class, GPUs: m.GPUs, State: MemberStarting}
	}
	launcher := j.Spec.Launcher
	rendezvous := len(members) > 1 || (launcher != "" && launcher != exec.LauncherNone)
	n.updateJob(id, func(j *Job) {
		j.State, j.Runs, j.Started = JobRunning, append([]MemberRun(nil), runs...), time.Now().UTC()
	})
	jl.note(fmt.Sprintf("attempt %d: running on %d members (%d GPUs)", j.Attempt+1, len(members), world))

	outDir, err := n.jobDir(id)
	if err != nil {
		n.finishJob(id, JobFailed, err.Error(), nil)
		return
	}
	outDir = filepath.Join(outDir, "outputs")
	events := make(chan memberEvent, 64)
	conns := make([]*memberConn, len(members))
	opened := make(chan openedMember, len(members))
	var readers sync.WaitGroup
	pending := 0 // members started whose streams have not ended
	start := func(rank int, masterAddr string, masterPort int) {
		pending++
		readers.Add(1)
		go func() {
			defer readers.Done()
			c, err := n.openMember(ctx, members[rank])
			if err == nil {
				addr := masterAddr
				if rank == 0 {
					addr = c.ip
				}
				err = c.fw.Write(jobwire.Frame{T: jobwire.KindStart, Start: &jobwire.StartFrame{
					Job: id, Attempt: j.Attempt, Rank: rank, Members: len(members), WorldGPUs: world,
					Spec: j.Spec, MasterAddr: addr, MasterPort: masterPort, Rendezvous: rendezvous, Pays: n.settles(),
				}})
				if err != nil {
					_ = c.rw.Close()
				}
			}
			opened <- openedMember{rank, c, err}
			if err == nil {
				n.readMember(rank, c.rw, filepath.Join(outDir, fmt.Sprintf("rank-%d", rank)), events)
			}
		}()
	}
	start(0, "", 0)
	if !rendezvous {
		for r := 1; r < len(members); r++ {
			start(r, "", 0)
		}
	}

	pay := newPayer(n, jl, members, func(rank int) string {
		return fmt.Sprintf("member %d (%s)", rank, shortPeer(members[rank].Provider))
	})
	defer pay.wait()

	lostAfter := n.heartbeat() * lostAfterBeats
	lastSeen := make([]time.Time, len(members))
	for i := range lastSeen {
		lastSeen[i] = time.Now()
	}
	ticker := time.NewTicker(n.heartbeat())
	defer ticker.Stop()
	var (
		failure   string // why the job failed, first cause
		exitCode  *int
		lost      []int
		stopping  bool
		stopTimer <-chan time.Time
		done      = ctx.Done()
	)
	stopAll := func(why string) {
		if stopping {
			return
		}
		stopping = true
		jl.note("stopping every member: " + why)
		for _, c := range conns {
			if c != nil {
				go func() { _ = c.fw.Write(jobwire.Frame{T: jobwire.KindStop, Reason: text.ClipRaw(why)}) }()
			}
		}
		stopTimer = time.After(stopWait)
	}
	fail := func(why string) {
		if failure == "" {
			failure = why
		}
		stopAll(why)
	}
	save := func() { n.updateJob(id, func(j *Job) { j.Runs = append([]MemberRun(nil), runs...) }) }
	name := func(rank int) string { return fmt.Sprintf("member %d (%s)", rank, shortPeer(members[rank].Provider)) }

	for pending > 0 {
		select {
		case o := <-opened:
			if o.err != nil {
				pending--
				runs[o.rank].State, runs[o.rank].Error = MemberFailed, o.err.Error()
				fail(fmt.Sprintf("%s could not be reached: %v", name(o.rank), o.err))
				save()
				continue
			}
			conns[o.rank] = o.c
			lastSeen[o.rank] = time.Now()
			if stopping {
				go func() { _ = o.c.fw.Write(jobwire.Frame{T: jobwire.KindStop, Reason: "the job is stopping"}) }()
			}
		case ev := <-events:
			r := ev.rank
			lastSeen[r] = time.Now()
			if ev.err != nil {
				pending--
				if runs[r].State == MemberStarting || runs[r].State == MemberRunning {
					runs[r].State, runs[r].Error = MemberLost, "its stream ended: "+ev.err.Error()
					runs[r].Ended = time.Now().UTC()
					if !stopping { // gone on its own, not stopped by us
						lost = append(lost, r)
						jl.note(name(r) + " is gone: " + ev.err.Error())
						fail(name(r) + " stopped answering (its stream closed)")
					}
					save()
				}
				if runs[r].Receipt == "" && runs[r].State == MemberExited {
					runs[r].Receipt = "missing: the member left before sending one"
				}
				continue
			}
			switch ev.f.T {
			case jobwire.KindReady:
				if r == 0 && rendezvous && !stopping {
					ip := ""
					if conns[0] != nil {
						ip = conns[0].ip
					}
					for k := 1; k < len(members); k++ {
						start(k, ip, ev.f.Port)
					}
				}
			case jobwire.KindStarted:
				runs[r].State, runs[r].Started = MemberRunning, time.UnixMilli(ev.f.At).UTC()
				save()
			case jobwire.KindLog:
				jl.write(r, ev.f.Data)
			case jobwire.KindError:
				runs[r].State, runs[r].Error = MemberFailed, ev.f.Reason
				fail(fmt.Sprintf("%s could not run the job: %s", name(r), ev.f.Reason))
				save()
			case jobwire.KindExit:
				x := ev.f.Exit
				runs[r].State, runs[r].ExitCode, runs[r].Outputs = MemberExited, x.Code, ev.outputs
				runs[r].Started, runs[r].Ended = time.UnixMilli(x.Start).UTC(), time.UnixMilli(x.End).UTC()
				jl.note(fmt.Sprintf("%s exited with code %d", name(r), x.Code))
				switch {
				case x.Reason != "":
					fail(fmt.Sprintf("%s stopped the work: %s", name(r), x.Reason))
				case x.TimedOut:
					fail(fmt.Sprintf("timed out after %s (the spec's timeout)", j.Spec.Timeout))
				case x.Code != 0 && !stopping:
					code := x.Code
					exitCode = &code
					fail(fmt.Sprintf("%s exited with code %d", name(r), x.Code))
				case r == 0 && exec.EndsWithRankZero(launcher):
					stopAll("member 0 (the head) has ended")
				}
				save()
			case jobwire.KindBill:
				pay.bill(ctx, r, conns[r], *ev.f.Bill)
			case jobwire.KindReceipt:
				runs[r].Paid = pay.total(r)
				runs[r].Receipt = n.countersign(ctx, conns[r], members[r], runs[r], ev.f.Receipt, id, j.Attempt, pay.signatures(r))
				if runs[r].Receipt != "countersigned" {
					jl.note(fmt.Sprintf("receipt of %s refused: %s", name(r), runs[r].Receipt))
				}
				save()
			}
		case <-ticker.C:
			now := time.Now()
			for r, c := range conns {
				if c != nil && (runs[r].State == MemberStarting || runs[r].State == MemberRunning) && now.Sub(lastSeen[r]) > lostAfter {
					runs[r].State, runs[r].Error = MemberLost, fmt.Sprintf("no heartbeat for %s", now.Sub(lastSeen[r]).Round(time.Millisecond))
					runs[r].Ended = now.UTC()
					lost = append(lost, r)
					jl.note(fmt.Sprintf("%s stopped answering: no heartbeat for %s", name(r), now.Sub(lastSeen[r]).Round(time.Millisecond)))
					fail(fmt.Sprintf("%s stopped answering (no heartbeat for %s)", name(r), lostAfter))
					_ = c.rw.Close()
					save()
				}
			}
		case <-done:
			done = nil
			cause := context.Cause(ctx)
			if errors.Is(cause, errTimedOut) {
				fail(fmt.Sprintf("timed out after %s (the spec's timeout)", j.Spec.Timeout))
			} else {
				stopAll(cause.Error())
			}
		case <-stopTimer:
			for _, c := range conns {
				if c != nil {
					_ = c.rw.Close()
				}
			}
			stopTimer = nil
		}
	}
	for _, c := range conns {
		if c != nil {
			_ = c.rw.Close()
		}
	}
	readers.Wait()
	save()
	// Every member releases its GPUs when its part ends; a member that
	// never ran is told to.
	for r, m := range members {
		if runs[r].State != MemberExited {
			n.send(context.WithoutCancel(ctx), m.Provider, m.Addrs, &gossip.Release{Job: jobID(id), From: n.id.PeerID, Provider: m.Provider, Reason: "the job ended"})
		}
	}

	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, errCancelled):
		n.finishJob(id, JobCancelled, "cancelled by the submitter; every member was stopped", nil)
	case len(lost) > 0 && j.Attempt < j.Spec.Retries:
		why := fmt.Sprintf("%s was lost; retrying (attempt %d of %d, the spec's retries: %d) on a cluster negotiated again, with the spares of the market",
			name(lost[0]), j.Attempt+2, j.Spec.Retries+1, j.Spec.Retries)
		jl.note(why)
		n.retryJob(id, why)
	case failure == "" && ctx.Err() != nil:
		n.finishJob(id, JobFailed, "this peer stopped while the job ran; every member was stopped", nil)
	case failure != "":
		if len(lost) > 0 {
			failure += fmt.Sprintf("; not retried (the spec's retries: %d)", j.Spec.Retries)
		}
		if exitCode == nil {
			one := 1
			exitCode = &one
		}
		n.finishJob(id, JobFailed, failure, exitCode)
	default:
		zero := 0
		n.finishJob(id, JobDone, "", &zero)
	}
}

// openMember opens the job stream to a member; a peer that is its own
// member talks to itself over a pipe.
func (n *Node) openMember(ctx context.Context, m gossip.Member) (*memberConn, error) {
	if m.Provider == n.id.PeerID {
		a, b := net.Pipe()
		go n.serveMember(b, n.id.PeerID)
		return &memberConn{rw: a, fw: jobwire.NewWriter(a), ip: "127.0.0.1"}, nil
	}
	for _, s := range m.Addrs {
		if a, err := ma.NewMultiaddr(s); err == nil {
			n.host.Peerstore().AddAddr(m.Provider, a, time.Hour)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	s, err := n.host.NewStream(sctx, m.Provider, jobwire.Protocol)
	if err != nil {
		return nil, err
	}
	ip := ""
	if a, err := manet.ToIP(s.Conn().RemoteMultiaddr()); err == nil {
		ip = a.String()
	}
	return &memberConn{rw: s, fw: jobwire.NewWriter(s), ip: ip}, nil
}

// readMember reads a member's frames into events until its stream ends.
// Output files are written under dir as they arrive and checked against
// their SHA-256.
func (n *Node) readMember(rank int, rw io.Reader, dir string, events chan<- memberEvent) {
	br := bufio.NewReader(rw)
	var (
		cur      *os.File
		want     receipt.OutputFile
		got      int64
		h        hash.Hash
		received []receipt.OutputFile
	)
	closeCur := func() {
		if cur != nil {
			_ = cur.Close()
			cur = nil
		}
	}
	defer closeCur()
	finish := func() error {
		if got != want.Size {
			return nil
		}
		closeCur()
		if sum := hex.EncodeToString(h.Sum(nil)); sum != want.SHA256 {
			return fmt.Errorf("output %s arrived with SHA-256 %s, not the %s its member sent", want.Path, sum, want.SHA256)
		}
		if len(received) == receipt.MaxOutputFiles {
			return fmt.Errorf("more than %d output files", receipt.MaxOutputFiles)
		}
		received = append(received, want)
		return nil
	}
	for {
		f, err := jobwire.Read(br)
		if err == nil {
			switch f.T {
			case jobwire.KindFile:
				closeCur()
				want, got, h = *f.File, 0, sha256.New()
				path := filepath.Join(dir, filepath.FromSlash(want.Path))
				if err = os.MkdirAll(filepath.Dir(path), 0o700); err == nil {
					cur, err = os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
				}
				if err == nil {
					err = finish()
				}
				f = jobwire.Frame{T: jobwire.KindHeartbeat}
			case jobwire.KindChunk:
				if cur == nil || got+int64(len(f.Data)) > want.Size {
					err = fmt.Errorf("%w: output data beyond the announced size", jobwire.ErrBadFrame)
					break
				}
				if _, err = cur.Write(f.Data); err == nil {
					h.Write(f.Data)
					got += int64(len(f.Data))
					err = finish()
				}
				f = jobwire.Frame{T: jobwire.KindHeartbeat}
			case jobwire.KindExit:
				if cur != nil {
					err = fmt.Errorf("output %s ended short: %d of %d bytes", want.Path, got, want.Size)
				}
			}
		}
		if err != nil {
			events <- memberEvent{rank: rank, err: err}
			return
		}
		ev := memberEvent{rank: rank, f: f}
		if f.T == jobwire.KindExit {
			ev.outputs, received = received, nil
		}
		events <- ev
	}
}

// countersign checks a member's receipt against what this peer saw and
// agreed, signs it, keeps it and sends the signature back. It returns
// "countersigned" or why not.
func (n *Node) countersign(ctx context.Context, c *memberConn, m gossip.Member, run MemberRun, sr *receipt.Signed, job string, attempt int, paid map[string]uint64) string {
	r := sr.Receipt
	var sum uint64
	for _, p := range r.Payments {
		v, ok := paid[p]
		if !ok {
			return "it lists a payment this peer did not make: " + p
		}
		sum += v
	}
	switch {
	case r.Paid != sum:
		return fmt.Sprintf("it says %d was paid, the payments it lists are %d", r.Paid, sum)
	case r.Job != job || r.Rank != run.Rank || r.Attempt != attempt:
		return fmt.Sprintf("it is for job %s attempt %d member %d", r.Job, r.Attempt, r.Rank)
	case r.Consumer != n.id.SolanaAddress:
		return "it names another consumer, " + r.Consumer
	case r.Provider != solanaAddress(m.Provider):
		return "it names another provider, " + r.Provider
	case r.GPUs != m.GPUs || r.Class != m.Class:
		return fmt.Sprintf("it bills %d %s GPUs, the lease was %d %s", r.GPUs, r.Class, m.GPUs, m.Class)
	case r.Price != m.Price:
		return fmt.Sprintf("it bills %d per GPU-hour, the bid was %d", r.Price, m.Price)
	case r.ExitCode != run.ExitCode || r.ResultHash != receipt.ResultHash(run.ExitCode, run.Outputs):
		return "its result does not match the exit code and outputs received"
	case run.State != MemberExited:
		return "the member's exit was not received"
	}
	if d := time.Duration(r.End-r.Start) * time.Millisecond; d > time.Since(run.Started)+time.Minute {
		return fmt.Sprintf("it bills %s, longer than the member ran", d)
	}
	key, err := n.ed25519Key()
	if err != nil {
		return err.Error()
	}
	signed := *sr
	if err := signed.Countersign(key); err != nil {
		return err.Error()
	}
	if err := n.saveReceipt(signed); err != nil {
		return "not saved: " + err.Error()
	}
	if c != nil {
		go func() { _ = c.fw.Write(jobwire.Frame{T: jobwire.KindCountersign, Sig: signed.ConsumerSig}) }()
	}
	return "countersigned"
}
