package dht

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/internal/lazystream"
	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"
)

// Round trips of a lookup (docs/scale.md, "Lookup round trips"): kad-dht's
// message sender opens its streams with the host's NewStream, which on a
// connection just dialed waits for identify (a round trip) before the
// request; every DHT request to a peer this one was not connected to took
// two round trips, and so did every offer fetch from a provider. Here
// each goes out at once (internal/lazystream).

// requestTimeout bounds one DHT request: write, and read the answer.
const requestTimeout = 10 * time.Second

// messenger is the DHT's message sender (kaddht.WithCustomMessageSender):
// each request on a stream of its own (a stream costs no round trip on a
// multiplexed connection), opened by lazystream.Open, and every answer shown to
// the lookup that asked for it (watchAnswers).
type messenger struct {
	h             host.Host
	proto         protocol.ID
	identifyFirst bool
}

// newMessenger builds the DHT's message sender on h for the one protocol
// of a half.
func newMessenger(identifyFirst bool) func(host.Host, []protocol.ID) pb.MessageSenderWithDisconnect {
	return func(h host.Host, protos []protocol.ID) pb.MessageSenderWithDisconnect {
		return &messenger{h: h, proto: protos[0], identifyFirst: identifyFirst}
	}
}

var errNoAnswer = errors.New("dht: the peer closed the stream without an answer")

// SendRequest sends pmes to p and reads its answer.
func (m *messenger) SendRequest(ctx context.Context, p peer.ID, pmes *pb.Message) (resp *pb.Message, err error) {
	start := time.Now()
	w, _ := ctx.Value(answersKey{}).(*answerWatch)
	if w != nil {
		w.asked(m.proto, p, pmes)
		defer func() {
			if err != nil {
				w.failed(m.proto, p, pmes)
			}
		}()
	}
	s, err := m.send(ctx, p, pmes)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	_ = s.SetReadDeadline(time.Now().Add(requestTimeout))
	r := msgio.NewVarintReaderSize(s, network.MessageSizeMax)
	data, err := r.ReadMsg()
	if err != nil {
		_ = s.Reset()
		if errors.Is(err, io.EOF) {
			err = errNoAnswer
		}
		return nil, fmt.Errorf("dht: request to %s: %w", p, err)
	}
	resp = new(pb.Message)
	err = proto.Unmarshal(data, resp)
	r.ReleaseMsg(data)
	_ = s.Close()
	if err != nil {
		return nil, fmt.Errorf("dht: answer of %s: %w", p, err)
	}
	m.h.Peerstore().RecordLatency(p, time.Since(start))
	if w != nil {
		w.answered(m.proto, p, pmes, resp)
	}
	return resp, nil
}

// SendMessage sends pmes to p and does not wait for an answer.
func (m *messenger) SendMessage(ctx context.Context, p peer.ID, pmes *pb.Message) error {
	s, err := m.send(ctx, p, pmes)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	return s.Close()
}

// send opens a stream to p and writes pmes on it, closing its write side.
func (m *messenger) send(ctx context.Context, p peer.ID, pmes *pb.Message) (network.Stream, error) {
	data, err := proto.Marshal(pmes)
	if err != nil {
		return nil, err
	}
	s, err := lazystream.Open(ctx, m.h, p, m.proto, m.identifyFirst)
	if err != nil {
		return nil, err
	}
	_ = s.SetWriteDeadline(time.Now().Add(requestTimeout))
	w := msgio.NewVarintWriter(s)
	if err := w.WriteMsg(data); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("dht: request to %s: %w", p, err)
	}
	if err := s.CloseWrite(); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("dht: request to %s: %w", p, err)
	}
	return s, nil
}

// OnDisconnect: a stream lives for one request, so there is nothing to
// forget.
func (m *messenger) OnDisconnect(context.Context, peer.ID) {}

// answersKey carries an answerWatch in a lookup's context.
type answersKey struct{}

// answerWatch follows one index lookup's GET_PROVIDERS requests and
// their answers, half by half (by protocol): the peers it asked and heard
// of, which answered and which failed, and the providers named.
//
// The records in hand answer the lookup once, in every half it watches,
// the indexClosest peers closest to the key that it knows of (and that
// did not fail) have answered, and every provider any peer named is in
// hand. Kademlia's promise is about the peers closest to a key: every
// provider's announcement is a lookup of the key that ends at them, so
// they hold every announcement; the DHT's own query ends there too, then
// asks the rest of the 20 closest it heard of (its follow-up, one round
// trip or more), which a directory lookup need not wait for.
type answerWatch struct {
	self    peer.ID
	key     [32]byte // the index key's point in the keyspace
	rawKey  string   // the index key's multihash, as requests carry it
	mu      sync.Mutex
	halves  map[protocol.ID]*halfWatch
	named   map[peer.ID]bool // providers named by any peer
	changed chan struct{}
}

