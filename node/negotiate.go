package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/lazystream"
	"github.com/gpumesh/gpumesh/node/jobnet"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/gpumesh/gpumesh/node/sessionwire"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/record"
)

// NegotiateProtocol carries the direct messages of cluster negotiation
// (bids, awards, acceptances, refusals, confirms, releases): one message a
// stream, from its author.
const NegotiateProtocol = protocol.ID("/gpumesh/negotiate/1.0.0")

// RFBProtocol carries a request for bids from its submitter to one of the
// providers the directory names (gossip's direct requests): one signed
// request a stream, answered (with a bid on NegotiateProtocol) only if the
// submitter is within the same per-author bounds as on the topic.
const RFBProtocol = protocol.ID("/gpumesh/rfb/1.0.0")

// Timing of negotiation.
const (
	negotiateWindow = 5 * time.Second // a request's deadline: bids after it are not taken
	sendTimeout     = 5 * time.Second // one direct message
	reservationTick = time.Second     // how often reservations are checked for lapses
	// negotiationLinger is how long an ended negotiation still answers
	// late acceptances (with a release) before it is forgotten.
	negotiationLinger = time.Minute
)

// askedTag marks, in the connection manager, the providers this peer has
// asked for bids, with a weight above a routing-table peer's: the
// connection manager trims them after strangers. It lasts as long as the
// connection.
const (
	askedTag      = "gpumesh-asked"
	askedTagValue = 10
)

// negEvent is one input of the negotiation loop.
type negEvent struct {
	msg    gossip.Message      // from a peer (its author checked)
	submit *gossip.Negotiation // a new negotiation of this peer's
	cancel gossip.JobID
	done   chan error
	start  *startQuery         // a provider's member starting: its reservation, now running
	ended  *gossip.Reservation // a provider's member has ended: its reservation ends
	cands  *candidates         // providers the directory names for a negotiation
	sent   *sentAsk            // this peer's request to a provider has left (or could not)
}

// sentAsk reports a direct request for bids sent (gossip.Negotiation.Sent).
type sentAsk struct {
	job      gossip.JobID
	provider peer.ID
	ok       bool
	at       time.Time
}

// candidates are providers the directory named for a job's request.
type candidates struct {
	job   gossip.JobID
	list  []gossip.Candidate
	final bool // the lookup has ended
}

// negState is the node's part of cluster negotiation. One goroutine, the
// negotiation loop, owns the Negotiations and the Reservations; everything
// else talks to it through in (local events) and the queues below.
type negState struct {
	// in is the loop's local events: this peer's submits, cancels,
	// candidates, starts and ends. Its senders wait for the loop, so a
	// few places are enough (a buffered channel holds its whole buffer
	// from the start: 1,024 places took ~70 KB a node).
	in chan negEvent
	// Messages this peer sends itself (a submitter that is its own
	// provider) wait in self (guarded by selfMu), taken before other
	// peers' messages: the loop sends them, so it must never wait to.
	selfMu sync.Mutex
	self   []gossip.Message
	// Signed messages from other peers wait in negQueue (guarded by
	// negQMu), each peer's apart (gossip.FairQueue: 32 a peer, 1024 in
	// all), and the loop takes them one peer at a time, after in:
	// however fast a stranger sends, an honest peer's award or answer
	// waits for at most one of its messages. negReady tells the loop
	// some wait.
	// negReading is each peer's messages being read and checked: with
	// those waiting, at most gossip.FairQueuePer a peer (so a peer that
	// holds streams open, or sends faster than they are checked, has the
	// rest dropped unread).
	negQMu     sync.Mutex
	negQueue   *gossip.FairQueue[gossip.Message]
	negReading map[peer.ID]int
	negReady   chan struct{}
	// Accepted requests for bids wait in rfbQueue (guarded by rfbQMu)
	// apart from in, answered one submitter at a time, those sent to this
	// provider directly before the topic's; rfbReady tells the
	// loop some wait. The loop takes them after what is in in and negQueue.
	rfbQMu   sync.Mutex
	rfbQueue *gossip.RequestQueues
	rfbReady chan struct{}
	rfbTopic *pubsub.Topic
	rfbSub   *pubsub.Subscription

	rfbMu  sync.Mutex           // guards rfbVal and directVal; GossipSub validates on several goroutines
	rfbVal *gossip.RFBValidator // which requests for bids of the topic this peer takes and forwards
	// directVal is which requests sent to this provider directly it
	// takes: the same rules, a direct request's bounds (RFBLimits).
	directVal *gossip.RFBValidator

	// paceMu serializes this peer's own requests for bids and guards
	// the pacers, which keep them within what every peer's validator
	// allows: rfbPace its direct requests, topicPace its broadcasts.
	paceMu    sync.Mutex
	rfbPace   *gossip.RFBPacer
	topicPace *gossip.RFBPacer

	sent atomic.Uint64 // negotiation messages this peer has sent (broadcasts count once)
	// onTopic is this peer's own requests for bids put on the topic (a
	// direct request's fallback: its named providers too few or silent).
	onTopic atomic.Uint64
	// releasesAgain is the releases this peer sent again after a failed
	// send (its job ended); releasesDropped those it did not, the job not
	// having ended (sendRelease).
	releasesAgain, releasesDropped atomic.Uint64
	// rfbChecked is the topic's requests for bids this peer's validator
	// has been handed (each after GossipSub checked its signature).
	rfbChecked atomic.Uint64

	provides atomic.Bool // this peer bids: it takes direct requests for bids
	// paced is the jobs whose direct requests have taken their pacer
	// token (one a negotiation, however many providers it asks); owned by
	// the negotiation loop.
	paced map[gossip.JobID]bool

	lookupMu sync.Mutex           // guards lookups
	lookups  map[peer.ID]struct{} // peers being looked up in the DHT to send them a message

	freeMu sync.Mutex        // guards free
	free   map[string]uint32 // GPUs per class not reserved, as the loop last saw
	// freeMoved says free changed: freeTicks gossips the asks again.
	freeMoved chan struct{}
}

