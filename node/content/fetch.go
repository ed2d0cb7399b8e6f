package content

import (
	"context"
	"fmt"
	"sync"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
)

const (
	// fetchWindow is how many blocks a fetch keeps asked for at once: as
	// one arrives the next is asked for, and a node's links are asked
	// for as soon as it arrives, so the exchange never waits on a
	// batch's slowest block (the session sends its peers at most 64
	// wants live; the rest wait in it).
	fetchWindow = 256
	// storeWriters is how many blocks a fetch writes to the store at
	// once: the network delivers blocks faster than one file write at a
	// time takes them.
	storeWriters = 4
)

// FetchStats is what one Fetch moved.
type FetchStats struct {
	Blocks       int   // blocks of the DAG
	Bytes        int64 // bytes of its blocks
	FetchedBytes int64 // of Bytes, those that came over the network (0: all were in the store)
}

// Fetch makes the whole DAG under root local: the blocks the store lacks
// come from peers over the exchange (the peers connected, and those the
// swarm's DHT names as having root), several at once. Every block is
// checked against its CID on arrival (SHA-256 only); a DAG over max bytes
// in all, a block over MaxBlock, a node with more than MaxLinks links or
// of a codec other than dag-pb and raw ends the fetch with an error. The
// DAG's blocks are pinned in the store until release is called (nil on
// error).
func (s *Service) Fetch(ctx context.Context, root cid.Cid, max int64) (st FetchStats, release func(), err error) {
	if s.bs == nil {
		return FetchStats{}, nil, fmt.Errorf("fetch %s: %w", root, ErrNoExchange)
	}
	if max <= 0 || max > s.store.max {
		max = s.store.max
	}
	ctx, cancel := context.WithCancel(ctx)
	sess := s.bs.NewSession(ctx)

	// Blocks arrive from the session's channels on arrived; writers keep
	// them in the store, storeWriters at once.
	arrived := make(chan blocks.Block, storeWriters)
	var forwarders sync.WaitGroup
	forward := func(ch <-chan blocks.Block) {
		defer forwarders.Done()
		for b := range ch {
			select {
			case arrived <- b:
			case <-ctx.Done():
				return
			}
		}
	}
	toWrite := make(chan blocks.Block, storeWriters)
	var writers sync.WaitGroup
	var werrOnce sync.Once
	var werr error
	for range storeWriters {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for b := range toWrite {
				if err := s.store.Put(ctx, b); err != nil {
					werrOnce.Do(func() { werr = err })
					continue
				}
				// Sessions and peers waiting on it learn it is here.
				s.notify(ctx, b)
			}
		}()
	}
	stopWriters := func() {
		if toWrite != nil {
			close(toWrite)
			writers.Wait()
			toWrite = nil
		}
	}

	var all []cid.Cid // pinned
	defer func() {
		cancel()
		forwarders.Wait()
		stopWriters()
		if err != nil {
			s.store.unpin(all)
		}
	}()

	walk := newDAGWalk(root, max, &st)
	wanted := map[cid.Cid]bool{} // asked for, not arrived
	// ask takes blocks off the queue, up to the window: those in the store
	// are visited there, the rest asked of the session.
	ask := func() error {
		n := min(len(walk.queue), fetchWindow-len(wanted))
		group := walk.queue[:n]
		walk.queue = walk.queue[n:]
		for _, c := range group {
			if err := checkCID(c); err != nil {
				return err
			}
		}
		s.store.pin(group)
		all = append(all, group...)
		var missing []cid.Cid
		for _, c := range group {
			if c.Type() == cid.Raw {
				if size, err := s.store.GetSize(ctx, c); err == nil {
					if err := walk.visit(c, int64(size), nil); err != nil {
						return err
					}
					continue
				}
			} else if b, err := s.store.Get(ctx, c); err == nil {
				if err := walk.visit(c, int64(len(b.RawData())), b); err != nil {
					return err
				}
				continue
			}
			missing = append(missing, c)
			wanted[c] = true
		}
		if len(missing) == 0 {
			return nil
		}
		keys := make([]string, len(missing))
		for i, c := range missing {
			keys[i] = keyOf(c)
		}
		s.forgers.asked(keys)
		ch, err := sess.GetBlocks(ctx, missing)
		if err != nil {
			return fmt.Errorf("content: fetch %s: %w", root, err)
		}
		forwarders.Add(1)
		go forward(ch)
		return nil
	}

	for len(walk.queue) > 0 || len(wanted) > 0 {
		if len(walk.queue) > 0 && len(wanted) < fetchWindow {
			if err := ask(); err != nil {
				return st, nil, err
			}
			continue
		}
		select {
		case b := <-arrived:
			c := b.Cid()
			if !wanted[c] {
				continue
			}
			delete(wanted, c)
			size := int64(len(b.RawData()))
			s.fetchedBytes.Add(size)
			s.fetchedBlocks.Add(1)
			st.FetchedBytes += size
			var node blocks.Block
			if c.Type() != cid.Raw {
				node = b
			}
			if err := walk.visit(c, size, node); err != nil {
				return st, nil, err
			}
			select {
			case toWrite <- b:
			case <-ctx.Done():
			}
		case <-ctx.Done():
			return st, nil, fmt.Errorf("content: fetch %s: %d blocks not found in time: %w", root, len(wanted), ctx.Err())
		}
	}
	stopWriters()
	if werr != nil {
		return st, nil, fmt.Errorf("content: fetch %s: %w", root, werr)
	}
	return st, func() { s.store.unpin(all) }, nil
}

// dagWalk is what one fetch of root has seen of its DAG: the blocks still
// to ask for, in order, and the counts that bound it (MaxBlock a block,
// max bytes in all), whichever way its blocks come.
type dagWalk struct {
	root  cid.Cid
	max   int64
	st    *FetchStats
	seen  map[cid.Cid]bool
	queue []cid.Cid // to ask for
}

func newDAGWalk(root cid.Cid, max int64, st *FetchStats) *dagWalk {
	return &dagWalk{root: root, max: max, st: st, seen: map[cid.Cid]bool{root: true}, queue: []cid.Cid{root}}
}

// visit counts a block of the DAG, local or arrived, and queues its
// links; b is nil where its links are not wanted (a raw leaf, or a leaf
// whose bytes were not read).
func (w *dagWalk) visit(c cid.Cid, size int64, b blocks.Block) error {
	if size > MaxBlock {
		return fmt.Errorf("%w: block %s of %s is %d bytes, at most %d", ErrTooBig, c, w.root, size, MaxBlock)
	}
	w.st.Blocks++
	w.st.Bytes += size
	if w.st.Bytes > w.max {
		return fmt.Errorf("%w: %s is more than %d bytes", ErrTooBig, w.root, w.max)
	}
	if b == nil {
		return nil
	}
	links, err := linksOf(b)
	if err != nil {
		return fmt.Errorf("content: fetch %s: %w", w.root, err)
	}
	for _, l := range links {
		if !w.seen[l] {
			w.seen[l] = true
			w.queue = append(w.queue, l)
		}
	}
	return nil
}
