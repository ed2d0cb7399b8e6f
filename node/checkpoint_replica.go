package node

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"

	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/jobwire"
)

// Checkpoint replicas (checkpoint.replicas: N). Once the submitter holds a
// job's checkpoint whole, it asks up to N peers it is connected to (none
// of the job's providers: they fail with the job) to keep a copy, over
// jobwire.ReplicaProtocol: it grants the peer the CID, the peer checks
// the request against its --replica-space and fetches it from the
// submitter, pins it and grants it back to the submitter alone, and
// answers. The peers that said yes are recorded in checkpoint.json. When
// the submitter's own copy is gone (its store wiped, a restart) a retry
// or `job get --checkpoint` fetches it back from them first; the retry
// is still driven by the submitter.
//
// A replica keeps one checkpoint a (submitter, job): a newer one replaces
// it; it is dropped at the request's expiry. What it keeps is recorded in
// replicas.json before it answers, and taken up again after a restart. It holds only what a
// submitter asked for itself, within its budget (half of it at most a
// submitter), at a bounded rate a submitter, and serves it to that
// submitter alone.

// DefaultReplicaSpace is gpumesh node's --replica-space.
const DefaultReplicaSpace = 1 << 30

// replicaKeep is how long a submitter asks a replica to keep a checkpoint.
const replicaKeep = 7 * 24 * time.Hour

// replicaAskTimeout bounds one request to a replica: its fetch and answer.
const replicaAskTimeout = checkpointFetchTimeout + 30*time.Second

// Bounds of the replicas a peer keeps.
const (
	replicaJobsPerSubmitter = 8   // checkpoints kept for one submitter
	replicaLimiters         = 256 // submitters whose request rates are remembered
	replicaFetches          = 16  // fetches under way at once, all submitters
)

// replicaRate is how often a submitter may ask: a checkpoint every
// second at most, with a small burst.
var replicaRate = rate.Every(time.Second)

const replicaBurst = 4

type replicaKey struct {
	from peer.ID
	job  string
}

// heldReplica is a checkpoint this peer keeps for a submitter; release
// nil while it is being fetched (bytes reserved).
type heldReplica struct {
	root    cid.Cid
	bytes   int64
	until   int64 // Unix seconds
	release func()
	expiry  *time.Timer
}

// replicaBook is the checkpoints this peer keeps for others.
type replicaBook struct {
	saveMu   sync.Mutex // orders writes of replicas.json
	mu       sync.Mutex // guards the fields below
	held     map[replicaKey]*heldReplica
	fetching map[replicaKey]int64         // bytes reserved by a fetch under way
	loading  map[replicaKey]replicaRecord // read from replicas.json, not taken up yet
	limits   map[peer.ID]*rate.Limiter
}

// ReplicaHeld is whether this peer keeps root for a submitter.
func (n *Node) ReplicaHeld(from peer.ID, job string) (cid.Cid, bool) {
	b := &n.replicas
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.held[replicaKey{from, job}]
	if h == nil {
		return cid.Undef, false
	}
	return h.root, true
}

// reserve checks req from a submitter against the budget and reserves
// its bytes, or says why not.
func (b *replicaBook) reserve(k replicaKey, req jobwire.ReplicaRequest, space int64, now time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	l := b.limits[k.from]
	if l == nil {
		if len(b.limits) >= replicaLimiters {
			clear(b.limits)
		}
		l = rate.NewLimiter(replicaRate, replicaBurst)
		b.limits[k.from] = l
	}
	if !l.AllowN(now, 1) {
		return errors.New("too many replica requests from this peer; ask again in a second")
	}
	if space <= 0 {
		return errors.New("this peer keeps no replicas (--replica-space 0)")
	}
	if _, busy := b.fetching[k]; busy {
		return errors.New("a checkpoint of this job is being fetched already")
	}
	if len(b.fetching) >= replicaFetches {
		return fmt.Errorf("this peer is fetching %d replicas already; ask again later", len(b.fetching))
	}
	var used, mine int64
	jobs := 0
	for hk, h := range b.held {
		if hk == k {
			continue // replaced
		}
		used += h.bytes
		if hk.from == k.from {
			mine += h.bytes
			jobs++
		}
	}
	for fk, bytes := range b.fetching {
		used += bytes
		if fk.from == k.from {
			mine += bytes
			jobs++
		}
	}
	switch {
	case jobs >= replicaJobsPerSubmitter:
		return fmt.Errorf("this peer keeps %d checkpoints for you already, at most %d", jobs, replicaJobsPerSubmitter)
	case used+req.Bytes > space:
		return fmt.Errorf("a checkpoint of %d bytes is over this peer's replica space (%d of --replica-space %d bytes used)", req.Bytes, used, space)
	case mine+req.Bytes > space/2:
		return fmt.Errorf("a checkpoint of %d bytes is over what this peer keeps for one submitter (%d of %d bytes used)", req.Bytes, mine, space/2)
	}
	b.fetching[k] = req.Bytes
	return nil
}

