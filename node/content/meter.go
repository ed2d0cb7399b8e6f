package content

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Metering what moved between two peers for one purpose (a job's
// checkpoints), counted by both so that one can hold the other's count
// against its own:
//
//   - the holder counts, with a Meter, the bytes of the blocks of roots it
//     granted through that Meter, served to the Meter's peer on bulk
//     streams that the peer read to their end: a fetcher closes its side
//     only after it has read every answer asked, so each byte counted
//     here was read, and counted, by the fetcher first;
//   - the fetcher counts, with CountFrom, every block's bytes it reads
//     from the peer on a bulk stream, as it reads them.
//
// So an honest holder's count is never more than the fetcher's. Blocks
// that come over bitswap are counted by neither.

// A Meter counts the bytes of its roots' blocks that this peer served its
// peer on bulk streams that peer read to their end. It is made by
// NewMeter and ended by Close.
type Meter struct {
	s *Service
	p peer.ID

	mu     sync.Mutex          // guards the fields below
	keys   map[string]struct{} // blocks (multihash) of the roots granted through it
	roots  map[string]bool     // root block (multihash) -> served
	open   int                 // bulk streams serving its blocks now
	bytes  int64               // counted: served on streams read to their end
	wake   chan struct{}       // closed and replaced when open or roots change
	closed bool
}

// NewMeter starts a meter of what this peer serves p on bulk streams of
// roots granted through it (GrantMetered).
func (s *Service) NewMeter(p peer.ID) *Meter {
	m := &Meter{s: s, p: p, keys: map[string]struct{}{}, roots: map[string]bool{}, wake: make(chan struct{})}
	s.meterMu.Lock()
	defer s.meterMu.Unlock()
	if s.meters == nil {
		s.meters = map[peer.ID][]*Meter{}
	}
	s.meters[p] = append(s.meters[p], m)
	return m
}

// Close stops counting; Bytes keeps its count. Safe to call twice.
func (m *Meter) Close() {
	s := m.s
	s.meterMu.Lock()
	ms := s.meters[m.p]
	for i, x := range ms {
		if x == m {
			ms = append(ms[:i:i], ms[i+1:]...)
			break
		}
	}
	if len(ms) == 0 {
		delete(s.meters, m.p)
	} else {
		s.meters[m.p] = ms
	}
	s.meterMu.Unlock()
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
}

// GrantMetered grants root to the meter's peer (Grant) and counts its
// blocks from then on. Revoke the grant as for Grant.
func (s *Service) GrantMetered(ctx context.Context, root cid.Cid, m *Meter) error {
	if err := s.Grant(ctx, root, m.p); err != nil {
		return err
	}
	s.grants.mu.Lock()
	var keys []string
	if gr := s.grants.roots[root]; gr != nil {
		keys = gr.blocks
	}
	s.grants.mu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, k := range keys {
		m.keys[k] = struct{}{}
	}
	if _, ok := m.roots[keyOf(root)]; !ok {
		m.roots[keyOf(root)] = false
	}
	return nil
}

// Bytes is the count so far.
func (m *Meter) Bytes() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bytes
}

// Wait waits until root's own block has been served to the meter's peer
// and no bulk stream serving the meter's blocks is open (the peer has
// fetched root, as far as it needed to), or ctx ends. It says whether the
// wait ended so.
func (m *Meter) Wait(ctx context.Context, root cid.Cid) bool {
	k := keyOf(root)
	for {
		m.mu.Lock()
		done, wake := m.roots[k] && m.open == 0, m.wake
		m.mu.Unlock()
		if done {
			return true
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return false
		}
	}
}

// changedLocked wakes the waiters.
func (m *Meter) changedLocked() {
	close(m.wake)
	m.wake = make(chan struct{})
}

// metersOf is the meters of p now.
func (s *Service) metersOf(p peer.ID) []*Meter {
	s.meterMu.Lock()
	defer s.meterMu.Unlock()
	return s.meters[p]
}

// streamMeter is one bulk stream's share of its peer's meters: counted
// as blocks are served, added to each meter when the stream ends, if the
// peer read it to its end.
type streamMeter struct {
	pend map[*Meter]int64
}

// served counts a block served on the stream.
func (sm *streamMeter) served(s *Service, p peer.ID, c cid.Cid, n int) {
	ms := s.metersOf(p)
	if len(ms) == 0 {
		return
	}
	k := keyOf(c)
	for _, m := range ms {
		m.mu.Lock()
		if _, ok := m.keys[k]; ok && !m.closed {
			if sm.pend == nil {
				sm.pend = map[*Meter]int64{}
			}
			if _, ok := sm.pend[m]; !ok {
				sm.pend[m] = 0
				m.open++
			}
			sm.pend[m] += int64(n)
			if served, root := m.roots[k]; root && !served {
				m.roots[k] = true
			}
		}
		m.mu.Unlock()
	}
}

// end adds the stream's counts to its meters where the peer read it to
// its end (clean).
func (sm *streamMeter) end(clean bool) {
	for m, n := range sm.pend {
		m.mu.Lock()
		if clean {
			m.bytes += n
		}
		m.open--
		m.changedLocked()
		m.mu.Unlock()
	}
}

// countKey is the context key of CountFrom.
type countKey struct{}

type fetchCount struct {
	p peer.ID
	n *atomic.Int64
}

// CountFrom returns a context under which the fetches (FetchFrom) add to
// n the bytes of each block read from p on a bulk stream, as it is read.
func CountFrom(ctx context.Context, p peer.ID, n *atomic.Int64) context.Context {
	return context.WithValue(ctx, countKey{}, fetchCount{p: p, n: n})
}

// countRead adds a block read from p to ctx's count, if it keeps one of p.
func countRead(ctx context.Context, p peer.ID, size int64) {
	if c, ok := ctx.Value(countKey{}).(fetchCount); ok && c.p == p {
		c.n.Add(size)
	}
}
