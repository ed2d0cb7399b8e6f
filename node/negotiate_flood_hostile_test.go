package node_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// One stranger floods a provider's negotiation protocol with validly
// signed messages nobody needs (releases and bids for jobs no one knows,
// signed before the flood, sent on many streams at once) while an honest
// submitter forms an 8-GPU job on that provider: the provider takes
// other peers' messages one peer at a time from a bounded queue of each's
// own, so the flood fills only its own (its overflow dropped and counted
// against it) and the honest award and confirm are taken in their turn:
// the job forms.
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

	// The flood goes on until the honest job has formed and the provider
	// has dropped some of it, or all of it has been sent.
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	var negotiated atomic.Bool // the honest job has left negotiation
	var next, sent atomic.Int64
	quarter := make(chan struct{}) // closed when a quarter of the flood has started
	var wg sync.WaitGroup
	for range 128 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for fctx.Err() == nil {
				if negotiated.Load() && prov.NegotiationDropped(advID) > 0 {
					return
				}
				i := next.Add(1) - 1
				if i >= flood {
					return
				}
				if i == flood/4 {
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
	t.Logf("flooder: %d messages sent of %d started, %d dropped by the provider", sent.Load(), min(next.Load(), flood), dropped)
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
