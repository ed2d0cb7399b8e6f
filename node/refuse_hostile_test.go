package node_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
	"github.com/libp2p/go-libp2p/core/peer"
)

// refuser makes provider i of m a hostile one: it bids on every request
// sent to it (8 GPUs at 1.00, below every honest ask, so it is chosen
// first) and refuses every award, as a provider that lost a race says.
func refuser(t *testing.T, m *meshtest.Mesh, i int) *meshtest.Negotiator {
	t.Helper()
	var g *meshtest.Negotiator
	g = m.ServeNegotiation(t, i, func(msg gossip.Message) []gossip.Message {
		switch x := msg.(type) {
		case *gossip.RequestForBids:
			return []gossip.Message{meshtest.BidOn(x, g.ID(), h100, 8, 1_000_000)}
		case *gossip.Award:
			return []gossip.Message{&gossip.Refusal{Job: x.Job, Provider: g.ID(), Reason: "0 GPUs of H100-80GB free, award of 8"}}
		}
		return nil
	})
	return g
}

// lowestID is the index of the provider of the lowest peer ID: of
// providers at one ask, the one a submitter asks first.
func lowestID(ns []*node.Node) int {
	low := 0
	for i, n := range ns {
		if n.Host().ID() < ns[low].Host().ID() {
			low = i
		}
	}
	return low
}

// taken counts the messages of kind T for job that a negotiator took.
func taken[T gossip.Message](g *meshtest.Negotiator, job string) int {
	c := 0
	for _, m := range g.Taken() {
		if _, ok := m.(T); ok && m.JobID().String() == job {
			c++
		}
	}
	return c
}

// A provider that bids below everyone and refuses every award costs an
// honest submitter one award, not its job: the job forms on honest
// providers in the same negotiation (the refusal replaced from the
// spares), the refusal is kept as evidence against the provider, and the
// next job does not ask it at all while honest providers are enough.
func TestAProviderThatRefusesEveryAwardIsReplacedAndAskedLast(t *testing.T) {
	m := meshtest.Start(t, 5, h100s(0x5e, 4))
	sub, providers := m.Nodes[4], m.Nodes[:4]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := lowestID(providers) // asked first while nobody knows it
	bad := refuser(t, m, h)
	honest := slices.Delete(slices.Clone(providers), h, h+1)

	// Its bid (the cheapest) is awarded first whenever it comes before the
	// submitter closes, 20 ms after the honest bids could form a cluster:
	// on a loaded machine it may not, and that job is no test of it.
	var first node.Job
	for try := 0; ; try++ {
		if try == 5 {
			t.Fatal("the refusing provider's bid came in time for none of 5 jobs")
		}
		j := submit(t, ctx, sub, jobSpec(t, 8, ""))
		if !holds(j) || slices.ContainsFunc(j.Members, func(mb gossip.Member) bool { return mb.Provider == bad.ID() }) {
			t.Fatalf("job %d: %s (%s) on %v, want formed on honest providers", try, j.State, j.Reason, j.Members)
		}
		if _, err := sub.CancelJob(ctx, j.ID); err != nil {
			t.Fatal(err)
		}
		waitFree(t, ctx, honest)
		if taken[*gossip.Award](bad, j.ID) > 0 {
			first = j
			break
		}
		t.Logf("job %d: the refusing provider's bid came too late to be awarded", try)
	}
	if a := taken[*gossip.Award](bad, first.ID); a != 1 || first.Races != 0 {
		t.Fatalf("the refusing provider took %d awards of the job, %d negotiations lost; want 1 award, replaced in the same negotiation", a, first.Races)
	}
	s := sub.ProviderScore(bad.ID())
	if s.Refused != 1 || s.Rank() >= sub.Ranking().Unknown {
		t.Fatalf("the refusing provider's score: %s; want its refusal counted, below an unknown provider", s.Formula)
	}
	// The submitter's price board hears of the GPUs freed (it names the
	// providers a request goes to first): every provider's 8 again.
	testwait.Until(t, ctx, "the submitter's board to show every provider's GPUs free", func() (bool, string) {
		q := sub.Prices(h100).Classes
		if len(q) != 1 || q[0].GPUs != 8*uint64(len(providers)) {
			return false, fmt.Sprintf("%+v", q)
		}
		return true, ""
	})

	second := submit(t, ctx, sub, jobSpec(t, 8, ""))
	if !holds(second) || slices.ContainsFunc(second.Members, func(mb gossip.Member) bool { return mb.Provider == bad.ID() }) {
		t.Fatalf("the second job: %s (%s), want formed on honest providers", second.State, second.Reason)
	}
	if r := taken[*gossip.RequestForBids](bad, second.ID); r != 0 {
		t.Fatalf("the refusing provider was asked %d times for the second job, want not at all: three honest providers were enough", r)
	}
	for _, p := range honest {
		if s := sub.ProviderScore(p.Host().ID()); s.Refused+s.Lost+s.ProviderFailed != 0 {
			t.Errorf("honest provider %s: %s; want nothing against it (its job was cancelled, not lost)", shortID(p.Host().ID()), s.Formula)
		}
	}
	t.Logf("refusing provider: %s", s.Formula)
	if _, err := sub.CancelJob(ctx, second.ID); err != nil {
		t.Fatal(err)
	}
	waitFree(t, ctx, honest)
}

