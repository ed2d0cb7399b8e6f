package node

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/gossip"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/record"
	ma "github.com/multiformats/go-multiaddr"
)

// NegotiateProtocol carries the direct messages of cluster negotiation
// (bids, awards, acceptances, refusals, confirms, releases): one message a
// stream, from its author.
const NegotiateProtocol = protocol.ID("/gpumesh/negotiate/1.0.0")

// Timing of negotiation.
const (
	negotiateWindow = 5 * time.Second // a request's deadline: bids after it are not taken
	sendTimeout     = 5 * time.Second // one direct message
	reservationTick = time.Second     // how often reservations are checked for lapses
)

// Job states.
const (
	JobNegotiating = "negotiating"
	JobFormed      = "formed"  // a cluster holds the GPUs; the run starts
	JobRunning     = "running" // the members run it
	JobDone        = "done"    // every member exited with 0
	JobFailed      = "failed"
	JobCancelled   = "cancelled"
)

// Job is a submitted job as this peer (its submitter) knows it. Jobs are
// kept in the data dir's jobs.json and survive a restart.
type Job struct {
	ID      string          `json:"id"`
	Spec    JobSpec         `json:"spec"`
	State   string          `json:"state"`
	Reason  string          `json:"reason,omitempty"` // why it failed, with numbers
	Members []gossip.Member `json:"members,omitempty"`
	Spares  []gossip.Bid    `json:"spares,omitempty"` // runner-up bids, ranked: hot spares for execution
	Cost    uint64          `json:"cost,omitempty"`   // per hour, all members, in Unit's smallest unit
	Unit    string          `json:"unit"`
	Created time.Time       `json:"created"`
	Updated time.Time       `json:"updated"`

	Attempt  int         `json:"attempt,omitempty"` // runs before this one that lost a member (at most the spec's retries)
	Runs     []MemberRun `json:"runs,omitempty"`    // the members' runs of the latest attempt
	Started  time.Time   `json:"started,omitzero"`
	Ended    time.Time   `json:"ended,omitzero"`
	ExitCode *int        `json:"exitCode,omitempty"` // the job's: 0 when every member exited with 0
}

// Ended reports whether a job state is final.
func jobEnded(state string) bool {
	return state == JobDone || state == JobFailed || state == JobCancelled
}

// jobState is the node's part of cluster negotiation. One goroutine, the
// negotiation loop, owns the Negotiations and the Reservations; everything
// else talks to it through in.
type jobState struct {
	in       chan negEvent
	rfbTopic *pubsub.Topic
	rfbSub   *pubsub.Subscription

	sent atomic.Uint64 // negotiation messages this peer has sent (broadcasts count once)

	jobsMu sync.Mutex // guards jobs, the jobs file and free
	jobs   map[string]*Job
	free   map[string]uint32 // GPUs per class not reserved, as the loop last saw
	moved  chan struct{}     // closed and replaced whenever a job changes
}

// negEvent is one input of the negotiation loop.
type negEvent struct {
	msg    gossip.Message      // from a peer (its author checked)
	submit *gossip.Negotiation // a new negotiation of this peer's
	cancel gossip.JobID
	done   chan error
	held   *heldQuery // a provider's question: which reservation does a job hold?
}

func (n *Node) jobsFile() string {
	if n.dir == nil {
		return ""
	}
	return filepath.Join(n.dir.Path, "jobs.json")
}

// startJobs loads the jobs, joins the request-for-bids topic and starts the
// negotiation loop.
func (n *Node) startJobs(ctx context.Context) error {
	n.in = make(chan negEvent, 1024)
	n.jobs = map[string]*Job{}
	n.moved = make(chan struct{})
	if err := n.loadJobs(); err != nil {
		return err
	}
	ps := n.gossip.PubSub()
	topic := n.gossip.Topic("rfb")
	if err := ps.RegisterTopicValidator(topic, validateRFB); err != nil {
		return fmt.Errorf("rfb topic: %w", err)
	}
	t, err := ps.Join(topic)
	if err != nil {
		return fmt.Errorf("rfb topic: %w", err)
	}
	sub, err := t.Subscribe()
	if err != nil {
		return fmt.Errorf("rfb topic: %w", err)
	}
	n.rfbTopic, n.rfbSub = t, sub
	n.host.SetStreamHandler(NegotiateProtocol, n.handleNegotiate)
	n.host.SetStreamHandler(JobProtocol, n.handleJob)
	res, err := n.newReservations()
	if err != nil {
		return err
	}
	n.wg.Add(3)
	go func() { defer n.wg.Done(); n.cleanLeftovers(ctx) }()
	go n.readRFBs(ctx)
	go n.negotiationLoop(ctx, res)
	return nil
}

