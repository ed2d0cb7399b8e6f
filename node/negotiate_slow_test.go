package node_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node/meshtest"
	"github.com/libp2p/go-libp2p/core/peer"
)

// slowProvider makes provider i of m one that bids gpus at price on every
// request and answers every award with an acceptance, after a delay: a
// busy peer, not a gone one. The script plays one message at a time, as a
// busy loop would.
func slowProvider(t *testing.T, ctx context.Context, m *meshtest.Mesh, i int, price uint64, delay func() time.Duration) *meshtest.Negotiator {
	t.Helper()
	var g *meshtest.Negotiator
	g = m.ServeNegotiation(t, i, func(msg gossip.Message) []gossip.Message {
		switch x := msg.(type) {
		case *gossip.RequestForBids:
			return []gossip.Message{meshtest.BidOn(x, g.ID(), h100, 8, price)}
		case *gossip.Award:
			t := time.NewTimer(delay())
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
	return g
}

// word waits for the submitter's last word to g on job: a confirm
// (formed) or a release (given up or replaced).
func word(t *testing.T, ctx context.Context, g *meshtest.Negotiator, job string) gossip.Message {
	t.Helper()
	w, err := g.Await(ctx, func(msg gossip.Message) bool {
		switch msg.(type) {
		case *gossip.Confirm, *gossip.Release:
			return msg.JobID().String() == job
		}
		return false
	})
	if err != nil {
		t.Fatalf("provider %s heard neither a confirm nor a release: %v", shortID(g.ID()), err)
	}
	return w
}

func isConfirm(m gossip.Message) bool {
	_, ok := m.(*gossip.Confirm)
	return ok
}

// A provider that answers its award late (3 s: past the 2 s award
// timeout) and that no other bid can replace is waited for: the job forms
// with it, confirmed, with no release. Before, the submitter released it
// at 2 s and failed the job ("did not answer ... no replacement").
func TestALateAnswerWithNoReplacementStillForms(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(0x60, 1))
	sub := m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g := slowProvider(t, ctx, m, 0, 1_000_000, func() time.Duration { return 3 * time.Second })
	job, err := sub.SubmitJob(ctx, jobSpec(t, 8, ""))
	if err != nil {
		t.Fatal(err)
	}
	if w := word(t, ctx, g, job.ID); !isConfirm(w) {
		j, _ := sub.Job(job.ID)
		t.Fatalf("the late provider got %T %+v, want a confirm; the job: %s (%s)", w, w, j.State, j.Reason)
	}
	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
}

// A member silent at the award timeout stands by while its replacement is
// awarded: when it answers first (3 s after its award; the replacement
// answers 2.5 s after its own, at 4.5 s), it is the member and the
// replacement is released. Before, it was released at 2 s and the job
// waited for the replacement's answer. (Which of the two providers is
// awarded first depends on whether they were asked directly or bid on the
// topic from their real reservations: the first award taken answers late.)
func TestALateMemberThatAnswersBeforeItsReplacementIsKept(t *testing.T) {
	m := meshtest.Start(t, 3, h100s(0x61, 2))
	sub := m.Nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var mu sync.Mutex
	var order []peer.ID // the providers in the order they took an award
	var gs [2]*meshtest.Negotiator
	for i := range gs {
		gs[i] = slowProvider(t, ctx, m, i, 1_000_000, func() time.Duration {
			mu.Lock()
			defer mu.Unlock()
			order = append(order, gs[i].ID())
			if len(order) == 1 {
				return 3 * time.Second
			}
			return 2500 * time.Millisecond
		})
	}
	job, err := sub.SubmitJob(ctx, jobSpec(t, 8, ""))
	if err != nil {
		t.Fatal(err)
	}
	// Both have their word once the job has formed or failed.
	words := map[peer.ID]gossip.Message{}
	for _, g := range gs {
		words[g.ID()] = word(t, ctx, g, job.ID)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) != 2 {
		j, _ := sub.Job(job.ID)
		t.Fatalf("%d awards taken, want 2 (the first, then its replacement at the award timeout); the job: %s (%s)", len(order), j.State, j.Reason)
	}
	if w := words[order[0]]; !isConfirm(w) {
		j, _ := sub.Job(job.ID)
		t.Fatalf("the late member got %T %+v, want a confirm; the job: %s (%s)", w, w, j.State, j.Reason)
	}
	if w := words[order[1]]; isConfirm(w) {
		t.Fatalf("the replacement got %T %+v, want a release: the member it stood in for answered first", w, w)
	}
	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
}
