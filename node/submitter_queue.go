package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node/jobqueue"
)

// The queue: a job whose spec has `queue: D` and for which no cluster can
// form waits (JobQueued) up to D, and negotiates again when offers change.
// When to try is decided by jobqueue.Queue (news from the price board: a
// new provider, GPUs freed, a lower ask; a floor between one job's tries,
// a backoff without news, and a rate for all queued jobs together); this
// file feeds it the board's ticks and the negotiations' outcomes, and acts
// on what it decides: a try is a new negotiation of the same job (the job
// stays queued while it runs), an expiry fails the job with the reason of
// its last try. Queued jobs are in the job store like any other, so a
// restarted peer queues them again.

// ErrQueueFull is SubmitJob's error when this peer keeps as many jobs
// queued as it may (Config.MaxQueued).
var ErrQueueFull = errors.New("job queue full")

// queueState is the submitter's queue of jobs waiting for a cluster.
type queueState struct {
	queueMu   sync.Mutex      // guards queue
	queue     *jobqueue.Queue // nil before Start
	queueWake chan struct{}   // the queue changed: the loop looks again
	// tryMu is held while the loop starts tries: once a cancel has taken
	// it, no try of a job cancelled before can still be on its way.
	tryMu sync.Mutex
}

// DefaultMaxQueued is how many jobs with a queue a peer keeps waiting (or
// negotiating) at once unless Config.MaxQueued says otherwise.
const DefaultMaxQueued = jobqueue.DefaultMaxJobs

// maxQueued is how many jobs with a queue this peer keeps waiting (or
// negotiating) at once.
func (n *Node) maxQueued() int {
	if n.cfg.MaxQueued > 0 {
		return n.cfg.MaxQueued
	}
	return jobqueue.DefaultMaxJobs
}

// startQueue makes the queue, queues again the jobs a restart found
// queued (oldest first: they try after the floor, knowing nothing of the
// offers), follows the price board and starts the loop.
func (n *Node) startQueue(ctx context.Context) {
	cfg := n.cfg.QueueTiming
	cfg.MaxJobs = n.maxQueued()
	n.queue = jobqueue.New(cfg)
	n.queueWake = make(chan struct{}, 1)
	var restored []Job
	n.jobsMu.Lock()
	for _, j := range n.active {
		if j.State == JobQueued {
			restored = append(restored, *j)
		}
	}
	n.jobsMu.Unlock()
	slices.SortFunc(restored, func(a, b Job) int { return a.Created.Compare(b.Created) })
	now := n.now()
	for _, j := range restored {
		w, err := n.wantOf(j)
		if err == nil {
			n.queueMu.Lock()
			err = n.queue.Add(j.ID, w, j.QueuedUntil, j.Reason, true, now)
			n.queueMu.Unlock()
		}
		if err != nil {
			n.finishJob(j.ID, JobFailed, j.Reason+"; not queued again after the restart: "+err.Error(), nil)
			continue
		}
		n.log.Info("job queued again after the restart", "job", j.ID, "until", j.QueuedUntil)
	}
	stop := n.WatchPrices(n.queueOffer)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer stop()
		n.queueLoop(ctx)
	}()
}

// wantOf is what a queued job waits for.
func (n *Node) wantOf(j Job) (jobqueue.Want, error) {
	unit, err := gossip.ParseUnit(j.Unit)
	if err != nil {
		return jobqueue.Want{}, err
	}
	needs, err := j.Spec.Needs(unit)
	if err != nil {
		return jobqueue.Want{}, err
	}
	return jobqueue.Want{Class: needs.Class, Model: needs.Model, MinVRAMGB: needs.MinVRAMGB, Unit: needs.Unit, MaxPrice: needs.MaxPrice}, nil
}

// queueOffer hands the queue a tick the price board took (on the goroutine
// that reads the price topic: it does not block).
func (n *Node) queueOffer(t gossip.Tick) {
	n.queueMu.Lock()
	news := n.queue.Offer(jobqueue.Offer{Provider: t.Provider.String(), Class: t.Class, Unit: t.Unit.String(), Ask: t.Ask, Available: t.Available}, n.now())
	n.queueMu.Unlock()
	if news {
		n.wakeQueue()
	}
}

func (n *Node) wakeQueue() {
	select {
	case n.queueWake <- struct{}{}:
	default:
	}
}

// queueLoop acts on the queue's decisions until ctx ends.
func (n *Node) queueLoop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := n.now()
		n.queueMu.Lock()
		n.queue.Tick(now)
		rd := n.queue.Ready()
		wake := n.queue.Wake(now)
		n.queueMu.Unlock()
		for _, e := range rd.Expire {
			n.expireQueued(e)
		}
		n.tryMu.Lock()
		for _, id := range rd.Try {
			n.tryQueued(ctx, id)
		}
		n.tryMu.Unlock()
		wait := time.Hour
		if !wake.IsZero() {
			wait = max(wake.Sub(n.now()), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-n.queueWake:
		case <-timer.C:
		}
	}
}

