package node

import (
	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/exec/receipt"
)

// JobMoved hands the external tests the node's job-change notification: a
// channel closed at the next change of any job, so a test waits on the event
// instead of polling Job.
func (n *Node) JobMoved() <-chan struct{} { return n.jobMoved() }

// ScoreFound is scoreFound, for tests of gpus find's scores.
func (n *Node) ScoreFound(res dht.FindResult, count int, minScore float64) GPUsFound {
	return n.scoreFound(res, count, minScore)
}

// SaveReceipt keeps a signed receipt as this peer's own (and queues it for
// anchoring, as a provider's co-signed receipt is): for tests that build
// a provider's history by hand.
func (n *Node) SaveReceipt(sr receipt.Signed) error { return n.saveReceipt(sr) }
