package node

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/mr-tron/base58"
)

// The provider's side of running a job: a member serves one stream of the
// job protocol from the job's submitter. It runs only what a confirmed
// reservation of that submitter's covers, on GPUs no other job holds, and
// leaves a signed receipt in the data dir whatever happens to the stream.

// Timing of the job protocol.
const (
	DefaultHeartbeat = time.Second // how often a member says it is alive
	lostAfterBeats   = 3           // heartbeats missed before a member counts as lost
	startTimeout     = 10 * time.Second
	countersignWait  = 10 * time.Second // how long a member waits for the submitter's signature
	stopWait         = exec.StopGrace + 20*time.Second
	// leaseGrace is how far past its lease a member may run: a lease runs
	// from the award, the work from its start a little later, and an honest
	// job's timeout is its lease.
	leaseGrace = time.Minute
)

// memberState is the provider's part of running jobs.
type memberState struct {
	gpuMu  sync.Mutex
	gpuUse map[string]string // GPU UUID → task holding it

	execMu sync.Mutex
	docker exec.Executor // made at the first container job

	receiptsMu sync.Mutex             // guards the receipts folder and receipts
	receipts   map[string]receiptMeta // the index, by key, once the folder was read (receipts.go)

	tmpOnce sync.Once
	tmpDir  string // state of a node without a data dir
	tmpErr  error
}

func (n *Node) heartbeat() time.Duration {
	if n.cfg.Heartbeat > 0 {
		return n.cfg.Heartbeat
	}
	return DefaultHeartbeat
}

// stateDir is the data dir, or a temporary folder for a node without one.
func (n *Node) stateDir() (string, error) {
	if n.dir != nil {
		return n.dir.Path, nil
	}
	n.tmpOnce.Do(func() { n.tmpDir, n.tmpErr = os.MkdirTemp("", "gpumesh-node-") })
	return n.tmpDir, n.tmpErr
}

func (n *Node) closeMembers() {
	n.execMu.Lock()
	if c, ok := n.docker.(io.Closer); ok {
		_ = c.Close()
	}
	n.docker = nil
	n.execMu.Unlock()
	if n.tmpDir != "" {
		_ = os.RemoveAll(n.tmpDir)
	}
}

func (n *Node) handleJob(s network.Stream) {
	n.serveMember(s, s.Conn().RemotePeer())
}