// closeJobs leaves the topic; the loop has ended with the node's context.
func (n *Node) closeJobs() error {
	if n.host != nil {
		n.host.RemoveStreamHandler(NegotiateProtocol)
		n.host.RemoveStreamHandler(JobProtocol)
	}
	if n.rfbSub != nil {
		n.rfbSub.Cancel()
	}
	if n.rfbTopic != nil {
		_ = n.rfbTopic.Close()
	}
	return nil
}

// validateRFB rejects requests that do not decode or whose submitter is not
// the message's signer, so GossipSub scoring penalizes who forwards them.
func validateRFB(_ context.Context, _ peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	rfb, err := gossip.UnmarshalRequestForBids(m.Data)
	if err != nil || rfb.Submitter != m.GetFrom() {
		return pubsub.ValidationReject
	}
	m.ValidatorData = &rfb
	return pubsub.ValidationAccept
}

func (n *Node) readRFBs(ctx context.Context) {
	defer n.wg.Done()
	for {
		m, err := n.rfbSub.Next(ctx)
		if err != nil {
			return
		}
		rfb, ok := m.ValidatorData.(*gossip.RequestForBids)
		if !ok {
			continue
		}
		n.deliver(ctx, negEvent{msg: rfb})
	}
}

// deliver hands an event to the loop, or drops it when the node stops.
func (n *Node) deliver(ctx context.Context, ev negEvent) {
	select {
	case n.in <- ev:
	case <-ctx.Done():
	}
}

// negRecord is a negotiation message inside a libp2p signed envelope: each
// bid, award and answer is signed by its author, so it can be shown to
// anyone later, not only trusted on the connection it came over.
type negRecord struct{ data []byte }

func (r *negRecord) Domain() string                 { return "gpumesh-negotiation" }
func (r *negRecord) Codec() []byte                  { return []byte("/gpumesh/negotiate/1") }
func (r *negRecord) MarshalRecord() ([]byte, error) { return r.data, nil }
func (r *negRecord) UnmarshalRecord(b []byte) error {
	r.data = append([]byte(nil), b...)
	return nil
}

// maxSignedNegotiation bounds a signed message: the message and the
// envelope's key, signature and framing.
const maxSignedNegotiation = gossip.MaxNegotiationSize + 1024

// sealNegotiation encodes and signs a message with this peer's key.
func (n *Node) sealNegotiation(msg gossip.Message) ([]byte, error) {
	data, err := gossip.MarshalNegotiation(msg)
	if err != nil {
		return nil, err
	}
	env, err := record.Seal(&negRecord{data: data}, n.id.Key)
	if err != nil {
		return nil, err
	}
	return env.Marshal()
}

// openNegotiation checks a signed message: the signature, and that the
// signer is the author the message names.
func openNegotiation(data []byte) (gossip.Message, error) {
	if len(data) > maxSignedNegotiation {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", gossip.ErrBadNegotiation, len(data), maxSignedNegotiation)
	}
	rec := &negRecord{}
	env, err := record.ConsumeTypedEnvelope(data, rec)
	if err != nil {
		return nil, fmt.Errorf("%w: envelope: %v", gossip.ErrBadNegotiation, err)
	}
	signer, err := peer.IDFromPublicKey(env.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: signer: %v", gossip.ErrBadNegotiation, err)
	}
	msg, err := gossip.UnmarshalNegotiation(rec.data)
	if err != nil {
		return nil, err
	}
	if msg.Author() != signer {
		return nil, fmt.Errorf("%w: signed by %s, written by %s", gossip.ErrBadNegotiation, signer, msg.Author())
	}
	return msg, nil
}

