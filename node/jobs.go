package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node/jobspec"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
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
	Spec    jobspec.Spec    `json:"spec"`
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

func (n *Node) jobsFile() string {
	if n.dir == nil {
		return ""
	}
	return filepath.Join(n.dir.Path, "jobs.json")
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

// updateJob changes a job and saves the jobs file.
func (n *Node) updateJob(id string, change func(*Job)) {
	n.jobsMu.Lock()
	defer n.jobsMu.Unlock()
	j, ok := n.jobs[id]
	if !ok {
		return
	}
	change(j)
	j.Updated = time.Now().UTC()
	if err := n.saveJobsLocked(); err != nil {
		n.log.Warn("save jobs", "err", err)
	}
}

// finishJob records how a job ended.
func (n *Node) finishJob(id, state, reason string, code *int) {
	n.updateJob(id, func(j *Job) {
		j.State, j.Reason, j.ExitCode, j.Ended = state, reason, code, time.Now().UTC()
	})
	n.log.Info("job "+state, "job", id, "reason", reason)
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