// serveMember runs one member of a job for the peer from.
func (n *Node) serveMember(rw io.ReadWriteCloser, from peer.ID) {
	ctx, done := n.lifeContext()
	if ctx == nil {
		_ = rw.Close()
		return
	}
	defer done()
	defer rw.Close()
	br := bufio.NewReader(rw)
	fw := jobwire.NewWriter(rw)
	timer := time.AfterFunc(startTimeout, func() { _ = rw.Close() })
	f, err := jobwire.Read(br)
	timer.Stop()
	if err != nil || f.T != jobwire.KindStart {
		if err == nil {
			err = fmt.Errorf("%w: first frame is %s, want start", jobwire.ErrBadFrame, f.T)
		}
		_ = fw.Write(jobwire.Frame{T: jobwire.KindError, Reason: text.Cut(err.Error(), jobwire.MaxText)})
		return
	}
	st := *f.Start
	fail := func(format string, a ...any) {
		reason := fmt.Sprintf(format, a...)
		n.log.Info("job member not started", "job", st.Job, "rank", st.Rank, "from", from, "reason", reason)
		_ = fw.Write(jobwire.Frame{T: jobwire.KindError, Reason: text.Cut(reason, jobwire.MaxText)})
	}
	// The reservation runs this member from now (a start that overtook the
	// submitter's confirm confirms it); only its end releases it.
	held, err := n.startReservation(ctx, jobID(st.Job), from) // the start frame's ID was checked on reading
	switch {
	case errors.Is(err, gossip.ErrMemberRuns):
		fail("%v", err)
		return
	case err != nil:
		fail("this provider holds no reservation of %s for job %s", from, st.Job)
		return
	}
	defer n.releaseReservation(ctx, held)
	if err := st.Spec.Validate(n.PriceUnit()); err != nil {
		fail("%v", err)
		return
	}
	ex, err := n.executorFor(ctx, st.Spec)
	if err != nil {
		fail("%v", err)
		return
	}
	settle := n.settles()
	if settle && !st.Pays {
		fail("this provider is paid in SOL as jobs run (a bill every %s): the submitting peer needs --solana-rpc URL and SOL at its address", n.settleInterval())
		return
	}
	task := fmt.Sprintf("gpumesh-%s-%d-%d", st.Job, st.Attempt, st.Rank)
	gpus, err := n.allocGPUs(held, task)
	if err != nil {
		fail("%v", err)
		return
	}
	defer n.freeGPUs(task)

	runDir, err := n.runDir(ex.Name(), task)
	if err != nil {
		fail("run folder: %v", err)
		return
	}
	_ = os.RemoveAll(runDir)
	outputs, work := filepath.Join(runDir, "outputs"), filepath.Join(runDir, "work")
	for _, d := range []string{outputs, work} {
		if err := os.MkdirAll(d, 0o777); err != nil {
			fail("run folder: %v", err)
			return
		}
	}
	// Kept before the work starts, removed after its folder: a crash in
	// between is ended at the next start (provider_tasks.go).
	rec := taskRecord{Task: task, Job: st.Job, Attempt: st.Attempt, Rank: st.Rank, Submitter: from.String(),
		Executor: ex.Name(), RunDir: runDir, Created: time.Now().UTC()}
	for _, g := range gpus {
		rec.GPUs = append(rec.GPUs, g.UUID)
	}
	if err := n.recordTask(rec); err != nil {
		_ = os.RemoveAll(runDir)
		fail("%v", err)
		return
	}
	defer n.forgetTask(task)
	defer os.RemoveAll(runDir) // the outputs have gone to the submitter; the receipt stays
	if ex.Name() == "process" {
		if err := n.giveToJobUser(runDir, outputs, work); err != nil {
			fail("run folder for the job user: %v", err)
			return
		}
	}

	env := map[string]string{}
	for k, v := range st.Spec.Env {
		env[k] = v
	}
	pl := exec.Placement{
		Job: st.Job, Launcher: st.Spec.Launcher, Rank: st.Rank, Members: st.Members,
		GPUs: len(gpus), WorldGPUs: st.WorldGPUs, MasterAddr: st.MasterAddr, MasterPort: st.MasterPort,
	}
	if st.Rendezvous && st.Rank == 0 && st.MasterPort == 0 {
		port, err := freePort()
		if err != nil {
			fail("no free port for the rendezvous: %v", err)
			return
		}
		pl.MasterPort = port
		if err := fw.Write(jobwire.Frame{T: jobwire.KindReady, Port: port}); err != nil {
			return
		}
	}
	for k, v := range exec.LaunchEnv(pl) {
		env[k] = v
	}
	// The work ends with the lease (and leaseGrace) at the latest, whatever
	// timeout the start frame's spec says: the GPUs are leased no longer.
	timeout, _ := time.ParseDuration(st.Spec.Timeout)
	if left := time.Until(held.LeaseEnd) + leaseGrace; timeout <= 0 || left < timeout {
		timeout = max(left, time.Millisecond)
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	countersig := make(chan []byte, 1)
	gone := make(chan struct{})
	var side sync.WaitGroup // the biller and payment checks
	defer side.Wait()
	var stopMu sync.Mutex
	stopReason := ""
	var bl *biller
	if settle {
		pauser, _ := ex.(exec.Pauser)
		bl = n.newBiller(task, fmt.Sprintf("%s-%d-%d", st.Job, st.Attempt, st.Rank), solanaAddress(from), held.Price, uint32(held.GPUs), pauser)
		bl.send = fw.Write
		bl.note = func(msg string) {
			n.log.Info("job member settlement", "job", st.Job, "rank", st.Rank, "note", msg)
			_, _ = jobwire.NewLogWriter(fw, "err").Write([]byte("gpumesh: " + msg + "\n"))
		}
		bl.stop = func(reason string) {
			stopMu.Lock()
			if stopReason == "" {
				stopReason = reason
			}
			stopMu.Unlock()
			bl.note("stopping the work: " + reason)
			stop()
		}
	}
	go func() { // what the submitter says while the work runs
		defer close(gone)
		defer stop()
		for {
			f, err := jobwire.Read(br)
			if err != nil {
				return
			}
			switch f.T {
			case jobwire.KindStop:
				n.log.Info("job member stopped by its submitter", "job", st.Job, "rank", st.Rank, "reason", f.Reason)
				stop()
			case jobwire.KindCountersign:
				select {
				case countersig <- f.Sig:
				default:
				}
			case jobwire.KindPaid:
				if bl != nil {
					side.Add(1)
					go func() { defer side.Done(); bl.paidFor(ctx, *f.Paid) }()
				}
			}
		}
	}()
	beatDone := make(chan struct{})
	var beats sync.WaitGroup
	beats.Add(1)
	go func() {
		defer beats.Done()
		t := time.NewTicker(n.heartbeat())
		defer t.Stop()
		for {
			select {
			case <-beatDone:
				return
			case <-t.C:
				_ = fw.Write(jobwire.Frame{T: jobwire.KindHeartbeat})
			}
		}
	}()
	var uuids []string
	for _, g := range gpus {
		uuids = append(uuids, g.UUID)
	}
	n.log.Info("job member starting", "job", st.Job, "rank", st.Rank, "executor", ex.Name(), "gpus", len(gpus))
	util := newUtilSampler(n, held.Class)
	billCtx, stopBilling := context.WithCancel(runCtx)
	defer stopBilling()
	res, runErr := ex.Run(runCtx, exec.Task{
		Name:    task,
		Owner:   n.id.PeerID.String(),
		Image:   st.Spec.Image,
		Command: exec.LaunchCommand(st.Spec.Launcher, st.Rank, st.Spec.Command),
		Env:     env,
		GPUs:    uuids,
		Real:    n.LocalGPUs().Inventory.Source == "nvml",
		WorkDir: work,
		Outputs: outputs,
		Network: st.Rendezvous,
		Timeout: timeout,
		Stdout:  jobwire.NewLogWriter(fw, "out"),
		Stderr:  jobwire.NewLogWriter(fw, "err"),
		Spawned: func(g exec.ProcessGroup) error {
			rec.Group = &g
			return n.recordTask(rec)
		},
		Started: func(at time.Time) {
			util.start()
			_ = fw.Write(jobwire.Frame{T: jobwire.KindStarted, At: at.UnixMilli()})
			if bl != nil {
				side.Add(1)
				go func() { defer side.Done(); bl.run(billCtx, at) }()
			}
		},
	})
	stopBilling()
	util.stop()
	close(beatDone)
	beats.Wait()
	if runErr != nil {
		fail("%v", runErr)
		return
	}
	files, err := receipt.HashOutputs(outputs)
	if err != nil {
		n.log.Warn("job outputs", "job", st.Job, "err", err)
		_, _ = jobwire.NewLogWriter(fw, "err").Write([]byte("gpumesh: outputs not returned: " + err.Error() + "\n"))
		files = nil
	}
	if sendOutputs(fw, outputs, files) != nil {
		files = nil
	}
	stopMu.Lock()
	reason := stopReason
	stopMu.Unlock()
	_ = fw.Write(jobwire.Frame{T: jobwire.KindExit, Exit: &jobwire.ExitFrame{
		Code: res.ExitCode, Start: res.Start.UnixMilli(), End: res.End.UnixMilli(),
		TimedOut: res.TimedOut, Stopped: res.Stopped, Reason: text.Cut(reason, jobwire.MaxText),
	}})
	var paid uint64
	var payments []string
	var paused time.Duration
	if bl != nil { // the last bill, then wait for what is owed
		paid, payments, paused = bl.finish(ctx, res.End, gone, reason == "")
	}

	// The receipt: signed and kept before it is sent, countersigned when
	// the submitter agrees.
	r := receipt.Receipt{
		Version: receipt.Version, Job: st.Job, Attempt: st.Attempt, Rank: st.Rank,
		Provider: n.id.SolanaAddress, Consumer: solanaAddress(from), Class: held.Class,
		Unit: n.PriceUnit().String(), ExitCode: res.ExitCode,
		ResultHash: receipt.ResultHash(res.ExitCode, files), Util: util.mean(),
	}
	r.MeterPaused(uint32(len(gpus)), res.Start, res.End, paused, held.Price)
	r.Paid, r.Payments = paid, payments
	key, err := n.ed25519Key()
	if err != nil {
		n.log.Error("receipt not signed", "job", st.Job, "err", err)
		return
	}
	sr, err := receipt.Sign(r, key)
	if err != nil {
		n.log.Error("receipt not signed", "job", st.Job, "err", err)
		return
	}
	if err := n.saveReceipt(sr); err != nil {
		n.log.Error("receipt not saved", "job", st.Job, "err", err)
	}
	if fw.Write(jobwire.Frame{T: jobwire.KindReceipt, Receipt: &sr}) != nil {
		return
	}
	select {
	case sig := <-countersig:
		sr.ConsumerSig = sig
		if err := sr.Verify(); err != nil {
			n.log.Warn("countersignature refused", "job", st.Job, "err", err)
			return
		}
		if err := n.saveReceipt(sr); err != nil {
			n.log.Error("receipt not saved", "job", st.Job, "err", err)
		}
	case <-gone:
		n.log.Warn("job submitter left before countersigning; the receipt is kept with the provider's signature only", "job", st.Job)
	case <-time.After(countersignWait):
		n.log.Warn("job submitter did not countersign in time", "job", st.Job)
	case <-ctx.Done():
	}
}

// sendOutputs streams each output file: a header, then its bytes.
func sendOutputs(fw *jobwire.Writer, dir string, files []receipt.OutputFile) error {
	if len(files) == 0 {
		return nil
	}
	// Opened beneath dir only: a symlink the work left (or swapped in)
	// cannot make this peer send a file of its own.
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	buf := make([]byte, jobwire.MaxChunk)
	for _, of := range files {
		if err := fw.Write(jobwire.Frame{T: jobwire.KindFile, File: &of}); err != nil {
			return err
		}
		f, err := root.Open(filepath.FromSlash(of.Path))
		if err != nil {
			return err
		}
		var sent int64
		for sent < of.Size {
			k, err := io.ReadFull(f, buf[:min(int64(len(buf)), of.Size-sent)])
			if k > 0 {
				if err := fw.Write(jobwire.Frame{T: jobwire.KindChunk, Data: buf[:k]}); err != nil {
					f.Close()
					return err
				}
				sent += int64(k)
			}
			if err != nil {
				f.Close()
				return fmt.Errorf("output %s changed while it was sent: %w", of.Path, err)
			}
		}
		f.Close()
	}
	return nil
}

// executorFor picks the executor of a job: Docker for an image, the process
// executor for a bare command where this provider allows it.
func (n *Node) executorFor(ctx context.Context, spec jobspec.Spec) (exec.Executor, error) {
	want := "docker"
	if spec.Image == "" {
		want = "process"
	}
	offered := false
	for _, e := range n.executors() {
		offered = offered || e == want
	}
	if !offered {
		if want == "process" {
			return nil, errors.New("this provider runs containers only; give the job an image (the process executor is for trusted private swarms, turned on with --executors docker,process)")
		}
		return nil, fmt.Errorf("this provider offers the executors %s, not docker", strings.Join(n.executors(), ","))
	}
	if want == "process" {
		return n.processExecutor(), nil
	}
	return n.dockerExecutor(ctx)
}

// dockerExecutor connects to the Docker engine once; the first time it
// removes the containers this peer left when it last stopped without
// cleaning up (killed while jobs ran).
func (n *Node) dockerExecutor(ctx context.Context) (exec.Executor, error) {
	n.execMu.Lock()
	defer n.execMu.Unlock()
	if n.docker == nil {
		d, err := exec.NewDocker(ctx)
		if err != nil {
			return nil, fmt.Errorf("this provider cannot run containers: %w", err)
		}
		if k, err := d.RemoveOwned(ctx, n.id.PeerID.String()); err != nil {
			n.log.Warn("containers left by an earlier run", "err", err)
		} else if k > 0 {
			n.log.Info("removed containers left by an earlier run of this peer", "containers", k)
		}
		n.docker = d
	}
	return n.docker, nil
}

// cleanLeftovers removes, at start, the containers of jobs this peer ran
// when it was last killed; without a Docker engine there is nothing to do.
func (n *Node) cleanLeftovers(ctx context.Context) {
	offered := false
	for _, e := range n.executors() {
		offered = offered || e == "docker"
	}
	// A peer without a data dir has a fresh key each start: nothing of its
	// own can be left.
	if !offered || n.dir == nil || len(n.LocalGPUs().Inventory.GPUs) == 0 {
		return
	}
	if _, err := n.dockerExecutor(ctx); err != nil {
		n.log.Debug("no Docker engine at start", "err", err)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ed25519Key is the peer's key in the form receipts are signed with.
func (n *Node) ed25519Key() (ed25519.PrivateKey, error) {
	raw, err := n.id.ed25519Bytes()
	if err != nil {
		return nil, err
	}
	return ed25519.PrivateKey(raw), nil
}

// solanaAddress is the Solana address of a peer: its ed25519 public key.
func solanaAddress(p peer.ID) string {
	pub, err := p.ExtractPublicKey()
	if err != nil {
		return ""
	}
	raw, err := pub.Raw()
	if err != nil {
		return ""
	}
	return base58.Encode(raw)
}

// utilSampler takes the mean NVML utilization of a class while work runs.
type utilSampler struct {
	n       *Node
	class   string
	mu      sync.Mutex
	sum     float64
	count   int
	started bool
	stopped bool
	quit    chan struct{}
	done    chan struct{}
}

func newUtilSampler(n *Node, class string) *utilSampler {
	return &utilSampler{n: n, class: class, quit: make(chan struct{}), done: make(chan struct{})}
}

const utilPeriod = 5 * time.Second

func (u *utilSampler) start() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.started || u.stopped {
		return
	}
	u.started = true
	go func() {
		defer close(u.done)
		t := time.NewTicker(utilPeriod)
		defer t.Stop()
		for {
			u.sample()
			select {
			case <-u.quit:
				return
			case <-t.C:
			}
		}
	}()
}

func (u *utilSampler) sample() {
	v, ok := u.n.LocalUtilization()[u.class]
	if !ok {
		return
	}
	u.mu.Lock()
	u.sum += v
	u.count++
	u.mu.Unlock()
}

func (u *utilSampler) stop() {
	u.mu.Lock()
	if u.stopped {
		u.mu.Unlock()
		return
	}
	u.stopped = true
	started := u.started
	close(u.quit)
	u.mu.Unlock()
	if started {
		<-u.done
	}
}

// mean is the mean utilization in percent, or -1 when none was sampled.
func (u *utilSampler) mean() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.count == 0 {
		return -1
	}
	return int(u.sum/float64(u.count)*100 + 0.5)
}
