package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// BoardSyncProtocol hands a joining peer the quotes of a neighbour's price
// board: the newcomer sends a request (gossip.MarshalSyncRequest) and reads
// the answer (gossip.MarshalSyncAnswer) of signed ticks to the stream's
// end; each is checked as a tick from the price topic
// (gossip.PriceFeed.CheckStored). Unchanged asks are re-sent rarely in a
// large swarm (up to an hour apart, see gossip.Resend): without it a new
// peer would wait that long to see every price.
const BoardSyncProtocol = protocol.ID("/gpumesh/board/1.0.0")

// Bounds of the board sync.
const (
	boardSyncPeers    = 3                // a joining peer asks this many peers that answer
	boardSyncTries    = 8                // and gives up after asking this many
	boardSyncFor      = 2 * time.Minute  // or after this long
	boardSyncTimeout  = 10 * time.Second // one exchange
	boardServeEvery   = time.Minute      // a peer is answered at most this often
	boardServeAtOnce  = 4                // answers written at once
	boardServeTracked = 4096             // peers whose last answer is remembered
)

// ErrBadBoard marks a board-sync answer with a tick no honest peer would
// hand on (forged, altered, malformed, oversized): the rest of it is dropped.
var ErrBadBoard = errors.New("board sync: answer refused")

// startBoardSync serves this peer's board and, as the peer joins, asks a
// few of its price-topic neighbours for theirs.
func (n *Node) startBoardSync(ctx context.Context) {
	n.boardServed = make(map[peer.ID]time.Time)
	n.boardSlots = make(chan struct{}, boardServeAtOnce)
	n.host.SetStreamHandler(BoardSyncProtocol, n.handleBoardSync)
	n.wg.Add(1)
	go n.syncBoardAtJoin(ctx)
}

