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
	"sync/atomic"
	"time"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node/attempt"
	"github.com/gpumesh/gpumesh/node/jobnet"
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
	writeTimeout     = 30 * time.Second // one frame to a peer that stops reading, either side
	stopWait         = exec.StopGrace + 20*time.Second
	// leaseGrace is how far past its lease a member may run: a lease runs
	// from the award, the work from its start a little later, and an honest
	// job's timeout is its lease.
	leaseGrace = time.Minute
	// pullMargin is how long before the submitter's start deadline
	// (attempt.DefaultStartWithin from the start frame) an image pull is
	// given up, so the member fails with the pull's reason in time.
	pullMargin = 30 * time.Second
	// DefaultJobDisk is what container jobs may write in all
	// (Config.JobDisk), shared among them by GPU.
	DefaultJobDisk = 100 << 30
	// multiMemberNetwork is why a provider with NoHostNetwork refuses a
	// member of a job of several.
	multiMemberNetwork = "this provider runs no member of several over its host network (--no-host-network), and the start gave this member no job network of its own: submit the job from a peer of this version, which gives every job of several members its own network, unless (in a private swarm) another member's provider cannot make one"
)

// memberState is the provider's part of running jobs.
type memberState struct {
	gpuMu  sync.Mutex
	gpuUse map[string]string // GPU UUID → task holding it

	execMu sync.Mutex
	docker exec.Executor // made at the first container job
	// machineMemory and machineCPUs are the Docker engine's machine,
	// asked once with docker (0: unknown).
	machineMemory int64
	machineCPUs   int
	egress        bool        // the Docker executor set up egress (Config.JobEgress)
	jobnet        *jobnet.Net // the members' job networks (provider_jobnet.go); set at start

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
		if err := c.Close(); err != nil {
			n.log.Warn("closing the Docker executor", "err", err)
		}
	}
	n.docker = nil
	n.execMu.Unlock()
	if n.tmpDir != "" {
		_ = os.RemoveAll(n.tmpDir)
	}
}

func (n *Node) handleJob(s network.Stream) {
	n.serveMember(s, s.Conn().RemotePeer(), s.Protocol() == jobwire.Protocol11)
}