// handleNegotiate reads one signed direct message; its author must be its
// signer and the peer at the other end of the connection.
func (n *Node) handleNegotiate(s network.Stream) {
	defer s.Close()
	_ = s.SetReadDeadline(time.Now().Add(sendTimeout))
	data, err := io.ReadAll(io.LimitReader(s, maxSignedNegotiation+1))
	if err != nil {
		_ = s.Reset()
		return
	}
	msg, err := openNegotiation(data)
	if err == nil && msg.Author() != s.Conn().RemotePeer() {
		err = fmt.Errorf("%w: written by %s, sent by %s", gossip.ErrBadNegotiation, msg.Author(), s.Conn().RemotePeer())
	}
	if err != nil {
		n.log.Debug("negotiation message refused", "from", s.Conn().RemotePeer(), "err", err)
		_ = s.Reset()
		return
	}
	select {
	case n.in <- negEvent{msg: msg}:
	default:
		n.log.Warn("negotiation queue full: message dropped", "from", s.Conn().RemotePeer())
	}
}

// newReservations makes this peer's provider side from its GPUs and asks;
// nil when it has nothing to offer.
func (n *Node) newReservations() (*gossip.Reservations, error) {
	inv := n.LocalGPUs().Inventory
	byClass := map[string]*gossip.Capacity{}
	var classes []string
	for _, g := range inv.GPUs {
		c, ok := byClass[g.Class]
		if !ok {
			price, _ := n.Ask(g.Class)
			c = &gossip.Capacity{Class: g.Class, Model: exec.Model(g.Name), VRAMGB: exec.VRAMGB(g.MemoryTotal), Price: price}
			byClass[g.Class] = c
			classes = append(classes, g.Class)
		}
		c.GPUs++
	}
	sort.Strings(classes)
	var caps []gossip.Capacity
	for _, c := range classes {
		if byClass[c].Price > 0 { // no ask, no bid
			caps = append(caps, *byClass[c])
		}
	}
	if len(caps) == 0 {
		return nil, nil
	}
	var addrs []string
	for _, a := range n.host.Addrs() {
		if len(addrs) < 8 {
			addrs = append(addrs, a.String())
		}
	}
	return gossip.NewReservations(gossip.ProviderConfig{
		ID: n.id.PeerID, Unit: n.PriceUnit().String(), Zone: n.cfg.Region, Addrs: addrs, GPUs: caps,
	})
}

// negotiationLoop owns every Negotiation of this peer's jobs and its
// Reservations: it steps them with messages and time and sends what they say.
func (n *Node) negotiationLoop(ctx context.Context, res *gossip.Reservations) {
	defer n.wg.Done()
	negs := map[gossip.JobID]*gossip.Negotiation{}
	timer := time.NewTimer(reservationTick)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-n.in:
			now := time.Now()
			switch {
			case ev.submit != nil:
				negs[ev.submit.Job()] = ev.submit
				n.flush(ctx, ev.submit, ev.submit.Ready())
			case ev.done != nil:
				ng, ok := negs[ev.cancel]
				if ok {
					ng.Cancel("by the submitter")
					n.flush(ctx, ng, ng.Ready())
				}
				ev.done <- nil
			case ev.msg != nil:
				n.stepMessage(ctx, ev.msg, negs, res, now)
			case ev.held != nil:
				var r heldReply
				if res != nil {
					r.res, r.ok = res.Held(ev.held.job)
				}
				ev.held.reply <- r
			}
		case <-timer.C:
		}
		now := time.Now()
		next := now.Add(reservationTick)
		for id, ng := range negs {
			ng.Tick(now)
			n.flush(ctx, ng, ng.Ready())
			switch w := ng.Wake(); {
			case ng.Phase() == gossip.Formed || ng.Phase() == gossip.Failed:
				if now.Sub(n.jobUpdated(id)) > time.Minute {
					delete(negs, id) // late acceptances have had their answer window
				}
			case !w.IsZero() && w.Before(next):
				next = w
			}
		}
		if res != nil {
			res.Tick(now)
			n.noteFree(res, now)
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(max(time.Until(next), time.Millisecond))
	}
}

