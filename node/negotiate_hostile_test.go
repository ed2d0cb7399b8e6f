package node_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// tcpNode starts a real node on a loopback TCP port, a DHT server.
// hostileSwarm is the private swarm of this file's peers: their providers
// offer the process executor, which only a private swarm may.
var hostileSwarm = meshtest.SwarmOf(0x5eed)

func tcpNode(t *testing.T, cfg node.Config) *node.Node {
	t.Helper()
	cfg.Swarm = hostileSwarm
	cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.NoMDNS, cfg.NoNAT, cfg.DHTMode = true, true, dht.ModeServer
	nd, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := nd.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nd.Close() })
	return nd
}

// rfbPeer is a hostile peer on a real libp2p host: it speaks GossipSub on
// the swarm's request-for-bids topic and publishes whatever bytes it is
// given, signed with its key. It counts the bids it is sent, by job. It
// runs no DHT: the peers it is connected to tell others its addresses.
type rfbPeer struct {
	h     host.Host
	topic *pubsub.Topic

	mu   sync.Mutex
	bids map[gossip.JobID]int
}

func newRFBPeer(t *testing.T, ctx context.Context) *rfbPeer {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.PrivateNetwork(hostileSwarm.PSK))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	// Flood publishing, as gpumesh peers do: to every topic peer, not
	// only the mesh (which a peer leaves once it is pruned for what it sent).
	ps, err := pubsub.NewGossipSub(ctx, h, pubsub.WithPeerOutboundQueueSize(4096), pubsub.WithFloodPublish(true))
	if err != nil {
		t.Fatal(err)
	}
	topic, err := ps.Join(gossip.TopicName(hostileSwarm.ID(), gossip.RFBTopic))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Cancel)
	p := &rfbPeer{h: h, topic: topic, bids: map[gossip.JobID]int{}}
	h.SetStreamHandler(node.NegotiateProtocol, func(s network.Stream) {
		defer s.Close()
		data, err := io.ReadAll(io.LimitReader(s, 16<<10))
		if err != nil {
			return
		}
		env, err := record.UnmarshalEnvelope(data)
		if err != nil {
			return
		}
		if b, err := gossip.UnmarshalBid(env.RawPayload); err == nil {
			p.mu.Lock()
			p.bids[b.Job]++
			p.mu.Unlock()
		}
	})
	return p
}

// request is an encoded request for bids of p for 8 H100s, deadline 5 s.
func (p *rfbPeer) request(t *testing.T) (gossip.JobID, []byte) {
	t.Helper()
	rfb := gossip.RequestForBids{Submitter: p.h.ID(), Deadline: time.Now().Add(5 * time.Second).UnixMilli(), Needs: gossip.Needs{
		GPUs: 8, Model: "H100", Placement: gossip.Spread, MaxPrice: 2_500_000, Unit: "USDC:6", LeaseSeconds: 3600}}
	_, _ = rand.Read(rfb.Job[:])
	data, err := gossip.MarshalNegotiation(&rfb)
	if err != nil {
		t.Fatal(err)
	}
	return rfb.Job, data
}

func (p *rfbPeer) bidsFor(job gossip.JobID) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bids[job]
}

func (p *rfbPeer) allBids() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.bids {
		n += c
	}
	return n
}