// serveMember runs one member of a job for the peer from; readsCkpt: the
// submitter reads a receipt's checkpoint bytes (jobwire.Protocol11).
func (n *Node) serveMember(rw io.ReadWriteCloser, from peer.ID, readsCkpt bool) {
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
	// The submitter gives up on a member not running this long after its
	// start: an image pull must end before.
	startBy := time.Now().Add(attempt.DefaultStartWithin - pullMargin)
	fail := func(format string, a ...any) {
		reason := fmt.Sprintf(format, a...)
		n.log.Info("job member not started", "job", st.Job, "rank", st.Rank, "from", from, "reason", reason)
		_ = fw.Write(jobwire.Frame{T: jobwire.KindError, Reason: text.Cut(reason, jobwire.MaxText)})
	}
	if st.Members > 1 && n.cfg.NoHostNetwork && len(st.Net) == 0 {
		fail("%s", multiMemberNetwork)
		return
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
	if st.Spec.WantsEgress() && !n.egressOn() {
		// It bid (its node asks for egress) but could not set it up: the
		// member would run cut off from what the job asked for.
		fail("the job asks for the internet (network.egress), and this provider's egress network is not set up (see its log); it runs no such job")
		return
	}
	settle := n.settles()
	if cur := n.currency(); settle && (!st.Pays || st.Mint != cur.Mint) {
		fail("%s", n.paidIn(cur, st))
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
	// Heartbeats, each with a number one higher than the last, from now
	// until the exit frame: also while the inputs and the image are
	// fetched (a fetch longer than the submitter's lostAfter would lose
	// the member), the last bill waits for its payment and the outputs go
	// out. A submitter that stops reading is gone: a frame that cannot be
	// written within writeTimeout ends the stream, and that stops the
	// work.
	fw.SetTimeout(writeTimeout)
	beatDone := make(chan struct{})
	var beatNet atomic.Pointer[memberNet] // its job network, once known: metered now and then
	var beats sync.WaitGroup
	beats.Add(1)
	go func() {
		defer beats.Done()
		t := time.NewTicker(n.heartbeat())
		defer t.Stop()
		for seq := uint64(1); ; seq++ {
			select {
			case <-beatDone:
				return
			case <-t.C:
				hb := jobwire.Frame{T: jobwire.KindHeartbeat, Seq: seq}
				if seq%netBeats == 1 {
					hb.Net = beatNet.Load().live()
				}
				if fw.Write(hb) != nil {
					_ = rw.Close()
					return
				}
			}
		}
	}()
	stopBeats := sync.OnceFunc(func() { close(beatDone); beats.Wait() })
	defer stopBeats()
	// Inputs: fetched (only the CIDs this job names) and placed read-only
	// before the work starts; removed with the run folder.
	inputs, inputsDone, err := n.placeInputs(ctx, st.Spec.Inputs, ex.Name(), runDir, work, startBy, from)
	if err != nil {
		fail("%v", err)
		return
	}
	defer inputsDone()
	// The checkpoint folder: restored from the submitter's latest on a
	// retry, synced by member 0 as the work runs.
	ckDir, ckMount, ckEnv, err := n.placeCheckpoint(ctx, st.Spec.Checkpoint, st.Checkpoint, ex.Name(), runDir, work, startBy, from)
	if err != nil {
		fail("%v", err)
		return
	}
	if ckMount != nil {
		inputs = append(inputs, *ckMount)
	}
	// An image on the mesh: fetched, checked and loaded before the work
	// starts (images.go); its report goes to the submitter.
	image := st.Spec.Image
	if d, ok := ex.(*exec.Docker); ok && st.Spec.ImageCID != "" {
		note := func(msg string) { _, _ = jobwire.NewLogWriter(fw, "err").Write([]byte("gpumesh: " + msg + "\n")) }
		ref, rep, err := n.placeImage(ctx, st.Spec, d, startBy, note, from)
		n.log.Info("job image placed", "job", st.Job, "rank", st.Rank, "image", st.Spec.Image, "source", rep.Source, "moved", rep.Moved, "from", rep.From, "err", err)
		if err != nil {
			fail("%v", err)
			return
		}
		image = ref
		if rep.Source == ImageFromMesh {
			note(rep.String())
		}
		if fw.Write(jobwire.Frame{T: jobwire.KindImage, Image: rep.wire()}) != nil {
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
	if st.Members == 1 && st.Rendezvous {
		// One member meets itself over its own loopback: it has no other
		// network.
		pl.MasterAddr = "127.0.0.1"
	}
	// A job network: the members meet at member 0's job address.
	jn, err := n.memberNet(st)
	if err != nil {
		fail("%v", err)
		return
	}
	defer jn.leave()
	beatNet.Store(jn)
	if jn != nil {
		pl.MasterAddr = jn.plan.Addr(0).String()
		env["GPUMESH_ADDR"] = jn.plan.Addr(st.Rank).String()
		// The collectives' own connections go over the job interface (the
		// namespace has no default route to guess one by), unless the job
		// says otherwise.
		for _, k := range []string{"GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"} {
			if _, ok := env[k]; !ok {
				env[k] = jobnet.IfName
			}
		}
	}
	for k, v := range exec.LaunchEnv(pl) {
		env[k] = v
	}
	for k, v := range ckEnv {
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
	declined := make(chan string, 1) // the submitter's word that it will not countersign
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
			case jobwire.KindError: // the submitter refuses the receipt
				select {
				case declined <- f.Reason:
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
	var uuids []string
	for _, g := range gpus {
		uuids = append(uuids, g.UUID)
	}
	n.log.Info("job member starting", "job", st.Job, "rank", st.Rank, "executor", ex.Name(), "gpus", len(gpus))
	util := newUtilSampler(n, held.Class)
	billCtx, stopBilling := context.WithCancel(runCtx)
	defer stopBilling()
	mem, cpus, disk := n.memberShare(len(gpus))
	var ckSync *checkpointSyncer
	var ckWG sync.WaitGroup
	ckCtx, stopCk := context.WithCancel(runCtx)
	defer stopCk()
	if ckDir != "" && st.Rank == 0 {
		ckSync = &checkpointSyncer{n: n, dir: ckDir, to: from, send: fw.Write, note: func(msg string) {
			_, _ = jobwire.NewLogWriter(fw, "err").Write([]byte("gpumesh: " + msg + "\n"))
		}}
		if from != n.id.PeerID { // what the submitter reads of its checkpoints, for the receipt
			ckSync.meter = n.content.NewMeter(from)
			defer ckSync.meter.Close()
		}
		defer ckSync.revokeLater()
		ckWG.Add(1)
		go func() { defer ckWG.Done(); ckSync.run(ckCtx, st.Spec.Checkpoint.Interval()) }()
	}
	res, runErr := ex.Run(runCtx, exec.Task{
		Name:    task,
		Owner:   n.id.PeerID.String(),
		Image:   image,
		Command: exec.LaunchCommand(st.Spec.Launcher, st.Rank, st.Spec.Argv()), // keepAlive: an idle shell
		Env:     env,
		GPUs:    uuids,
		Real:    n.LocalGPUs().Inventory.Source == "nvml",
		WorkDir: work,
		Outputs: outputs,
		// Only the members of a job of several meet over the network (their
		// job's own, or the host's where the submitter gave none); one
		// member, launcher or not, has none.
		Network:  st.Rendezvous && st.Members > 1 && jn == nil,
		JoinNet:  jn.join(),
		Egress:   n.egressOn() && (st.Members == 1 || st.Spec.WantsEgress()),
		Timeout:  timeout,
		Memory:   mem,
		CPUs:     cpus,
		Disk:     disk,
		LogBytes: n.cfg.JobLog,
		StartBy:  startBy,
		Inputs:   inputs,
		Stdout:   jobwire.NewLogWriter(fw, "out"),
		Stderr:   jobwire.NewLogWriter(fw, "err"),
		Spawned: func(g exec.ProcessGroup) error {
			rec.Group = &g
			return n.recordTask(rec)
		},
		Started: func(at time.Time) {
			// Its submitter may enter it from now (job exec, port-forward).
			n.addLive(runCtx, st.Job, st.Attempt, st.Rank, from, task, ex)
			util.start()
			_ = fw.Write(jobwire.Frame{T: jobwire.KindStarted, At: at.UnixMilli()})
			if bl != nil {
				bl.begin(at)
				side.Add(1)
				go func() { defer side.Done(); bl.run(billCtx, at) }()
			}
		},
	})
	n.dropLive(st.Job, st.Attempt, st.Rank)
	netMeter := jn.leave() // the work is gone: its interface goes too
	stopBilling()
	util.stop()
	stopCk()
	ckWG.Wait()
	if runErr != nil {
		fail("%v", runErr)
		return
	}
	if ckSync != nil { // the last state of the folder, before the exit
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		ckSync.sync(sctx)
		cancel()
	}
	stopMu.Lock()
	reason := stopReason
	stopMu.Unlock()
	// The last bill, then the wait for what is owed: the outputs are
	// released only to a submitter that has paid every bill.
	var set settlement
	if bl != nil {
		set = bl.finish(ctx, res.End, gone, reason == "")
	}
	files, err := receipt.HashOutputs(outputs)
	if err != nil {
		n.log.Warn("job outputs", "job", st.Job, "err", err)
		_, _ = jobwire.NewLogWriter(fw, "err").Write([]byte("gpumesh: outputs not returned: " + err.Error() + "\n"))
		files = nil
	}
	if set.unpaid > 0 {
		withheld := fmt.Sprintf("its outputs are withheld: %d of its bills are unpaid", set.unpaid)
		n.log.Info("job member outputs withheld", "job", st.Job, "rank", st.Rank, "unpaid", set.unpaid)
		if reason == "" {
			reason = withheld
		}
		files = nil
	}
	if sendOutputs(fw, outputs, files) != nil {
		files = nil
	}
	_ = fw.Write(jobwire.Frame{T: jobwire.KindExit, Exit: &jobwire.ExitFrame{
		Code: res.ExitCode, Start: res.Start.UnixMilli(), End: res.End.UnixMilli(),
		TimedOut: res.TimedOut, Stopped: res.Stopped, Reason: text.Cut(reason, jobwire.MaxText),
		Net: netMeter,
	}})
	stopBeats()

	// The receipt: signed and kept before it is sent, countersigned when
	// the submitter agrees.
	r := receipt.Receipt{
		Version: receipt.Version, Job: st.Job, Attempt: st.Attempt, Rank: st.Rank,
		Provider: n.id.SolanaAddress, Consumer: solanaAddress(from), Class: held.Class,
		Unit: n.PriceUnit().String(), ExitCode: res.ExitCode,
		ResultHash: receipt.ResultHash(res.ExitCode, files), Util: util.mean(),
	}
	r.MeterPaused(uint32(len(gpus)), res.Start, res.End, set.paused, held.Price)
	r.Paid, r.Payments = set.paid, set.payments
	if readsCkpt && ckSync != nil {
		r.CheckpointBytes = ckSync.bytesRead(ctx)
	}
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
	why := n.awaitCountersign(ctx, sr, countersig, declined, gone)
	if why == "" {
		return
	}
	// Not countersigned: the receipt is kept and anchored with this
	// provider's signed word of why, so the record shows who walked away.
	n.log.Warn("job receipt not countersigned; anchored with the provider's signature and the reason", "job", st.Job, "rank", st.Rank, "reason", why)
	if err := sr.MarkUnsigned(key, why, time.Now()); err != nil {
		n.log.Error("receipt not marked unsigned", "job", st.Job, "err", err)
		return
	}
	if err := n.saveReceipt(sr); err != nil {
		n.log.Error("receipt not saved", "job", st.Job, "err", err)
	}
}

// awaitCountersign waits (at most countersignWait) for the submitter's
// countersignature of sr and keeps the countersigned receipt; it returns
// "" then, or why the receipt stays without one: the submitter refused,
// left, sent a signature that does not verify, or did not answer.
func (n *Node) awaitCountersign(ctx context.Context, sr receipt.Signed, countersig <-chan []byte, declined <-chan string, gone <-chan struct{}) string {
	signed := func(sig []byte) string {
		sr.ConsumerSig = sig
		if err := sr.Verify(); err != nil {
			return "the consumer's countersignature does not verify: " + err.Error()
		}
		if err := n.saveReceipt(sr); err != nil {
			n.log.Error("receipt not saved", "job", sr.Receipt.Job, "err", err)
		}
		return ""
	}
	timeout := time.NewTimer(countersignWait)
	defer timeout.Stop()
	select {
	case sig := <-countersig:
		return signed(sig)
	case why := <-declined:
		return "the consumer refused to countersign: " + text.Cut(why, jobwire.MaxText)
	case <-gone:
		select { // a signature sent just before the stream closed
		case sig := <-countersig:
			return signed(sig)
		case why := <-declined:
			return "the consumer refused to countersign: " + text.Cut(why, jobwire.MaxText)
		default:
		}
		return "the consumer left before countersigning"
	case <-timeout.C:
		return fmt.Sprintf("the consumer did not countersign within %s", countersignWait)
	case <-ctx.Done():
		return "this provider stopped before the consumer countersigned"
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
		state, err := n.stateDir()
		if err != nil {
			return nil, fmt.Errorf("state folder: %w", err)
		}
		d, err := exec.NewDockerWith(ctx, exec.DockerConfig{
			PullTimeout: n.cfg.PullTimeout, PullMaxBytes: n.cfg.PullMax, Log: n.log, Host: n.cfg.DockerHost,
			Cache:   &exec.ImageCache{Path: filepath.Join(state, "images.json"), MaxBytes: n.cfg.ImageCache, Log: n.log},
			Removed: n.imagesRemoved,
		})
		if err != nil {
			return nil, fmt.Errorf("this provider cannot run containers: %w", err)
		}
		if n.cfg.JobEgress {
			if err := d.OpenEgress(ctx); err != nil {
				// Jobs run on, with no network: safe, if less useful.
				n.log.Error("job egress not set up: one-member jobs run without a network", "err", err)
			} else {
				n.egress = true
			}
		}
		if mem, cpus, err := d.Machine(ctx); err != nil {
			n.log.Warn("no memory and CPU limits on jobs", "err", err)
		} else {
			n.machineMemory, n.machineCPUs = mem, cpus
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

func (n *Node) egressOn() bool {
	n.execMu.Lock()
	defer n.execMu.Unlock()
	return n.egress
}

// memberShare is what a member with gpus of this provider's GPUs may take
// of the machine: memory (bytes), cores and disk (bytes), each the share of
// its GPUs among those offered; 0 is no limit (the process executor, or an
// engine that did not say).
func (n *Node) memberShare(gpus int) (memory int64, cpus float64, disk int64) {
	offered := len(n.LocalGPUs().Inventory.GPUs)
	if offered == 0 || gpus <= 0 {
		return 0, 0, 0
	}
	share := min(float64(gpus)/float64(offered), 1)
	n.execMu.Lock()
	machineMem, machineCPUs := n.machineMemory, n.machineCPUs
	n.execMu.Unlock()
	if total := n.cfg.JobMemory; total > 0 {
		memory = int64(float64(total) * share)
	} else if machineMem > 0 {
		memory = int64(float64(machineMem/8*7) * share)
	}
	totalCPUs := n.cfg.JobCPUs
	if totalCPUs == 0 {
		totalCPUs = float64(machineCPUs)
	}
	if totalCPUs > 0 {
		cpus = max(totalCPUs*share, min(1, totalCPUs))
	}
	switch total := n.cfg.JobDisk; {
	case total > 0:
		disk = int64(float64(total) * share)
	case total == 0:
		disk = int64(float64(DefaultJobDisk) * share)
	}
	return memory, cpus, disk
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