func (b *replicaBook) init() {
	if b.limits == nil {
		b.held, b.fetching, b.limits = map[replicaKey]*heldReplica{}, map[replicaKey]int64{}, map[peer.ID]*rate.Limiter{}
	}
}

// keep ends k's fetch: with release (the fetch succeeded) h replaces the
// copy kept before, which is dropped.
func (b *replicaBook) keep(k replicaKey, h *heldReplica) (old *heldReplica) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.fetching, k)
	if h == nil {
		return nil
	}
	old = b.held[k]
	b.held[k] = h
	return old
}

// drop removes k's copy if it is still h.
func (b *replicaBook) drop(k replicaKey, h *heldReplica) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.held[k] != h {
		return false
	}
	delete(b.held, k)
	return true
}

// handleReplica serves jobwire.ReplicaProtocol: a submitter asks this peer
// to keep a checkpoint.
func (n *Node) handleReplica(s network.Stream) {
	ctx, done := n.lifeContext()
	if ctx == nil {
		_ = s.Reset()
		return
	}
	defer done()
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(replicaAskTimeout))
	from := s.Conn().RemotePeer()
	answer := func(err error) {
		a := jobwire.ReplicaAnswer{OK: err == nil}
		if err != nil {
			a.Reason = err.Error()
		}
		_ = jobwire.WriteReplica(s, a)
	}
	req, err := jobwire.ReadReplicaRequest(bufio.NewReader(io.LimitReader(s, jobwire.MaxReplicaFrame+16)), n.now())
	if err != nil {
		answer(err)
		return
	}
	root, _ := jobspec.ParseCID(req.CID) // checked
	k := replicaKey{from, req.Job}
	if err := n.replicas.reserve(k, req, n.cfg.ReplicaSpace, n.now()); err != nil {
		n.log.Info("checkpoint replica refused", "from", from, "job", req.Job, "cid", root, "err", err)
		answer(err)
		return
	}
	h, err := n.fetchReplica(ctx, from, root, req)
	if err == nil {
		n.expireReplica(k, h)
	}
	old := n.replicas.keep(k, h)
	if err != nil {
		n.log.Info("checkpoint replica not fetched", "from", from, "job", req.Job, "cid", root, "err", err)
		answer(err)
		return
	}
	if old != nil {
		old.expiry.Stop()
		n.dropReplica(from, old)
	}
	if err := n.saveReplicas(); err != nil { // kept across a restart before it says yes
		n.log.Warn("checkpoint replicas not saved", "err", err)
		answer(fmt.Errorf("this peer could not record the replica: %v", err))
		return
	}
	n.log.Info("checkpoint replica kept", "from", from, "job", req.Job, "cid", root, "bytes", h.bytes)
	answer(nil)
}

// fetchReplica fetches root from the submitter (which granted it), within
// the bytes it named, pins it and grants it back to the submitter alone.
func (n *Node) fetchReplica(ctx context.Context, from peer.ID, root cid.Cid, req jobwire.ReplicaRequest) (*heldReplica, error) {
	ctx, cancel := context.WithTimeout(ctx, checkpointFetchTimeout)
	defer cancel()
	st, release, err := n.content.FetchFrom(ctx, root, req.Bytes, from)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s not fetched: %w", root, err)
	}
	if err := n.content.Sync(); err != nil { // on disk before this peer says it keeps it
		release()
		return nil, err
	}
	if err := n.content.Grant(ctx, root, from); err != nil {
		release()
		return nil, err
	}
	return &heldReplica{root: root, bytes: st.Bytes, until: req.Until, release: release}, nil
}

// expireReplica drops h, k's copy, at its expiry.
func (n *Node) expireReplica(k replicaKey, h *heldReplica) {
	h.expiry = time.AfterFunc(time.Until(time.Unix(h.until, 0)), func() {
		if n.replicas.drop(k, h) {
			n.dropReplica(k.from, h)
			if err := n.saveReplicas(); err != nil {
				n.log.Warn("checkpoint replicas not saved", "err", err)
			}
		}
	})
}

func (n *Node) dropReplica(from peer.ID, h *heldReplica) {
	n.content.Revoke(h.root, from)
	h.release()
}

// replicaRecord is one copy kept, in replicas.json.
type replicaRecord struct {
	From  string `json:"from"`
	Job   string `json:"job"`
	CID   string `json:"cid"`
	Bytes int64  `json:"bytes"`
	Until int64  `json:"until"`
}

func (n *Node) replicasFile() (string, error) {
	dir, err := n.stateDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "replicas.json"), nil
}