func (n *Node) stepMessage(ctx context.Context, msg gossip.Message, negs map[gossip.JobID]*gossip.Negotiation, res *gossip.Reservations, now time.Time) {
	switch m := msg.(type) {
	case *gossip.RequestForBids:
		if res == nil {
			return
		}
		bid, err := res.Bid(*m, now)
		if err != nil {
			return
		}
		n.send(ctx, m.Submitter, m.Addrs, &bid)
	case *gossip.Award:
		if res == nil {
			n.send(ctx, m.Submitter, nil, &gossip.Refusal{Job: m.Job, Provider: n.id.PeerID, Reason: "this peer offers no GPUs"})
			return
		}
		n.send(ctx, m.Submitter, nil, res.Award(*m, now))
	case *gossip.Confirm:
		if res != nil {
			if err := res.Confirm(*m, now); err != nil {
				n.log.Warn("confirm of a lapsed reservation", "job", m.Job, "err", err)
			}
		}
	case *gossip.Release:
		if res != nil {
			res.Release(*m, now)
		}
	default: // bids, acceptances, refusals: for one of our negotiations
		ng, ok := negs[msg.JobID()]
		if !ok {
			return
		}
		if err := ng.Step(msg, now); err != nil {
			n.log.Debug("negotiation step", "job", msg.JobID(), "err", err)
		}
		n.flush(ctx, ng, ng.Ready())
	}
}

// flush acts on what a negotiation says: broadcast, send, record.
func (n *Node) flush(ctx context.Context, ng *gossip.Negotiation, r gossip.Ready) {
	if r.RequestForBids != nil {
		data, err := gossip.MarshalNegotiation(r.RequestForBids)
		if err == nil {
			n.sent.Add(1)
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				if err := n.rfbTopic.Publish(ctx, data); err != nil && ctx.Err() == nil {
					n.log.Warn("publish request for bids", "err", err)
				}
			}()
		}
	}
	for i := range r.Awards {
		n.send(ctx, r.Awards[i].Provider, nil, &r.Awards[i])
	}
	for i := range r.Confirms {
		n.send(ctx, r.Confirms[i].Provider, nil, &r.Confirms[i])
	}
	for i := range r.Releases {
		n.send(ctx, r.Releases[i].Provider, nil, &r.Releases[i])
	}
	if r.Outcome != nil {
		n.recordOutcome(ng.Job(), *r.Outcome)
	}
}

// send delivers one message to a peer on its own stream, without blocking
// the loop.
func (n *Node) send(ctx context.Context, to peer.ID, addrs []string, msg gossip.Message) {
	data, err := n.sealNegotiation(msg)
	if err != nil {
		n.log.Warn("negotiation message not sent", "to", to, "err", err)
		return
	}
	n.sent.Add(1)
	if to == n.id.PeerID { // a peer that is its own provider
		n.deliver(ctx, negEvent{msg: msg})
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		sctx, cancel := context.WithTimeout(ctx, sendTimeout)
		defer cancel()
		for _, a := range addrs {
			if m, err := ma.NewMultiaddr(a); err == nil {
				n.host.Peerstore().AddAddr(to, m, time.Minute)
			}
		}
		s, err := n.host.NewStream(sctx, to, NegotiateProtocol)
		if err != nil {
			n.log.Debug("negotiation send", "to", to, "err", err)
			return
		}
		stop := context.AfterFunc(sctx, func() { _ = s.Reset() })
		defer stop()
		if _, err := s.Write(data); err != nil {
			_ = s.Reset()
			return
		}
		_ = s.Close()
	}()
}

// noteFree records the unreserved GPUs per class for FreeGPUs.
func (n *Node) noteFree(res *gossip.Reservations, now time.Time) {
	free := map[string]uint32{}
	for _, g := range n.LocalGPUs().Inventory.GPUs {
		free[g.Class] = res.Free(g.Class, now)
	}
	n.jobsMu.Lock()
	n.free = free
	n.jobsMu.Unlock()
}

// NegotiationMessages is how many negotiation messages this peer has sent:
// requests for bids (once each, however far gossip carries them), bids,
// awards, answers, confirms and releases.
func (n *Node) NegotiationMessages() uint64 { return n.sent.Load() }

// FreeGPUs is this provider's GPUs per class that no job holds (nil for a
// peer that offers none).
func (n *Node) FreeGPUs() map[string]uint32 {
	n.jobsMu.Lock()
	defer n.jobsMu.Unlock()
	out := make(map[string]uint32, len(n.free))
	for c, f := range n.free {
		out[c] = f
	}
	return out
}

