package node_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// GPUs taken are told on the price topic a while later
// (Config.TakenTickDelay: 2 s, here 8 s so that a loaded machine's
// reservation and release fit in it), and GPUs taken and freed again
// within that time cost no tick (a tick floods every peer, each checking
// its signature). A submitter speaking the real protocol reserves all 8
// of a provider's GPUs and releases them at once, then reserves them
// again and holds them: the provider's ticks tell the 8 GPUs taken only
// after the second reservation, the delay or more after it was asked for
// (before, at once, or within the second a provider's ticks are spaced
// by).
func TestGPUsTakenAndFreedAgainAtOnceCostNoTick(t *testing.T) {
	const delay = 8 * time.Second
	ticks := &tickLog{}
	o := h100s(0x5e, 1)
	o.Config = func(i int, c *node.Config) {
		if i == 0 {
			c.Logger = slog.New(ticks)
			c.TakenTickDelay = delay
			// No re-sends of unchanged asks in the test's time: they
			// carry the GPUs free whenever they go.
			c.PriceResend = gossip.Resend{Floor: time.Hour, Cap: time.Hour}
		}
	}
	m := meshtest.Start(t, 2, o)
	prov := m.Nodes[0]
	adv := m.AddAdversary(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	provID := prov.Host().ID()
	testwait.Until(t, ctx, "the provider's tick of its 8 free GPUs", func() (bool, string) {
		return ticks.count(0, 8) > 0, ""
	})

	start := time.Now()
	job := meshtest.NewJobID()
	if _, err := adv.Reserve(ctx, provID, job, h100, 8, 2_500_000, "USDC:6"); err != nil {
		t.Fatal(err)
	}
	if err := adv.Send(ctx, provID, &gossip.Release{Job: job, From: adv.ID.PeerID, Provider: provID, Reason: "changed its mind"}); err != nil {
		t.Fatal(err)
	}
	waitFree(t, ctx, []*node.Node{prov})

	held, asked := ticks.len(), time.Now()
	if _, err := adv.Reserve(ctx, provID, meshtest.NewJobID(), h100, 8, 2_500_000, "USDC:6"); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, ctx, "a tick of the 8 GPUs taken by the second reservation", func() (bool, string) {
		return ticks.count(held, 0) > 0, ""
	})
	if n := ticks.countBefore(held, 0); n > 0 {
		t.Errorf("%d ticks told the GPUs the first reservation held for a moment (%v from its ask to the GPUs free) taken: %v", n, asked.Sub(start), ticks.all())
	}
	if at := ticks.firstAt(held, 0); at.Sub(asked) < delay {
		t.Errorf("the GPUs taken were told %v after the reservation was asked for, want %v or more", at.Sub(asked), delay)
	}
}

// tickLog records the availability of each price tick a peer sends.
type tickLog struct {
	mu    sync.Mutex
	avail []int64
	at    []time.Time // when each was logged
}

func (l *tickLog) Enabled(context.Context, slog.Level) bool { return true }

func (l *tickLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "price tick sent" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "available" {
			l.mu.Lock()
			l.avail = append(l.avail, int64(a.Value.Uint64()))
			l.at = append(l.at, time.Now())
			l.mu.Unlock()
		}
		return true
	})
	return nil
}

func (l *tickLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *tickLog) WithGroup(string) slog.Handler      { return l }

func (l *tickLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.avail)
}

func (l *tickLog) all() []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int64(nil), l.avail...)
}

// count is the ticks from the from-th on that told avail GPUs.
func (l *tickLog) count(from int, avail int64) int {
	n := 0
	for _, a := range l.all()[from:] {
		if a == avail {
			n++
		}
	}
	return n
}

// countBefore is the ticks before the to-th that told avail GPUs.
func (l *tickLog) countBefore(to int, avail int64) int {
	n := 0
	for _, a := range l.all()[:to] {
		if a == avail {
			n++
		}
	}
	return n
}

// firstAt is when the first tick from the from-th on that told avail GPUs
// was sent.
func (l *tickLog) firstAt(from int, avail int64) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := from; i < len(l.avail); i++ {
		if l.avail[i] == avail {
			return l.at[i]
		}
	}
	return time.Time{}
}
