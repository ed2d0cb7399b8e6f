package node

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node/jobspec"
)

// SubmitJob validates a spec, records the job and starts negotiating a
// cluster for it. The job is persisted before it is acknowledged.
func (n *Node) SubmitJob(ctx context.Context, spec jobspec.Spec) (*Job, error) {
	needs, err := spec.Needs(n.PriceUnit())
	if err != nil {
		return nil, err
	}
	if err := n.checkFunds(ctx, int(needs.GPUs), needs.MaxPrice); err != nil {
		return nil, err
	}
	if err := n.checkQueueRoom(spec.QueueFor()); err != nil {
		return nil, err
	}
	// Local inputs become CIDs before any GPU is asked for.
	if err := n.addInputs(ctx, &spec); err != nil {
		return nil, err
	}
	// So does an image only this peer's engine has (images.go).
	if err := n.addImage(ctx, &spec, nil); err != nil {
		return nil, err
	}
	var id gossip.JobID
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	now := n.now().UTC()
	job := &Job{ID: id.String(), Spec: spec, State: JobNegotiating, Unit: n.PriceUnit().String(), Created: now, Updated: now}
	cp := *job
	if err := n.addJob(job); err != nil {
		return nil, fmt.Errorf("job not submitted: %w", err)
	}
	n.trace(id, "stored", nil)
	if err := n.negotiate(ctx, id, spec); err != nil {
		n.finishJob(job.ID, JobFailed, err.Error(), nil)
		return nil, err
	}
	return &cp, nil
}

// negotiate starts a negotiation for a job: a request for bids, then
// awards to the best bids.
func (n *Node) negotiate(ctx context.Context, id gossip.JobID, spec jobspec.Spec) error {
	unit := n.PriceUnit()
	needs, err := spec.Needs(unit)
	if err != nil {
		return err
	}
	now := n.now()
	rfb := gossip.RequestForBids{Job: id, Submitter: n.id.PeerID, Needs: needs, Deadline: now.Add(negotiateWindow).UnixMilli()}
	// Direct: the request goes to the providers named below, not to the
	// whole swarm (gossip/negotiation_direct.go); the topic only when they
	// are too few or do not answer.
	ng, err := gossip.NewNegotiation(rfb, gossip.NegotiationConfig{Ranking: n.Ranking(), Direct: true, Private: n.cfg.Swarm.Private(), OldAwardRules: n.cfg.OldAwardRules, SendReports: !n.cfg.OldFallback}, now)
	if err != nil {
		return err
	}
	// Start fast: the providers the price board knows are asked at once;
	// the directory's lookup runs meanwhile and names more as it answers.
	ng.Candidates(n.boardCandidates(needs, now), false, now)
	select {
	case n.in <- negEvent{submit: ng}:
	case <-ctx.Done():
		return ctx.Err()
	}
	n.trace(id, "handed", nil)
	lctx, done := n.lifeContext()
	if lctx == nil {
		return nil
	}
	go func() {
		defer done()
		found, err := n.directoryFor(lctx, needs)
		if err != nil {
			n.log.Debug("directory lookup for a request for bids", "job", id, "err", err)
		}
		// A failed lookup names nobody: the negotiation then asks the topic.
		cands := matchCandidates(found, needs)
		n.traceNote(id, "candidates", strconv.Itoa(len(cands)))
		n.deliver(lctx, negEvent{cands: &candidates{job: id, list: cands, final: true}})
	}()
	return nil
}

// maxBoardCandidates bounds the providers taken from the price board for
// one request.
const maxBoardCandidates = 64