// When the honest providers are too few without the refusing one, the job
// negotiates again after each refusal (a race lost, as far as the
// submitter can tell), at most RaceRetries times, and then fails with a
// reason that names the refusals; the honest provider's GPUs are free.
func TestAJobThatNeedsARefusingProviderFailsAfterItsRetries(t *testing.T) {
	m := meshtest.Start(t, 3, h100s(0x5f, 2))
	sub := m.Nodes[2]
	bad := refuser(t, m, 0)
	honest := m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	job := submit(t, ctx, sub, jobSpec(t, 16, ""))
	if job.State != node.JobFailed {
		t.Fatalf("the job: %s (%s), want failed", job.State, job.Reason)
	}
	tries := taken[*gossip.Award](bad, job.ID)
	if tries < 1 || tries > node.RaceRetries+1 || job.Races > node.RaceRetries {
		t.Fatalf("the refusing provider took %d awards, %d negotiations lost; want 1..%d", tries, job.Races, node.RaceRetries+1)
	}
	if !strings.Contains(job.Reason, "provider "+bad.ID().String()+" refused") {
		t.Fatalf("reason %q: want the refusal named", job.Reason)
	}
	if s := sub.ProviderScore(bad.ID()); s.Refused != tries {
		t.Errorf("the refusing provider's score: %s; want each of its %d refusals counted", s.Formula, tries)
	}
	t.Logf("after %d awards refused: %s", tries, job.Reason)
	waitFree(t, ctx, []*node.Node{honest})
}

func shortID(p peer.ID) string {
	s := p.String()
	return s[len(s)-6:]
}

// hostileProvider makes provider i of m a hostile one that bids 8 GPUs
// at 1.00 (below every honest ask) on every request sent to it, and
// answers every award with answer (nil: silence).
func hostileProvider(t *testing.T, m *meshtest.Mesh, i int, answer func(a *gossip.Award, id peer.ID) gossip.Message) *meshtest.Negotiator {
	t.Helper()
	var g *meshtest.Negotiator
	g = m.ServeNegotiation(t, i, func(msg gossip.Message) []gossip.Message {
		switch x := msg.(type) {
		case *gossip.RequestForBids:
			return []gossip.Message{meshtest.BidOn(x, g.ID(), h100, 8, 1_000_000)}
		case *gossip.Award:
			if a := answer(x, g.ID()); a != nil {
				return []gossip.Message{a}
			}
		}
		return nil
	})
	return g
}