// halfWatch is what an answerWatch knows of one half's lookup.
type halfWatch struct {
	known map[peer.ID]peerState // asked or heard of
}

type peerState uint8

const (
	peerHeard peerState = iota
	peerAsked
	peerAnswered
	peerFailed
)

func newAnswerWatch(self peer.ID, key []byte) *answerWatch {
	return &answerWatch{self: self, key: kadPoint(key), rawKey: string(key), halves: map[protocol.ID]*halfWatch{},
		named: map[peer.ID]bool{}, changed: make(chan struct{}, 1)}
}

func (w *answerWatch) half(proto protocol.ID) *halfWatch {
	h, ok := w.halves[proto]
	if !ok {
		h = &halfWatch{known: map[peer.ID]peerState{}}
		w.halves[proto] = h
	}
	return h
}

// seed notes the peers a half's lookup starts from (its routing table's
// closest to the key).
func (w *answerWatch) seed(proto protocol.ID, ps []peer.ID) {
	w.mu.Lock()
	defer w.mu.Unlock()
	h := w.half(proto)
	for _, p := range ps {
		if _, ok := h.known[p]; !ok {
			h.known[p] = peerHeard
		}
	}
}

// kbucketSize is kad-dht's K: the peers closest to a key a lookup starts
// from and ends at.
const kbucketSize = 20

// asked notes a request of the lookup sent to p.
func (w *answerWatch) asked(proto protocol.ID, p peer.ID, req *pb.Message) {
	if req.GetType() != pb.Message_GET_PROVIDERS || string(req.GetKey()) != w.rawKey {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	h := w.half(proto)
	if st := h.known[p]; st == peerHeard {
		h.known[p] = peerAsked
	}
}

// failed notes that p did not answer.
func (w *answerWatch) failed(proto protocol.ID, p peer.ID, req *pb.Message) {
	if req.GetType() != pb.Message_GET_PROVIDERS || string(req.GetKey()) != w.rawKey {
		return
	}
	w.mu.Lock()
	w.half(proto).known[p] = peerFailed
	w.mu.Unlock()
	w.signal()
}

// answered notes p's answer: the providers it named, the peers it told of.
func (w *answerWatch) answered(proto protocol.ID, p peer.ID, req, resp *pb.Message) {
	if req.GetType() != pb.Message_GET_PROVIDERS || string(req.GetKey()) != w.rawKey {
		return
	}
	w.mu.Lock()
	h := w.half(proto)
	h.known[p] = peerAnswered
	for _, pp := range resp.GetCloserPeers() {
		id, err := peer.IDFromBytes(pp.GetId())
		if err != nil || id == w.self || len(pp.GetAddrs()) == 0 {
			continue // the DHT's query asks neither itself nor a peer it has no address of
		}
		if _, ok := h.known[id]; !ok && len(h.known) < maxWatched {
			h.known[id] = peerHeard
		}
	}
	for _, pp := range resp.GetProviderPeers() {
		id, err := peer.IDFromBytes(pp.GetId())
		if err == nil && len(w.named) < MaxIndexed {
			w.named[id] = true
		}
	}
	w.mu.Unlock()
	w.signal()
}

func (w *answerWatch) signal() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// maxWatched bounds the peers an answerWatch keeps a half: a lookup asks
// a few dozen; what hostile answers name past it is not kept.
const maxWatched = 4096

// answeredBy reports whether the records in hand (have: the providers
// received) answer the lookup in every half of protos.
func (w *answerWatch) answeredBy(protos []protocol.ID, have map[peer.ID]bool, closest int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id := range w.named {
		if !have[id] {
			return false
		}
	}
	for _, proto := range protos {
		h, ok := w.halves[proto]
		if !ok {
			return false
		}
		type near struct {
			d  kadDistance
			st peerState
		}
		var ps []near
		for id, st := range h.known {
			if st != peerFailed {
				ps = append(ps, near{xorDistance(w.key, kadPoint([]byte(id))), st})
			}
		}
		if len(ps) == 0 {
			return false
		}
		slices.SortFunc(ps, func(a, b near) int {
			if a.d.less(b.d) {
				return -1
			}
			if b.d.less(a.d) {
				return 1
			}
			return 0
		})
		for _, p := range ps[:min(closest, len(ps))] {
			if p.st != peerAnswered {
				return false
			}
		}
	}
	return true
}
