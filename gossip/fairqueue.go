package gossip

import "github.com/libp2p/go-libp2p/core/peer"

// FairQueue holds what many peers sent, waiting to be handled one at a
// time, and hands it out in turn: Pop takes the oldest of the peer whose
// turn it is, then that peer waits behind every other peer with something
// waiting. So a peer that sends a flood delays another's next message by at
// most one of its own, and a peer new to the queue is served after at most
// one message of each peer already waiting.
//
// It is bounded by what the receiving peer decides, never by what a message
// says: a peer has at most Per waiting (what it sends past that is
// dropped), and the queue at most Max (when full, a message from a peer
// with fewer waiting than the peer with the most takes the place of that
// peer's newest; otherwise it is dropped). Drops are counted for the peer
// whose message was dropped. The peer is the one on the connection, whom
// the caller has checked. Like the rest of gossip it does no I/O and reads
// no clock; it is not safe for concurrent use.
type FairQueue[T any] struct {
	max, per int
	waiting  map[peer.ID][]T // each peer's, oldest first
	turn     []peer.ID       // peers with something waiting, next first
	n        int
	// dropped is each peer's drops, for at most maxDropCounts peers (a
	// new one past that takes the place of the one with fewest).
	dropped    map[peer.ID]uint64
	droppedAll uint64
	drops      FairQueueDrops
}

// FairQueueDrops is what a FairQueue dropped, by why (no peer named: a
// count a metric can carry).
type FairQueueDrops struct {
	PeerBound uint64 // its peer had its bound waiting (or, the caller's Drop, being read)
	Full      uint64 // the queue was full and no peer had more waiting than its peer
	PushedOut uint64 // the queue was full: the newest of the peer with the most waiting made room
}

// maxDropCounts bounds the peers a FairQueue counts drops for.
const maxDropCounts = 4096

// Default bounds of a FairQueue.
const (
	FairQueueMax = 1024 // messages waiting, all peers together
	FairQueuePer = 32   // messages waiting from one peer
)

// NewFairQueue makes an empty queue of at most max messages, per of them
// one peer's; zero or less takes FairQueueMax and FairQueuePer.
func NewFairQueue[T any](max, per int) *FairQueue[T] {
	if max <= 0 {
		max = FairQueueMax
	}
	if per <= 0 {
		per = FairQueuePer
	}
	return &FairQueue[T]{max: max, per: min(per, max), waiting: map[peer.ID][]T{}, dropped: map[peer.ID]uint64{}}
}

// Full reports whether a message from p would be dropped for p's bound
// now (the caller may then drop it before reading it; see Drop).
func (q *FairQueue[T]) Full(p peer.ID) bool { return len(q.waiting[p]) >= q.per }

// Push adds a message from p; false when it was dropped (p has Per
// waiting, or the queue is full and no peer has more waiting than p).
func (q *FairQueue[T]) Push(p peer.ID, v T) bool {
	w := q.waiting[p]
	if len(w) >= q.per {
		q.Drop(p)
		return false
	}
	if q.n >= q.max {
		var most peer.ID
		for _, id := range q.turn {
			if len(q.waiting[id]) > len(q.waiting[most]) {
				most = id
			}
		}
		if len(q.waiting[most]) <= len(w)+1 { // no one to take the place of
			q.drops.Full++
			q.count(p)
			return false
		}
		mw := q.waiting[most]
		clear(mw[len(mw)-1:])
		q.waiting[most] = mw[:len(mw)-1]
		q.n--
		q.drops.PushedOut++
		q.count(most)
	}
	if len(w) == 0 {
		q.turn = append(q.turn, p)
	}
	q.waiting[p] = append(w, v)
	q.n++
	return true
}

// Pop takes the oldest message of the peer whose turn it is; false when
// none waits.
func (q *FairQueue[T]) Pop() (peer.ID, T, bool) {
	var zero T
	if len(q.turn) == 0 {
		return "", zero, false
	}
	p := q.turn[0]
	q.turn[0] = ""
	q.turn = q.turn[1:]
	w := q.waiting[p]
	v := w[0]
	q.n--
	if len(w) == 1 {
		delete(q.waiting, p)
	} else {
		w[0] = zero
		q.waiting[p] = w[1:]
		q.turn = append(q.turn, p) // its next waits for the others' turn
	}
	return p, v, true
}

// Drop counts a message of p's that was dropped for p's bound (by Push,
// or by the caller, which found p Full).
func (q *FairQueue[T]) Drop(p peer.ID) {
	q.drops.PeerBound++
	q.count(p)
}

// Drops is what the queue dropped, by why.
func (q *FairQueue[T]) Drops() FairQueueDrops { return q.drops }

// count counts a drop of p's message.
func (q *FairQueue[T]) count(p peer.ID) {
	q.droppedAll++
	if _, ok := q.dropped[p]; !ok && len(q.dropped) >= maxDropCounts {
		var fewest peer.ID
		first := true
		for id, c := range q.dropped {
			if first || c < q.dropped[fewest] {
				fewest, first = id, false
			}
		}
		delete(q.dropped, fewest)
	}
	q.dropped[p]++
}

// Dropped is how many of p's messages were dropped (as far as the queue
// remembers; see maxDropCounts).
func (q *FairQueue[T]) Dropped(p peer.ID) uint64 { return q.dropped[p] }

// DroppedAll is how many messages were dropped, all peers together.
func (q *FairQueue[T]) DroppedAll() uint64 { return q.droppedAll }

// Len is the number of messages waiting.
func (q *FairQueue[T]) Len() int { return q.n }

// Waiting is the number of p's messages waiting.
func (q *FairQueue[T]) Waiting(p peer.ID) int { return len(q.waiting[p]) }
