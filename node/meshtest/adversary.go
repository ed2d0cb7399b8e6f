package meshtest

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobwire"
)

// The adversary kit: hostile peers that speak gpumesh's real negotiation
// and job protocols, and send whatever frames a test chooses (early, late,
// twice, from someone else's job, with odd numbers).
//
//   - An Adversary is a stranger on the mesh's network: a bare libp2p host
//     with a key of its own and GossipSub, no node behind it. It hears the
//     public requests for bids, publishes its own, and sends signed
//     negotiation messages (Send) and job frames (OpenJob) of its choosing:
//     a hostile submitter, or a bystander that read someone's request.
//   - ServeJobs takes over a host's side of the job protocol: a real
//     provider node's host then answers its submitters with a script, a
//     hostile provider or member that negotiated honestly.

// Adversary is a hostile peer on a Mesh's network.
type Adversary struct {
	Host host.Host
	ID   node.Identity

	ps    *pubsub.PubSub
	topic *pubsub.Topic

	mu       sync.Mutex
	inbox    []gossip.Message // negotiation messages received, in order
	requests []gossip.RequestForBids
	arrived  chan struct{} // closed and replaced when a message arrives
}

// adversarySeed keeps adversaries' keys apart from the nodes' of the same
// seed.
const adversarySeed = 0xad7e_75a2_0000_0000

// AddAdversary adds hostile peer i to the mesh: a host with the key
// Key(seed^adversarySeed, i), linked to every node and connected to each,
// subscribed to the request-for-bids topic (it hears requests from when
// GossipSub has meshed it; Publish waits for a peer there). It is closed
// with the mesh.
func (m *Mesh) AddAdversary(t testing.TB, i int) *Adversary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	id := Key(m.seed^adversarySeed, i)
	addr := ma.StringCast(fmt.Sprintf("/ip4/10.%d.%d.%d/tcp/4021", (i>>16)&0xff, (i>>8)&0xff, i&0xff))
	h, err := m.Net.AddPeer(id.Key, addr)
	if err != nil {
		t.Fatalf("meshtest: adversary %d: %v", i, err)
	}
	if err := m.Net.LinkAll(); err != nil {
		t.Fatalf("meshtest: link adversary %d: %v", i, err)
	}
	a := &Adversary{Host: h, ID: id, arrived: make(chan struct{})}
	g, err := gossip.New(m.ctx, h, gossip.Config{Swarm: m.swarm})
	if err != nil {
		t.Fatalf("meshtest: adversary %d: %v", i, err)
	}
	a.ps = g.PubSub()
	if a.topic, err = a.ps.Join(g.Topic("rfb")); err != nil {
		t.Fatalf("meshtest: adversary %d: %v", i, err)
	}
	sub, err := a.topic.Subscribe()
	if err != nil {
		t.Fatalf("meshtest: adversary %d: %v", i, err)
	}
	go a.readRequests(m.ctx, sub)
	h.SetStreamHandler(node.NegotiateProtocol, a.handleNegotiate)
	for _, nd := range m.Nodes {
		nh := nd.Host()
		if err := h.Connect(ctx, peer.AddrInfo{ID: nh.ID(), Addrs: nh.Addrs()}); err != nil {
			t.Fatalf("meshtest: adversary %d: connect: %v", i, err)
		}
	}
	return a
}

// onTopic waits until a peer of the mesh is on the request-for-bids topic
// with this one (GossipSub has heard its subscription), so that what this
// peer publishes goes somewhere: at once when one is, else at the join.
func (a *Adversary) onTopic(ctx context.Context) error {
	ev, err := a.topic.EventHandler()
	if err != nil {
		return err
	}
	defer ev.Cancel()
	for len(a.topic.ListPeers()) == 0 { // after the handler is made: no join is missed
		if _, err := ev.NextPeerEvent(ctx); err != nil {
			return fmt.Errorf("meshtest: no peer on the request-for-bids topic: %w", err)
		}
	}
	return nil
}

func (a *Adversary) readRequests(ctx context.Context, sub *pubsub.Subscription) {
	defer sub.Cancel()
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		rfb, err := gossip.UnmarshalRequestForBids(msg.Data)
		if err != nil {
			continue
		}
		a.mu.Lock()
		if len(a.requests) < maxHeard {
			a.requests = append(a.requests, rfb)
		}
		a.notifyLocked()
		a.mu.Unlock()
	}
}

// maxHeard bounds what an adversary keeps of what it hears.
const maxHeard = 100_000

func (a *Adversary) handleNegotiate(s network.Stream) {
	defer s.Close()
	data, err := io.ReadAll(io.LimitReader(s, gossip.MaxNegotiationSize+2048))
	if err != nil {
		return
	}
	msg, err := node.OpenNegotiation(data)
	if err != nil {
		return
	}
	a.mu.Lock()
	if len(a.inbox) < maxHeard {
		a.inbox = append(a.inbox, msg)
	}
	a.notifyLocked()
	a.mu.Unlock()
}

