package node_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A provider that vanishes from every other job it takes (its job stream
// closes before its member starts: lost, the provider's fault) is ranked
// below an honest provider at the same price within 10 jobs, though it
// wins the tie at first (the lower peer ID): after its first loss the
// submitter's choice moves to the honest one and stays there.
func TestAProviderThatDropsHalfItsJobsRanksBelowAnHonestOne(t *testing.T) {
	m := meshtest.Start(t, 3, h100s(118, 2))
	sub := m.Nodes[2]
	hostile, honest := m.Nodes[0], m.Nodes[1]
	if honest.Host().ID() < hostile.Host().ID() {
		hostile, honest = honest, hostile
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var taken atomic.Int32
	meshtest.ServeJobs(t, hostile.Host(), func(js *meshtest.JobStream, st *jobwire.StartFrame) error {
		if taken.Add(1)%2 == 0 {
			return js.Close() // vanishes: every second job it takes is lost
		}
		start := time.Now().UnixMilli()
		return js.Send(jobwire.Frame{T: jobwire.KindStarted, At: start},
			jobwire.Frame{T: jobwire.KindExit, Exit: &jobwire.ExitFrame{Code: 0, Start: start, End: time.Now().UnixMilli()}})
	})

	var on []string // which provider ran each job
	for i := range 10 {
		j := runToEnd(t, ctx, sub, scriptSpec(t, 1, 0, "true", ""))
		who := "honest"
		if j.Members[0].Provider == hostile.Host().ID() {
			who = "hostile"
		}
		on = append(on, who)
		t.Logf("job %d on the %s provider: %s %s; scores hostile %.3f honest %.3f", i+1, who, j.State, j.Reason,
			sub.ProviderScore(hostile.Host().ID()).Score, sub.ProviderScore(honest.Host().ID()).Score)
	}
	bad, good := sub.ProviderScore(hostile.Host().ID()), sub.ProviderScore(honest.Host().ID())
	if bad.Score >= good.Score || bad.Lost == 0 || good.Lost+good.ProviderFailed != 0 {
		t.Fatalf("after 10 jobs: hostile %s; honest %s: want the hostile one below, its loss counted", bad.Formula, good.Formula)
	}
	if on[0] != "hostile" || on[9] != "honest" || int(taken.Load()) != bad.Finished+bad.Lost || bad.Finished+bad.Lost+good.Finished != 10 {
		t.Fatalf("jobs ran on %v (hostile took %d): want the first on the hostile provider (the tie), the last on the honest one, every run counted (hostile %d+%d, honest %d)",
			on, taken.Load(), bad.Finished, bad.Lost, good.Finished)
	}
	// The ranking a new negotiation uses, and gpus find, say the same.
	r := sub.Ranking()
	if r.Scores[hostile.Host().ID()] >= r.Scores[honest.Host().ID()] {
		t.Fatalf("ranking %v: want the hostile provider below", r.Scores)
	}
	if rep := sub.Provider(ctx, hostile.Host().ID(), false); len(rep.Runs) != bad.Finished+bad.Lost || rep.Score.Score != bad.Score {
		t.Fatalf("provider report: %d runs, score %v; want %d runs, %v", len(rep.Runs), rep.Score.Score, bad.Finished+bad.Lost, bad.Score)
	}
	found := sub.ScoreFound(dht.FindResult{Matches: []dht.Match{
		{Offer: &dht.Offer{Provider: hostile.Host().ID()}, GPU: dht.GPUOffer{Available: 7}},
		{Offer: &dht.Offer{Provider: honest.Host().ID()}, GPU: dht.GPUOffer{Available: 8}},
	}}, 8, (bad.Score+good.Score)/2)
	if len(found.Matches) != 1 || found.Matches[0].Offer.Provider != honest.Host().ID() || found.BelowScore != 1 || !found.Enough {
		t.Fatalf("gpus find with a min score between theirs: %+v", found)
	}
}
