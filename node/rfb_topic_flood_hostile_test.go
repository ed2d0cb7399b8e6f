package node_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// Fifty identities each publish their whole allowance of requests for
// bids on the topic at once (4 each, none over its own rate): every peer,
// forwarder or provider, accepts — and so forwards and answers — no more
// of them than its bound on all submitters together
// (gossip.TopicTotal) allows, and ignores the rest, so no flooder and no
// peer that relayed the flood loses score; an honest job still forms;
// and a stranger that asks once on the topic afterwards (a bare peer,
// quiet till then: the bound keeps room for such) still gets a bid.
func TestAFloodOfTopicRequestsFromManyIdentitiesIsBoundedAtEveryPeer(t *testing.T) {
	o := h100s(0xd7, 1)
	o.Config = func(_ int, c *node.Config) { c.ScoreView = true }
	m := meshtest.Start(t, 3, o)
	prov, sub := m.Nodes[0], m.Nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const flooders = 50
	per := gossip.TopicLimits().Burst
	advs := make([]*meshtest.Adversary, flooders+1)
	for i := range advs {
		advs[i] = m.AddAdversary(t, i)
	}
	stranger := advs[flooders]
	advs = advs[:flooders]
	topic := prov.Gossip().Topic(gossip.RFBTopic)
	before := make([]gossip.TopicStats, len(m.Nodes))
	for i, nd := range m.Nodes {
		before[i] = nd.Gossip().Stats(topic)
	}
	settled := func(i int) (accepted, ignored, rejected uint64) {
		s := m.Nodes[i].Gossip().Stats(topic)
		return s.Delivered - before[i].Delivered, s.Ignored - before[i].Ignored, s.Rejected - before[i].Rejected
	}

	start := time.Now()
	var floodEnds int64 // the last deadline of the flood's requests, unix ms
	for _, a := range advs {
		for range per {
			req := a.Request(meshtest.NewJobID(), h100, 8, 2_500_000, "USDC:6")
			floodEnds = max(floodEnds, req.Deadline)
			if err := a.Publish(ctx, req); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Each request reaches every peer from its author (connected to
	// each), and is accepted or ignored there.
	sent := uint64(flooders * per)
	total := gossip.TopicTotal()
	for i := range m.Nodes {
		testwait.Until(t, ctx, fmt.Sprintf("peer %d to settle the flood", i), func() (bool, string) {
			a, ig, r := settled(i)
			return a+ig+r >= sent, fmt.Sprintf("%d accepted, %d ignored, %d rejected of %d", a, ig, r, sent)
		})
		elapsed := time.Since(start)
		a, ig, r := settled(i)
		if most := uint64(total.Burst + int(total.Rate*elapsed.Seconds()) + 1); a > most {
			t.Errorf("peer %d accepted %d of the flood's %d requests in %v, want at most %d", i, a, sent, elapsed.Round(time.Millisecond), most)
		}
		if ig == 0 {
			t.Errorf("peer %d ignored none of the flood (%d accepted in %v)", i, a, elapsed.Round(time.Millisecond))
		}
		if r != 0 {
			t.Errorf("peer %d rejected %d requests of submitters within their own rate, want none (no blame for the total bound)", i, r)
		}
		t.Logf("peer %d: %d accepted, %d ignored of %d in %v", i, a, ig, sent, elapsed.Round(time.Millisecond))
	}

	j := submit(t, ctx, sub, jobSpec(t, 8, ""))
	if !holds(j) {
		t.Fatalf("the honest job: %s (%s), want formed", j.State, j.Reason)
	}
	if _, err := sub.CancelJob(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	waitFree(t, ctx, []*node.Node{prov})

	// A stranger asks once on the topic once the flood is over and gets a
	// bid before its request's deadline (10 s): on a failure the peers'
	// counts say where the request stopped. "Over" is when the flood's
	// requests have passed their deadlines: until then GossipSub offers
	// the copies a peer ignored again (an ignored message is not marked
	// seen), each takes a token of the peer's bound as the bound refills,
	// and a bare peer's one request can find every token taken at every
	// copy it gets (an honest node's submitter asks providers directly,
	// and again: TestAnHonestJobFormsWhenItsProviderFreesGPUsAfterTheTopicRequest).
	testwait.Until(t, ctx, "the flood's requests to pass their deadlines", func() (bool, string) {
		left := time.Until(time.UnixMilli(floodEnds))
		return left < 0, fmt.Sprintf("%v left", left.Round(time.Millisecond))
	})
	mid := make([]gossip.TopicStats, len(m.Nodes))
	for i, nd := range m.Nodes {
		mid[i] = nd.Gossip().Stats(topic)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if err := stranger.Publish(sctx, stranger.Request(meshtest.NewJobID(), h100, 1, 2_500_000, "USDC:6")); err != nil {
		t.Fatal(err)
	}
	if _, err := stranger.Received(sctx, func(msg gossip.Message) bool { _, ok := msg.(*gossip.Bid); return ok }); err != nil {
		for i, nd := range m.Nodes {
			s := nd.Gossip().Stats(topic)
			sc, ok := nd.Gossip().Score(stranger.ID.PeerID)
			t.Logf("peer %d since the stranger asked: %d received, %d delivered, %d ignored, %d rejected, %d duplicates; stranger's score %.1f (%v); refusals %+v",
				i, s.Received-mid[i].Received, s.Delivered-mid[i].Delivered, s.Ignored-mid[i].Ignored, s.Rejected-mid[i].Rejected, s.Duplicates-mid[i].Duplicates, sc, ok, nd.Gossip().Refusals())
		}
		t.Fatalf("no bid for a stranger's one request on the topic: %v (%d bids to flooders)", err, bidsOfAll(advs))
	}
}

// bidsOfAll is the bids every adversary of advs received.
func bidsOfAll(advs []*meshtest.Adversary) int {
	n := 0
	for _, a := range advs {
		n += bidsOf(a)
	}
	return n
}

// A hostile submitter holds all of the one provider's GPUs while an
// honest 8-GPU job is asked for: the provider, asked directly, then again
// and on the topic after the fallback wait, has nothing free and does not
// bid. The hostile submitter then lets its GPUs go. A request on the
// topic is published once (and under a flood every peer may ignore it:
// gossip.TopicTotal), so nothing would ask the provider again; the honest
// submitter asks the providers it named again, directly, while no
// cluster can form (gossip's Reasks), and the job forms on the
// provider's 8 GPUs.
func TestAnHonestJobFormsWhenItsProviderFreesGPUsAfterTheTopicRequest(t *testing.T) {
	steps := &stepLog{}
	o := h100s(0xd8, 1)
	o.Config = func(i int, c *node.Config) {
		if i == 0 || i == 2 { // the provider's and the submitter's steps, in one order
			c.Logger = slog.New(steps)
		}
	}
	m := meshtest.Start(t, 3, o)
	prov, sub := m.Nodes[0], m.Nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	hostile := m.AddAdversary(t, 0)
	held := meshtest.NewJobID()
	if _, err := hostile.Reserve(ctx, prov.Host().ID(), held, h100, 8, 2_500_000, "USDC:6"); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, ctx, "the provider to hold its 8 GPUs", func() (bool, string) {
		free := prov.FreeGPUs()[h100]
		return free == 0, fmt.Sprintf("%d free", free)
	})

	job, err := sub.SubmitJob(ctx, jobSpec(t, 8, ""))
	if err != nil {
		t.Fatal(err)
	}
	// The request goes on the topic (at once when the directory already
	// lists the provider's GPUs as taken, else after the fallback wait),
	// and the provider answers after that, with no bid: only then are its
	// GPUs let go. A request on the topic is published once: nothing but
	// the submitter's rounds of asking again (and the board naming the
	// provider free since) asks it again.
	testwait.Until(t, ctx, "the request on the topic, then an answer of the provider's", func() (bool, string) {
		steps.mu.Lock()
		defer steps.mu.Unlock()
		broadcast, after := false, 0
		for _, s := range steps.steps {
			switch {
			case s.job != job.ID:
			case s.step == "broadcast":
				broadcast = true
			case s.step == "answered" && broadcast:
				after++
			}
		}
		cur, _ := sub.Job(job.ID)
		if cur.State != node.JobNegotiating {
			t.Fatalf("the honest job: %s (%s), want negotiating (broadcast %v, answers after it %d)", cur.State, cur.Reason, broadcast, after)
		}
		return after > 0, fmt.Sprintf("broadcast %v, answers after it %d", broadcast, after)
	})
	if err := hostile.Send(ctx, prov.Host().ID(), &gossip.Release{Job: held, From: hostile.ID.PeerID, Provider: prov.Host().ID(), Reason: "done"}); err != nil {
		t.Fatal(err)
	}
	j := waitJob(t, ctx, sub, job.ID, "to leave negotiation", func(j node.Job) bool { return j.State != node.JobNegotiating })
	if !holds(j) {
		t.Fatalf("the honest job: %s (%s), want formed once the provider's GPUs were free", j.State, j.Reason)
	}
	if got, _ := gpusOf(j); got != 8 {
		t.Errorf("the honest job holds %d GPUs, want 8", got)
	}
	if _, err := sub.CancelJob(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	waitFree(t, ctx, []*node.Node{prov})
}