// SubmitJob validates a spec, records the job and starts negotiating a
// cluster for it. The job is persisted before it is acknowledged.
func (n *Node) SubmitJob(ctx context.Context, spec JobSpec) (*Job, error) {
	needs, err := spec.Needs(n.PriceUnit())
	if err != nil {
		return nil, err
	}
	if err := n.checkFunds(ctx, int(needs.GPUs), needs.MaxPrice); err != nil {
		return nil, err
	}
	var id gossip.JobID
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	now := time.Now()
	job := &Job{ID: id.String(), Spec: spec, State: JobNegotiating, Unit: n.PriceUnit().String(), Created: now.UTC(), Updated: now.UTC()}
	n.jobsMu.Lock()
	n.jobs[job.ID] = job
	err = n.saveJobsLocked()
	cp := *job
	n.jobsMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("job not submitted: %w", err)
	}
	if err := n.negotiate(ctx, id, spec); err != nil {
		n.finishJob(job.ID, JobFailed, err.Error(), nil)
		return nil, err
	}
	return &cp, nil
}

// negotiate starts a negotiation for a job: a request for bids, then
// awards to the best bids.
func (n *Node) negotiate(ctx context.Context, id gossip.JobID, spec JobSpec) error {
	unit := n.PriceUnit()
	needs, err := spec.Needs(unit)
	if err != nil {
		return err
	}
	var addrs []string
	for _, a := range n.host.Addrs() {
		if len(addrs) < 8 {
			addrs = append(addrs, a.String())
		}
	}
	// The directory says how many providers to expect: once they have all
	// bid the negotiation closes without waiting for its deadline.
	expect := 0
	if found, err := n.directoryFor(ctx, needs); err == nil {
		expect = found.Providers
	}
	now := time.Now()
	rfb := gossip.RequestForBids{Job: id, Submitter: n.id.PeerID, Needs: needs, Deadline: now.Add(negotiateWindow).UnixMilli(), Addrs: addrs}
	ng, err := gossip.NewNegotiation(rfb, gossip.NegotiationConfig{Expect: expect}, now)
	if err != nil {
		return err
	}
	select {
	case n.in <- negEvent{submit: ng}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// retryJob negotiates a new cluster for a job that lost a member.
func (n *Node) retryJob(id, why string) {
	var spec JobSpec
	n.updateJob(id, func(j *Job) {
		j.State, j.Reason, j.Attempt, j.Members, j.Spares = JobNegotiating, why, j.Attempt+1, nil, nil
		spec = j.Spec
	})
	ctx, done := n.lifeContext()
	if ctx == nil {
		n.finishJob(id, JobFailed, why+"; the peer stopped before it could retry", nil)
		return
	}
	defer done()
	if err := n.negotiate(ctx, jobID(id), spec); err != nil {
		n.finishJob(id, JobFailed, why+"; the retry could not start: "+err.Error(), nil)
	}
}

// CancelJob stops a job: a negotiation is ended and every member released;
// a running job's members are stopped (it returns once they have).
func (n *Node) CancelJob(ctx context.Context, id string) (*Job, error) {
	var jid gossip.JobID
	if err := jid.UnmarshalText([]byte(id)); err != nil {
		return nil, fmt.Errorf("job ID %q: %w", id, err)
	}
	if _, ok := n.Job(id); !ok {
		return nil, fmt.Errorf("no job %s on this peer (`gpumesh job ls` lists them)", id)
	}
	if running, err := n.stopRun(ctx, id, errCancelled); running {
		if err != nil {
			return nil, err
		}
		j, _ := n.Job(id)
		return &j, nil
	}
	done := make(chan error, 1)
	select {
	case n.in <- negEvent{cancel: jid, done: done}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case <-done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if running, err := n.stopRun(ctx, id, errCancelled); running { // it formed meanwhile
		if err != nil {
			return nil, err
		}
		j, _ := n.Job(id)
		return &j, nil
	}
	n.jobsMu.Lock()
	j := n.jobs[id]
	if j.State == JobNegotiating || j.State == JobFormed {
		j.State, j.Updated = JobCancelled, time.Now().UTC()
		if err := n.saveJobsLocked(); err != nil {
			n.log.Warn("save jobs", "err", err)
		}
	}
	cp := *j
	n.jobsMu.Unlock()
	return &cp, nil
}

// directoryFor searches the directory for what a job needs, ignoring price.
func (n *Node) directoryFor(ctx context.Context, needs gossip.Needs) (dht.FindResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	model := needs.Class
	if model == "" {
		model = needs.Model
	}
	return n.FindGPUs(ctx, dht.Query{Model: model, MinVRAMGB: needs.MinVRAMGB, Unit: needs.Unit})
}

// explainNoBids adds the directory's numbers to a failure without bids:
// whether providers exist, and what the cheapest asks.
func (n *Node) explainNoBids(ctx context.Context, j Job) string {
	unit, err := gossip.ParseUnit(j.Unit)
	if err != nil {
		return ""
	}
	needs, err := j.Spec.Needs(unit)
	if err != nil {
		return ""
	}
	res, err := n.directoryFor(ctx, needs)
	if err != nil {
		return ""
	}
	if res.GPUs == 0 {
		return fmt.Sprintf("the directory lists no %s GPUs with at least %d GB", needs.Model, needs.MinVRAMGB)
	}
	cheapest := uint64(0)
	for _, m := range res.Matches {
		if m.Offer.Token == needs.Unit && m.GPU.Price > 0 && (cheapest == 0 || m.GPU.Price < cheapest) {
			cheapest = m.GPU.Price
		}
	}
	s := fmt.Sprintf("the directory lists %d GPUs from %d providers", res.GPUs, res.Providers)
	if cheapest > needs.MaxPrice {
		s += fmt.Sprintf(", the cheapest at %s %s, above the max %s", unit.Format(cheapest), unit.PerHour(), unit.Format(needs.MaxPrice))
	}
	return s
}

func (n *Node) recordOutcome(id gossip.JobID, o gossip.Outcome) {
	n.jobsMu.Lock()
	defer n.jobsMu.Unlock()
	j, ok := n.jobs[id.String()]
	if !ok {
		return
	}
	if !o.Formed && strings.HasPrefix(o.Reason, "no cluster can form: no provider") && j.State == JobNegotiating {
		// No bids at all: add what the directory knows (off the loop), then
		// mark the job failed with the whole reason.
		cp := *j
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			reason := o.Reason
			if more := n.explainNoBids(context.Background(), cp); more != "" {
				reason += "; " + more
			}
			n.jobsMu.Lock()
			defer n.jobsMu.Unlock()
			if jj, ok := n.jobs[cp.ID]; ok && jj.State == JobNegotiating {
				jj.State, jj.Reason, jj.Updated = JobFailed, reason, time.Now().UTC()
				if err := n.saveJobsLocked(); err != nil {
					n.log.Warn("save jobs", "err", err)
				}
			}
		}()
		return
	}
	formed := false
	if j.State == JobNegotiating {
		if o.Formed {
			j.State, j.Members, j.Cost, j.Spares = JobFormed, o.Members, o.Cost, o.Spares
			formed = true
		} else {
			j.State, j.Reason = JobFailed, o.Reason
		}
	}
	j.Updated = time.Now().UTC()
	if err := n.saveJobsLocked(); err != nil {
		n.log.Warn("save jobs", "err", err)
	}
	n.log.Info("job "+j.State, "job", j.ID, "members", len(j.Members), "reason", j.Reason)
	if formed {
		n.startRun(j.ID)
	}
}

func (n *Node) jobUpdated(id gossip.JobID) time.Time {
	n.jobsMu.Lock()
	defer n.jobsMu.Unlock()
	if j, ok := n.jobs[id.String()]; ok {
		return j.Updated
	}
	return time.Time{}
}

// Job returns one of this peer's jobs.
func (n *Node) Job(id string) (Job, bool) {
	n.jobsMu.Lock()
	defer n.jobsMu.Unlock()
	j, ok := n.jobs[id]
	if !ok {
		return Job{}, false
	}
	return *j, true
}

// Jobs lists this peer's jobs, newest first.
func (n *Node) Jobs() []Job {
	n.jobsMu.Lock()
	defer n.jobsMu.Unlock()
	out := make([]Job, 0, len(n.jobs))
	for _, j := range n.jobs {
		out = append(out, *j)
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Created.After(out[k].Created) })
	return out
}

// loadJobs reads jobs.json. A job still negotiating when the node stopped
// has lost its negotiation: it is marked failed with that reason.
func (n *Node) loadJobs() error {
	path := n.jobsFile()
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("jobs: %w", err)
	}
	var jobs []*Job
	if err := json.Unmarshal(data, &jobs); err != nil {
		return fmt.Errorf("jobs file %s: %v; move it away to start with no jobs", path, err)
	}
	for _, j := range jobs {
		switch j.State {
		case JobNegotiating:
			j.State, j.Reason = JobFailed, "the peer stopped while negotiating; submit it again"
		case JobFormed, JobRunning:
			j.State, j.Reason = JobFailed, "the peer stopped while the job ran, and its members stopped with it; submit it again"
		}
		n.jobs[j.ID] = j
	}
	return nil
}

