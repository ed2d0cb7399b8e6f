package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/node/content"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/jobwire"
)

// Checkpoints: member 0's provider adds the job's checkpoint folder to its
// content store every checkpoint.every (and once more when the work ends),
// grants it to the submitter alone and sends its CID in a checkpoint frame; the submitter fetches it (only
// the blocks it lacks move), keeps it pinned and records it in
// jobs/<id>/checkpoint.json; a retry's start frame names it, and each new
// member restores it before its work starts.

// Environment of a job with a checkpoint.
const (
	EnvCheckpoint = "GPUMESH_CHECKPOINT" // the checkpoint folder as the work sees it
	EnvResumed    = "GPUMESH_RESUMED"    // "1" when the folder holds a checkpoint restored from an earlier attempt
)

// checkpointFetchTimeout bounds the submitter's fetch of one checkpoint.
const checkpointFetchTimeout = 2 * time.Minute

// JobCheckpoint is the latest complete checkpoint of a job this peer
// submitted: fetched whole into its content store.
type JobCheckpoint struct {
	CID     string    `json:"cid"`
	Bytes   int64     `json:"bytes"`
	Files   int       `json:"files"`
	Attempt int       `json:"attempt"` // the attempt that wrote it
	At      time.Time `json:"at"`      // when it arrived whole
	// Replicas are the peers that keep a copy for this peer
	// (checkpoint.replicas), by peer ID.
	Replicas []string `json:"replicas,omitempty"`
}

// checkpointBook is the submitter's checkpoint fetches: one at a time a
// job, the latest frame waiting while one runs (older ones are dropped).
type checkpointBook struct {
	mu     sync.Mutex // guards jobs
	jobs   map[string]*checkpointFetch
	saveMu sync.Mutex // orders writes of checkpoint.json
}

type checkpointFetch struct {
	pending *jobwire.CheckpointFrame
	attempt int
	overran func(reason string) // cuts the member off: its checkpoint is over the quota
	from    peer.ID             // member 0's provider, which holds pending
	running bool
	release func() // unpins the last checkpoint fetched
	// replicas is how many peers the spec wants to keep a copy; exclude,
	// the job's providers, which are never asked.
	replicas int
	exclude  []peer.ID
	// Replication runs beside the fetches, one at a time a job: the
	// latest checkpoint kept waits while one is asked for.
	replPending  *JobCheckpoint
	replBytes    int64 // of replPending's blocks
	replRunning  bool
	lastReplicas []string // the peers that kept the last one replicated
	// recv counts the checkpoint bytes read from member 0's provider in
	// attempt recvAttempt, as they arrive (content.CountFrom): the most
	// that member's receipt may say were sent.
	recv        *atomic.Int64
	recvAttempt int
}

// checkpointReceived is the checkpoint bytes this peer read from member
// 0's provider of job id in attempt.
func (n *Node) checkpointReceived(id string, attempt int) uint64 {
	n.ckpts.mu.Lock()
	defer n.ckpts.mu.Unlock()
	cf := n.ckpts.jobs[id]
	if cf == nil || cf.recv == nil || cf.recvAttempt != attempt {
		return 0
	}
	return uint64(max(cf.recv.Load(), 0))
}

func (n *Node) checkpointFile(id string) (string, error) {
	dir, err := n.jobDir(id)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "checkpoint.json"), nil
}

// JobCheckpoint is the latest complete checkpoint of job id, or false.
func (n *Node) JobCheckpoint(id string) (JobCheckpoint, bool) {
	path, err := n.checkpointFile(id)
	if err != nil {
		return JobCheckpoint{}, false
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return JobCheckpoint{}, false
	}
	var c JobCheckpoint
	if json.Unmarshal(data, &c) != nil || c.CID == "" {
		return JobCheckpoint{}, false
	}
	return c, true
}

