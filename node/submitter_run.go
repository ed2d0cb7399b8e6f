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
	"github.com/gpumesh/gpumesh/node/attempt"
	"github.com/gpumesh/gpumesh/node/jobnet"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/libp2p/go-libp2p/core/peer"
	manet "github.com/multiformats/go-multiaddr/net"
)

// The submitter's side of running a job: once a cluster has formed, the
// submitter opens a job stream to every member, starts member 0 first when
// the members need a rendezvous (it answers with its port), then the rest;
// it gathers logs, outputs and receipts, notices a member that stops
// answering within three heartbeats, stops every member on cancel,
// failure or timeout, and records how the job ended.

// Member run states (the run attempt's).
const (
	MemberStarting = attempt.MemberStarting
	MemberRunning  = attempt.MemberRunning
	MemberExited   = attempt.MemberExited
	MemberLost     = attempt.MemberLost   // stopped answering
	MemberFailed   = attempt.MemberFailed // could not run
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
	Paid     uint64               `json:"paid,omitempty"`  // paid to its provider as it ran (settlement), in the unit's smallest unit
	Fault    string               `json:"fault,omitempty"` // its provider's fault, when it ended badly: "provider" or "lost" (attempt.Fault*)
	Image    *ImageReport         `json:"image,omitempty"` // where its image came from (an image on the mesh)
	// Addr is its address on the job's own network (a container job of
	// several members); Net what crossed it, as its provider metered it.
	Addr string            `json:"addr,omitempty"`
	Net  *jobwire.NetMeter `json:"net,omitempty"`
	// Network is where it meets the job's other members: NetworkJob or
	// NetworkHost; "" for a job of one member.
	Network string `json:"network,omitempty"`
}

// A member's network (MemberRun.Network).
const (
	NetworkJob  = "job"  // the job's own network (node/jobnet), at Addr
	NetworkHost = "host" // its provider's host network: a provider of the job cannot make job networks (a private swarm)
)

var errCancelled = errors.New("cancelled by the submitter")

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