// jobMoved returns a channel closed at the next change of any job.
func (n *Node) jobMoved() <-chan struct{} {
	n.jobsMu.Lock()
	defer n.jobsMu.Unlock()
	return n.moved
}

// saveJobsLocked writes jobs.json whole (temp file, fsync, rename).
func (n *Node) saveJobsLocked() error {
	if n.moved != nil {
		close(n.moved)
		n.moved = make(chan struct{})
	}
	path := n.jobsFile()
	if path == "" {
		return nil
	}
	jobs := make([]*Job, 0, len(n.jobs))
	for _, j := range n.jobs {
		jobs = append(jobs, j)
	}
	sort.Slice(jobs, func(i, k int) bool { return jobs[i].Created.Before(jobs[k].Created) })
	data, err := json.MarshalIndent(jobs, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(data, '\n'), 0o600)
}

// jobRoutes adds the jobs' local API calls.
func (n *Node) jobRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+APIVersion+"/jobs", func(w http.ResponseWriter, r *http.Request) {
		data, err := io.ReadAll(io.LimitReader(r.Body, MaxJobSpecSize+1))
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		spec, err := ParseJobSpec(data, "json")
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		job, err := n.SubmitJob(r.Context(), spec)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		writeJSON(w, job)
	})
	mux.HandleFunc("GET "+APIVersion+"/jobs", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, n.Jobs()) })
	mux.HandleFunc("GET "+APIVersion+"/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		j, ok := n.Job(r.PathValue("id"))
		if !ok {
			writeError(w, http.StatusNotFound, "no job "+r.PathValue("id")+" on this peer (`gpumesh job ls` lists them)")
			return
		}
		writeJSON(w, j)
	})
	mux.HandleFunc("GET "+APIVersion+"/jobs/{id}/logs", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if _, ok := n.Job(id); !ok {
			writeError(w, http.StatusNotFound, "no job "+id+" on this peer (`gpumesh job ls` lists them)")
			return
		}
		n.serveLog(r.Context(), w, id, r.URL.Query().Get("follow") == "1")
	})
	mux.HandleFunc("GET "+APIVersion+"/jobs/{id}/outputs/{rank}/{path...}", func(w http.ResponseWriter, r *http.Request) {
		id, path := r.PathValue("id"), r.PathValue("path")
		j, ok := n.Job(id)
		rank, err := strconv.Atoi(r.PathValue("rank"))
		if !ok || err != nil || rank < 0 || rank >= len(j.Runs) || !validOutputPath(path) {
			writeError(w, http.StatusNotFound, "no such output; `gpumesh job status ID` lists a job's outputs")
			return
		}
		found := false
		for _, o := range j.Runs[rank].Outputs {
			found = found || o.Path == path
		}
		dir, err := n.jobDir(id)
		if !found || err != nil {
			writeError(w, http.StatusNotFound, "no output "+path+" of member "+r.PathValue("rank"))
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeFile(w, r, filepath.Join(dir, "outputs", "rank-"+strconv.Itoa(rank), filepath.FromSlash(path)))
	})
	mux.HandleFunc("POST "+APIVersion+"/jobs/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		j, err := n.CancelJob(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, http.StatusNotFound, err.Error())
			return
		}
		writeJSON(w, j)
	})
}