// syncBoardAtJoin asks price-topic neighbours for their boards, one at a
// time as they appear, until boardSyncPeers have answered with quotes
// (an empty board, a neighbour that joined just before, does not count),
// boardSyncTries were asked, boardSyncFor has passed or ctx ends.
func (n *Node) syncBoardAtJoin(ctx context.Context) {
	defer n.wg.Done()
	ctx, cancel := context.WithTimeout(ctx, boardSyncFor)
	defer cancel()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	asked := map[peer.ID]bool{}
	answered := 0
	for {
		for _, p := range n.feed.ListPeers() {
			if answered >= boardSyncPeers || len(asked) >= boardSyncTries {
				return
			}
			if asked[p] {
				continue
			}
			asked[p] = true
			took, held, err := n.syncPrices(ctx, p)
			if err != nil {
				if ctx.Err() == nil {
					n.log.Debug("board sync failed", "peer", p, "took", took, "err", err)
				}
				continue
			}
			if held > 0 {
				answered++
			}
			n.log.Debug("board synced", "peer", p, "quotes", held, "took", took)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// SyncPrices asks peer p for the quotes on its price board and puts those
// that check, as a tick from the topic would, on this peer's board. It
// returns how many the board took. An answer with a tick no honest peer
// hands on (forged, altered, of another swarm, malformed, oversized) is
// refused from there on with an error wrapping ErrBadBoard; ticks that are
// merely stale, already known or in another unit are skipped.
func (n *Node) SyncPrices(ctx context.Context, p peer.ID) (took int, err error) {
	took, _, err = n.syncPrices(ctx, p)
	return took, err
}

// syncPrices is SyncPrices; held is the number of quotes p's answer held.
func (n *Node) syncPrices(ctx context.Context, p peer.ID) (took, held int, err error) {
	if n.feed == nil {
		return 0, 0, errors.New("board sync: node not started")
	}
	ctx, cancel := context.WithTimeout(ctx, boardSyncTimeout)
	defer cancel()
	s, err := n.host.NewStream(ctx, p, BoardSyncProtocol)
	if err != nil {
		return 0, 0, fmt.Errorf("board sync with %s: %w", p, err)
	}
	defer s.Close()
	deadline, _ := ctx.Deadline()
	_ = s.SetDeadline(deadline)
	req, err := gossip.MarshalSyncRequest(gossip.MaxSyncTicks)
	if err != nil {
		return 0, 0, err
	}
	if _, err := s.Write(req); err != nil {
		_ = s.Reset()
		return 0, 0, fmt.Errorf("board sync with %s: %w", p, err)
	}
	if err := s.CloseWrite(); err != nil {
		_ = s.Reset()
		return 0, 0, fmt.Errorf("board sync with %s: %w", p, err)
	}
	data, err := io.ReadAll(io.LimitReader(s, gossip.MaxSyncAnswer+1))
	if err != nil {
		_ = s.Reset()
		return 0, 0, fmt.Errorf("board sync with %s: %w", p, err)
	}
	if len(data) > gossip.MaxSyncAnswer {
		_ = s.Reset()
		return 0, 0, fmt.Errorf("%w: %s sent more than %d bytes", ErrBadBoard, p, gossip.MaxSyncAnswer)
	}
	ticks, err := gossip.UnmarshalSyncAnswer(data)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: from %s: %w", ErrBadBoard, p, err)
	}
	for i, raw := range ticks {
		st, v, err := n.feed.CheckStored(raw, p)
		switch v {
		case gossip.Reject:
			return took, len(ticks), fmt.Errorf("%w: from %s: tick %d of %d: %w", ErrBadBoard, p, i, len(ticks), err)
		case gossip.Accept:
			if n.takeTick(st) {
				took++
			}
		}
	}
	return took, len(ticks), nil
}

// handleBoardSync answers a board-sync request with the signed quotes of
// this peer's board, cheapest first, to a peer at most once a
// boardServeEvery and to boardServeAtOnce peers at once.
func (n *Node) handleBoardSync(s network.Stream) {
	from := s.Conn().RemotePeer()
	if !n.mayServeBoard(from) {
		n.log.Debug("board sync refused: asked again too soon, or too many at once", "peer", from)
		_ = s.Reset()
		return
	}
	select {
	case n.boardSlots <- struct{}{}:
		defer func() { <-n.boardSlots }()
	default:
		_ = s.Reset()
		return
	}
	_ = s.SetDeadline(time.Now().Add(boardSyncTimeout))
	req, err := io.ReadAll(io.LimitReader(s, gossip.SyncRequestSize+1))
	if err != nil {
		_ = s.Reset()
		return
	}
	limit, err := gossip.UnmarshalSyncRequest(req)
	if err != nil {
		n.log.Debug("board sync request refused", "peer", from, "err", err)
		_ = s.Reset()
		return
	}
	n.priceMu.Lock()
	ticks := n.board.Signed(limit, n.now())
	n.priceMu.Unlock()
	ans, err := gossip.MarshalSyncAnswer(ticks)
	if err != nil { // the board keeps only ticks that fit
		n.log.Warn("board sync answer not made", "err", err)
		_ = s.Reset()
		return
	}
	if _, err := s.Write(ans); err != nil {
		_ = s.Reset()
		return
	}
	_ = s.Close()
}

// mayServeBoard reports whether peer p may have an answer now, and counts
// it if so.
func (n *Node) mayServeBoard(p peer.ID) bool {
	now := time.Now()
	n.boardServeMu.Lock()
	defer n.boardServeMu.Unlock()
	if last, ok := n.boardServed[p]; ok && now.Sub(last) < boardServeEvery {
		return false
	}
	if len(n.boardServed) >= boardServeTracked {
		for q, last := range n.boardServed {
			if now.Sub(last) >= boardServeEvery {
				delete(n.boardServed, q)
			}
		}
		if len(n.boardServed) >= boardServeTracked {
			return false
		}
	}
	n.boardServed[p] = now
	return true
}