// startJobs opens the job record, joins the request-for-bids topic and
// starts the negotiation loop.
func (n *Node) startJobs(ctx context.Context) error {
	n.in = make(chan negEvent, negInbox)
	n.negQueue = gossip.NewFairQueue[gossip.Message](0, 0)
	n.negReading = map[peer.ID]int{}
	n.negReady = make(chan struct{}, 1)
	n.rfbQueue = gossip.NewRequestQueues(0, 0)
	n.rfbReady = make(chan struct{}, 1)
	n.freeMoved = make(chan struct{}, 1)
	if err := n.openJobs(); err != nil {
		return err
	}
	ps := n.gossip.PubSub()
	topic := n.gossip.Topic(gossip.RFBTopic)
	var limits gossip.RFBLimits // the defaults, the same on every peer
	n.rfbVal = gossip.NewRFBValidator(gossip.RFBValidatorConfig{Limits: gossip.TopicLimits(), Total: gossip.TopicTotal(), Self: n.host.ID()})
	// A submitter's asks again of one request (its pacer counted it
	// once) count once here too.
	n.directVal = gossip.NewRFBValidator(gossip.RFBValidatorConfig{Limits: limits, AskedAgain: gossip.MaxAskedAgain})
	n.rfbPace = gossip.NewRFBPacer(limits.Pace())
	n.topicPace = gossip.NewRFBPacer(gossip.TopicLimits().Pace())
	// Inline: GossipSub's few validation workers run it in turn, rather
	// than a goroutine a message. Under a flood, thousands of those queued
	// on rfbMu, and an honest request waited behind all of them at every hop.
	if err := ps.RegisterTopicValidator(topic, n.validateRFB, pubsub.WithValidatorInline(true)); err != nil {
		return fmt.Errorf("rfb topic: %w", err)
	}
	n.gossip.Prefilter(topic, n.prefilterRFB)
	t, err := ps.Join(topic)
	if err != nil {
		return fmt.Errorf("rfb topic: %w", err)
	}
	sub, err := t.Subscribe()
	if err != nil {
		return fmt.Errorf("rfb topic: %w", err)
	}
	n.rfbTopic, n.rfbSub = t, sub
	n.host.SetStreamHandler(NegotiateProtocol, n.handleNegotiate)
	n.host.SetStreamHandler(RFBProtocol, n.handleRFB)
	n.host.SetStreamHandler(jobwire.Protocol, n.handleJob)
	n.host.SetStreamHandler(jobwire.Protocol11, n.handleJob)
	n.host.SetStreamHandler(sessionwire.Protocol, n.handleSession)
	n.host.SetStreamHandler(jobwire.ReplicaProtocol, n.handleReplica)
	n.jobnet = jobnet.New(n.host, jobnet.Config{Log: n.log})
	n.jobnet.Start()
	res, err := n.newReservations()
	if err != nil {
		return err
	}
	n.provides.Store(res != nil)
	n.paced = map[gossip.JobID]bool{}
	n.wg.Add(4)
	go n.freeTicks(ctx)
	go func() { defer n.wg.Done(); n.cleanLeftovers(ctx) }()
	go n.readRFBs(ctx)
	go n.negotiationLoop(ctx, res)
	n.startQueue(ctx)
	return nil
}

// closeJobs leaves the topic and closes the job store; the loop and the
// runs have ended with the node's context.
func (n *Node) closeJobs() error {
	defer n.closeJobStore()
	if n.host != nil {
		n.host.RemoveStreamHandler(NegotiateProtocol)
		n.host.RemoveStreamHandler(RFBProtocol)
		n.host.RemoveStreamHandler(jobwire.Protocol)
		n.host.RemoveStreamHandler(jobwire.Protocol11)
		n.host.RemoveStreamHandler(sessionwire.Protocol)
	}
	if n.jobnet != nil {
		n.jobnet.Close()
	}
	if n.rfbSub != nil {
		n.rfbSub.Cancel()
	}
	if n.rfbTopic != nil {
		_ = n.rfbTopic.Close()
	}
	return nil
}

// validateRFB is the request-for-bids topic's GossipSub validator; from is
// the neighbour that delivered the message (this peer for its own). What
// gossip.RFBValidator rejects (garbage, forgeries, a submitter over its
// rate or open requests that sent them itself) costs the peer that
// delivered it score (gossip/score.go) until it is ignored altogether.
func (n *Node) validateRFB(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	n.rfbChecked.Add(1)
	if len(m.Data) > gossip.MaxNegotiationSize { // before taking the lock
		m.ValidatorData = gossip.ErrBadNegotiation // why, for the refusals counted (gossip.Refusals)
		return pubsub.ValidationReject
	}
	rfb, err := gossip.UnmarshalRequestForBids(m.Data) // outside the lock: decoding is most of the work
	v := gossip.Reject
	if err == nil {
		n.rfbMu.Lock()
		rfb, v, err = n.rfbVal.Admit(rfb, m.GetFrom(), from, n.now())
		n.rfbMu.Unlock()
	}
	switch v {
	case gossip.Accept:
		m.ValidatorData = &rfb
		return pubsub.ValidationAccept
	case gossip.Ignore:
		n.log.Debug("request for bids ignored", "from", from, "signer", m.GetFrom(), "err", err)
		m.ValidatorData = err // why, for the refusals counted (gossip.Refusals)
		return pubsub.ValidationIgnore
	}
	n.log.Debug("request for bids rejected", "from", from, "signer", m.GetFrom(), "err", err)
	m.ValidatorData = err
	return pubsub.ValidationReject
}