// checkpointArrived takes a checkpoint frame of member 0 of job id (on
// provider, which holds it): it is fetched in the background, after the
// one being fetched. A checkpoint over MaxInputSize calls overran (the
// member is cut off).
func (n *Node) checkpointArrived(j Job, provider peer.ID, f jobwire.CheckpointFrame, overran func(string)) {
	id, attempt := j.ID, j.Attempt
	n.ckpts.mu.Lock()
	defer n.ckpts.mu.Unlock()
	if n.ckpts.jobs == nil {
		n.ckpts.jobs = map[string]*checkpointFetch{}
	}
	cf := n.ckpts.jobs[id]
	if cf == nil {
		cf = &checkpointFetch{}
		n.ckpts.jobs[id] = cf
	}
	cf.pending, cf.attempt, cf.overran, cf.from = &f, attempt, overran, provider
	if cf.recv == nil || cf.recvAttempt != attempt {
		cf.recv, cf.recvAttempt = new(atomic.Int64), attempt
	}
	cf.replicas, cf.exclude = 0, nil
	if j.Spec.Checkpoint != nil && j.Spec.Checkpoint.Replicas > 0 {
		cf.replicas = j.Spec.Checkpoint.Replicas
		for _, m := range j.Members {
			cf.exclude = append(cf.exclude, m.Provider)
		}
	}
	if cf.running {
		return
	}
	ctx, done := n.lifeContext()
	if ctx == nil {
		return
	}
	cf.running = true
	go func() {
		defer done()
		for {
			n.ckpts.mu.Lock()
			next, attempt, overran, from, recv := cf.pending, cf.attempt, cf.overran, cf.from, cf.recv
			cf.pending = nil
			if next == nil {
				cf.running = false
				n.ckpts.mu.Unlock()
				return
			}
			n.ckpts.mu.Unlock()
			err := n.fetchCheckpoint(content.CountFrom(ctx, from, recv), id, attempt, from, *next, cf)
			switch {
			case errors.Is(err, content.ErrTooBig):
				overran(fmt.Sprintf("a checkpoint of more than %d bytes (--max-input-size)", n.maxInputSize()))
			case err != nil:
				n.log.Warn("job checkpoint not fetched", "job", id, "cid", next.CID, "err", err)
			}
		}
	}()
}

func (n *Node) fetchCheckpoint(ctx context.Context, id string, attempt int, from peer.ID, f jobwire.CheckpointFrame, cf *checkpointFetch) error {
	root, err := jobspec.ParseCID(f.CID)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, checkpointFetchTimeout)
	defer cancel()
	st, release, err := n.content.FetchFrom(fctx, root, n.maxInputSize(), from)
	if err != nil {
		return err
	}
	// On disk before the job's record names it: a crash of this machine
	// must not leave the job pointing at blocks that never reached it.
	if err := n.content.Sync(); err != nil {
		release()
		return err
	}
	c := JobCheckpoint{CID: root.String(), Bytes: f.Bytes, Files: f.Files, Attempt: attempt, At: n.now().UTC()}
	n.ckpts.saveMu.Lock()
	err = n.saveCheckpoint(id, c)
	n.ckpts.saveMu.Unlock()
	if err != nil {
		release()
		return err
	}
	n.ckpts.mu.Lock()
	old := cf.release
	cf.release = release
	n.ckpts.mu.Unlock()
	if old != nil {
		old()
	}
	n.content.Announce(root)
	n.log.Info("job checkpoint kept", "job", id, "cid", root, "bytes", st.Bytes, "fetched", st.FetchedBytes)
	n.replicateLater(id, cf, c, st.Bytes)
	return nil
}

// saveCheckpoint writes c as the job's latest checkpoint (to a temporary
// file, synced, then renamed).
func (n *Node) saveCheckpoint(id string, c JobCheckpoint) error {
	path, err := n.checkpointFile(id)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, data, 0o600)
}

