package content

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"golang.org/x/time/rate"
)

// The bulk path: one stream from a peer known to hold a DAG (the
// submitter of an input, a provider sharing an image's layers), on which
// the fetcher asks for blocks by CID in batches, several batches ahead,
// and the holder answers each CID in order: its block, length-prefixed,
// or "none". It spares bitswap's per-block message copies, its stream a
// message and its pause between want messages; bitswap stays the
// fallback, and the way to fetch from many peers at once.
//
// Wire (both ends, every number an unsigned varint):
//
//	request:  count (1..bulkBatch), then count times: length (1..maxCIDLen), CID bytes
//	response: for each CID asked, in order: 0 (none), or 1, length (0..MaxBlock), the block's bytes
//
// A fetcher closes its side when it wants no more; the server then ends
// the stream.
const (
	bulkBatch  = 64  // CIDs in one request
	bulkWindow = 128 // blocks a fetch keeps asked for on one stream
	maxCIDLen  = 128 // bytes of a CID on the wire (ours are 36)
	// bulkIdle bounds one read or write of a bulk stream, either end.
	bulkIdle = 30 * time.Second
	// bulkPerPeer is the bulk streams one peer may have open here at once,
	// bulkStreams those of all peers; more are reset.
	bulkPerPeer = 8 // an image's blobs are fetched 4 at once, on bulkLanes each
	bulkStreams = 32
	// bulkOpens is the streams a second a peer may open here (a burst of
	// bulkPerPeer*4): a fetch opens one a DAG.
	bulkOpens = 4
	// bulkPeers is how many of a FetchFrom's peers are tried before
	// bitswap.
	bulkPeers = 3
	// bulkFind bounds the search for peers that announced a root, when
	// those a FetchFrom names fell short.
	bulkFind = 5 * time.Second
)

// bulkLanes is the streams a fetch takes from one peer at once (a
// variable for the benchmark's sake).
var bulkLanes = 2

// BulkProtocol is the bulk stream's protocol under a prefix (Config.Prefix).
func BulkProtocol(prefix protocol.ID) protocol.ID {
	if prefix == "" {
		prefix = "/gpumesh"
	}
	return prefix + "/blocks/1.0.0"
}

var (
	errBulkNone   = errors.New("content: the peer has not the block for us (not granted, or not held)")
	errNotLocal   = errors.New("content: a block is not in the store")
	errBulkForged = errors.New("content: the peer sent bytes that do not hash to the CID asked")
	// errBulkOversize is a peer's frame over MaxBlock (ErrTooBig is for
	// what the DAG itself holds).
	errBulkOversize = errors.New("content: a bulk block over the size limit")
)

// readWants decodes one request: the CIDs asked, at most bulkBatch. An
// io.EOF before the first byte is the end of the requests.
func readWants(r *bufio.Reader) ([]cid.Cid, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n == 0 || n > bulkBatch {
		return nil, fmt.Errorf("content: bulk request of %d CIDs, want 1 to %d", n, bulkBatch)
	}
	out := make([]cid.Cid, 0, n)
	var buf [maxCIDLen]byte
	for range n {
		l, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, unexpected(err)
		}
		if l == 0 || l > maxCIDLen {
			return nil, fmt.Errorf("content: bulk request: a CID of %d bytes, want 1 to %d", l, maxCIDLen)
		}
		if _, err := io.ReadFull(r, buf[:l]); err != nil {
			return nil, unexpected(err)
		}
		c, err := cid.Cast(buf[:l])
		if err != nil {
			return nil, fmt.Errorf("content: bulk request: %w", err)
		}
		out = append(out, c)
	}
	return out, nil
}

// appendWants encodes one request.
func appendWants(b []byte, cs []cid.Cid) []byte {
	b = binary.AppendUvarint(b, uint64(len(cs)))
	for _, c := range cs {
		raw := c.Bytes()
		b = binary.AppendUvarint(b, uint64(len(raw)))
		b = append(b, raw...)
	}
	return b
}