// boardCandidates is the providers the price board has live asks of, with
// GPUs free, of a class that may meet needs (the class asked for, or any
// class of its model: their bids say whether the memory suffices).
func (n *Node) boardCandidates(needs gossip.Needs, now time.Time) []gossip.Candidate {
	match := func(class string) bool {
		if needs.Class != "" {
			return strings.EqualFold(class, needs.Class)
		}
		m, _, _ := strings.Cut(class, "-")
		return strings.EqualFold(m, needs.Model)
	}
	n.priceMu.Lock()
	ticks := n.board.Sellers(match, maxBoardCandidates, now)
	n.priceMu.Unlock()
	out := make([]gossip.Candidate, 0, len(ticks))
	for _, t := range ticks {
		price := t.Ask
		if t.Unit.String() != needs.Unit {
			price = 0 // not comparable: its bid will say
		}
		n.learnAskAddrs(t)
		out = append(out, gossip.Candidate{Provider: t.Provider, GPUs: t.Available, Price: price})
	}
	return out
}

// matchCandidates is the providers a directory search found, with what
// their offers list of classes that meet needs.
func matchCandidates(found dht.FindResult, needs gossip.Needs) []gossip.Candidate {
	var out []gossip.Candidate
	for _, m := range found.Matches {
		if m.Offer == nil || m.GPU.Available == 0 {
			continue
		}
		if needs.Class != "" && !strings.EqualFold(m.GPU.Class, needs.Class) {
			continue
		}
		price := m.GPU.Price
		if m.Offer.Token != needs.Unit {
			price = 0
		}
		out = append(out, gossip.Candidate{Provider: m.Offer.Provider, GPUs: uint32(min(m.GPU.Available, gossip.MaxJobGPUs)), Price: price})
	}
	return out
}