// GetCheckpoint writes job id's latest checkpoint into dir (which must
// not exist, or be an empty folder), from this peer's store or the
// swarm's.
func (n *Node) GetCheckpoint(ctx context.Context, id, dir string) (JobCheckpoint, error) {
	if _, ok := n.Job(id); !ok {
		return JobCheckpoint{}, fmt.Errorf("%w: no job %s on this peer", ErrBadInput, id)
	}
	c, ok := n.JobCheckpoint(id)
	if !ok {
		return JobCheckpoint{}, fmt.Errorf("%w: job %s has no checkpoint yet (its spec needs checkpoint:, and member 0 syncs it every checkpoint.every)", ErrBadInput, id)
	}
	if !filepath.IsAbs(dir) {
		return JobCheckpoint{}, fmt.Errorf("%w: %s: want an absolute folder", ErrBadInput, dir)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return JobCheckpoint{}, fmt.Errorf("%w: %s: want a folder that does not exist or is empty: %v", ErrBadInput, dir, err)
	}
	root, err := jobspec.ParseCID(c.CID)
	if err != nil {
		return JobCheckpoint{}, err
	}
	defer n.holdCheckpoint(ctx, id, c)() // from its replicas where this peer's copy is gone
	_, release, err := n.content.Fetch(ctx, root, n.maxInputSize())
	if err != nil {
		return JobCheckpoint{}, err
	}
	defer release()
	return c, n.content.Restore(ctx, root, dir)
}

// placeCheckpoint makes a member's checkpoint folder: under work for a
// process (checkpoint.path without its leading "/"), runDir/checkpoint for
// a container (mounted writable at checkpoint.path). With restore (a
// retry's checkpoint CID) it is fetched and written there first. It
// returns the folder on this host, the mount (containers) and the
// variables to add to the work's environment.
func (n *Node) placeCheckpoint(ctx context.Context, c *jobspec.Checkpoint, restore, executor, runDir, work string, by time.Time, from peer.ID) (dir string, mount *exec.Mount, env map[string]string, err error) {
	if c == nil {
		return "", nil, nil, nil
	}
	env = map[string]string{}
	if executor == "process" {
		dir = filepath.Join(work, filepath.FromSlash(strings.TrimPrefix(c.Path, "/")))
		env[EnvCheckpoint] = dir
	} else {
		dir = filepath.Join(runDir, "checkpoint")
		mount = &exec.Mount{Source: dir, Target: c.Path, Writable: true}
		env[EnvCheckpoint] = c.Path
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", nil, nil, fmt.Errorf("checkpoint folder: %w", err)
	}
	if restore == "" {
		err = os.Mkdir(dir, 0o755)
	} else {
		var root cid.Cid
		if root, err = jobspec.ParseCID(restore); err != nil {
			return "", nil, nil, fmt.Errorf("checkpoint %s: %w", restore, err)
		}
		fctx, cancel := context.WithDeadline(ctx, by)
		defer cancel()
		var release func()
		var st content.FetchStats
		if st, release, err = n.content.FetchFrom(fctx, root, n.maxInputSize(), from); err != nil {
			return "", nil, nil, fmt.Errorf("checkpoint %s not fetched: %w", restore, err)
		}
		defer release()
		if err = n.content.Restore(fctx, root, dir); err != nil {
			return "", nil, nil, fmt.Errorf("checkpoint %s not restored: %w", restore, err)
		}
		env[EnvResumed] = "1"
		n.log.Info("job checkpoint restored", "cid", root, "bytes", st.Bytes, "fetched", st.FetchedBytes)
	}
	if err != nil {
		return "", nil, nil, fmt.Errorf("checkpoint folder: %w", err)
	}
	if executor == "process" && n.jobUser != nil {
		uid, gid := int(n.jobUser.UID), int(n.jobUser.GID)
		err = filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, uid, gid)
		})
		if err != nil {
			return "", nil, nil, fmt.Errorf("checkpoint folder for the job user: %w", err)
		}
	}
	return dir, mount, env, nil
}