// saveReplicas writes the copies this peer keeps to replicas.json (to a
// temporary file, synced, then renamed).
func (n *Node) saveReplicas() error {
	b := &n.replicas
	b.saveMu.Lock()
	defer b.saveMu.Unlock()
	b.mu.Lock()
	recs := make([]replicaRecord, 0, len(b.held))
	for k, h := range b.held {
		recs = append(recs, replicaRecord{From: k.from.String(), Job: k.job, CID: h.root.String(), Bytes: h.bytes, Until: h.until})
	}
	for k, r := range b.loading {
		if b.held[k] == nil {
			recs = append(recs, r)
		}
	}
	b.mu.Unlock()
	path, err := n.replicasFile()
	if err != nil {
		return err
	}
	data, err := json.Marshal(recs)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, data, 0o600)
}

// loadReplicas takes up again the copies replicas.json names, in the
// background: each still unexpired is pinned and granted to its
// submitter again once whole in the store (its missing blocks fetched
// from the swarm within checkpointFetchTimeout); the others are dropped.
func (n *Node) loadReplicas() {
	path, err := n.replicasFile()
	if err != nil {
		return
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var recs []replicaRecord
	if err := json.Unmarshal(data, &recs); err != nil {
		n.log.Warn("checkpoint replicas not read", "file", path, "err", err)
		return
	}
	ctx, done := n.lifeContext()
	if ctx == nil {
		return
	}
	b := &n.replicas
	type loaded struct {
		k   replicaKey
		req jobwire.ReplicaRequest
	}
	var todo []loaded
	now := n.now()
	b.mu.Lock()
	b.init()
	b.loading = map[replicaKey]replicaRecord{}
	for _, r := range recs {
		from, err := peer.Decode(r.From)
		req := jobwire.ReplicaRequest{Job: r.Job, CID: r.CID, Bytes: r.Bytes, Until: r.Until}
		if err != nil || req.Check(now) != nil {
			continue // expired, or not ours
		}
		k := replicaKey{from, r.Job}
		b.loading[k] = r
		todo = append(todo, loaded{k, req})
	}
	b.mu.Unlock()
	go func() {
		defer done()
		for _, l := range todo {
			if ctx.Err() != nil {
				return // closing: replicas.json keeps those not taken up yet
			}
			from, req := l.k.from, l.req
			root, _ := jobspec.ParseCID(req.CID)
			k := l.k
			h, err := n.fetchReplica(ctx, from, root, req)
			if ctx.Err() != nil {
				return
			}
			b.mu.Lock()
			delete(b.loading, k)
			b.mu.Unlock()
			if err != nil {
				n.log.Warn("checkpoint replica not taken up again", "from", from, "job", k.job, "cid", root, "err", err)
				continue
			}
			n.expireReplica(k, h)
			n.replicas.mu.Lock()
			n.replicas.init()
			old := n.replicas.held[k]
			if old == nil {
				n.replicas.held[k] = h
			}
			n.replicas.mu.Unlock()
			if old != nil { // a newer one came meanwhile
				h.expiry.Stop()
				n.dropReplica(from, h)
			}
		}
		if ctx.Err() != nil {
			return // closing: the file keeps those not taken up yet
		}
		if err := n.saveReplicas(); err != nil {
			n.log.Warn("checkpoint replicas not saved", "err", err)
		}
	}()
}

// replicate asks peers to keep checkpoint root (bytes of blocks) of job
// id, up to want of them: the replicas of its last checkpoint first (they
// fetch only the blocks that changed), then the other peers connected,
// never one in exclude (the job's providers).
// It returns those that keep it.
func (n *Node) replicate(ctx context.Context, id string, root cid.Cid, bytes int64, want int, exclude []peer.ID, prev []string) []string {
	var cands []peer.ID
	for _, s := range prev {
		if p, err := peer.Decode(s); err == nil {
			cands = append(cands, p)
		}
	}
	// Peers known to speak the replica protocol first.
	var others []peer.ID
	for _, p := range n.host.Network().Peers() {
		if ps, err := n.host.Peerstore().SupportsProtocols(p, jobwire.ReplicaProtocol); err == nil && len(ps) > 0 {
			cands = append(cands, p)
		} else {
			others = append(others, p)
		}
	}
	cands = append(cands, others...)
	var kept []string
	asked := map[peer.ID]bool{n.id.PeerID: true}
	for _, p := range exclude {
		asked[p] = true
	}
	tries := 0
	for _, p := range cands {
		if len(kept) >= want || tries >= want+maxReplicaRefusals {
			break
		}
		if asked[p] {
			continue
		}
		asked[p] = true
		tries++
		if err := n.askReplica(ctx, p, id, root, bytes); err != nil {
			n.log.Info("checkpoint replica not kept", "job", id, "peer", p, "err", err)
			continue
		}
		kept = append(kept, p.String())
	}
	return kept
}

// maxReplicaRefusals is how many peers beyond the replicas wanted a
// submitter asks before it settles for fewer.
const maxReplicaRefusals = 4

// askReplica asks p to keep root: granted to p while it fetches.
func (n *Node) askReplica(ctx context.Context, p peer.ID, id string, root cid.Cid, bytes int64) error {
	ctx, cancel := context.WithTimeout(ctx, replicaAskTimeout)
	defer cancel()
	if err := n.content.Grant(ctx, root, p); err != nil {
		return err
	}
	defer n.content.Revoke(root, p)
	s, err := n.host.NewStream(ctx, p, jobwire.ReplicaProtocol)
	if err != nil {
		return err
	}
	defer s.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(d)
	}
	req := jobwire.ReplicaRequest{Job: id, CID: root.String(), Bytes: bytes, Until: n.now().Add(replicaKeep).Unix()}
	if err := jobwire.WriteReplica(s, req); err != nil {
		return err
	}
	a, err := jobwire.ReadReplicaAnswer(bufio.NewReader(io.LimitReader(s, jobwire.MaxReplicaFrame+16)))
	if err != nil {
		return err
	}
	if !a.OK {
		return fmt.Errorf("refused: %s", a.Reason)
	}
	return nil
}