// retryJob negotiates a new cluster for a job that lost a member.
func (n *Node) retryJob(id, why string) {
	var spec jobspec.Spec
	j, ok := n.moveJob(id, JobNegotiating, []JobState{JobRunning}, func(j *Job) {
		j.Reason, j.Attempt, j.Members, j.Spares, j.Races = why, j.Attempt+1, nil, nil, 0
	})
	if !ok {
		return
	}
	spec = j.Spec
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
	if j, ok := n.moveJob(id, JobCancelled, []JobState{JobQueued}, func(j *Job) { j.Ended = n.now().UTC() }); ok {
		// Queued: out of the queue, and a try under way (or on its way)
		// is cancelled below like any negotiation; its outcome finds the
		// job ended and changes nothing.
		n.dequeue(id)
		n.triesSent()
		select {
		case n.in <- negEvent{cancel: jid, done: make(chan error, 1)}:
		case <-ctx.Done():
		}
		return &j, nil
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
	// Negotiating still (its outcome not recorded yet: that finds the job
	// ended and releases), or formed and its run not started (this move
	// releases the members, and the start finds the job ended). Either
	// way the cancel is on disk before it is acknowledged.
	if _, ok := n.moveJob(id, JobCancelled, []JobState{JobNegotiating, JobFormed}, func(j *Job) {
		j.Reason, j.Ended = "cancelled: by the submitter", n.now().UTC()
	}); !ok {
		// Its run started first: it stops like any running job's.
		if _, err := n.stopRun(ctx, id, errCancelled); err != nil {
			return nil, err
		}
	}
	j, _ := n.Job(id)
	return &j, nil
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
	switch {
	case cheapest == 0:
		// A provider without --price quotes nothing and bids on nothing.
		s += fmt.Sprintf(", none quoting a price in %s (a provider bids only once started with --price)", needs.Unit)
	case cheapest > needs.MaxPrice:
		s += fmt.Sprintf(", the cheapest at %s %s, above the max %s", unit.Format(cheapest), unit.PerHour(), unit.Format(needs.MaxPrice))
	}
	return s
}

// recordOutcome records how a negotiation of this peer's ended: a formed
// cluster starts running; a failure without a single bid says what the
// directory knows, so the user learns whether to raise the price or wait;
// a job with a queue then waits (submitter_queue.go) instead of failing.
// Providers that refused an award are recorded first (evidence.go), so a
// retry ranks them last.
//
// It runs on a goroutine of its own, not on the negotiation loop: its
// writes are synced (the job store, the evidence), and a slow disk must
// not stall every negotiation and every provider's answer behind them.
// Nothing here is acknowledged to anyone before it is written: the
// confirms the members got are the negotiation's, and a crash before the
// record says "formed" leaves a job that a restart marks failed, its
// reservations lapsing on the providers as they would after a crash in
// the run; the run starts members only after "running" is on disk.
func (n *Node) recordOutcome(id gossip.JobID, o gossip.Outcome) {
	n.trace(id, "recording", nil)
	j, ok := n.Job(id.String())
	if !ok {
		return
	}
	if len(o.Refused)+len(o.Silent) > 0 {
		n.recordRefusals(j.ID, fmt.Sprintf("%d.%d.%d", j.Attempt, j.Races, j.Tries), o.Refused, o.Silent)
	}
	if o.Formed {
		// A job cancelled while its cluster formed (its record ended
		// already, or ends before this move) lets its members go now,
		// not when their reservations lapse.
		if _, ok := n.moveJob(j.ID, JobFormed, []JobState{JobNegotiating, JobQueued}, func(j *Job) {
			j.Members, j.Cost, j.Spares = o.Members, o.Cost, o.Spares
		}); ok {
			n.trace(id, "recorded", nil)
			n.dequeue(j.ID)
			n.startRun(j.ID)
		} else {
			n.releaseMembers(j.ID, o.Members, "the job was cancelled")
		}
		return
	}
	if j.State != JobNegotiating && j.State != JobQueued {
		return
	}
	switch {
	case errors.Is(o.Err, gossip.ErrNoBids):
		// The directory is asked over the network.
		reason := o.Reason
		if more := n.explainNoBids(context.Background(), j); more != "" {
			reason += "; " + more
		}
		if j.Spec.WantsEgress() {
			reason += "; the job asks for the internet (network.egress), and only providers that give jobs egress (run with --job-egress) bid on such a job"
		}
		n.noCluster(j.ID, reason)
	case strings.HasPrefix(o.Reason, "cancelled: "): // CancelJob's (gossip.Negotiation.Cancel)
		n.finishJob(j.ID, JobCancelled, o.Reason, nil)
	case o.Contended && j.State == JobNegotiating && j.Races < raceRetries:
		n.retryRace(j, o.Reason)
	case o.Contended && j.State == JobNegotiating:
		n.noCluster(j.ID, fmt.Sprintf("%s; gave up after %d negotiations in which providers refused awards after bidding", o.Reason, j.Races+1))
	default: // no cluster (or no replacement for a member that refused)
		n.noCluster(j.ID, o.Reason)
	}
}

// raceRetries bounds how often one attempt of a job negotiates again after
// losing a race (gossip.Outcome.Contended); raceBackoff is the longest
// wait before the first of these tries, doubled for each after it.
const (
	raceRetries = 3
	raceBackoff = 150 * time.Millisecond
)

// retryRace negotiates again, after a random wait, for a job whose
// negotiation failed because providers gave GPUs they had bid to another
// submitter first. Submitters racing for the same GPUs may each hold part
// of a cluster when the refusals come, and all fail and release; waiting
// a random time, doubled for each loss, lets one of them find the GPUs
// free before the others ask again.
func (n *Node) retryRace(j Job, reason string) {
	ctx, done := n.lifeContext()
	if ctx == nil {
		n.noCluster(j.ID, reason)
		return
	}
	wait := mrand.N(raceBackoff << j.Races)
	n.updateJob(j.ID, func(j *Job) {
		j.Races++
		j.Reason = reason + "; another submitter took GPUs first, trying again"
	})
	n.log.Debug("negotiation lost a race; trying again", "job", j.ID, "races", j.Races+1, "after", wait)
	go func() {
		defer done()
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		now, ok := n.Job(j.ID)
		if !ok || now.State != JobNegotiating { // cancelled meanwhile
			return
		}
		var id gossip.JobID
		if err := id.UnmarshalText([]byte(j.ID)); err != nil {
			n.noCluster(j.ID, reason)
			return
		}
		if err := n.negotiate(ctx, id, now.Spec); err != nil {
			n.noCluster(j.ID, reason+"; trying again failed: "+err.Error())
		}
	}()
}