// checkpointGrants is how many of its latest checkpoints member 0 lets
// the submitter fetch: the one it fetches may be the one before the last
// sent. checkpointGrantGrace is how long after the member ends they stay
// granted: the submitter's fetch of the last one, after the one running.
const (
	checkpointGrants     = 2
	checkpointGrantGrace = 2 * checkpointFetchTimeout
)

// checkpointSyncer syncs member 0's checkpoint folder: added to the store,
// granted to the submitter (to), and its CID sent when it changed.
type checkpointSyncer struct {
	n       *Node
	dir     string
	to      peer.ID
	send    func(jobwire.Frame) error
	note    func(string)
	last    cid.Cid
	granted []cid.Cid // the latest checkpointGrants granted to to, oldest first
	// meter counts what to read of the checkpoints granted (content.Meter):
	// the receipt's checkpoint bytes. nil: none kept (to is this peer).
	meter *content.Meter
}

// checkpointSettleWait bounds how long member 0's provider waits, before
// it signs the receipt, for the submitter to finish fetching the last
// checkpoint sent (its fetch began with the frame, before the outputs).
const checkpointSettleWait = 10 * time.Second

// bytesRead is the checkpoint bytes the submitter read to the end of
// their streams: what the receipt says was sent, a number the submitter
// has counted too (it refuses a receipt that says more). It waits first,
// at most checkpointSettleWait, for the fetch of the last checkpoint sent
// to end.
func (s *checkpointSyncer) bytesRead(ctx context.Context) uint64 {
	if s.meter == nil {
		return 0
	}
	if s.last.Defined() {
		wctx, cancel := context.WithTimeout(ctx, checkpointSettleWait)
		s.meter.Wait(wctx, s.last)
		cancel()
	}
	return uint64(max(s.meter.Bytes(), 0))
}

func (s *checkpointSyncer) sync(ctx context.Context) {
	root, err := s.n.content.Add(ctx, s.dir, s.n.maxInputSize(), nil)
	if err != nil {
		if ctx.Err() == nil {
			s.note("checkpoint not synced: " + err.Error())
		}
		return
	}
	if root.CID == s.last {
		return
	}
	grant := func() error { return s.n.content.Grant(ctx, root.CID, s.to) }
	if s.meter != nil {
		grant = func() error { return s.n.content.GrantMetered(ctx, root.CID, s.meter) }
	}
	if err := grant(); err != nil {
		if ctx.Err() == nil {
			s.note("checkpoint not synced: " + err.Error())
		}
		return
	}
	if s.granted = append(s.granted, root.CID); len(s.granted) > checkpointGrants {
		s.n.content.Revoke(s.granted[0], s.to)
		s.granted = s.granted[1:]
	}
	if s.send(jobwire.Frame{T: jobwire.KindCheckpoint, Ckpt: &jobwire.CheckpointFrame{CID: root.CID.String(), Bytes: root.Bytes, Files: root.Files}}) == nil {
		s.last = root.CID
	}
}

// revokeLater ends the submitter's grants once checkpointGrantGrace has
// passed: the member has ended.
func (s *checkpointSyncer) revokeLater() {
	granted, c, to := s.granted, s.n.content, s.to
	s.granted = nil
	time.AfterFunc(checkpointGrantGrace, func() {
		for _, root := range granted {
			c.Revoke(root, to)
		}
	})
}

// run syncs every interval until ctx ends.
func (s *checkpointSyncer) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sync(ctx)
		}
	}
}

// CheckpointRequest asks the node to write a job's latest checkpoint into
// Dir (POST /v0/jobs/{id}/checkpoint).
type CheckpointRequest struct {
	Dir string `json:"dir"` // absolute; must not exist or be empty
}

func (n *Node) serveGetCheckpoint(w http.ResponseWriter, r *http.Request) {
	var req CheckpointRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 8<<10)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "want {\"dir\": \"/absolute/folder\"}: "+err.Error())
		return
	}
	id := r.PathValue("id")
	if _, ok := n.Job(id); !ok {
		noJob(w, id)
		return
	}
	c, err := n.GetCheckpoint(r.Context(), id, req.Dir)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, c)
}