// A provider answers a request for bids only to its submitter, found by
// peer ID: a request that names an address for its answer (here a TCP
// listener of a third party, on loopback) is rejected by the first peer
// that sees it and makes no one dial that address, while the hostile
// peer's plain request, carried by a relay to a provider that was never
// connected to it, is answered at the address the DHT knows.
func TestARequestCannotMakeProvidersDialAnAddressItNames(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	victim, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close()
	var dialed atomic.Int32
	go func() {
		for {
			c, err := victim.Accept()
			if err != nil {
				return
			}
			dialed.Add(1)
			c.Close()
		}
	}()

	prov := tcpNode(t, node.Config{GPUs: "mock:dgxh100", Price: "fixed:2.10", Executors: []string{"process"}})
	relay := tcpNode(t, node.Config{GPUs: "none", Bootstrap: []string{prov.Info().Addrs[0]}})
	h := newRFBPeer(t, ctx)
	if err := h.h.Connect(ctx, peer.AddrInfo{ID: relay.Host().ID(), Addrs: relay.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	topic := relay.Gossip().Topic(gossip.RFBTopic)
	testwait.Until(t, ctx, "the relay to have the hostile peer and the provider in its mesh, and the provider the relay in its DHT", func() bool {
		return slices.Contains(relay.Gossip().PubSub().ListPeers(topic), h.h.ID()) && len(h.topic.ListPeers()) > 0 &&
			prov.Directory().RoutingTableSize() >= 1 && relay.Gossip().Stats(topic).Mesh == 2
	})
	if prov.Host().Network().Connectedness(h.h.ID()) == network.Connected {
		t.Fatal("the provider is connected to the hostile peer already; the test needs it not to be")
	}

	// The request in the form that named an address, with the victim's.
	named, data := h.request(t)
	withAddrs := append(bytes.TrimSuffix(data, []byte("}")), []byte(`,"addrs":["/ip4/127.0.0.1/tcp/`+port(t, victim)+`"]}`)...)
	if err := h.topic.Publish(ctx, withAddrs); err != nil {
		t.Fatal(err)
	}
	plain, data := h.request(t)
	if err := h.topic.Publish(ctx, data); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, ctx, "the provider's bid for the plain request at the hostile peer, or a dial of the victim", func() (bool, string) {
		return h.bidsFor(plain) == 1 || dialed.Load() > 0, fmt.Sprintf("relay %+v, provider %+v", relay.Gossip().Stats(topic), prov.Gossip().Stats(topic))
	})
	if got := dialed.Load(); got != 0 {
		t.Fatalf("the address the request named was dialed %d times", got)
	}
	if got := relay.Gossip().Stats(topic).Rejected; got < 1 {
		t.Errorf("the relay rejected %d requests, want the one naming an address", got)
	}
	if got := h.bidsFor(named); got != 0 {
		t.Errorf("%d bids for the request that named an address, want none", got)
	}
	if got := dialed.Load(); got != 0 {
		t.Fatalf("the address the request named was dialed %d times", got)
	}
	if got := h.bidsFor(plain); got != 1 {
		t.Errorf("%d bids for the plain request, want 1", got)
	}
}

// One identity publishing requests for bids as fast as it can is rejected
// past its rate by every peer it sends them to, and graylisted there; the
// provider answers only the few its rate allows; an honest job still
// forms.
func TestAFloodOfRequestsIsGraylistedAndAJobStillForms(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	prov := tcpNode(t, node.Config{GPUs: "mock:dgxh100", Price: "fixed:2.10", Executors: []string{"process"}, ScoreView: true})
	sub := tcpNode(t, node.Config{GPUs: "none", Bootstrap: []string{prov.Info().Addrs[0]}, ScoreView: true})
	h := newRFBPeer(t, ctx)
	for _, nd := range []*node.Node{prov, sub} {
		if err := h.h.Connect(ctx, peer.AddrInfo{ID: nd.Host().ID(), Addrs: nd.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	topic := sub.Gossip().Topic(gossip.RFBTopic)
	testwait.Until(t, ctx, "every peer on the request topic", func() bool {
		return len(h.topic.ListPeers()) == 2 && len(prov.Gossip().PubSub().ListPeers(topic)) == 2 &&
			len(sub.Gossip().PubSub().ListPeers(topic)) == 2
	})

	const flood = 3000
	start := time.Now()
	for range flood {
		_, data := h.request(t)
		if err := h.topic.Publish(ctx, data); err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range []*node.Node{prov, sub} {
		testwait.Until(t, ctx, "the flooder graylisted", func() (bool, string) {
			s, ok := nd.Gossip().Score(h.h.ID())
			return ok && s < gossip.GraylistThreshold, fmt.Sprintf("score %.0f", s)
		})
	}
	j := submit(t, ctx, sub, jobSpec(t, 8, ""))
	if !holds(j) {
		t.Fatalf("the honest job: %s (%s), want formed", j.State, j.Reason)
	}
	elapsed := time.Since(start)
	// The default limits: 8 at once, then 5 a second.
	if got, most := h.allBids(), 8+int(5*elapsed.Seconds())+1; got > most {
		t.Errorf("the provider sent the flooder %d bids in %v, want at most %d", got, elapsed.Round(time.Millisecond), most)
	}
	if got := prov.Gossip().Stats(topic).Rejected; got == 0 {
		t.Errorf("the provider rejected none of the flood")
	}
	if _, err := sub.CancelJob(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
}

func port(t *testing.T, l net.Listener) string {
	t.Helper()
	_, p, err := net.SplitHostPort(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return p
}