// prefilterRFB drops a relayed request for bids, unchecked, when its
// named submitter is over its rate or open requests here, or this peer
// takes no more of the topic's now (gossip.TopicTotal): validateRFB
// would ignore it after GossipSub had checked its signature. Under a flood
// from many identities that check is most of a peer's work, and an honest
// request waits behind it.
// It runs on GossipSub's event loop, so it never waits for the lock: when
// a validation holds it, the request goes on to be checked as usual.
func (n *Node) prefilterRFB(author, _ peer.ID) bool {
	if !n.rfbMu.TryLock() {
		return false
	}
	defer n.rfbMu.Unlock()
	return n.rfbVal.Refuses(author, n.now())
}

// publishRFB broadcasts one of this peer's requests for bids once its
// pacer allows it (at once, unless this peer has asked more than every
// validator allows a submitter), or gives up when its deadline comes first.
func (n *Node) publishRFB(ctx context.Context, rfb *gossip.RequestForBids, data []byte) error {
	if err := n.pace(ctx, n.topicPace, rfb); err != nil {
		return err
	}
	return n.rfbTopic.Publish(ctx, data)
}

// pace waits until this peer's pacer lets one of its requests for bids go
// (at once, unless this peer has asked more than every validator allows
// a submitter), or fails when the request's deadline comes first.
func (n *Node) pace(ctx context.Context, pacer *gossip.RFBPacer, rfb *gossip.RequestForBids) error {
	n.paceMu.Lock()
	defer n.paceMu.Unlock()
	deadline := rfb.DeadlineTime()
	for {
		now := n.now()
		at := pacer.Next(now)
		if !at.After(now) && pacer.Take(deadline, now) {
			break
		}
		if !at.Before(deadline) {
			return fmt.Errorf("request for bids of job %s not sent before its deadline: this peer asks for bids more often than peers take from one submitter; submit fewer jobs at once", rfb.Job)
		}
		t := time.NewTimer(at.Sub(now))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	return nil
}

func (n *Node) readRFBs(ctx context.Context) {
	defer n.wg.Done()
	for {
		m, err := n.rfbSub.Next(ctx)
		if err != nil {
			return
		}
		rfb, ok := m.ValidatorData.(*gossip.RequestForBids)
		if !ok {
			continue
		}
		n.queueRFB(rfb, false)
	}
}

// queueRFB puts an accepted request for bids (from the topic or direct)
// in the fair queues the loop answers them from (direct ones first). Requests wait apart from
// the direct messages (bids, awards, answers) and local calls, so a burst
// of requests never delays those nor fills their queue.
func (n *Node) queueRFB(rfb *gossip.RequestForBids, direct bool) {
	n.rfbQMu.Lock()
	if n.rfbQueue.Push(*rfb, direct) > 0 {
		n.refusedBy.add(refusedRFBQueue, "pushed_out")
		n.log.Debug("requests for bids waiting: one pushed out", "submitter", rfb.Submitter)
	}
	n.rfbQMu.Unlock()
	n.signalRFB()
}

// signalRFB tells the negotiation loop that requests for bids wait.
func (n *Node) signalRFB() {
	select {
	case n.rfbReady <- struct{}{}:
	default: // signalled already
	}
}

// handleRFB takes a request for bids sent to this provider directly. The
// checks are the topic validator's, cheapest first: a peer that offers no
// GPUs reads nothing; a submitter over its rate or open requests (a
// direct request's per-author bounds, gossip.RFBLimits) is refused
// before its bytes are read or its signature checked; then the size, the
// signature, that the signer wrote the request and is the peer on the
// connection (so no one can send another's request, nor replay one it
// was sent), its deadline, and the count. What passes waits in the fair
// queue with the topic's requests; the bid goes to the submitter by peer
// ID, connected or found in the DHT, never to an address someone named.
func (n *Node) handleRFB(s network.Stream) {
	from := s.Conn().RemotePeer()
	if !n.provides.Load() {
		_ = s.Reset()
		return
	}
	n.rfbMu.Lock()
	refused := n.directVal.Refuses(from, n.now())
	n.rfbMu.Unlock()
	if refused {
		n.refusedBy.add(refusedRFBDirect, "rate")
		n.log.Debug("direct request for bids refused: submitter over its rate", "from", from)
		_ = s.Reset()
		return
	}
	defer s.Close()
	_ = s.SetReadDeadline(time.Now().Add(sendTimeout))
	data, err := io.ReadAll(io.LimitReader(s, maxSignedNegotiation+1))
	if err != nil {
		_ = s.Reset()
		return
	}
	rfb, err := n.admitDirectRFB(data, from)
	if err != nil {
		n.refusedBy.add(refusedRFBDirect, gossip.Reason(err))
		n.log.Debug("direct request for bids refused", "from", from, "err", err)
		_ = s.Reset()
		return
	}
	n.trace(rfb.Job, "queued", rfb)
	n.queueRFB(rfb, true)
}

// admitDirectRFB checks a request for bids that from sent this peer
// directly (see handleRFB) and counts it against its submitter.
func (n *Node) admitDirectRFB(data []byte, from peer.ID) (*gossip.RequestForBids, error) {
	msg, err := openNegotiation(data)
	if err != nil {
		return nil, err
	}
	rfb, ok := msg.(*gossip.RequestForBids)
	if !ok {
		return nil, fmt.Errorf("%w: a %T on %s, which carries requests for bids only", gossip.ErrBadNegotiation, msg, RFBProtocol)
	}
	if rfb.Submitter != from {
		// Before it counts: another's request, replayed, must not use up
		// its submitter's allowance.
		return nil, fmt.Errorf("%w: written by %s, sent by %s", gossip.ErrForgedRequest, rfb.Submitter, from)
	}
	n.rfbMu.Lock()
	got, v, err := n.directVal.Admit(*rfb, rfb.Submitter, from, n.now())
	n.rfbMu.Unlock()
	if v != gossip.Accept {
		return nil, err
	}
	return &got, nil
}

// LevelTrace is the log level of a negotiation's steps on this peer
// (below Debug, so a debug log does not show them): a message "negotiation
// step" with the job, the step (stored: the submitted job on disk;
// handed: its negotiation handed to the loop; submitted: taken by it; paced: its direct requests past this
// peer's pacer; received, queued, answered, sent; ended; recording and
// recorded: the outcome's record begun, and a formed job's on disk), and
// the message's kind where there is one. A
// benchmark's handler reads them to split a formation's time by step.
const LevelTrace = slog.LevelDebug - 4

// trace logs a step of job's negotiation on this peer (see LevelTrace).
func (n *Node) trace(job gossip.JobID, step string, msg gossip.Message) {
	if !n.log.Enabled(context.Background(), LevelTrace) {
		return
	}
	n.log.Log(context.Background(), LevelTrace, "negotiation step", "job", job.String(), "step", step, "kind", msgKind(msg))
}

// traceNote logs a step of job's negotiation on this peer that carries no
// message, with a word on it in the kind's place (see LevelTrace): asked
// (how many providers), broadcast, looked up (a peer's address in the
// DHT), release (why), candidates (the directory's count).
func (n *Node) traceNote(job gossip.JobID, step, note string) {
	if !n.log.Enabled(context.Background(), LevelTrace) {
		return
	}
	n.log.Log(context.Background(), LevelTrace, "negotiation step", "job", job.String(), "step", step, "kind", note)
}

// msgKind names a negotiation message's type, for the trace.
func msgKind(msg gossip.Message) string {
	switch msg.(type) {
	case nil:
		return ""
	case *gossip.RequestForBids:
		return "request"
	case *gossip.Bid:
		return "bid"
	case *gossip.Award:
		return "award"
	case *gossip.Confirm:
		return "confirm"
	case *gossip.Release:
		return "release"
	case *gossip.Refusal:
		return "refusal"
	}
	return "answer"
}

// deliver hands an event to the loop, or drops it when the node stops.
func (n *Node) deliver(ctx context.Context, ev negEvent) {
	select {
	case n.in <- ev:
	case <-ctx.Done():
	}
}

// negRecord is a negotiation message inside a libp2p signed envelope: each
// bid, award and answer is signed by its author, so it can be shown to
// anyone later, not only trusted on the connection it came over.
type negRecord struct{ data []byte }

func (r *negRecord) Domain() string { return "gpumesh-negotiation" }

func (r *negRecord) Codec() []byte { return []byte("/gpumesh/negotiate/1") }

func (r *negRecord) MarshalRecord() ([]byte, error) { return r.data, nil }

func (r *negRecord) UnmarshalRecord(b []byte) error {
	r.data = append([]byte(nil), b...)
	return nil
}

// maxSignedNegotiation bounds a signed message: the message and the
// envelope's key, signature and framing.
const maxSignedNegotiation = gossip.MaxNegotiationSize + 1024

// sealNegotiation encodes and signs a message with this peer's key.
func (n *Node) sealNegotiation(msg gossip.Message) ([]byte, error) {
	data, err := gossip.MarshalNegotiation(msg)
	if err != nil {
		return nil, err
	}
	env, err := record.Seal(&negRecord{data: data}, n.id.Key)
	if err != nil {
		return nil, err
	}
	return env.Marshal()
}

// openNegotiation checks a signed message: the signature, and that the
// signer is the author the message names.
func openNegotiation(data []byte) (gossip.Message, error) {
	if len(data) > maxSignedNegotiation {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", gossip.ErrBadNegotiation, len(data), maxSignedNegotiation)
	}
	rec := &negRecord{}
	env, err := record.ConsumeTypedEnvelope(data, rec)
	if err != nil {
		return nil, fmt.Errorf("%w: envelope: %v", gossip.ErrBadNegotiation, err)
	}
	signer, err := peer.IDFromPublicKey(env.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: signer: %v", gossip.ErrBadNegotiation, err)
	}
	msg, err := gossip.UnmarshalNegotiation(rec.data)
	if err != nil {
		return nil, err
	}
	if msg.Author() != signer {
		return nil, fmt.Errorf("%w: signed by %s, written by %s", gossip.ErrBadNegotiation, signer, msg.Author())
	}
	return msg, nil
}

// handleNegotiate reads one signed direct message; its author must be its
// signer and the peer at the other end of the connection. It waits in
// that peer's part of the fair queue (negQueue); a peer with its bound
// being read or waiting already has its message dropped before it is read.
func (n *Node) handleNegotiate(s network.Stream) {
	from := s.Conn().RemotePeer()
	n.negQMu.Lock()
	busy := n.negReading[from]+n.negQueue.Waiting(from) >= gossip.FairQueuePer
	if busy {
		n.negQueue.Drop(from)
	} else {
		n.negReading[from]++
	}
	n.negQMu.Unlock()
	if busy {
		n.log.Debug("negotiation message dropped unread: its peer has its bound being read or waiting", "from", from)
		_ = s.Reset()
		return
	}
	var msg gossip.Message // what passes the checks, queued when the read ends
	defer func() { n.queueMessage(from, msg) }()
	defer s.Close()
	_ = s.SetReadDeadline(time.Now().Add(sendTimeout))
	data, err := io.ReadAll(io.LimitReader(s, maxSignedNegotiation+1))
	if err != nil {
		_ = s.Reset()
		return
	}
	m, err := openNegotiation(data)
	if err == nil && m.Author() != s.Conn().RemotePeer() {
		err = fmt.Errorf("%w: written by %s, sent by %s", gossip.ErrBadNegotiation, m.Author(), s.Conn().RemotePeer())
	}
	if _, ok := m.(*gossip.RequestForBids); ok && err == nil {
		// Requests are bounded per author on their own protocol (handleRFB).
		err = fmt.Errorf("%w: a request for bids on %s; send it on %s", gossip.ErrBadNegotiation, NegotiateProtocol, RFBProtocol)
	}
	if err != nil {
		n.refusedBy.add(refusedNegotiate, gossip.Reason(err))
		n.log.Debug("negotiation message refused", "from", s.Conn().RemotePeer(), "err", err)
		_ = s.Reset()
		return
	}
	n.trace(m.JobID(), "received", m)
	msg = m
}

// queueMessage ends the read of a message of from's: msg, when it passed
// the checks, waits in from's part of the fair queue.
func (n *Node) queueMessage(from peer.ID, msg gossip.Message) {
	n.negQMu.Lock()
	if n.negReading[from]--; n.negReading[from] <= 0 {
		delete(n.negReading, from)
	}
	ok := msg == nil || n.negQueue.Push(from, msg)
	n.negQMu.Unlock()
	if msg == nil {
		return
	}
	if !ok {
		n.log.Debug("negotiation message dropped: the queue is full and no peer has more waiting", "from", from)
		return
	}
	select {
	case n.negReady <- struct{}{}:
	default: // signalled already
	}
}

// negInbox is how many local events wait for the negotiation loop
// before their senders do.
const negInbox = 16

// nextMessage takes the next message this peer sent itself or, when none
// waits, the next waiting message of another peer's (in turn,
// gossip.FairQueue); false when none waits.
func (n *Node) nextMessage() (gossip.Message, bool) {
	n.selfMu.Lock()
	if len(n.self) > 0 {
		msg := n.self[0]
		n.self[0] = nil
		n.self = n.self[1:]
		if len(n.self) == 0 {
			n.self = nil // its array goes with the last one
		}
		n.selfMu.Unlock()
		return msg, true
	}
	n.selfMu.Unlock()
	n.negQMu.Lock()
	defer n.negQMu.Unlock()
	_, msg, ok := n.negQueue.Pop()
	return msg, ok
}

// negotiationLoop owns every Negotiation of this peer's jobs and its
// Reservations: it steps them with messages and time and sends what they say.
func (n *Node) negotiationLoop(ctx context.Context, res *gossip.Reservations) {
	defer n.wg.Done()
	negs := map[gossip.JobID]*gossip.Negotiation{} // negotiating now
	settled := map[gossip.JobID]settledNeg{}       // ended, for late acceptances
	timer := time.NewTimer(reservationTick)
	defer timer.Stop()
	// rfbWake is when a waiting request for bids may next be answered,
	// when the topic's answer rate holds them back (zero: not held).
	var rfbWake time.Time
	for {
		var ev negEvent
		// Local calls, then other peers' messages (one peer at a time),
		// then requests for bids.
		select {
		case ev = <-n.in:
		default:
			var ok bool
			if ev.msg, ok = n.nextMessage(); ok {
				break
			}
			select {
			case <-ctx.Done():
				return
			case ev = <-n.in:
			case <-n.negReady:
				ev.msg, _ = n.nextMessage() // none when taken already: a tick
			case <-n.rfbReady:
				n.rfbQMu.Lock()
				now := n.now()
				rfb, ok := n.rfbQueue.Pop(now)
				wake := n.rfbQueue.Next(now)
				n.rfbQMu.Unlock()
				rfbWake = time.Time{}
				switch {
				case wake.IsZero():
				case !wake.After(now):
					n.signalRFB()
				default: // the topic's answer rate: the timer wakes the loop
					rfbWake = wake
				}
				if ok {
					ev.msg = &rfb
				}
			case <-timer.C:
			}
		}
		n.handleEvent(ctx, ev, negs, settled, res)
		now := n.now()
		next := now.Add(reservationTick)
		if !rfbWake.IsZero() {
			if !rfbWake.After(now) {
				rfbWake = time.Time{}
				n.signalRFB()
			} else if rfbWake.Before(next) {
				next = rfbWake
			}
		}
		for id, ng := range negs {
			if w := ng.Wake(); !w.IsZero() && !w.After(now) && ng.Phase() == gossip.Collecting {
				// Due (a fallback or a round of asking again): the board
				// may name providers since, e.g. one busy when asked whose
				// GPUs are free now (gossip's Reasks ask them).
				ng.Candidates(n.boardCandidates(ng.Request().Needs, now), false, now)
			}
			ng.Tick(now)
			n.flush(ctx, ng, ng.Ready())
			switch w := ng.Wake(); {
			case ng.Phase() == gossip.Formed || ng.Phase() == gossip.Failed:
				// Ended: keep only what answers late acceptances.
				settled[id] = settledNeg{ng.Settle(), now}
				delete(negs, id)
				delete(n.paced, id)
			case !w.IsZero() && w.Before(next):
				next = w
			}
		}
		for id, s := range settled {
			if now.Sub(s.at) > negotiationLinger {
				delete(settled, id) // late acceptances have had their answer window
			}
		}
		if res != nil {
			res.Tick(now)
			n.noteFree(res, now)
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(max(next.Sub(n.now()), time.Millisecond))
	}
}

// handleEvent steps the negotiations and the reservations with one input
// of the loop (none, for a timer).
func (n *Node) handleEvent(ctx context.Context, ev negEvent, negs map[gossip.JobID]*gossip.Negotiation, settled map[gossip.JobID]settledNeg, res *gossip.Reservations) {
	now := n.now()
	switch {
	case ev.submit != nil:
		n.trace(ev.submit.Job(), "submitted", nil)
		negs[ev.submit.Job()] = ev.submit
		delete(settled, ev.submit.Job()) // a retry's negotiation
		n.flush(ctx, ev.submit, ev.submit.Ready())
	case ev.done != nil:
		ng, ok := negs[ev.cancel]
		if ok {
			ng.Cancel("by the submitter")
			n.flush(ctx, ng, ng.Ready())
		}
		ev.done <- nil
	case ev.msg != nil:
		n.stepMessage(ctx, ev.msg, negs, settled, res, now)
	case ev.cands != nil:
		if ng, ok := negs[ev.cands.job]; ok {
			ng.Candidates(ev.cands.list, ev.cands.final, now)
			n.flush(ctx, ng, ng.Ready())
		}
	case ev.sent != nil:
		if ng, ok := negs[ev.sent.job]; ok {
			ng.Sent(ev.sent.provider, ev.sent.ok, ev.sent.at)
			n.flush(ctx, ng, ng.Ready())
		}
	case ev.ended != nil:
		if res != nil {
			res.End(ev.ended.Job, ev.ended.Submitter)
		}
	case ev.start != nil:
		r := startReply{err: fmt.Errorf("this provider holds no reservation of %s for job %s", ev.start.submitter, ev.start.job)}
		if res != nil {
			r.res, r.err = res.Start(ev.start.job, ev.start.submitter, now)
		}
		ev.start.reply <- r
	}
}

// settledNeg is an ended negotiation of this peer's, and when it ended.
type settledNeg struct {
	s  *gossip.Settled
	at time.Time
}

func (n *Node) stepMessage(ctx context.Context, msg gossip.Message, negs map[gossip.JobID]*gossip.Negotiation, settled map[gossip.JobID]settledNeg, res *gossip.Reservations, now time.Time) {
	switch m := msg.(type) {
	case *gossip.RequestForBids:
		if res == nil {
			return
		}
		n.trace(m.Job, "answered", m)
		n.syncAsks(res)
		bid, err := res.Bid(*m, now)
		if err != nil {
			return
		}
		// To the submitter by its ID: connected, or found in the DHT.
		n.send(ctx, m.Submitter, &bid)
	case *gossip.Award:
		n.trace(m.Job, "answered", m)
		if res == nil {
			n.send(ctx, m.Submitter, &gossip.Refusal{Job: m.Job, Provider: n.id.PeerID, Reason: "this peer offers no GPUs"})
			return
		}
		n.send(ctx, m.Submitter, res.Award(*m, now))
	case *gossip.Confirm:
		if res != nil {
			if err := res.Confirm(*m, now); err != nil {
				n.log.Warn("confirm of a lapsed reservation", "job", m.Job, "err", err)
			}
		}
	case *gossip.Release:
		if res != nil {
			res.Release(*m, now)
		}
	default: // bids, acceptances, refusals: for one of our negotiations
		ng, ok := negs[msg.JobID()]
		if !ok {
			if s, ok := settled[msg.JobID()]; ok {
				if rel := s.s.Step(msg); rel != nil {
					n.sendRelease(ctx, rel)
				}
			}
			return
		}
		if err := ng.Step(msg, now); err != nil {
			n.log.Debug("negotiation step", "job", msg.JobID(), "err", err)
		}
		n.flush(ctx, ng, ng.Ready())
	}
}

// flush acts on what a negotiation says: ask, broadcast, send, record.
func (n *Node) flush(ctx context.Context, ng *gossip.Negotiation, r gossip.Ready) {
	if len(r.Ask) > 0 {
		n.traceNote(ng.Job(), "ask", strconv.Itoa(len(r.Ask)))
		rfb := ng.Request()
		first := !n.paced[rfb.Job]
		n.paced[rfb.Job] = true
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			// One pacer token a negotiation: each provider is asked once.
			if first {
				if err := n.pace(ctx, n.rfbPace, &rfb); err != nil {
					if ctx.Err() == nil {
						n.log.Warn("request for bids not sent", "job", rfb.Job, "err", err)
					}
					for _, p := range r.Ask {
						n.reportSent(ctx, rfb.Job, p)(false)
					}
					return
				}
				n.trace(rfb.Job, "paced", nil)
			}
			for _, p := range r.Ask {
				n.sendOn(ctx, RFBProtocol, p, &rfb, true, n.reportSent(ctx, rfb.Job, p))
			}
		}()
	}
	if rfb := r.RequestForBids; rfb != nil {
		n.traceNote(ng.Job(), "broadcast", "")
		data, err := gossip.MarshalNegotiation(rfb)
		if err == nil {
			n.sent.Add(1)
			n.onTopic.Add(1)
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				if err := n.publishRFB(ctx, rfb, data); err != nil && ctx.Err() == nil {
					n.log.Warn("publish request for bids", "job", rfb.Job, "err", err)
				}
			}()
		}
	}
	if len(r.Awards) > 0 {
		n.traceNote(ng.Job(), "awarding", strconv.Itoa(len(r.Awards)))
	}
	for i := range r.Awards {
		n.send(ctx, r.Awards[i].Provider, &r.Awards[i])
	}
	for i := range r.Confirms {
		n.send(ctx, r.Confirms[i].Provider, &r.Confirms[i])
	}
	for i := range r.Releases {
		n.traceNote(ng.Job(), "release", r.Releases[i].Reason)
		n.sendRelease(ctx, &r.Releases[i])
	}
	if r.Outcome != nil {
		n.trace(ng.Job(), "ended", nil)
		// Off the loop: recording writes the job store and the evidence,
		// each synced, and the loop answers every peer's negotiation.
		o, job := *r.Outcome, ng.Job()
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.recordOutcome(job, o)
		}()
	}
}