// With score weight 0 (the default), where a score only breaks ties of
// price, a provider that bids below everyone and then refuses the award,
// or never answers it, costs an honest submitter one award: the job
// forms on the honest provider, the refusal or the silence is kept as
// evidence (counted alike, shown with its reason), and the next job,
// though the hostile provider is asked (one honest provider is fewer than
// the 3 asked at least) and bids cheapest again, does not award it while
// the honest bid fills the cluster.
func TestAProviderThatRefusedOrWasSilentIsAwardedLastWithScoreWeightZero(t *testing.T) {
	for _, tt := range []struct {
		name   string
		seed   uint64
		answer func(a *gossip.Award, id peer.ID) gossip.Message
		reason string // of the run kept as evidence
	}{
		{"refuses", 0x60, func(a *gossip.Award, id peer.ID) gossip.Message {
			return &gossip.Refusal{Job: a.Job, Provider: id, Reason: "0 GPUs of H100-80GB free, award of 8"}
		}, "refused an award after bidding"},
		{"silent", 0x61, func(*gossip.Award, peer.ID) gossip.Message { return nil }, "did not answer an award after bidding"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := meshtest.Start(t, 3, h100s(tt.seed, 2))
			sub, honest := m.Nodes[2], m.Nodes[1]
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			bad := hostileProvider(t, m, 0, tt.answer)

			// Awarded first whenever its bid comes before the submitter
			// closes (20 ms after the honest bid could form a cluster).
			var first node.Job
			for try := 0; ; try++ {
				if try == 5 {
					t.Fatal("the hostile provider's bid came in time for none of 5 jobs")
				}
				j := submit(t, ctx, sub, jobSpec(t, 8, ""))
				if !holds(j) || len(j.Members) != 1 || j.Members[0].Provider != honest.Host().ID() {
					t.Fatalf("job %d: %s (%s) on %v, want formed on the honest provider", try, j.State, j.Reason, j.Members)
				}
				if _, err := sub.CancelJob(ctx, j.ID); err != nil {
					t.Fatal(err)
				}
				waitFree(t, ctx, []*node.Node{honest})
				if taken[*gossip.Award](bad, j.ID) > 0 {
					first = j
					break
				}
				t.Logf("job %d: the hostile provider's bid came too late to be awarded", try)
			}
			rep := sub.Provider(ctx, bad.ID(), false)
			if rep.Score.Refused != 1 || len(rep.Runs) != 1 || rep.Runs[0].Reason != tt.reason {
				t.Fatalf("the hostile provider's evidence: %s, runs %+v; want one run %q", rep.Score.Formula, rep.Runs, tt.reason)
			}
			if !sub.Ranking().Last[bad.ID()] {
				t.Fatal("the hostile provider is not awarded last by the submitter's ranking")
			}
			testwait.Until(t, ctx, "the submitter's board to show both providers' GPUs free", func() (bool, string) {
				q := sub.Prices(h100).Classes
				return len(q) == 1 && q[0].GPUs == 16, fmt.Sprintf("%+v", q)
			})

			second := submit(t, ctx, sub, jobSpec(t, 8, ""))
			if !holds(second) || len(second.Members) != 1 || second.Members[0].Provider != honest.Host().ID() {
				t.Fatalf("the second job: %s (%s) on %v, want formed on the honest provider", second.State, second.Reason, second.Members)
			}
			if r := taken[*gossip.RequestForBids](bad, second.ID); r == 0 {
				t.Fatal("the hostile provider was not asked for the second job: this test shows nothing of its award")
			}
			if a := taken[*gossip.Award](bad, second.ID); a != 0 {
				t.Fatalf("the hostile provider took %d awards of the second job, want none: the honest bid filled the cluster", a)
			}
			t.Logf("first job %s: %s", first.ID, rep.Score.Formula)
			if _, err := sub.CancelJob(ctx, second.ID); err != nil {
				t.Fatal(err)
			}
			waitFree(t, ctx, []*node.Node{honest})
		})
	}
}