// holdCheckpoint makes job id's checkpoint c whole in this peer's store,
// from its replicas where this peer's copy is gone, and pins it until
// release is called (a no-op where it could not).
func (n *Node) holdCheckpoint(ctx context.Context, id string, c JobCheckpoint) (release func()) {
	root, err := jobspec.ParseCID(c.CID)
	if err != nil {
		return func() {}
	}
	var replicas []peer.ID
	for _, s := range c.Replicas {
		p, err := peer.Decode(s)
		if err != nil {
			continue
		}
		replicas = append(replicas, p)
		if n.host.Network().Connectedness(p) != network.Connected {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_ = n.host.Connect(cctx, peer.AddrInfo{ID: p})
			cancel()
		}
	}
	ctx, cancel := context.WithTimeout(ctx, checkpointFetchTimeout)
	defer cancel()
	// On a bulk stream from its replicas first, then over bitswap.
	st, release, err := n.content.FetchFrom(ctx, root, n.maxInputSize(), replicas...)
	if err != nil {
		n.log.Warn("job checkpoint not in this peer's store nor fetched from its replicas", "job", id, "cid", root, "replicas", len(c.Replicas), "err", err)
		return func() {}
	}
	if st.FetchedBytes > 0 {
		n.log.Info("job checkpoint fetched back", "job", id, "cid", root, "fetched", st.FetchedBytes)
	}
	return release
}

// replicateLater has c (just kept, bytes of blocks) replicated as its
// job's spec asks, beside the checkpoint fetches: a slow or silent peer
// delays its replicas, never the next checkpoint. The replicas that keep
// it are added to checkpoint.json if c is still the job's latest.
func (n *Node) replicateLater(id string, cf *checkpointFetch, c JobCheckpoint, bytes int64) {
	n.ckpts.mu.Lock()
	defer n.ckpts.mu.Unlock()
	if cf.replicas <= 0 {
		return
	}
	cf.replPending, cf.replBytes = &c, bytes
	if cf.replRunning {
		return
	}
	ctx, done := n.lifeContext()
	if ctx == nil {
		return
	}
	cf.replRunning = true
	go func() {
		defer done()
		for {
			n.ckpts.mu.Lock()
			next, bytes, want, exclude, prev := cf.replPending, cf.replBytes, cf.replicas, cf.exclude, cf.lastReplicas
			cf.replPending = nil
			if next == nil {
				cf.replRunning = false
				n.ckpts.mu.Unlock()
				return
			}
			n.ckpts.mu.Unlock()
			root, err := jobspec.ParseCID(next.CID)
			if err != nil {
				continue
			}
			kept := n.replicate(ctx, id, root, bytes, want, exclude, prev)
			if len(kept) < want {
				n.log.Warn("job checkpoint kept by fewer replicas than its spec asks", "job", id, "cid", root, "replicas", len(kept), "want", want)
			}
			n.ckpts.mu.Lock()
			cf.lastReplicas = kept
			n.ckpts.mu.Unlock()
			n.ckpts.saveMu.Lock()
			if last, ok := n.JobCheckpoint(id); ok && last.CID == next.CID {
				last.Replicas = kept
				err = n.saveCheckpoint(id, last)
			}
			n.ckpts.saveMu.Unlock()
			if err != nil {
				n.log.Warn("job checkpoint's replicas not recorded", "job", id, "cid", root, "err", err)
			}
		}
	}()
}