// send delivers one message to a peer on NegotiateProtocol (see sendOn).
func (n *Node) send(ctx context.Context, to peer.ID, msg gossip.Message) {
	n.sendOn(ctx, NegotiateProtocol, to, msg, false, nil)
}

// sendRelease sends a Release to its provider and, when the send fails
// (the provider not reached, a stream refused, sendTimeout passed under
// load) and the job has ended by then, sends it again, releaseRetries
// times at most, releaseBackoff after the failure and twice as long after
// each next one: a release lost leaves the provider's GPUs held until its
// reservation lapses (a minute for a member never started; seen at 1,000
// simulated peers, docs/scale.md). A release the provider gets twice
// frees nothing twice.
//
// Only an ended job's release goes again. A release names its job, not
// its award, and a job's next attempt (a lost race, a failed run) keeps
// the job's ID: a release of an earlier attempt that arrived late would
// free the next attempt's reservation at the same provider (a provider
// then leases more GPUs than it has). An ended job makes no attempt
// again, and what it still holds anywhere is to go.
func (n *Node) sendRelease(ctx context.Context, rel *gossip.Release) {
	n.sendReleaseTry(ctx, rel, 0)
}

func (n *Node) sendReleaseTry(ctx context.Context, rel *gossip.Release, try int) {
	life := n.ctx
	var again func(ok bool)
	if try < releaseRetries {
		again = func(ok bool) { // on sendOn's goroutine, which n.wg counts
			if ok || ctx.Err() != nil {
				return
			}
			t := time.NewTimer(cmp.Or(n.cfg.ReleaseBackoff, releaseBackoff) << try)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return
			case <-life.Done(): // the peer stops: ctx may outlive it (a run's release)
				return
			case <-t.C:
			}
			if !n.jobEnded(rel.Job) {
				n.traceNote(rel.Job, "release not sent again", "the job may try again")
				n.releasesDropped.Add(1)
				return
			}
			n.traceNote(rel.Job, "release again", strconv.Itoa(try+1))
			n.releasesAgain.Add(1)
			n.sendReleaseTry(ctx, rel, try+1)
		}
	}
	n.sendOn(ctx, NegotiateProtocol, rel.Provider, rel, false, again)
}

