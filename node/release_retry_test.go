package node_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A release the submitter cannot send (its provider cut off for a moment)
// is sent again once its job has ended: the provider hears it when it is
// back, rather than holding its GPUs until the reservation lapses. The
// release of a job that has not ended is not sent again: the job's next
// attempt keeps its ID and may hold the same provider's GPUs, which a
// late release would free (a provider then leases more GPUs than it has).
func TestAReleaseThatCannotBeSentIsSentAgainOnlyOnceItsJobEnded(t *testing.T) {
	for _, ended := range []bool{true, false} {
		t.Run(fmt.Sprintf("ended=%v", ended), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			r := releaseCutOff(t, ctx, 0x60, ended, nil)
			r.sub.SendRelease(ctx, r.rel)
			r.waitFailedThenRelink(t, ctx)
			sub, prov, id := r.sub, r.prov, r.rel.Job
			if !ended {
				testwait.For(t, 30*time.Second, "the submitter to decide on the release", func() (bool, string) {
					again, notAgain := sub.ReleasesSentAgain()
					return again+notAgain > 0, fmt.Sprintf("%d sent again, %d not", again, notAgain)
				})
				if again, notAgain := sub.ReleasesSentAgain(); again != 0 || notAgain != 1 {
					t.Fatalf("%d releases sent again, %d not, of a job not ended: want 0 and 1", again, notAgain)
				}
				if j, _ := sub.Job(r.job); j.State.Ended() {
					t.Fatalf("the job %s before the release was decided on: the test shows nothing", j.State)
				}
				for _, msg := range prov.Inbox() {
					if rel, ok := msg.(*gossip.Release); ok && rel.Job == id {
						t.Fatal("the provider got the release of a job that had not ended")
					}
				}
				return
			}
			if _, err := prov.Received(ctx, func(msg gossip.Message) bool {
				rel, ok := msg.(*gossip.Release)
				return ok && rel.Job == id
			}); err != nil {
				t.Fatalf("the provider never got the release once it was back: %v", err)
			}
			if again, _ := sub.ReleasesSentAgain(); again == 0 {
				t.Fatal("the provider got the release, but the submitter counts none sent again")
			}
		})
	}
}

// A peer that stops while an ended job's release waits to be sent again
// stops at once: the wait (here an hour) ends with the peer, not with the
// run's context, which outlives the run to let its releases go.
func TestAPeerStopsWhileAReleaseWaitsToBeSentAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := releaseCutOff(t, ctx, 0x61, true, func(c *node.Config) { c.ReleaseBackoff = time.Hour })
	// The context a run's release gets: it never ends by itself.
	r.sub.SendRelease(context.WithoutCancel(ctx), r.rel)
	r.waitFailed(t, ctx)
	closed := make(chan error, 1)
	go func() { closed <- r.sub.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("close: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the peer did not stop while a release waited an hour to be sent again")
	}
}

// releaseSetup is a submitter with a job (16 GPUs, more than its mesh
// has: it waits for GPUs, and ends only when cancelled), a provider
// speaking the real protocol that records what it is sent, cut off from
// the submitter, and the release of the job to that provider.
type releaseSetup struct {
	m     *meshtest.Mesh
	sub   *node.Node
	prov  *meshtest.Adversary
	job   string
	rel   *gossip.Release
	fails *sendFails
}

// releaseCutOff starts it, the job cancelled when ended; config, when
// set, changes the submitter's.
func releaseCutOff(t *testing.T, ctx context.Context, seed uint64, ended bool, config func(*node.Config)) *releaseSetup {
	t.Helper()
	fails := &sendFails{ch: make(chan struct{}, 1)}
	o := h100s(seed, 1)
	o.Config = func(i int, c *node.Config) {
		if i == 1 {
			c.Logger = slog.New(fails)
			if config != nil {
				config(c)
			}
		}
	}
	m := meshtest.Start(t, 2, o)
	sub := m.Nodes[1]
	prov := m.AddAdversary(t, 0)
	job, err := sub.SubmitJob(ctx, jobSpec(t, 16, ""))
	if err != nil {
		t.Fatal(err)
	}
	if ended {
		if _, err := sub.CancelJob(ctx, job.ID); err != nil {
			t.Fatal(err)
		}
	}
	var id gossip.JobID
	if err := id.UnmarshalText([]byte(job.ID)); err != nil {
		t.Fatal(err)
	}
	a, b := sub.Host().ID(), prov.Host.ID()
	fails.to.Store(b.String())
	if err := m.Net.UnlinkPeers(a, b); err != nil {
		t.Fatal(err)
	}
	if err := m.Net.DisconnectPeers(a, b); err != nil {
		t.Fatal(err)
	}
	return &releaseSetup{m: m, sub: sub, prov: prov, job: job.ID, fails: fails,
		rel: &gossip.Release{Job: id, From: a, Provider: b, Reason: "the job ended"}}
}

// waitFailed waits until the submitter's send to the cut-off provider failed.
func (r *releaseSetup) waitFailed(t *testing.T, ctx context.Context) {
	t.Helper()
	select {
	case <-r.fails.ch:
	case <-ctx.Done():
		t.Fatal("the release's send to a provider cut off did not fail")
	}
}

// waitFailedThenRelink waits for the failed send, then links the two again.
func (r *releaseSetup) waitFailedThenRelink(t *testing.T, ctx context.Context) {
	t.Helper()
	r.waitFailed(t, ctx)
	if _, err := r.m.Net.LinkPeers(r.sub.Host().ID(), r.prov.Host.ID()); err != nil {
		t.Fatal(err)
	}
}

// sendFails tells when a peer's negotiation message to peer to could not
// be sent.
type sendFails struct {
	ch chan struct{}
	to atomic.Value // string: the peer ID the failed send was to
}

func (f *sendFails) Enabled(context.Context, slog.Level) bool { return true }

func (f *sendFails) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "negotiation message not sent" && r.Message != "negotiation send" {
		return nil
	}
	to, _ := f.to.Load().(string)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "to" || a.Value.String() != to {
			return true
		}
		select {
		case f.ch <- struct{}{}:
		default:
		}
		return false
	})
	return nil
}

func (f *sendFails) WithAttrs([]slog.Attr) slog.Handler { return f }
func (f *sendFails) WithGroup(string) slog.Handler      { return f }
