package node_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobnet"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// In a private swarm, a provider with --no-host-network says so in its
// bids, and a submitter never puts it in a cluster with a provider that
// cannot make job networks (whose job would meet on the host network,
// where it refuses its member): the cheapest two providers are exactly
// that pair, yet the job forms on a pair that may meet, and runs.
func TestANoHostNetworkProviderIsNeverMixedIntoAHostNetworkCluster(t *testing.T) {
	t.Cleanup(node.SetJobNetProbe(func(region string) error {
		if region == "no-tun" {
			return errors.New("a provider that cannot make TUN devices (the test's)")
		}
		return jobnet.Probe()
	}))
	o := h100s(177, 3)
	o.Config = func(i int, c *node.Config) {
		switch i {
		case 0: // no job networks: its bids are HostNet; the cheapest
			c.Region, c.Price = "no-tun", "fixed:2.00"
		case 1: // refuses the host network: the next cheapest
			c.NoHostNetwork, c.Price = true, "fixed:2.05"
		case 2:
			c.Price = "fixed:2.40"
		}
	}
	m := meshtest.Start(t, 4, o)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sub := m.Nodes[3]
	hostNet, noHostNet := m.Nodes[0].Host().ID(), m.Nodes[1].Host().ID()
	j := runToEnd(t, ctx, sub, scriptSpec(t, 16, 8, `echo "member $NODE_RANK"`, ""))
	if j.State != node.JobDone || len(j.Members) != 2 {
		t.Fatalf("job %s (%s), %d members; want done on two. Its log:\n%s", j.State, j.Reason, len(j.Members), jobLog(t, sub, j.ID))
	}
	for _, mb := range j.Members {
		if mb.Provider == noHostNet && !mb.NoHostNet {
			t.Errorf("the --no-host-network provider's member %+v: its bid did not say NoHostNet", mb)
		}
		if mb.Provider == hostNet && !mb.HostNet {
			t.Errorf("the provider without job networks: member %+v not HostNet", mb)
		}
	}
	ids := []string{j.Members[0].Provider.String(), j.Members[1].Provider.String()}
	if (ids[0] == hostNet.String() || ids[1] == hostNet.String()) && (ids[0] == noHostNet.String() || ids[1] == noHostNet.String()) {
		t.Fatalf("members %v mix the host-network provider with the --no-host-network one", ids)
	}
	waitFree(t, ctx, m.Nodes[:3])
}

// A submitter of a version before Bid.NoHostNet decodes bids strictly and
// would drop a bid with the mark: the provider sends it the bid without
// it (the start-time refusal then stays its guard), and the mark only to
// a peer that serves this version's job protocol.
func TestANoHostNetworkBidGoesUnmarkedToAnOlderSubmitter(t *testing.T) {
	o := h100s(178, 1)
	o.Config = func(i int, c *node.Config) { c.NoHostNetwork = i == 0 }
	m := meshtest.Start(t, 1, o)
	prov := m.Nodes[0]
	adv := m.AddAdversary(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bidFor := func(job gossip.JobID) *gossip.Bid {
		t.Helper()
		if err := adv.Ask(ctx, prov.Host().ID(), adv.Request(job, h100, 16, 2_500_000, "USDC:6")); err != nil {
			t.Fatal(err)
		}
		msg, err := adv.Received(ctx, func(m gossip.Message) bool { b, ok := m.(*gossip.Bid); return ok && b.Job == job })
		if err != nil {
			t.Fatal(err)
		}
		return msg.(*gossip.Bid)
	}
	if b := bidFor(meshtest.NewJobID()); b.NoHostNet {
		t.Errorf("a peer that serves no %s got a bid marked noHostNet: an older version drops it", jobwire.Protocol11)
	}
	// The same peer, now of this version.
	adv.Host.SetStreamHandler(jobwire.Protocol11, func(s network.Stream) { _ = s.Reset() })
	testwait.Until(t, ctx, "the provider to learn the peer's protocols", func() (bool, string) {
		ps, _ := prov.Host().Peerstore().SupportsProtocols(adv.ID.PeerID, jobwire.Protocol11)
		return len(ps) == 1, fmt.Sprint(ps)
	})
	if b := bidFor(meshtest.NewJobID()); !b.NoHostNet {
		t.Errorf("a peer of this version got a bid without noHostNet")
	}
}