// runEvent is an input of a run's loop: an event for the attempt machine,
// with what the loop keeps of it.
type runEvent struct {
	ev      attempt.Event
	conn    *memberConn          // with Opened
	outputs []receipt.OutputFile // with Exited
	net     *jobwire.NetMeter    // with Exited, or Heard: a heartbeat's (the member's job network as it runs)
	sr      *receipt.Signed      // with Receipted
	log     []byte               // with Heard: a log frame's data
	image   *jobwire.ImageFrame  // with Heard: where the member's image came from
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

// memberConn is the submitter's stream to one member.
type memberConn struct {
	rw io.ReadWriteCloser
	fw *jobwire.Writer
	ip string // the member's address as this peer reaches it
}

// runJob drives one attempt of a formed job to its end. The decisions are
// the attempt machine's (node/attempt); this loop only carries them out:
// it opens streams and reads frames, writes the job's log, pays bills,
// countersigns receipts and saves the members' runs.
func (n *Node) runJob(ctx context.Context, id string) {
	j, ok := n.Job(id)
	if !ok || j.State != JobFormed {
		return // cancelled before its start: the cancel released the members (moveJob)
	}
	jl, err := n.openLog(id, n.jobLogBytes())
	if err != nil {
		n.finishJob(id, JobFailed, fmt.Sprintf("job log: %v", err), nil)
		return
	}
	defer n.closeLog(id, jl)
	members := j.Members
	// The members' connections carry the job's streams: the connection
	// manager keeps them while the job runs, however many others it trims.
	keep := "gpumesh-job-" + id
	for _, m := range members {
		n.host.ConnManager().Protect(m.Provider, keep)
	}
	defer func() {
		for _, m := range members {
			n.host.ConnManager().Unprotect(m.Provider, keep)
		}
	}()
	cfg := n.attemptConfig(j)
	a, err := attempt.New(cfg, n.now())
	if err != nil {
		n.finishJob(id, JobFailed, err.Error(), nil)
		return
	}
	runs := make([]MemberRun, len(members))
	for i, m := range members {
		runs[i] = MemberRun{Rank: i, Provider: m.Provider, Class: m.Class, GPUs: m.GPUs, State: MemberStarting}
		switch {
		case jobHasNet(j):
			runs[i].Addr, runs[i].Network = jobnet.Addr(j.ID, i).String(), NetworkJob
		case len(members) > 1:
			runs[i].Network = NetworkHost
		}
	}
	if ctx.Err() != nil {
		// Cancelled (or the peer stops) before the start: a start after a
		// cancel starts nothing, and the move out of "formed" releases
		// the members (moveJob).
		if errors.Is(context.Cause(ctx), errCancelled) {
			n.finishJob(id, JobCancelled, "cancelled: by the submitter before the run started", nil)
		} else {
			n.finishJob(id, JobFailed, "the peer stopped before the run started; submit it again", nil)
		}
		return
	}
	if _, ok := n.moveJob(id, JobRunning, []JobState{JobFormed}, func(j *Job) {
		j.Runs, j.Started = append([]MemberRun(nil), runs...), n.now().UTC()
	}); !ok {
		return // cancelled meanwhile: the cancel released the members (moveJob)
	}
	outDir, err := n.jobDir(id)
	if err != nil {
		n.finishJob(id, JobFailed, err.Error(), nil)
		return
	}
	outDir = filepath.Join(outDir, "outputs")
	quota, err := newOutputQuota(outDir, n.jobOutputBytes(), n.jobOutputFiles())
	if err != nil {
		n.finishJob(id, JobFailed, err.Error(), nil)
		return
	}

	events := make(chan runEvent, 64)
	over := make(chan struct{}) // closed when the loop has returned
	send := func(e runEvent) {
		select {
		case events <- e:
		case <-over:
		}
	}
	var bg sync.WaitGroup // openers and readers, payments
	defer func() { close(over); bg.Wait() }()
	conns := make([]*memberConn, len(members))
	signed := make([]*receipt.Signed, len(members))
	name := func(rank int) string { return fmt.Sprintf("member %d (%s)", rank, shortPeer(members[rank].Provider)) }
	start := func(s attempt.Start) {
		bg.Add(1)
		go func() {
			defer bg.Done()
			n.startMember(ctx, j, cfg, s, filepath.Join(outDir, fmt.Sprintf("rank-%d", s.Rank)), quota, send)
		}()
	}
	timer := time.NewTimer(n.heartbeat())
	defer timer.Stop()
	stopped := ctx.Done()
	// stop tells the attempt why the run's context ended, once: before
	// any event that ending caused (a member's stream cut by it), so a
	// cancel reads as a cancel, not as members lost.
	stop := func() {
		if stopped == nil || ctx.Err() == nil {
			return
		}
		stopped = nil
		if errors.Is(context.Cause(ctx), errCancelled) {
			_ = a.Step(attempt.Cancelled{}, n.now())
		} else {
			_ = a.Step(attempt.PeerStopping{}, n.now())
		}
	}
	for {
		for a.HasReady() {
			rd := a.Ready()
			for _, line := range rd.Notes {
				jl.note(line)
			}
			for _, st := range rd.Stop {
				if c := conns[st.Rank]; c != nil {
					go func() {
						_ = c.fw.Write(jobwire.Frame{T: jobwire.KindStop, Reason: text.Cut(st.Reason, jobwire.MaxText)})
					}()
				}
			}
			for _, r := range rd.Close {
				if c := conns[r]; c != nil {
					_ = c.rw.Close()
				}
			}
			for _, st := range rd.Start {
				start(st)
			}
			for _, p := range rd.Pay {
				bg.Add(1)
				go func() {
					defer bg.Done()
					sig, err := n.payBill(ctx, jl, members[p.Rank], name(p.Rank), conns[p.Rank], p.Bill)
					if err == nil {
						send(runEvent{ev: attempt.Paid{Rank: p.Rank, Signature: sig, Amount: p.Bill.Amount}})
					}
				}()
			}
			for _, b := range rd.Refused {
				n.refusedBy.add(refusedBill, b.Kind)
			}
			for _, r := range rd.Countersign {
				why := n.signReceipt(conns[r], signed[r])
				_ = a.Step(attempt.Countersigned{Rank: r, Err: why}, n.now())
			}
			for _, d := range rd.Decline { // its provider records why
				n.refusedBy.add(refusedReceipt, "declined")
				if c := conns[d.Rank]; c != nil {
					go func() {
						_ = c.fw.Write(jobwire.Frame{T: jobwire.KindError, Reason: text.Cut(d.Reason, jobwire.MaxText)})
					}()
				}
			}
			if rd.Runs != nil {
				for _, ar := range rd.Runs {
					r := &runs[ar.Rank]
					r.State, r.ExitCode, r.Started, r.Ended, r.Error, r.Receipt, r.Paid, r.Fault = ar.State, ar.ExitCode, ar.Started, ar.Ended, ar.Error, ar.Receipt, ar.Paid, ar.Fault
				}
				n.updateJob(id, func(j *Job) { j.Runs = append([]MemberRun(nil), runs...) })
			}
			if d := rd.Done; d != nil {
				n.recordRuns(j, a.Runs()) // before the job's end is saved
				for _, c := range conns {
					if c != nil {
						_ = c.rw.Close()
					}
				}
				// Every member releases its GPUs when its part ends; a
				// member that never ran is told to.
				for _, r := range d.Release {
					m := members[r]
					n.sendRelease(context.WithoutCancel(ctx), &gossip.Release{Job: jobID(id), From: n.id.PeerID, Provider: m.Provider, Reason: "the job ended"})
				}
				switch d.State {
				case attempt.StateRetry:
					n.retryJob(id, d.Reason)
				case attempt.StateDone:
					n.finishJob(id, JobDone, "", d.ExitCode)
				case attempt.StateCancelled:
					n.finishJob(id, JobCancelled, d.Reason, d.ExitCode)
				default:
					n.finishJob(id, JobFailed, d.Reason, d.ExitCode)
				}
				return
			}
			a.Advance()
		}
		wait := n.heartbeat()
		if w := a.Wake(); !w.IsZero() {
			wait = min(wait, max(w.Sub(n.now()), time.Millisecond))
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		select {
		case e := <-events:
			stop()
			switch ev := e.ev.(type) {
			case attempt.Opened:
				conns[ev.Rank] = e.conn
			case attempt.Exited:
				runs[ev.Rank].Outputs, runs[ev.Rank].Net = e.outputs, e.net
			case attempt.Receipted:
				signed[ev.Rank] = e.sr
			case attempt.Heard:
				if e.net != nil && runs[ev.Rank].State == MemberRunning { // its exit frame's has the last word
					runs[ev.Rank].Net = e.net
					n.updateJob(id, func(j *Job) { j.Runs = append([]MemberRun(nil), runs...) })
				}
				if e.image != nil {
					runs[ev.Rank].Image = imageReportOf(j.Spec.Image, e.image)
					n.updateJob(id, func(j *Job) { j.Runs = append([]MemberRun(nil), runs...) })
				}
				if e.log == nil {
					break
				}
				if err := jl.write(ev.Rank, e.log); err != nil { // past the job's log quota
					_ = a.Step(ev, n.now())
					e.ev = attempt.Overran{Rank: ev.Rank, Reason: err.Error()}
				}
			}
			_ = a.Step(e.ev, n.now())
		case now := <-timer.C:
			a.Tick(now)
		case <-stopped:
			stop()
		}
	}
}

// attemptConfig is the run attempt's view of a formed job.
func (n *Node) attemptConfig(j Job) attempt.Config {
	timeout, _ := time.ParseDuration(j.Spec.Timeout)
	launcher := j.Spec.Launcher
	ms := make([]attempt.Member, len(j.Members))
	for i, m := range j.Members {
		ms[i] = attempt.Member{Name: shortPeer(m.Provider), Provider: solanaAddress(m.Provider), GPUs: m.GPUs, Class: m.Class, Price: m.Price, HostNet: m.HostNet}
	}
	u := n.PriceUnit()
	master := ""
	if jobHasNet(j) {
		master = jobnet.Addr(j.ID, 0).String()
	}
	return attempt.Config{
		MasterAddr: master,
		Job:        j.ID, Consumer: n.id.SolanaAddress, Members: ms, Attempt: j.Attempt, Retries: j.Spec.Retries,
		Timeout: timeout, TimeoutText: j.Spec.Timeout,
		Rendezvous:       len(j.Members) > 1 || (launcher != "" && launcher != jobspec.LauncherNone),
		EndsWithRankZero: exec.EndsWithRankZero(launcher),
		Settles:          n.settles(),
		Heartbeat:        n.heartbeat(), LostAfterBeats: lostAfterBeats,
		StartTimeout: startTimeout, StopWait: stopWait,
		Unit: u.Token, FormatAmount: u.Format,
	}
}

// jobHasNet reports whether a job's members meet on a network of their
// own (package node/jobnet): every job of several members does, but for
// one with a member whose provider cannot make job networks (a private
// swarm's): all its members meet on the host network (gossip.HostNetwork).
func jobHasNet(j Job) bool { return len(j.Members) > 1 && !gossip.HostNetwork(j.Members) }

// startMember opens a member's stream, sends its start frame and reads its
// frames until the stream ends, reporting each as an attempt event.
func (n *Node) startMember(ctx context.Context, j Job, cfg attempt.Config, s attempt.Start, dir string, quota *outputQuota, send func(runEvent)) {
	world := 0
	for _, m := range j.Members {
		world += int(m.GPUs)
	}
	restore := ""
	if ck, ok := n.JobCheckpoint(j.ID); ok && j.Spec.Checkpoint != nil {
		restore = ck.CID
		// Whole here while the member may fetch it: fetched back from
		// its replicas where this peer's copy is gone.
		defer n.holdCheckpoint(ctx, j.ID, ck)()
	}
	// Its provider may fetch the job's inputs and that checkpoint from
	// this peer while its stream lasts; no other peer may.
	defer n.grantMember(ctx, j, restore, j.Members[s.Rank].Provider)()
	c, err := n.openMember(ctx, j.Members[s.Rank])
	if err == nil {
		addr := s.MasterAddr
		if s.Rank == 0 && addr == "" {
			addr = c.ip
		}
		var net []jobwire.NetMember
		if cfg.MasterAddr != "" {
			for _, m := range j.Members {
				net = append(net, jobwire.NetMember{Peer: m.Provider.String(), Addrs: m.Addrs[:min(len(m.Addrs), jobwire.MaxNetAddrs)]})
			}
		}
		err = c.fw.Write(jobwire.Frame{T: jobwire.KindStart, Start: &jobwire.StartFrame{
			Job: j.ID, Attempt: j.Attempt, Rank: s.Rank, Members: len(j.Members), WorldGPUs: world,
			Spec: j.Spec, MasterAddr: addr, MasterPort: s.MasterPort, Rendezvous: cfg.Rendezvous, Pays: cfg.Settles, Mint: n.payMint(cfg),
			Checkpoint: restore, Net: net,
		}})
		if err != nil {
			_ = c.rw.Close()
		}
	}
	if err != nil {
		send(runEvent{ev: attempt.Opened{Rank: s.Rank, Err: err.Error()}})
		return
	}
	send(runEvent{ev: attempt.Opened{Rank: s.Rank, Addr: c.ip}, conn: c})
	n.readMember(s.Rank, c.rw, dir, quota, func(me memberEvent) {
		r := me.rank
		if me.err != nil {
			if qe := (*quotaError)(nil); errors.As(me.err, &qe) {
				send(runEvent{ev: attempt.Overran{Rank: r, Reason: qe.why}})
			}
			send(runEvent{ev: attempt.StreamEnded{Rank: r, Err: me.err.Error()}})
			return
		}
		f := me.f
		switch f.T {
		case jobwire.KindReady:
			send(runEvent{ev: attempt.Listening{Rank: r, Port: f.Port}})
		case jobwire.KindStarted:
			send(runEvent{ev: attempt.Started{Rank: r, At: f.At}})
		case jobwire.KindError:
			send(runEvent{ev: attempt.Errored{Rank: r, Reason: f.Reason}})
		case jobwire.KindExit:
			x := f.Exit
			send(runEvent{ev: attempt.Exited{Rank: r, Code: x.Code, Start: x.Start, End: x.End, TimedOut: x.TimedOut, Reason: x.Reason,
				ResultHash: receipt.ResultHash(x.Code, me.outputs)}, outputs: me.outputs, net: x.Net})
		case jobwire.KindBill:
			b := f.Bill
			send(runEvent{ev: attempt.Billed{Rank: r, Bill: attempt.Bill{Interval: b.Interval, Millis: b.Millis, Amount: b.Lamports, Ref: b.Ref}}})
		case jobwire.KindReceipt:
			rc := f.Receipt.Receipt
			var ckpt uint64 // what this peer read of member 0's checkpoints, on its own count
			if r == 0 && j.Spec.Checkpoint != nil {
				ckpt = n.checkpointReceived(j.ID, j.Attempt)
			}
			send(runEvent{ev: attempt.Receipted{Rank: r, Receipt: attempt.Receipt{
				Job: rc.Job, Attempt: rc.Attempt, Rank: rc.Rank, Provider: rc.Provider, Consumer: rc.Consumer, Class: rc.Class, GPUs: rc.GPUs,
				Price: rc.Price, ExitCode: rc.ExitCode, ResultHash: rc.ResultHash, Start: rc.Start, End: rc.End, Paid: rc.Paid, Payments: rc.Payments,
				CheckpointBytes: rc.CheckpointBytes,
			}, CheckpointReceived: ckpt}, sr: f.Receipt})
		case jobwire.KindLog:
			send(runEvent{ev: attempt.Heard{Rank: r}, log: f.Data})
		case jobwire.KindImage:
			send(runEvent{ev: attempt.Heard{Rank: r}, image: f.Image})
		case jobwire.KindHeartbeat:
			send(runEvent{ev: attempt.Heard{Rank: r, Beat: f.Seq}, net: f.Net})
		case jobwire.KindCheckpoint:
			if r == 0 && j.Spec.Checkpoint != nil {
				n.checkpointArrived(j, j.Members[r].Provider, *f.Ckpt, func(why string) {
					send(runEvent{ev: attempt.Overran{Rank: r, Reason: why}})
				})
			}
			send(runEvent{ev: attempt.Heard{Rank: r}})
		default:
			send(runEvent{ev: attempt.Heard{Rank: r}})
		}
	})
}

// openMember opens the job stream to a member; a peer that is its own
// member talks to itself over a pipe.
func (n *Node) openMember(ctx context.Context, m gossip.Member) (*memberConn, error) {
	if m.Provider == n.id.PeerID {
		a, b := net.Pipe()
		go n.serveMember(b, n.id.PeerID, true)
		return &memberConn{rw: a, fw: jobwire.NewWriter(a), ip: "127.0.0.1"}, nil
	}
	sctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	// By its ID: the addresses in its bid are its own word, never dialed.
	if _, err := n.reachPeer(sctx, m.Provider, true); err != nil {
		return nil, err
	}
	s, err := n.host.NewStream(sctx, m.Provider, jobwire.Protocol11, jobwire.Protocol)
	if err != nil {
		return nil, err
	}
	ip := ""
	if a, err := manet.ToIP(s.Conn().RemoteMultiaddr()); err == nil {
		ip = a.String()
	}
	fw := jobwire.NewWriter(s)
	fw.SetTimeout(writeTimeout) // a member that stops reading holds no writer
	return &memberConn{rw: s, fw: fw, ip: ip}, nil
}

// readMember reads a member's frames into events until its stream ends.
// Output files are written under dir as they arrive and checked against
// their SHA-256; each takes its room in quota before it is made, and
// reading stops with a *quotaError when there is none.
func (n *Node) readMember(rank int, rw io.Reader, dir string, quota *outputQuota, events func(memberEvent)) {
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
				err = quota.reserve(path, want.Size, text.Printable(want.Path))
				if err == nil {
					err = os.MkdirAll(filepath.Dir(path), 0o700)
				}
				if err == nil {
					cur, err = os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
				}
				if err == nil {
					err = finish()
				}
				f = jobwire.Frame{T: jobwire.KindFile}
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
				f = jobwire.Frame{T: jobwire.KindChunk}
			case jobwire.KindExit:
				if cur != nil {
					err = fmt.Errorf("output %s ended short: %d of %d bytes", want.Path, got, want.Size)
				}
			}
		}
		if err != nil {
			events(memberEvent{rank: rank, err: err})
			return
		}
		ev := memberEvent{rank: rank, f: f}
		if f.T == jobwire.KindExit {
			ev.outputs, received = received, nil
		}
		events(ev)
	}
}

// signReceipt countersigns a member's receipt that the run attempt found
// true, keeps it and sends the signature back. It returns "" or why not.
func (n *Node) signReceipt(c *memberConn, sr *receipt.Signed) string {
	if sr == nil {
		return "no receipt"
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
	return ""
}
