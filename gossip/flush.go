package gossip

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
)

// sendWatches follows the messages a peer published and waits for: which
// neighbours each was written to (SendRPCCompleted: on the stream, not
// only in the neighbour's queue) or not (a full queue, or the neighbour
// gone: a failed write, a closed connection). The tracer
// looks at an RPC's messages only while a watch is open.
type sendWatches struct {
	open atomic.Int32
	mu   sync.Mutex
	list []*sendWatch
}

type sendWatch struct {
	topic   string
	data    []byte
	written map[peer.ID]bool // neighbour -> written (false: dropped)
	changed chan struct{}    // closed and replaced on each change
}

func (s *sendWatches) add(topic string, data []byte) *sendWatch {
	w := &sendWatch{topic: topic, data: data, written: make(map[peer.ID]bool), changed: make(chan struct{})}
	s.mu.Lock()
	s.list = append(s.list, w)
	s.mu.Unlock()
	s.open.Add(1)
	return w
}

func (s *sendWatches) remove(w *sendWatch) {
	s.mu.Lock()
	for i, x := range s.list {
		if x == w {
			s.list = append(s.list[:i], s.list[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	s.open.Add(-1)
}

// note records that rpc was written to p (or dropped for it) for every
// open watch whose message it carries.
func (s *sendWatches) note(rpc *pubsub.RPC, p peer.ID, written bool) {
	if s.open.Load() == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.list {
		for _, m := range rpc.GetPublish() {
			if m.GetTopic() == w.topic && bytes.Equal(m.GetData(), w.data) {
				if _, seen := w.written[p]; !seen {
					w.written[p] = written
					close(w.changed)
					w.changed = make(chan struct{})
				}
				break
			}
		}
	}
}

// gone records that p is gone (GossipSub dropped it: a write that failed,
// a closed connection): no open watch waits for it any more.
func (s *sendWatches) gone(p peer.ID) {
	if s.open.Load() == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.list {
		if _, seen := w.written[p]; !seen {
			w.written[p] = false
			close(w.changed)
			w.changed = make(chan struct{})
		}
	}
}

// wait blocks until every peer of want has had the message written or
// dropped, or ctx ends; it says to how many it was written.
func (s *sendWatches) wait(ctx context.Context, w *sendWatch, want []peer.ID) int {
	for {
		s.mu.Lock()
		done, written := 0, 0
		for _, p := range want {
			if ok, seen := w.written[p]; seen {
				done++
				if ok {
					written++
				}
			}
		}
		changed := w.changed
		s.mu.Unlock()
		if done == len(want) {
			return written
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return written
		}
	}
}

// PublishFlushed is Publish, then a wait until the tick has been written
// to the stream of every peer on the topic when it was published (a
// peer's own ticks go to all of them), or ctx ends. It says to how many
// it was written. For the last words of a peer about to close its host:
// a tick still in a neighbour's queue when the host closes is lost.
func (f *PriceFeed) PublishFlushed(ctx context.Context, t Tick) (written int, err error) {
	data, err := t.Marshal()
	if err != nil {
		return 0, err
	}
	peers := f.topic.ListPeers()
	w := f.g.stats.sends.add(f.name, data)
	defer f.g.stats.sends.remove(w)
	if err := f.topic.Publish(ctx, data); err != nil {
		return 0, fmt.Errorf("publish price tick: %w", err)
	}
	return f.g.stats.sends.wait(ctx, w, peers), nil
}
