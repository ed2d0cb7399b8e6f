package node

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/jobstore"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The job record: what a submitter knows of each job it submitted, and the
// only code that changes a job's state. A job moves
//
//	negotiating → formed → running → done | failed | cancelled
//	             ↘ failed | cancelled     ↘ negotiating (a retry, after a lost member)
//	             ↘ queued → formed | failed | cancelled   (a spec with queue:, no cluster yet)
//
// and nothing moves an ended job. Every change is written to the job store
// (jobs.db in the data dir, one record a job, one transaction a change)
// before the call that made it returns; jobs that have not ended are also
// kept in memory, ended ones only on disk.

// JobState is where a job is in its life.
type JobState string

// Job states.
const (
	JobNegotiating JobState = "negotiating"
	JobQueued      JobState = "queued"  // no cluster could form: it waits for offers to change (the spec's queue), Reason says why
	JobFormed      JobState = "formed"  // a cluster holds the GPUs; the run starts
	JobRunning     JobState = "running" // the members run it
	JobDone        JobState = "done"    // every member exited with 0
	JobFailed      JobState = "failed"
	JobCancelled   JobState = "cancelled"
)

// Ended reports whether a job in state s has ended for good.
func (s JobState) Ended() bool { return s == JobDone || s == JobFailed || s == JobCancelled }

// jobMoves lists the states a job may move to from each state.
var jobMoves = map[JobState][]JobState{
	JobNegotiating: {JobFormed, JobQueued, JobFailed, JobCancelled},
	JobQueued:      {JobFormed, JobFailed, JobCancelled},
	JobFormed:      {JobRunning, JobFailed, JobCancelled},
	JobRunning:     {JobNegotiating, JobDone, JobFailed, JobCancelled},
}

func canMove(from, to JobState) bool { return slices.Contains(jobMoves[from], to) }

// Job is a submitted job as this peer (its submitter) knows it. Jobs are
// kept in the data dir's job store and survive a restart.
type Job struct {
	ID      string          `json:"id"`
	Spec    jobspec.Spec    `json:"spec"`
	State   JobState        `json:"state"`
	Reason  string          `json:"reason,omitempty"` // why it failed, with numbers
	Members []gossip.Member `json:"members,omitempty"`
	Spares  []gossip.Bid    `json:"spares,omitempty"` // runner-up bids, ranked: hot spares for execution
	Cost    uint64          `json:"cost,omitempty"`   // per hour, all members, in Unit's smallest unit
	Unit    string          `json:"unit"`
	Created time.Time       `json:"created"`
	Updated time.Time       `json:"updated"`

	Attempt  int         `json:"attempt,omitempty"` // runs before this one that lost a member (at most the spec's retries)
	Races    int         `json:"races,omitempty"`   // negotiations of this attempt lost to another submitter's and tried again (at most raceRetries)
	Runs     []MemberRun `json:"runs,omitempty"`    // the members' runs of the latest attempt
	Started  time.Time   `json:"started,omitzero"`
	Ended    time.Time   `json:"ended,omitzero"`
	ExitCode *int        `json:"exitCode,omitempty"` // the job's: 0 when every member exited with 0

	// While queued (the spec's queue): when its wait ends, and the
	// negotiations tried since it was queued. Reason is the last one's.
	QueuedUntil time.Time `json:"queuedUntil,omitzero"`
	Tries       int       `json:"tries,omitempty"`
	// Where a queued job stands in this peer's queue, as the local API
	// and the explorer show it (never stored): 1 is the oldest, tried
	// first when offers change; QueueNext is the latest its next try
	// starts, news or not.
	QueuePosition int       `json:"queuePosition,omitempty"`
	QueueNext     time.Time `json:"queueNext,omitzero"`
}

// jobBook is the submitter's record of its jobs.
type jobBook struct {
	jobsMu sync.Mutex      // guards active, moved, and the order of writes to store
	store  *jobstore.Store // every job
	active map[string]*Job // jobs that have not ended
	recent []Job           // the last jobs that ended here, newest last (at most recentJobs)
	moved  chan struct{}   // closed and replaced whenever a job changes
}

// recentJobs is how many ended jobs stay in memory, for the callers that
// read a job again just after it ended (and after Close).
const recentJobs = 64

// jobsDBFile and jobsJSONFile are the job store, and the file of jobs that
// peers before it kept (migrated into the store on start).
const (
	jobsDBFile   = "jobs.db"
	jobsJSONFile = "jobs.json"
)

