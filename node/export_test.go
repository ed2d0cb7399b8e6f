package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/libp2p/go-libp2p/core/peer"
)

// JobMoved hands the external tests the node's job-change notification: a
// channel closed at the next change of any job, so a test waits on the event
// instead of polling Job.
func (n *Node) JobMoved() <-chan struct{} { return n.jobMoved() }

// SendRelease is sendRelease: a Release sent, and sent again while it
// cannot be.
func (n *Node) SendRelease(ctx context.Context, rel *gossip.Release) { n.sendRelease(ctx, rel) }

// ScoreFound is scoreFound, for tests of gpus find's scores.
func (n *Node) ScoreFound(res dht.FindResult, count int, minScore float64) GPUsFound {
	return n.scoreFound(res, count, minScore)
}

// SaveReceipt keeps a signed receipt as this peer's own (and queues it for
// anchoring, as a provider's co-signed receipt is): for tests that build
// a provider's history by hand.
func (n *Node) SaveReceipt(sr receipt.Signed) error { return n.saveReceipt(sr) }

// RecordedExecs is the terminal execs' process groups that the task
// record of member rank of job (its attempt) holds on this provider.
func (n *Node) RecordedExecs(job string, attempt, rank int) ([]exec.ProcessGroup, error) {
	path, err := n.taskFile(fmt.Sprintf("gpumesh-%s-%d-%d", job, attempt, rank))
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rec taskRecord
	err = json.Unmarshal(data, &rec)
	return rec.Execs, err
}

// DropCheckpointCopy unpins job id's checkpoint on this submitter and
// deletes every block of its content store, as a wiped store would be.
func (n *Node) DropCheckpointCopy(ctx context.Context, id string) error {
	n.ckpts.mu.Lock()
	if cf := n.ckpts.jobs[id]; cf != nil && cf.release != nil {
		cf.release()
		cf.release = nil
	}
	n.ckpts.mu.Unlock()
	keys, err := n.content.Store().AllKeysChan(ctx)
	if err != nil {
		return err
	}
	for c := range keys {
		if err := n.content.Store().DeleteBlock(ctx, c); err != nil {
			return err
		}
	}
	return nil
}

// SetJobNetProbe makes nodes that start from now on ask f, given their
// region, whether they can make job networks, instead of making a TUN
// device: a test plays a provider that cannot (not root). The returned
// func puts the real probe back.
func SetJobNetProbe(f func(region string) error) (restore func()) {
	jobNetProbe.Store(&f)
	return func() { jobNetProbe.Store(nil) }
}

// NegotiationDropped is how many negotiation messages from p this peer
// dropped because p had the most waiting already (as far as it
// remembers: the peers that dropped most).
func (n *Node) NegotiationDropped(p peer.ID) uint64 {
	n.negQMu.Lock()
	defer n.negQMu.Unlock()
	return n.negQueue.Dropped(p)
}

// StallJobStore holds this peer's job store's writer until release: every
// job-record write meanwhile waits, as behind a slow disk's sync.
func (n *Node) StallJobStore() (release func(), err error) { return n.store.Stall() }

// RaceRetries is how often one attempt of a job negotiates again after a
// provider refused an award (raceRetries).
const RaceRetries = raceRetries

// Refused is how many refusals of what (rfb_direct, negotiate, bill, ...)
// for why this peer counted (its gpumesh_refused_total).
func (n *Node) Refused(what, why string) uint64 { return n.refusedBy.count(what, why) }

// NamedFindTimeout bounds one named round of a search for a count.
const NamedFindTimeout = namedFindTimeout

// NamedSkipped lists the providers a search for a count does not name now
// (they failed a recent one), sorted.
func (n *Node) NamedSkipped() []peer.ID {
	now := n.now()
	var out []peer.ID
	n.unanswered.mu.Lock()
	for p, until := range n.unanswered.until {
		if now.Before(until) {
			out = append(out, p)
		}
	}
	n.unanswered.mu.Unlock()
	slices.Sort(out)
	return out
}

// PublishTick gossips a tick this peer signs, whatever its asks: for
// tests of what a provider's own ticks may claim.
func (n *Node) PublishTick(ctx context.Context, t gossip.Tick) error { return n.feed.Publish(ctx, t) }