// readBlock decodes one answer: a block's bytes (into buf's storage when
// it fits), or ok false for none. A length over MaxBlock is refused
// before anything of it is read.
func readBlock(r *bufio.Reader, buf []byte) (data []byte, ok bool, err error) {
	tag, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, false, unexpected(err)
	}
	switch tag {
	case 0:
		return nil, false, nil
	case 1:
	default:
		return nil, false, fmt.Errorf("content: bulk answer tagged %d, want 0 or 1", tag)
	}
	l, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, false, unexpected(err)
	}
	if l > MaxBlock {
		return nil, false, fmt.Errorf("%w: %d bytes, at most %d", errBulkOversize, l, MaxBlock)
	}
	if uint64(cap(buf)) < l {
		buf = make([]byte, l)
	}
	data = buf[:l]
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, false, unexpected(err)
	}
	return data, true, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// bulkServer answers bulk streams within its bounds.
type bulkServer struct {
	s *Service

	mu     sync.Mutex // guards the fields below
	open   map[peer.ID]int
	total  int
	limits map[peer.ID]*rate.Limiter
}

func newBulkServer(s *Service) *bulkServer {
	return &bulkServer{s: s, open: map[peer.ID]int{}, limits: map[peer.ID]*rate.Limiter{}}
}

// admit takes a slot for a stream of p, or says no.
func (b *bulkServer) admit(p peer.ID) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	lim := b.limits[p]
	if lim == nil {
		if len(b.limits) >= 4*bulkStreams {
			clear(b.limits) // forget old peers' buckets: each starts full again
		}
		lim = rate.NewLimiter(bulkOpens, bulkPerPeer*4)
		b.limits[p] = lim
	}
	if b.open[p] >= bulkPerPeer || b.total >= bulkStreams || !lim.Allow() {
		return false
	}
	b.open[p]++
	b.total++
	return true
}

func (b *bulkServer) leave(p peer.ID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.open[p]--; b.open[p] <= 0 {
		delete(b.open, p)
	}
	b.total--
}

// handle serves one stream: each CID asked is answered with its block if
// the peer may have it (the same check as bitswap's filter: granted or
// shared) and the store holds it, else with none.
func (b *bulkServer) handle(st network.Stream) {
	p := st.Conn().RemotePeer()
	if !b.admit(p) {
		_ = st.Reset()
		return
	}
	var sm streamMeter
	err := b.serve(st, p, &sm)
	sm.end(err == nil) // a clean end: the fetcher read every answer
	b.leave(p)         // before the fetcher sees the end: its next stream is admitted
	if err != nil {
		_ = st.Reset()
		b.s.log.Debug("content: bulk stream ended", "peer", p, "err", err)
		return
	}
	_ = st.Close()
}