// openJobs opens the job store (in the state dir: the data dir, or a
// temporary folder), moves an old jobs.json into it, and marks failed the
// jobs that were still negotiating or running when the peer stopped; a
// queued job (or one negotiating with a queue) waits again.
func (n *Node) openJobs() error {
	n.active = map[string]*Job{}
	n.moved = make(chan struct{})
	dir, err := n.stateDir()
	if err != nil {
		return fmt.Errorf("jobs: %w", err)
	}
	st, err := jobstore.Open(filepath.Join(dir, jobsDBFile))
	if err != nil {
		return fmt.Errorf("jobs: %w", err)
	}
	if added, err := st.Migrate(filepath.Join(dir, jobsJSONFile)); err != nil {
		_ = st.Close()
		return fmt.Errorf("jobs: %w", err)
	} else if added > 0 {
		n.log.Info("jobs moved from jobs.json into the job store", "jobs", added, "store", st.Path())
	}
	var stale []Job
	err = st.Each(func(id string, data []byte) error {
		var j Job
		if err := json.Unmarshal(data, &j); err != nil {
			return fmt.Errorf("job %s in %s: %v", id, st.Path(), err)
		}
		switch {
		case j.State == JobQueued: // it waits again: a restart loses no queued job
			n.active[j.ID] = &j
			return nil
		case j.State == JobNegotiating && j.Spec.QueueFor() > 0:
			j.State, j.Reason = JobQueued, "the peer stopped while negotiating; waiting for a cluster again"
			j.QueuedUntil = n.now().UTC().Add(j.Spec.QueueFor())
			n.active[j.ID] = &j
		case j.State == JobNegotiating:
			j.State, j.Reason = JobFailed, "the peer stopped while negotiating; submit it again"
		case j.State == JobFormed || j.State == JobRunning:
			j.State, j.Reason = JobFailed, "the peer stopped while the job ran, and its members stopped with it; submit it again"
		default:
			return nil
		}
		stale = append(stale, j)
		return nil
	})
	if err == nil {
		for i := range stale {
			if err = putJob(st, &stale[i]); err != nil {
				break
			}
		}
	}
	if err != nil {
		_ = st.Close()
		return fmt.Errorf("jobs: %w", err)
	}
	n.store = st
	return nil
}

func (n *Node) closeJobStore() error {
	if n.store == nil {
		return nil
	}
	return n.store.Close()
}

func putJob(st *jobstore.Store, j *Job) error {
	data, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return st.Put(j.ID, j.Created, data)
}

// addJob records a new job, on disk before it returns.
func (n *Node) addJob(j *Job) error {
	n.jobsMu.Lock()
	defer n.jobsMu.Unlock()
	if err := putJob(n.store, j); err != nil {
		return err
	}
	n.active[j.ID] = j
	n.movedLocked()
	return nil
}

// moveJob is the only code that changes a job's state. It moves job id to
// state to, if the job has not ended, its state is one of from (any, if
// from is empty) and jobMoves allows the move; applies change; and saves
// the job before it returns. It returns the job as saved, and false if
// nothing changed.
//
// A formed job leaves "formed" by exactly one move, made here under
// jobsMu: its run's start (runJob's move to running; the run then
// releases whatever members it does not run), or an end before the start
// (a cancel, a failure), which releases the members' reservations here,
// at once, rather than leaving them held until they lapse. So a cancel
// that lands between "formed" and the run's start frees the GPUs, and a
// start after such a cancel finds the job ended and starts nothing.
func (n *Node) moveJob(id string, to JobState, from []JobState, change func(*Job)) (Job, bool) {
	n.jobsMu.Lock()
	j, ok := n.active[id]
	if !ok || !canMove(j.State, to) || (len(from) > 0 && !slices.Contains(from, j.State)) {
		n.jobsMu.Unlock()
		return Job{}, false
	}
	unstarted := j.State == JobFormed && to.Ended()
	j.State = to
	if change != nil {
		change(j)
	}
	n.saveLocked(j)
	if to.Ended() {
		delete(n.active, id)
		if len(n.recent) == recentJobs {
			n.recent = append(n.recent[:0], n.recent[1:]...)
		}
		n.recent = append(n.recent, *j)
	}
	n.log.Info("job "+string(to), "job", id, "attempt", j.Attempt, "members", len(j.Members), "reason", j.Reason)
	out := *j
	n.jobsMu.Unlock()
	if unstarted {
		n.releaseMembers(out.ID, out.Members, "the job "+string(to)+" before it started")
	}
	return out, true
}

