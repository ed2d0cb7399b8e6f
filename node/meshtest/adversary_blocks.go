package meshtest

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"
)

// WrongBlocks is a hostile block exchange peer (content, bitswap): to
// every want it says it has the block, and to every want of the block it
// sends bytes that are not the block's (as many, every one flipped). It
// speaks the real protocol; Sent counts the blocks it forged.
type WrongBlocks struct {
	Sent atomic.Int64
	Asks atomic.Int64 // wants it was sent

	a      *Adversary
	proto  protocol.ID
	mu     sync.Mutex
	stream map[peer.ID]network.Stream
}

// ServeWrongBlocks makes the adversary a WrongBlocks peer of the block
// exchange under prefix (dht.ProtocolPrefix of the mesh's swarm).
func (a *Adversary) ServeWrongBlocks(prefix protocol.ID) *WrongBlocks {
	w := &WrongBlocks{a: a, proto: prefix + "/ipfs/bitswap/1.2.0", stream: map[peer.ID]network.Stream{}}
	a.Host.SetStreamHandler(w.proto, w.handle)
	return w
}

func (w *WrongBlocks) handle(s network.Stream) {
	defer s.Close()
	from := s.Conn().RemotePeer()
	r := msgio.NewVarintReaderSize(s, network.MessageSizeMax)
	for {
		m, _, err := bsmsg.FromMsgReader(r)
		if err != nil {
			return
		}
		out := bsmsg.New(false)
		for _, e := range m.Wantlist() {
			if e.Cancel {
				continue
			}
			w.Asks.Add(1)
			if e.WantType == pb.Message_Wantlist_Have {
				out.AddHave(e.Cid)
				continue
			}
			out.AddBlock(forged(e.Cid))
			w.Sent.Add(1)
		}
		if !out.Empty() {
			w.send(from, out)
		}
	}
}

// forged is a "block" of c that is not c's: bytes whose hash is another.
func forged(c cid.Cid) blocks.Block {
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = 0xa5
	}
	copy(data, c.Bytes())
	b, _ := blocks.NewBlockWithCid(data, c) // not checked: that is the point
	return b
}

func (w *WrongBlocks) send(to peer.ID, m bsmsg.BitSwapMessage) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.stream[to]
	if s == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		if s, err = w.a.Host.NewStream(ctx, to, w.proto); err != nil {
			return
		}
		w.stream[to] = s
	}
	_ = s.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := m.ToNetV1(s); err != nil {
		_ = s.Reset()
		delete(w.stream, to)
	}
}
