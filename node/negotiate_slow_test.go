package node_test

import (
	"context"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A provider that answers its award late (3 s: past the 2 s award
// timeout, a busy peer rather than a gone one) and that no other bid can
// replace is waited for: the job forms with it, confirmed, and it gets no
// release. Before, the submitter released it at 2 s and failed the job
// ("did not answer ... no replacement").
func TestALateAnswerWithNoReplacementStillForms(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(0x60, 1))
	sub := m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const late = 3 * time.Second
	var g *meshtest.Negotiator
	g = m.ServeNegotiation(t, 0, func(msg gossip.Message) []gossip.Message {
		switch x := msg.(type) {
		case *gossip.RequestForBids:
			return []gossip.Message{meshtest.BidOn(x, g.ID(), h100, 8, 1_000_000)}
		case *gossip.Award:
			// A slow peer: its answer leaves late (the script plays one
			// message at a time, as a busy loop would).
			t := time.NewTimer(late)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				return nil
			}
			return []gossip.Message{&gossip.Acceptance{Job: x.Job, Provider: g.ID(), GPUs: x.GPUs, HoldUntil: time.Now().Add(10 * time.Second).UnixMilli()}}
		}
		return nil
	})
	job, err := sub.SubmitJob(ctx, jobSpec(t, 8, ""))
	if err != nil {
		t.Fatal(err)
	}
	// The submitter's word on it: a confirm (formed) or a release (given up).
	word, err := g.Await(ctx, func(msg gossip.Message) bool {
		switch msg.(type) {
		case *gossip.Confirm, *gossip.Release:
			return msg.JobID().String() == job.ID
		}
		return false
	})
	if j, _ := sub.Job(job.ID); err != nil {
		t.Fatalf("the late provider heard nothing after its answer: %v; the job: %s (%s)", err, j.State, j.Reason)
	} else if _, ok := word.(*gossip.Confirm); !ok {
		t.Fatalf("the late provider got %+v, want a confirm; the job: %s (%s)", word, j.State, j.Reason)
	}
	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
}
