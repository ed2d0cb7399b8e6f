package content

import (
	"sync"
	"sync/atomic"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"log/slog"
)

// forgers cuts off peers that send blocks this peer never asked for. The
// exchange names a block it receives by the hash of its bytes, so a peer
// that answers a want with wrong bytes sends a block of a CID that no
// Fetch of ours ever asked for: the exchange drops it, but the session
// that asked keeps waiting on that peer (it said it had the block), for a
// minute or more. A peer caught doing so is disconnected, and the session
// asks the others at once. A block some Fetch asked for but got
// elsewhere first is not a forgery: asked remembers the CIDs asked of the
// exchange in two generations of at most askedGen entries each.
type forgers struct {
	h   host.Host
	log *slog.Logger
	cut atomic.Int64 // peers cut off

	mu        sync.Mutex // guards the generations
	now, prev map[string]struct{}
}

// askedGen is the CIDs a generation of asked holds before it becomes the
// previous one.
const askedGen = 1 << 16

func newForgers(h host.Host, log *slog.Logger) *forgers {
	return &forgers{h: h, log: log, now: map[string]struct{}{}}
}

// asked records CIDs a Fetch asks the exchange for.
func (f *forgers) asked(keys []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range keys {
		if len(f.now) >= askedGen {
			f.prev, f.now = f.now, make(map[string]struct{}, askedGen)
		}
		f.now[k] = struct{}{}
	}
}

func (f *forgers) wasAsked(k string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, a := f.now[k]
	_, b := f.prev[k]
	return a || b
}

// MessageReceived is the exchange's tracer: it sees every message before
// the exchange handles it.
func (f *forgers) MessageReceived(p peer.ID, m bsmsg.BitSwapMessage) {
	for _, b := range m.Blocks() {
		if f.wasAsked(keyOf(b.Cid())) {
			continue
		}
		f.cut.Add(1)
		f.log.Warn("content: a peer sent a block nobody asked for (wrong bytes for a block it said it had): disconnected", "peer", p, "cid", b.Cid())
		_ = f.h.Network().ClosePeer(p)
		return
	}
}

// MessageSent is the exchange's tracer of what it sends: nothing to see.
func (f *forgers) MessageSent(peer.ID, bsmsg.BitSwapMessage) {}

// ForgersCut is how many times a peer was disconnected for sending a
// block nobody asked for.
func (s *Service) ForgersCut() int64 { return s.forgers.cut.Load() }