func (b *bulkServer) serve(st network.Stream, p peer.ID, sm *streamMeter) error {
	r := bufio.NewReaderSize(st, 4<<10)
	w := bufio.NewWriterSize(st, 64<<10)
	var hdr, buf []byte
	for {
		_ = st.SetReadDeadline(time.Now().Add(bulkIdle))
		wants, err := readWants(r)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		for _, c := range wants {
			if b.s.ctx.Err() != nil {
				return b.s.ctx.Err()
			}
			_ = st.SetWriteDeadline(time.Now().Add(bulkIdle))
			var data []byte
			if checkCID(c) == nil && b.s.grants.allowed(p, c) {
				data, _ = b.s.store.readInto(c, buf)
			}
			if data == nil {
				if err := w.WriteByte(0); err != nil {
					return err
				}
				continue
			}
			buf = data // the next block is read into the same storage
			hdr = binary.AppendUvarint(append(hdr[:0], 1), uint64(len(data)))
			if _, err := w.Write(hdr); err != nil {
				return err
			}
			if _, err := w.Write(data); err != nil {
				return err
			}
			b.s.bulkServedBytes.Add(int64(len(data)))
			b.s.bulkServedBlocks.Add(1)
			sm.served(b.s, p, c, len(data))
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
}

// FetchFrom is Fetch, trying first the bulk stream from peers that hold
// the DAG (the submitter of an input, a provider that shares it), in
// order, at most a few of them, then from peers whose provider records
// in the swarm's DHT name root: each block that comes is hashed against
// the CID asked and kept. A peer that answers with wrong bytes is
// disconnected; one that has not a block, or fails, leaves the rest to
// the next peer, and what is still missing then comes over bitswap from
// every peer that has it (Fetch). The bounds are Fetch's.
func (s *Service) FetchFrom(ctx context.Context, root cid.Cid, max int64, from ...peer.ID) (FetchStats, func(), error) {
	if max <= 0 || max > s.store.max {
		max = s.store.max
	}
	if err := checkCID(root); err != nil {
		return FetchStats{}, nil, err
	}
	var bulkBytes int64
	tried := map[peer.ID]bool{}
	var held [][]cid.Cid
	defer func() {
		for _, pins := range held {
			s.store.unpin(pins)
		}
	}()
	try := func(p peer.ID) (FetchStats, func(), error, bool) {
		if p == "" || p == s.host.ID() || tried[p] || len(tried) == bulkPeers {
			return FetchStats{}, nil, nil, false
		}
		tried[p] = true
		st, pins, err := s.bulkFetch(ctx, p, root, max)
		bulkBytes += st.FetchedBytes
		if err == nil {
			return st, func() { s.store.unpin(pins) }, nil, true
		}
		// The blocks kept stay pinned until Fetch has pinned them again.
		held = append(held, pins)
		if errors.Is(err, ErrTooBig) || ctx.Err() != nil {
			return st, nil, err, true
		}
		s.log.Debug("content: bulk fetch fell short; going on", "cid", root, "peer", p, "err", err)
		return st, nil, nil, false
	}
	for _, p := range from {
		if st, release, err, done := try(p); done {
			return st, release, err
		}
	}
	if len(tried) == 0 {
		// No peer named (or only this one): the DAG may be whole here
		// (a provider's own image), and then nobody need be looked up.
		st, pins, err := s.bulkFetch(ctx, "", root, max)
		if err == nil {
			return st, func() { s.store.unpin(pins) }, nil
		}
		held = append(held, pins)
		if errors.Is(err, ErrTooBig) || ctx.Err() != nil {
			return st, nil, err
		}
	}
	if s.routing != nil && len(tried) < bulkPeers && ctx.Err() == nil {
		// Peers that announced root: a provider that shares an image's
		// layers, a replica of a checkpoint.
		// Each is tried as it is found (the search goes on meanwhile).
		fctx, cancel := context.WithTimeout(ctx, bulkFind)
		for ai := range s.routing.FindProvidersAsync(fctx, root, bulkPeers) {
			if ai.ID == s.host.ID() || tried[ai.ID] {
				continue
			}
			if len(ai.Addrs) > 0 {
				s.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Minute)
			}
			if st, release, err, done := try(ai.ID); done {
				cancel()
				return st, release, err
			}
		}
		cancel()
	}
	st, release, err := s.Fetch(ctx, root, max)
	st.FetchedBytes += bulkBytes
	return st, release, err
}

// lane is one bulk stream of a fetch: its requests are written by one
// goroutine, its answers read by another, in order, so that the answers
// are always read: a holder that writes its answers before it reads the
// next request (as ours does) never waits on us, whatever the transport
// buffers. (One loop that wrote and read made both ends wait on a write
// where the transport buffers nothing, mocknet's.)
type lane struct {
	str      network.Stream
	reqs     chan []cid.Cid // batches to ask, in order; closed when no more
	inflight int            // CIDs asked, not answered (the fetch's loop's)
	done     sync.WaitGroup // its two goroutines
}

// answer is one block a lane read, or why it could not.
type answer struct {
	lane *lane
	c    cid.Cid
	data []byte
	ok   bool // false: the holder has not the block for us
	err  error
}

// openLane opens a bulk stream to p; its answers go to answers until ctx
// ends.
func (s *Service) openLane(ctx context.Context, p peer.ID, answers chan<- answer) (*lane, error) {
	str, err := s.host.NewStream(network.WithAllowLimitedConn(ctx, "bulk"), p, s.bulkProto)
	if err != nil {
		return nil, fmt.Errorf("content: bulk stream to %s: %w", p, err)
	}
	// At most bulkWindow CIDs are asked and not answered on a lane, each
	// batch one or more of them: neither channel ever fills.
	l := &lane{str: str, reqs: make(chan []cid.Cid, bulkWindow)}
	asked := make(chan []cid.Cid, bulkWindow)
	l.done.Add(2)
	go func() { // the writer
		defer l.done.Done()
		defer close(asked)
		var req []byte
		for batch := range l.reqs {
			req = appendWants(req[:0], batch)
			_ = str.SetWriteDeadline(time.Now().Add(bulkIdle))
			if _, err := str.Write(req); err != nil {
				_ = str.Reset() // the reader sees it
				for range l.reqs {
				}
				return
			}
			asked <- batch
		}
	}()
	go func() { // the reader
		defer l.done.Done()
		r := bufio.NewReaderSize(str, 64<<10)
		for batch := range asked {
			for _, c := range batch {
				_ = str.SetReadDeadline(time.Now().Add(bulkIdle))
				data, ok, err := readBlock(r, nil)
				if err != nil {
					err = fmt.Errorf("content: bulk stream from %s: %w", p, err)
				}
				select {
				case answers <- answer{lane: l, c: c, data: data, ok: ok, err: err}:
				case <-ctx.Done():
					return
				}
				if err != nil || !ok {
					return
				}
			}
		}
	}()
	return l, nil
}

// end stops the lane: a clean close when every answer came (ok), else a
// reset.
func (l *lane) end(ok bool) {
	if !ok {
		_ = l.str.Reset() // a goroutine stuck in a read or write returns
	}
	close(l.reqs)
	l.done.Wait()
	if ok {
		_ = l.str.Close()
	}
}

// bulkFetch walks root's DAG over bulk streams from p (no peer: the
// store's blocks only, errNotLocal at the first it lacks): the blocks the
// store lacks are asked for, up to bulkWindow ahead on each of at most
// bulkLanes streams (a second is opened once the first has a window's
// worth asked: two keep both ends busy where one waits on the other's
// pauses), and kept as they come. No stream is opened for a DAG whole
// in the store. It returns the CIDs it pinned (to unpin, even on an
// error).
func (s *Service) bulkFetch(ctx context.Context, p peer.ID, root cid.Cid, max int64) (st FetchStats, pins []cid.Cid, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	answers := make(chan answer, storeWriters)
	var lanes []*lane
	defer func() {
		if err != nil {
			cancel() // a reader waiting to hand over an answer returns
		}
		for _, l := range lanes {
			l.end(err == nil)
		}
	}()

	// Writers keep blocks in the store, storeWriters at once.
	// A raw leaf is hashed there too, off the streams' readers (a node's
	// bytes are hashed before its links are trusted); a wrong one cuts
	// the peer off and ends the fetch.
	toWrite := make(chan blocks.Block, storeWriters)
	var writers sync.WaitGroup
	var werrOnce sync.Once
	var werr error
	for range storeWriters {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for b := range toWrite {
				c := b.Cid()
				if c.Type() == cid.Raw {
					if got, err := c.Prefix().Sum(b.RawData()); err != nil || !got.Equals(c) {
						werrOnce.Do(func() {
							werr = fmt.Errorf("%w: %s from %s", errBulkForged, c, p)
							s.cutOff(p, c, "wrong bytes")
						})
						cancel()
						continue
					}
				}
				if err := s.store.Put(ctx, b); err != nil {
					werrOnce.Do(func() { werr = err })
					continue
				}
				s.notify(ctx, b)
			}
		}()
	}
	defer func() {
		close(toWrite)
		writers.Wait()
		switch {
		case errors.Is(werr, errBulkForged):
			err = werr // the cause of whatever the reader saw
		case err == nil && werr != nil:
			err = fmt.Errorf("content: fetch %s: %w", root, werr)
		}
	}()

	walk := newDAGWalk(root, max, &st)
	inflight := 0 // asked on all lanes, not answered
	// room is the lane a batch goes on: the open one with the fewest
	// asked, if a batch fits; else a new one (nil, true) while fewer
	// than bulkLanes are open and the others are busy.
	room := func() (l *lane, open bool) {
		for _, x := range lanes {
			if x.inflight+bulkBatch <= bulkWindow && (l == nil || x.inflight < l.inflight) {
				l = x
			}
		}
		if l != nil && (l.inflight == 0 || len(lanes) == bulkLanes) {
			return l, false
		}
		if len(lanes) < bulkLanes && (len(lanes) == 0 || inflight >= bulkBatch) {
			return nil, true
		}
		return l, false
	}
	for len(walk.queue) > 0 || inflight > 0 {
		// Ask for what the store lacks: a batch whenever one fits, so
		// requests are few and whole.
		for len(walk.queue) > 0 {
			l, open := room()
			if l == nil && !open {
				break
			}
			var batch []cid.Cid
			for len(walk.queue) > 0 && len(batch) < bulkBatch {
				c := walk.queue[0]
				walk.queue = walk.queue[1:]
				if err := checkCID(c); err != nil {
					return st, pins, err
				}
				s.store.pin([]cid.Cid{c})
				pins = append(pins, c)
				if c.Type() == cid.Raw {
					if size, err := s.store.GetSize(ctx, c); err == nil {
						if err := walk.visit(c, int64(size), nil); err != nil {
							return st, pins, err
						}
						continue
					}
				} else if b, err := s.store.Get(ctx, c); err == nil {
					if err := walk.visit(c, int64(len(b.RawData())), b); err != nil {
						return st, pins, err
					}
					continue
				}
				batch = append(batch, c)
			}
			if len(batch) == 0 {
				continue
			}
			if open {
				if p == "" {
					return st, pins, fmt.Errorf("%w: %s", errNotLocal, batch[0])
				}
				nl, err := s.openLane(ctx, p, answers)
				if err != nil {
					return st, pins, err
				}
				lanes = append(lanes, nl)
				l = nl
			}
			l.reqs <- batch
			l.inflight += len(batch)
			inflight += len(batch)
		}
		if inflight == 0 {
			continue
		}
		var a answer
		select {
		case a = <-answers:
		case <-ctx.Done():
			return st, pins, ctx.Err()
		}
		a.lane.inflight--
		inflight--
		c, data := a.c, a.data
		if a.err != nil {
			if errors.Is(a.err, errBulkOversize) {
				s.cutOff(p, c, "a block over the size limit")
			}
			return st, pins, a.err
		}
		if !a.ok {
			return st, pins, fmt.Errorf("%w: %s", errBulkNone, c)
		}
		if c.Type() != cid.Raw {
			if got, err := c.Prefix().Sum(data); err != nil || !got.Equals(c) {
				s.cutOff(p, c, "wrong bytes")
				return st, pins, fmt.Errorf("%w: %s from %s", errBulkForged, c, p)
			}
		}
		size := int64(len(data))
		var nd blocks.Block // its links, for a node
		if c.Type() != cid.Raw {
			nd, _ = blocks.NewBlockWithCid(data, c)
		}
		if err := walk.visit(c, size, nd); err != nil {
			return st, pins, err
		}
		s.fetchedBytes.Add(size)
		s.fetchedBlocks.Add(1)
		st.FetchedBytes += size
		s.countBulk(p, size)
		countRead(ctx, p, size)
		s.bulkFetchedBytes.Add(size)
		b, _ := blocks.NewBlockWithCid(data, c)
		select {
		case toWrite <- b:
		case <-ctx.Done():
			return st, pins, ctx.Err()
		}
	}
	return st, pins, nil
}