// tryQueued negotiates again for a queued job; the job stays queued while
// it does, and the outcome comes to recordOutcome as any negotiation's.
func (n *Node) tryQueued(ctx context.Context, id string) {
	j, ok := n.Job(id)
	if !ok || j.State != JobQueued {
		n.dequeue(id)
		return
	}
	n.updateJob(id, func(j *Job) { j.Tries++ })
	if err := n.negotiate(ctx, jobID(id), j.Spec); err != nil && ctx.Err() == nil {
		n.noCluster(id, "the try could not start: "+err.Error())
	}
}

// expireQueued fails a job whose queue time ended, with its last reason.
func (n *Node) expireQueued(e jobqueue.Expired) {
	j, ok := n.Job(e.ID)
	if !ok {
		return
	}
	reason := fmt.Sprintf("no cluster formed in the %s it could wait (queue: %s, %d tries after the first): %s", j.Spec.QueueFor(), j.Spec.Queue, e.Tries, e.Reason)
	n.moveJob(e.ID, JobFailed, []JobState{JobQueued}, func(j *Job) { j.Reason, j.Ended = reason, n.now().UTC() })
}

// dequeue takes a job out of the queue (it formed, or ended otherwise).
func (n *Node) dequeue(id string) {
	if n.queue == nil {
		return
	}
	n.queueMu.Lock()
	n.queue.Remove(id)
	n.queueMu.Unlock()
}

// triesSent returns once no try the queue loop started before the call is
// still on its way to the negotiation loop: a cancel sent after it reaches
// the negotiation loop after any such try.
func (n *Node) triesSent() {
	n.tryMu.Lock()
	n.tryMu.Unlock() // a barrier, not a critical section
}

// noCluster records a negotiation of job id that formed no cluster, for
// reason: a job with a queue waits (again), any other fails.
func (n *Node) noCluster(id, reason string) {
	j, ok := n.Job(id)
	if !ok {
		return
	}
	wait := j.Spec.QueueFor()
	if wait == 0 || n.queue == nil {
		n.finishJob(id, JobFailed, reason, nil)
		return
	}
	now := n.now()
	switch j.State {
	case JobQueued: // a try failed: it waits on
		n.updateJob(id, func(j *Job) { j.Reason = reason })
		n.queueMu.Lock()
		n.queue.Failed(id, reason, now)
		n.queueMu.Unlock()
	case JobNegotiating: // the first negotiation (or a retry's) failed: it waits
		until := now.UTC().Add(wait)
		w, err := n.wantOf(j)
		// Queued and in the queue at once: whoever sees the state sees
		// its place (a cancel's dequeue waits for the Add).
		n.queueMu.Lock()
		_, ok := n.moveJob(id, JobQueued, []JobState{JobNegotiating}, func(j *Job) {
			j.Reason, j.QueuedUntil, j.Tries = reason, until, 0
		})
		if ok && err == nil {
			err = n.queue.Add(id, w, until, reason, false, now)
		}
		n.queueMu.Unlock()
		if !ok {
			return
		}
		if err != nil {
			n.finishJob(id, JobFailed, reason+"; not queued: "+err.Error(), nil)
			return
		}
	default:
		return
	}
	n.wakeQueue()
}

// checkQueueRoom refuses a job with a queue when this peer keeps
// MaxQueued such jobs waiting or negotiating already.
func (n *Node) checkQueueRoom(queue time.Duration) error {
	if queue == 0 {
		return nil
	}
	n.jobsMu.Lock()
	waiting := 0
	for _, j := range n.active {
		if (j.State == JobQueued || j.State == JobNegotiating) && j.Spec.QueueFor() > 0 {
			waiting++
		}
	}
	n.jobsMu.Unlock()
	if limit := n.maxQueued(); waiting >= limit {
		return fmt.Errorf("%w: this peer keeps at most %d jobs with a queue waiting for a cluster (--max-queued), and %d wait or negotiate now: cancel one (`gpumesh job ls` lists them), or submit without queue", ErrQueueFull, limit, waiting)
	}
	return nil
}

// QueueStatus says where a queued job stands in this peer's queue: its
// position (1: the oldest), its tries and the latest its next try starts;
// false if it does not wait.
func (n *Node) QueueStatus(id string) (jobqueue.Status, bool) {
	if n.queue == nil {
		return jobqueue.Status{}, false
	}
	n.queueMu.Lock()
	defer n.queueMu.Unlock()
	return n.queue.Status(id)
}

// placeInQueue fills in where queued job j stands in this peer's queue
// (QueuePosition, QueueNext), for the local API and the explorer.
func (n *Node) placeInQueue(j *Job) {
	if j.State != JobQueued {
		return
	}
	if s, ok := n.QueueStatus(j.ID); ok {
		j.QueuePosition, j.QueueNext = s.Position, s.Next
	}
}

// maxMaxQueued bounds Config.MaxQueued: each queued job is a record in
// memory and, on every change of offers, a candidate for a try.
const maxMaxQueued = 10_000
