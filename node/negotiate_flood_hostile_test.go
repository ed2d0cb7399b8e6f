package node_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// One stranger floods a provider's negotiation protocol with validly
// signed messages nobody needs (releases and bids for jobs no one knows,
// signed before the flood): 100 streams held open, then thousands sent
// on many streams at once, while an honest submitter forms an 8-GPU job
// on that provider. The provider reads and queues at most 32 of one
// peer's messages at a time and takes other peers' messages one peer at
// a time, so the flood fills only its own share (the rest dropped unread
// and counted against it: exactly 68 of the held streams) and the honest
// award and confirm are taken in their turn: the job forms.
func TestAFloodOfNegotiationMessagesFromOneIdentityLeavesAnHonestJobToForm(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(0xf9, 1))
	prov, sub := m.Nodes[0], m.Nodes[1]
	adv := m.AddAdversary(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	provID, advID := prov.Host().ID(), adv.ID.PeerID

	// Signed ahead, so the flood goes as fast as streams open.
	const flood = 6000
	msgs := make([][]byte, flood)
	for i := range msgs {
		var msg gossip.Message = &gossip.Release{Job: meshtest.NewJobID(), From: advID, Provider: provID, Reason: "flood"}
		if i%2 == 1 {
			msg = &gossip.Bid{Job: meshtest.NewJobID(), Provider: advID, Class: h100, Model: "H100", VRAMGB: 80, GPUs: 8,
				Price: 2_100_000, LeaseSeconds: 3600, Expires: time.Now().Add(time.Minute).UnixMilli()}
		}
		data, err := node.SealNegotiation(adv.ID, msg)
		if err != nil {
			t.Fatal(err)
		}
		msgs[i] = data
	}

	// First, streams held open, a message written on each and never
	// ended: the provider reads at most FairQueuePer of one peer's at once
	// (with those waiting) and drops the rest unread.
	const held = 100
	streams := make([]network.Stream, 0, held)
	defer func() {
		for _, s := range streams {
			_ = s.Reset()
		}
	}()
	for i := range held {
		s, err := adv.Host.NewStream(ctx, provID, node.NegotiateProtocol)
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
		_, _ = s.Write(msgs[i]) // fails once the provider has reset it
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	testwait.Until(t, wctx, "the provider to drop the held streams past the flooder's bound", func() (bool, string) {
		d := prov.NegotiationDropped(advID)
		return d >= held-gossip.FairQueuePer, fmt.Sprintf("%d dropped", d)
	})
	heldDropped := prov.NegotiationDropped(advID)
	for _, s := range streams { // the flooder's slots free again
		_ = s.Reset()
	}
	streams = nil

	// Then the rest, sent as fast as streams open. The flood goes on until the honest job has formed and the provider
	// has dropped some of it, or all of it has been sent.
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	var negotiated atomic.Bool // the honest job has left negotiation
	var next, sent atomic.Int64
	quarter := make(chan struct{}) // closed when an eighth of the flood has started
	var wg sync.WaitGroup
	for range 128 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for fctx.Err() == nil {
				if negotiated.Load() && prov.NegotiationDropped(advID) > 0 {
					return
				}
				i := held + next.Add(1) - 1
				if i >= flood {
					return
				}
				if i == held+flood/8 {
					close(quarter)
				}
				if adv.SendRaw(fctx, provID, msgs[i]) == nil {
					sent.Add(1)
				}
			}
		}()
	}
	// The honest job while the flood is under way.
	select {
	case <-quarter:
	case <-ctx.Done():
		t.Fatal("the flood did not start")
	}
	job := submit(t, ctx, sub, jobSpec(t, 8, ""))
	negotiated.Store(true)
	wg.Wait()
	if !holds(job) {
		t.Fatalf("the honest job: %s (%s), want formed", job.State, job.Reason)
	}
	dropped := prov.NegotiationDropped(advID)
	t.Logf("flooder: %d streams held open, %d of them dropped unread; then %d messages sent of %d started; %d dropped by the provider in all", held, heldDropped, sent.Load(), min(next.Load(), flood-held), dropped)
	if dropped == 0 {
		t.Errorf("the provider counted none of the flooder's messages as dropped")
	}
	if got := prov.NegotiationDropped(sub.Host().ID()); got != 0 {
		t.Errorf("the provider dropped %d of the honest submitter's messages, want none", got)
	}
	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	waitFree(t, ctx, []*node.Node{prov})
}
