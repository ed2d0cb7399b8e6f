package node_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// 1,000 awards race for one provider's 8 GPUs: from 16 submitters, each
// with 3 requests out, awarding their jobs again and again with other
// counts (and twice at once), and from 3 bystanders that award, confirm
// and release the same jobs as themselves, award them written as the real
// submitter (a forged author), reuse 9 of the job IDs in requests of
// their own, and award with odd numbers (more GPUs than the bid, a lower price, a
// lease already over). The provider's clock stands still, so no hold
// lapses. No GPU is leased twice: the provider never shows more reserved
// than it has; no bystander holds a job it did not ask for; once every
// holder starts its member (and every other asker tries to start it, and
// the holder starts it twice) a job ID runs one member, only for a peer
// whose award was accepted, and the GPUs in use are exactly those reserved
// (at most 8), each running one task.
func TestRacingAwardsNeverLeaseAGPUTwice(t *testing.T) {
	frozen := time.Now()
	o := h100s(35, 1)
	o.Config = func(i int, c *node.Config) { c.Clock = func() time.Time { return frozen } }
	m := meshtest.Start(t, 1, o)
	prov := m.Nodes[0]
	provID := prov.Host().ID()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// At most 3 requests an author, sent to the provider directly: the
	// per-author rate limits are not what this test is about.
	const submitters, bystanders, jobsEach, reused, awards = 16, 3, 3, 9, 1000
	var subs, bys []*meshtest.Adversary
	for i := range submitters {
		subs = append(subs, m.AddAdversary(t, i))
	}
	for i := range bystanders {
		bys = append(bys, m.AddAdversary(t, 100+i))
	}
	type job struct {
		id  gossip.JobID
		sub *meshtest.Adversary
		bid gossip.Bid
	}
	var jobs []*job
	request := func(a *meshtest.Adversary, id gossip.JobID) {
		rfb := a.Request(id, "H100-80GB", 8, 2_500_000, "USDC:6")
		rfb.Deadline = frozen.Add(time.Minute).UnixMilli()
		if err := a.Ask(ctx, provID, rfb); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range subs {
		for range jobsEach {
			j := &job{id: meshtest.NewJobID(), sub: s}
			jobs = append(jobs, j)
			request(s, j.id)
		}
	}
	// Some jobs' IDs again, in the bystanders' own requests: another
	// submitter's job of the same ID is another job.
	for k, j := range jobs[:reused] {
		request(bys[k%bystanders], j.id)
	}
	isBid := func(id gossip.JobID, from peer.ID) func(gossip.Message) bool {
		return func(m gossip.Message) bool {
			b, ok := m.(*gossip.Bid)
			return ok && b.Job == id && b.Provider == from
		}
	}
	for _, j := range jobs {
		msg, err := j.sub.Received(ctx, isBid(j.id, provID))
		if err != nil {
			t.Fatalf("no bid for job %s: %v", j.id, err)
		}
		j.bid = *msg.(*gossip.Bid)
	}

	// The race.
	rng := rand.New(rand.NewPCG(35, 1))
	type shot struct {
		from *meshtest.Adversary
		msg  gossip.Message
		raw  []byte // a forged author: sent as is
	}
	var shots []shot
	nAwards := 0
	for nAwards < awards {
		j := jobs[rng.IntN(len(jobs))]
		by := bys[rng.IntN(bystanders)]
		a := j.sub.Award(j.bid, uint32(1+rng.IntN(8)))
		nAwards++
		switch rng.IntN(10) {
		case 0, 1, 2, 3: // the author, again and again
			shots = append(shots, shot{from: j.sub, msg: a})
		case 4: // the author, with odd numbers
			switch rng.IntN(3) {
			case 0:
				a.GPUs = j.bid.GPUs + 1
			case 1:
				a.Price = j.bid.Price - 1
			default:
				a.LeaseExpires = frozen.Add(-time.Second).UnixMilli()
			}
			shots = append(shots, shot{from: j.sub, msg: a})
		case 5, 6: // a bystander, as itself
			a.Submitter = by.ID.PeerID
			shots = append(shots, shot{from: by, msg: a})
		case 7: // a bystander, written as the author
			data, err := node.SealNegotiation(by.ID, a)
			if err != nil {
				t.Fatal(err)
			}
			shots = append(shots, shot{from: by, raw: data})
		case 8: // a bystander's confirm and release of the author's job
			shots = append(shots, shot{from: by, msg: &gossip.Confirm{Job: j.id, Submitter: by.ID.PeerID, Provider: provID}})
			shots = append(shots, shot{from: by, msg: &gossip.Release{Job: j.id, From: by.ID.PeerID, Provider: provID, Reason: "mine"}})
			nAwards--
		default: // twice at once
			shots = append(shots, shot{from: j.sub, msg: a}, shot{from: j.sub, msg: a})
			nAwards++
		}
	}
	var (
		wg         sync.WaitGroup
		sentAwards atomic.Int64
		overHeld   atomic.Int64
	)
	watchDone := make(chan struct{})
	go func() { // what the provider shows while the race runs
		for {
			select {
			case <-watchDone:
				return
			default:
			}
			if free := prov.FreeGPUs()["H100-80GB"]; free > 8 {
				overHeld.Add(1)
			}
			time.Sleep(time.Millisecond) // sampling, not synchronization
		}
	}()
	sem := make(chan struct{}, 32)
	for _, s := range shots {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if s.raw != nil {
				_ = s.from.SendRaw(ctx, provID, s.raw)
				return
			}
			err := s.from.Send(ctx, provID, s.msg)
			if _, ok := s.msg.(*gossip.Award); ok && err == nil {
				sentAwards.Add(1)
			}
		}()
	}
	wg.Wait()

	// Every award signed by its sender is answered (the forged ones are
	// dropped unread); then the provider's view is settled.
	all := append(append([]*meshtest.Adversary(nil), subs...), bys...)
	answers := func() (acc, ref int) {
		for _, a := range all {
			for _, msg := range a.Inbox() {
				switch msg.(type) {
				case *gossip.Acceptance:
					acc++
				case *gossip.Refusal:
					ref++
				}
			}
		}
		return acc, ref
	}
	testwait.Until(t, ctx, "an answer to every award", func() (bool, string) {
		acc, ref := answers()
		return int64(acc+ref) >= sentAwards.Load(), fmt.Sprintf("%d accepted, %d refused of %d awards", acc, ref, sentAwards.Load())
	})
	close(watchDone)
	if overHeld.Load() > 0 {
		t.Fatalf("the provider showed more GPUs free than it has %d times: more were reserved than exist", overHeld.Load())
	}
	reserved := 8 - prov.FreeGPUs()["H100-80GB"]
	requested := map[peer.ID]map[gossip.JobID]bool{}
	for k, j := range jobs[:reused] {
		by := bys[k%bystanders].ID.PeerID
		if requested[by] == nil {
			requested[by] = map[gossip.JobID]bool{}
		}
		requested[by][j.id] = true
	}
	accepted := map[peer.ID]map[gossip.JobID]bool{}
	for _, a := range all {
		accepted[a.ID.PeerID] = map[gossip.JobID]bool{}
		for _, msg := range a.Inbox() {
			if acc, ok := msg.(*gossip.Acceptance); ok {
				accepted[a.ID.PeerID][acc.Job] = true
			}
		}
	}
	for _, b := range bys {
		for id := range accepted[b.ID.PeerID] {
			if !requested[b.ID.PeerID][id] {
				t.Errorf("bystander %s had job %s accepted without a request of its own for it", b.ID.PeerID, id)
			}
		}
	}

	// Whoever holds a job's reservation confirms and starts its member;
	// every other peer that asked for the job ID tries to start it too,
	// and the holder starts it twice. A job ID runs one member, on the
	// GPUs reserved; no GPU runs two tasks.
	var streams []*meshtest.JobStream
	defer func() {
		for _, js := range streams {
			_ = js.Close()
		}
	}()
	startAs := func(a *meshtest.Adversary, id gossip.JobID) jobwire.Frame {
		if err := a.Send(ctx, provID, &gossip.Confirm{Job: id, Submitter: a.ID.PeerID, Provider: provID}); err != nil {
			t.Fatal(err)
		}
		js, err := a.OpenJob(ctx, provID)
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, js)
		st := &jobwire.StartFrame{Job: id.String(), Members: 1, WorldGPUs: 1, Spec: scriptSpec(t, 1, 0, "exec sleep 300", "")}
		if err := js.Send(jobwire.Frame{T: jobwire.KindStart, Start: st}); err != nil {
			t.Fatal(err)
		}
		f, err := js.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	runs := 0
	for k, j := range jobs {
		askers := []*meshtest.Adversary{j.sub}
		if k < reused {
			askers = append(askers, bys[k%bystanders])
		}
		askers = append(askers, bys[(k+1)%bystanders]) // one that never asked
		started := 0
		for _, a := range askers {
			if f := startAs(a, j.id); f.T == jobwire.KindStarted {
				started++
				if !accepted[a.ID.PeerID][j.id] {
					t.Errorf("job %s started for %s, whose awards were never accepted", j.id, a.ID.PeerID)
				}
				if f := startAs(a, j.id); f.T != jobwire.KindError {
					t.Errorf("a second start of job %s: %s frame, want an error", j.id, f.T)
				}
			}
		}
		if started > 1 {
			t.Errorf("job %s started %d members", j.id, started)
		}
		runs += started
	}
	inUse := prov.GPUsInUse()
	perTask := map[string]int{}
	for _, task := range inUse {
		perTask[task]++
	}
	if len(inUse) != int(reserved) || len(inUse) > 8 || len(perTask) != runs {
		t.Errorf("%d GPUs run %d tasks (%d members started); %d GPUs were reserved", len(inUse), len(perTask), runs, reserved)
	}
	acc, ref := answers()
	t.Logf("%d messages raced (%d awards: %d accepted, %d refused); %d members run on %d GPUs", len(shots), nAwards, acc, ref, runs, len(inUse))
	for _, js := range streams {
		_ = js.Close()
	}
	waitFree(t, ctx, []*node.Node{prov})
}