// releaseMembers tells each member of a job that will not run to let its
// reservation go.
func (n *Node) releaseMembers(id string, members []gossip.Member, reason string) {
	ctx, done := n.lifeContext()
	if ctx == nil {
		return // the peer stops: the reservations lapse
	}
	defer done()
	for _, m := range members {
		n.sendRelease(ctx, &gossip.Release{Job: jobID(id), From: n.id.PeerID, Provider: m.Provider, Reason: reason})
	}
}

// updateJob changes a job's other fields (its members' runs) and saves it;
// an ended job does not change.
func (n *Node) updateJob(id string, change func(*Job)) {
	n.jobsMu.Lock()
	defer n.jobsMu.Unlock()
	j, ok := n.active[id]
	if !ok {
		return
	}
	state := j.State
	change(j)
	j.State = state
	n.saveLocked(j)
}

// finishJob records how a job ended.
func (n *Node) finishJob(id string, state JobState, reason string, code *int) {
	n.moveJob(id, state, nil, func(j *Job) {
		j.Reason, j.ExitCode, j.Ended = reason, code, n.now().UTC()
	})
}

func (n *Node) saveLocked(j *Job) {
	j.Updated = n.now().UTC()
	if err := putJob(n.store, j); err != nil {
		n.log.Warn("save job", "job", j.ID, "err", err)
	}
	n.movedLocked()
}

func (n *Node) movedLocked() {
	close(n.moved)
	n.moved = make(chan struct{})
}

// jobMoved returns a channel closed at the next change of any job.
func (n *Node) jobMoved() <-chan struct{} {
	n.jobsMu.Lock()
	defer n.jobsMu.Unlock()
	return n.moved
}

// Job returns one of this peer's jobs.
func (n *Node) Job(id string) (Job, bool) {
	n.jobsMu.Lock()
	if j, ok := n.active[id]; ok {
		defer n.jobsMu.Unlock()
		return *j, true
	}
	for i := len(n.recent) - 1; i >= 0; i-- {
		if n.recent[i].ID == id {
			defer n.jobsMu.Unlock()
			return n.recent[i], true
		}
	}
	n.jobsMu.Unlock()
	if n.store == nil {
		return Job{}, false
	}
	data, ok, err := n.store.Get(id)
	if err != nil || !ok {
		return Job{}, false
	}
	var j Job
	if err := json.Unmarshal(data, &j); err != nil {
		n.log.Warn("job record unreadable", "job", id, "err", err)
		return Job{}, false
	}
	return j, true
}

// DefaultJobsPage and MaxJobsPage bound a page of JobsPage.
const (
	DefaultJobsPage = 50
	MaxJobsPage     = 500
)

// JobsPage lists at most limit of this peer's jobs, newest first, from the
// cursor before ("" for the newest); next is the cursor of the page after,
// "" on the last.
func (n *Node) JobsPage(before string, limit int) (jobs []Job, next string, err error) {
	if limit <= 0 {
		limit = DefaultJobsPage
	}
	if limit > MaxJobsPage {
		return nil, "", fmt.Errorf("a page of jobs has at most %d (asked for %d)", MaxJobsPage, limit)
	}
	if n.store == nil {
		return nil, "", nil
	}
	page, next, err := n.store.List(before, limit)
	if err != nil {
		return nil, "", err
	}
	jobs = make([]Job, 0, len(page))
	for _, data := range page {
		var j Job
		if err := json.Unmarshal(data, &j); err != nil {
			return nil, "", fmt.Errorf("job record unreadable: %v", err)
		}
		jobs = append(jobs, j)
	}
	return jobs, next, nil
}

// JobCount is how many jobs this peer has submitted.
func (n *Node) JobCount() int {
	if n.store == nil {
		return 0
	}
	c, _ := n.store.Count()
	return c
}

// Jobs lists this peer's jobs, newest first (at most MaxJobsPage: use
// JobsPage for more).
func (n *Node) Jobs() []Job {
	jobs, _, err := n.JobsPage("", MaxJobsPage)
	if err != nil {
		n.log.Warn("list jobs", "err", err)
	}
	return jobs
}

func shortPeer(p peer.ID) string {
	s := p.String()
	if len(s) > 12 {
		return s[:4] + "…" + s[len(s)-6:]
	}
	return s
}

func jobID(id string) gossip.JobID {
	var jid gossip.JobID
	_ = jid.UnmarshalText([]byte(id))
	return jid
}