func (a *Adversary) notifyLocked() {
	close(a.arrived)
	a.arrived = make(chan struct{})
}

// Publish broadcasts a request for bids on the swarm's topic, signed by
// this peer (its Submitter should be this peer: the topic's validators
// reject a request published by anyone but its author), once a peer is
// there to take it.
func (a *Adversary) Publish(ctx context.Context, rfb *gossip.RequestForBids) error {
	data, err := gossip.MarshalNegotiation(rfb)
	if err != nil {
		return err
	}
	if err := a.onTopic(ctx); err != nil {
		return err
	}
	return a.topic.Publish(ctx, data)
}

// Send signs msg with this peer's key and sends it to peer to over the
// negotiation protocol, as the protocol carries it: the message is taken
// only where this peer is its author, whatever it says.
func (a *Adversary) Send(ctx context.Context, to peer.ID, msg gossip.Message) error {
	data, err := node.SealNegotiation(a.ID, msg)
	if err != nil {
		return err
	}
	return a.SendRaw(ctx, to, data)
}

// SendRaw sends bytes as one negotiation message (a forged or malformed
// one, say).
func (a *Adversary) SendRaw(ctx context.Context, to peer.ID, data []byte) error {
	s, err := a.Host.NewStream(ctx, to, node.NegotiateProtocol)
	if err != nil {
		return err
	}
	if _, err := s.Write(data); err != nil {
		_ = s.Reset()
		return err
	}
	return s.Close()
}

// Ask signs a request for bids with this peer's key and sends it to
// provider to directly, on the request protocol, as a submitter asks the
// providers the directory names.
func (a *Adversary) Ask(ctx context.Context, to peer.ID, rfb *gossip.RequestForBids) error {
	data, err := node.SealNegotiation(a.ID, rfb)
	if err != nil {
		return err
	}
	return a.AskRaw(ctx, to, data)
}

// AskRaw sends bytes as one direct request for bids (a forged, replayed
// or oversized one, say). It reports an error when the provider resets
// the stream before the bytes are written.
func (a *Adversary) AskRaw(ctx context.Context, to peer.ID, data []byte) error {
	s, err := a.Host.NewStream(ctx, to, node.RFBProtocol)
	if err != nil {
		return err
	}
	if _, err := s.Write(data); err != nil {
		_ = s.Reset()
		return err
	}
	return s.Close()
}

// Received waits until a negotiation message that match accepts has
// arrived, and returns it.
func (a *Adversary) Received(ctx context.Context, match func(gossip.Message) bool) (gossip.Message, error) {
	return awaitMatch(ctx, &a.mu, &a.inbox, &a.arrived, match, "negotiation message arrived")
}

// Inbox is every negotiation message received so far, in order.
func (a *Adversary) Inbox() []gossip.Message {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]gossip.Message(nil), a.inbox...)
}

// Heard waits for a request for bids from someone else that match
// accepts, as any peer on the topic hears it.
func (a *Adversary) Heard(ctx context.Context, match func(gossip.RequestForBids) bool) (gossip.RequestForBids, error) {
	return awaitMatch(ctx, &a.mu, &a.requests, &a.arrived, match, "request for bids heard")
}

// awaitMatch waits until *list (guarded by mu, *arrived closed and
// replaced as it grows) holds an item match accepts, and returns the
// first; what names it in the error when ctx ends first.
func awaitMatch[T any](ctx context.Context, mu *sync.Mutex, list *[]T, arrived *chan struct{}, match func(T) bool, what string) (T, error) {
	for {
		mu.Lock()
		for _, x := range *list {
			if match(x) {
				mu.Unlock()
				return x, nil
			}
		}
		ch := *arrived
		mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			var zero T
			return zero, fmt.Errorf("meshtest: no such %s: %w", what, ctx.Err())
		}
	}
}

// NewJobID is a fresh random job ID.
func NewJobID() gossip.JobID {
	var j gossip.JobID
	_, _ = rand.Read(j[:])
	return j
}

// Request is a request for bids of this peer's for gpus GPUs of class,
// open for a few seconds, at most maxPrice per GPU-hour in unit.
func (a *Adversary) Request(job gossip.JobID, class string, gpus uint32, maxPrice uint64, unit string) *gossip.RequestForBids {
	return &gossip.RequestForBids{
		Job: job, Submitter: a.ID.PeerID, Deadline: time.Now().Add(10 * time.Second).UnixMilli(),
		Needs: gossip.Needs{
			GPUs: gpus, Class: class, Placement: gossip.Spread, MaxPrice: maxPrice, Unit: unit, LeaseSeconds: 3600,
		},
	}
}