// jobEnded reports whether this peer's job has ended (done, failed,
// cancelled): it will make no attempt again. A job it has no record of
// counts as not ended.
func (n *Node) jobEnded(job gossip.JobID) bool {
	j, ok := n.Job(job.String())
	return ok && j.State.Ended()
}

// A release that could not be sent is sent again releaseRetries times,
// releaseBackoff after the failure and twice as long after each next: at
// 2, 6 and 14 s, past a libp2p swarm's backoff of a peer it failed to
// dial (5 s and more), which fails every dial before it.
const (
	releaseRetries = 3
	releaseBackoff = 2 * time.Second // Config.ReleaseBackoff's default
)

// reportSent is sendOn's done for a direct request of job to provider p:
// it tells the job's negotiation when the request left (or that it could
// not), so its fallback to the topic waits for the request rather than
// for the ask (gossip.NegotiationConfig.SendReports).
func (n *Node) reportSent(ctx context.Context, job gossip.JobID, p peer.ID) func(ok bool) {
	return func(ok bool) {
		n.deliver(ctx, negEvent{sent: &sentAsk{job: job, provider: p, ok: ok, at: n.now()}})
	}
}

// sendOn delivers one message to a peer on its own stream of proto,
// without blocking the loop: the message is signed on the goroutine that
// sends it, not on the loop, so a provider's loop under a flood of
// requests spends no signature on each bid before it takes the next
// award. It reaches the peer by its ID alone: over a
// connection it has, at addresses this peer knows of it (identify, the
// DHT), or at the addresses the DHT finds for it — never at an address a
// message names, so no message can make this peer dial a third party.
// own marks this peer's own requests (bounded by its fan-out), which may
// look their peer up even when maxLookups are under way. msg must not
// change after the call. done, when not nil, is called once the message
// has left (true) or cannot be sent (false), on the sending goroutine.
func (n *Node) sendOn(ctx context.Context, proto protocol.ID, to peer.ID, msg gossip.Message, own bool, done func(ok bool)) {
	n.sent.Add(1)
	if to == n.id.PeerID { // a peer that is its own provider: nothing to sign
		if done != nil {
			n.wg.Add(1)
			go func() { // the loop calls sendOn: done must not wait on it
				defer n.wg.Done()
				done(true)
			}()
		}
		n.selfMu.Lock()
		n.self = append(n.self, msg)
		n.selfMu.Unlock()
		select {
		case n.negReady <- struct{}{}:
		default: // signalled already
		}
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		sent := false
		if done != nil {
			defer func() { done(sent) }()
		}
		data, err := n.sealNegotiation(msg)
		if err != nil {
			n.log.Warn("negotiation message not sent", "to", to, "err", err)
			return
		}
		sctx, cancel := context.WithTimeout(ctx, sendTimeout)
		defer cancel()
		if looked, err := n.reachPeer(sctx, to, own); err != nil {
			n.log.Debug("negotiation message not sent", "to", to, "msg", fmt.Sprintf("%T", msg), "err", err)
			return
		} else if looked {
			n.traceNote(msg.JobID(), "looked up", msgKind(msg))
		}
		// At once, not after identify on a new connection (a round trip:
		// a request to a provider, or a bid to a submitter, this peer was
		// not connected to); but a bid whose form depends on the peer's
		// version (bidForPeer) waits for identify to tell it.
		b, _ := msg.(*gossip.Bid)
		s, err := lazystream.Open(sctx, n.host, to, proto, n.cfg.IdentifyFirst || (b != nil && b.NoHostNet))
		if err != nil {
			n.log.Debug("negotiation send", "to", to, "err", err)
			return
		}
		if own {
			// A provider asked now is likely awarded, or asked again:
			// its connection is worth more than a stranger's, so the
			// next message to it needs no new one (tagged once it is
			// open: the connection manager tags connected peers only).
			n.host.ConnManager().TagPeer(to, askedTag, askedTagValue)
		}
		if m, older := n.bidForPeer(to, msg); older { // identified by now (lazystream.Open waited)
			if data, err = n.sealNegotiation(m); err != nil {
				_ = s.Reset()
				return
			}
		}
		stop := context.AfterFunc(sctx, func() { _ = s.Reset() })
		defer stop()
		if _, err := s.Write(data); err != nil {
			_ = s.Reset()
			return
		}
		// The message and its end go out together: the reader reads to
		// the end. Close alone would first wait for the other end's answer
		// to the protocol's name (sent with the message, not waited for
		// before it), and the reader would see the end a round trip later.
		if err := s.CloseWrite(); err != nil {
			_ = s.Reset()
			return
		}
		n.trace(msg.JobID(), "sent", msg)
		sent = true
		_ = s.Close()
	}()
}

