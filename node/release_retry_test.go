package node_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A release the submitter cannot send (its provider cut off for a moment)
// is sent again: the provider hears it once it is back, rather than
// holding its GPUs until the reservation lapses.
func TestAReleaseThatCannotBeSentIsSentAgain(t *testing.T) {
	fails := &sendFails{ch: make(chan struct{}, 1)}
	o := h100s(0x60, 1)
	o.Config = func(i int, c *node.Config) {
		if i == 1 {
			c.Logger = slog.New(fails)
		}
	}
	m := meshtest.Start(t, 2, o)
	sub := m.Nodes[1]
	prov := m.AddAdversary(t, 0) // a provider speaking the real protocol: it records what it is sent
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := sub.Host().ID(), prov.Host.ID()
	if err := m.Net.UnlinkPeers(a, b); err != nil {
		t.Fatal(err)
	}
	if err := m.Net.DisconnectPeers(a, b); err != nil {
		t.Fatal(err)
	}
	job := meshtest.NewJobID()
	sub.SendRelease(ctx, &gossip.Release{Job: job, From: a, Provider: b, Reason: "the job ended"})
	select {
	case <-fails.ch:
	case <-ctx.Done():
		t.Fatal("the release's send to a provider cut off did not fail")
	}
	if _, err := m.Net.LinkPeers(a, b); err != nil {
		t.Fatal(err)
	}
	if _, err := prov.Received(ctx, func(msg gossip.Message) bool {
		r, ok := msg.(*gossip.Release)
		return ok && r.Job == job
	}); err != nil {
		t.Fatalf("the provider never got the release once it was back: %v", err)
	}
}

// sendFails tells when a peer's negotiation message could not be sent.
type sendFails struct{ ch chan struct{} }

func (f *sendFails) Enabled(context.Context, slog.Level) bool { return true }

func (f *sendFails) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "negotiation message not sent" || r.Message == "negotiation send" {
		select {
		case f.ch <- struct{}{}:
		default:
		}
	}
	return nil
}

func (f *sendFails) WithAttrs([]slog.Attr) slog.Handler { return f }
func (f *sendFails) WithGroup(string) slog.Handler      { return f }