// Reserve does by hand what an honest submitter does: it asks provider
// directly for bids for gpus GPUs of class, awards its bid and confirms the
// acceptance. It returns the job and the bid: provider now holds a
// confirmed reservation of this peer's, and nothing has started.
func (a *Adversary) Reserve(ctx context.Context, provider peer.ID, job gossip.JobID, class string, gpus uint32, maxPrice uint64, unit string) (gossip.Bid, error) {
	if err := a.Ask(ctx, provider, a.Request(job, class, gpus, maxPrice, unit)); err != nil {
		return gossip.Bid{}, err
	}
	m, err := a.Received(ctx, func(m gossip.Message) bool {
		b, ok := m.(*gossip.Bid)
		return ok && b.Job == job && b.Provider == provider
	})
	if err != nil {
		return gossip.Bid{}, err
	}
	bid := *m.(*gossip.Bid)
	if err := a.Send(ctx, provider, a.Award(bid, gpus)); err != nil {
		return bid, err
	}
	m, err = a.Received(ctx, func(m gossip.Message) bool {
		switch x := m.(type) {
		case *gossip.Acceptance:
			return x.Job == job && x.Provider == provider
		case *gossip.Refusal:
			return x.Job == job && x.Provider == provider
		}
		return false
	})
	if err != nil {
		return bid, err
	}
	if r, ok := m.(*gossip.Refusal); ok {
		return bid, fmt.Errorf("meshtest: award refused: %s", r.Reason)
	}
	return bid, a.Send(ctx, provider, &gossip.Confirm{Job: job, Submitter: a.ID.PeerID, Provider: provider})
}

// Award is this peer's award of gpus GPUs of a bid, a lease of an hour,
// as an honest submitter sends it.
func (a *Adversary) Award(bid gossip.Bid, gpus uint32) *gossip.Award {
	return &gossip.Award{
		Job: bid.Job, Submitter: a.ID.PeerID, Provider: bid.Provider, Class: bid.Class, GPUs: gpus,
		Price: bid.Price, LeaseExpires: time.Now().Add(time.Hour).UnixMilli(), Gang: bid.Job, GangSize: 1,
	}
}

// JobStream is one stream of the job protocol, either side.
type JobStream struct {
	S  network.Stream
	br *bufio.Reader
	fw *jobwire.Writer
}

func newJobStream(s network.Stream) *JobStream {
	return &JobStream{S: s, br: bufio.NewReader(s), fw: jobwire.NewWriter(s)}
}

// OpenJob opens a job stream to a provider, as the submitter of a job.
func (a *Adversary) OpenJob(ctx context.Context, to peer.ID) (*JobStream, error) {
	return OpenJob(ctx, a.Host, to)
}

// OpenJob opens a job stream from any host (a real node's, say, to send
// what its node would not) to a provider.
func OpenJob(ctx context.Context, h host.Host, to peer.ID) (*JobStream, error) {
	s, err := h.NewStream(ctx, to, jobwire.Protocol)
	if err != nil {
		return nil, err
	}
	return newJobStream(s), nil
}

// Send writes frames, in order.
func (j *JobStream) Send(fs ...jobwire.Frame) error {
	for _, f := range fs {
		if err := j.fw.Write(f); err != nil {
			return err
		}
	}
	return nil
}

// Next reads one frame, waiting until ctx ends at most (then the stream
// is reset: mocknet streams have no deadlines).
func (j *JobStream) Next(ctx context.Context) (jobwire.Frame, error) {
	stop := context.AfterFunc(ctx, func() { _ = j.S.Reset() })
	defer stop()
	return jobwire.Read(j.br)
}

// Until reads frames until one that stop accepts, and returns every frame
// read (that one last); an error ends it early, with the frames so far.
func (j *JobStream) Until(ctx context.Context, stop func(jobwire.Frame) bool) ([]jobwire.Frame, error) {
	var got []jobwire.Frame
	for len(got) < maxHeard {
		f, err := j.Next(ctx)
		if err != nil {
			return got, err
		}
		got = append(got, f)
		if stop(f) {
			return got, nil
		}
	}
	return got, errors.New("meshtest: too many frames")
}

// Close closes the stream.
func (j *JobStream) Close() error { return j.S.Close() }

// ServeJobs makes h answer the job protocol with script in place of its
// node: script gets each stream after its start frame was read, with that
// frame, and writes what it chooses; the stream is closed for writing when
// script returns, and read to its end. A start that is not a start frame
// fails the test.
func ServeJobs(t testing.TB, h host.Host, script func(js *JobStream, start *jobwire.StartFrame) error) {
	t.Helper()
	serve := func(s network.Stream) {
		defer s.Close()
		js := newJobStream(s)
		f, err := jobwire.Read(js.br)
		if err != nil || f.T != jobwire.KindStart {
			t.Errorf("meshtest: hostile member: first frame %v, %v", f.T, err)
			return
		}
		if err := script(js, f.Start); err != nil {
			t.Errorf("meshtest: hostile member: %v", err)
			return
		}
		_ = s.CloseWrite()
		_, _ = io.Copy(io.Discard, js.br)
	}
	h.SetStreamHandler(jobwire.Protocol, serve)
	h.SetStreamHandler(jobwire.Protocol11, serve) // a node's own handler must not take what a submitter opens first
}