// reachPeer makes sure this peer can open a stream to p by its ID: it is
// connected, the peerstore has addresses of it, or the DHT finds them.
// Unless own, a lookup waits for none: when maxLookups are under way (a
// flood of strangers' requests) it fails at once. looked says it took a
// lookup.
func (n *Node) reachPeer(ctx context.Context, p peer.ID, own bool) (looked bool, err error) {
	if n.host.Network().Connectedness(p) == network.Connected || len(n.host.Peerstore().Addrs(p)) > 0 {
		return false, nil
	}
	if !own {
		if !n.startLookup(p) {
			return false, errors.New("not connected, and lookups busy")
		}
		defer n.endLookup(p)
	}
	ai, err := n.dht.FindPeer(ctx, p)
	if err != nil {
		return true, fmt.Errorf("not found in the DHT: %w", err)
	}
	n.host.Peerstore().AddAddrs(p, ai.Addrs, peerstore.TempAddrTTL)
	return true, nil
}

// maxLookups bounds the DHT lookups of peers this peer is not connected to
// that sending negotiation messages makes at once: a flood of requests from
// strangers then costs this peer and the DHT at most this many lookups at
// a time (and one a stranger), not one a request.
const maxLookups = 4

// startLookup reserves a lookup of p; false when p is being looked up
// already or maxLookups are under way (the message is then not sent).
func (n *Node) startLookup(p peer.ID) bool {
	n.lookupMu.Lock()
	defer n.lookupMu.Unlock()
	if _, busy := n.lookups[p]; busy || len(n.lookups) >= maxLookups {
		return false
	}
	if n.lookups == nil {
		n.lookups = map[peer.ID]struct{}{}
	}
	n.lookups[p] = struct{}{}
	return true
}

func (n *Node) endLookup(p peer.ID) {
	n.lookupMu.Lock()
	delete(n.lookups, p)
	n.lookupMu.Unlock()
}

// NegotiationMessages is how many negotiation messages this peer has sent:
// requests for bids (once each, however far gossip carries them), bids,
// awards, answers, confirms and releases.
func (n *Node) NegotiationMessages() uint64 { return n.sent.Load() }

// TopicRequests is how many of its own requests for bids this peer has
// put on the topic: the direct requests that fell back (their named
// providers too few, or silent for gossip's FallbackWait).
func (n *Node) TopicRequests() uint64 { return n.onTopic.Load() }

// ReleasesSentAgain is how many releases this peer sent again after a
// send failed, its job having ended; and how many it did not, the job
// not having ended (its next attempt may hold the same provider's GPUs).
func (n *Node) ReleasesSentAgain() (again, notAgain uint64) {
	return n.releasesAgain.Load(), n.releasesDropped.Load()
}

// RFBValidations is how many requests for bids of the topic this peer has
// validated (their signatures checked, then the validator's rules): the
// work a flood on the topic costs it.
func (n *Node) RFBValidations() uint64 { return n.rfbChecked.Load() }
