package gossip

import (
	"net"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Peer scoring. GossipSub keeps a score of every peer; a peer that delivers
// messages our validators Reject loses score quadratically, and below the
// thresholds it is first no longer gossiped to, then not published to, then
// ignored altogether (graylisted). Ignored messages cost nothing, so only
// what no honest peer forwards is Rejected (see Verdict).
//
// One invalid message costs 100, two 400, n of them 100·n²: a peer that
// delivers three stops getting gossip from us, four are no longer published
// to, six get it graylisted. Good behaviour earns at most +10 (time in the
// mesh, first deliveries), so it cannot buy a forger much slack. The
// invalid-message counter decays over about an hour.

// Thresholds of the peer score.
const (
	GossipThreshold    = -500  // below: no gossip (IHAVE/IWANT) to or from the peer
	PublishThreshold   = -1000 // below: not published to
	GraylistThreshold  = -2500 // below: everything from the peer is ignored
	invalidMessageCost = -100  // weight of the square of invalid messages
)

func scoreThresholds() *pubsub.PeerScoreThresholds {
	return &pubsub.PeerScoreThresholds{
		GossipThreshold:             GossipThreshold,
		PublishThreshold:            PublishThreshold,
		GraylistThreshold:           GraylistThreshold,
		AcceptPXThreshold:           100, // above what good behaviour earns: PX only from direct peers
		OpportunisticGraftThreshold: 3,
	}
}

// scoreParams scores the topics a gpumesh peer knows at start (prices and
// requests for bids); a topic not named here scores nothing, not even the
// messages its validator rejects.
func scoreParams(topics ...string) *pubsub.PeerScoreParams {
	p := &pubsub.PeerScoreParams{
		Topics:            map[string]*pubsub.TopicScoreParams{},
		TopicScoreCap:     10,
		AppSpecificScore:  func(peer.ID) float64 { return 0 },
		AppSpecificWeight: 1,
		// Many peers on one IP is a cheap Sybil; a few (a NAT, a lab) is not.
		// Loopback peers are this machine's own.
		IPColocationFactorWeight:    -10,
		IPColocationFactorThreshold: 8,
		IPColocationFactorWhitelist: loopbackNets(),
		BehaviourPenaltyWeight:      -10,
		BehaviourPenaltyThreshold:   6,
		BehaviourPenaltyDecay:       pubsub.ScoreParameterDecay(10 * time.Minute),
		DecayInterval:               pubsub.DefaultDecayInterval,
		DecayToZero:                 pubsub.DefaultDecayToZero,
		RetainScore:                 10 * time.Minute,
	}
	for _, t := range topics {
		p.Topics[t] = topicScore()
	}
	return p
}

// topicScore scores a low-rate topic: no penalty for a quiet mesh peer (P3
// off: ticks come every few seconds at most, requests for bids when
// someone submits a job), a small reward for time in
// the mesh and for first deliveries, and a heavy one for invalid messages.
func topicScore() *pubsub.TopicScoreParams {
	return &pubsub.TopicScoreParams{
		TopicWeight:                    1,
		TimeInMeshWeight:               0.01,
		TimeInMeshQuantum:              time.Second,
		TimeInMeshCap:                  300, // +3 after 5 minutes
		FirstMessageDeliveriesWeight:   0.5,
		FirstMessageDeliveriesDecay:    pubsub.ScoreParameterDecay(10 * time.Minute),
		FirstMessageDeliveriesCap:      20, // +10
		InvalidMessageDeliveriesWeight: invalidMessageCost,
		InvalidMessageDeliveriesDecay:  pubsub.ScoreParameterDecay(time.Hour),
	}
}

func loopbackNets() []*net.IPNet {
	var out []*net.IPNet
	for _, s := range []string{"127.0.0.0/8", "::1/128"} {
		_, n, _ := net.ParseCIDR(s)
		out = append(out, n)
	}
	return out
}