// maxBulkLedgers is the peers whose bulk bytes received are counted at
// once; past it, those not connected are forgotten.
const maxBulkLedgers = 1024

func (s *Service) bulkReceived(p peer.ID) uint64 {
	s.bulkMu.Lock()
	defer s.bulkMu.Unlock()
	return s.bulkRecv[p]
}

func (s *Service) countBulk(p peer.ID, n int64) {
	s.bulkMu.Lock()
	defer s.bulkMu.Unlock()
	if s.bulkRecv == nil {
		s.bulkRecv = map[peer.ID]uint64{}
	}
	if _, ok := s.bulkRecv[p]; !ok && len(s.bulkRecv) >= maxBulkLedgers {
		for q := range s.bulkRecv {
			if s.host.Network().Connectedness(q) != network.Connected {
				delete(s.bulkRecv, q)
			}
		}
	}
	s.bulkRecv[p] += uint64(n)
}

// cutOff disconnects a peer that answered a bulk request with bytes we
// cannot take.
func (s *Service) cutOff(p peer.ID, c cid.Cid, what string) {
	s.forgers.cut.Add(1)
	s.log.Warn("content: a peer sent "+what+" on a bulk stream: disconnected", "peer", p, "cid", c)
	_ = s.host.Network().ClosePeer(p)
}
