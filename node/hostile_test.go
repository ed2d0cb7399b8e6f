package node_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node/jobspec"

	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A provider that bills a minute of work as soon as its member has
// started, speaking the real job protocol with a bill whose amount matches
// its price, is not paid: a bill is bounded by the time this submitter saw
// the member work, not by what the provider says; the member is stopped and
// the job fails, the provider's fault.
func TestProviderIsNotPaidForTimeItDidNotWork(t *testing.T) {
	m, ln := solMesh(t, 2_000_000_000)
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	meshtest.ServeJobs(t, prov.Host(), func(js *meshtest.JobStream, st *jobwire.StartFrame) error {
		start := time.Now().UnixMilli()
		ref := func(k int) string { return fmt.Sprintf("%s-%d-%d-%d", st.Job, st.Attempt, st.Rank, k) }
		frames := []jobwire.Frame{
			{T: jobwire.KindStarted, At: start},
			// 60 s of one GPU at 3.6 SOL/GPU-h: the right amount for the
			// time it claims, and 60 s more than the member worked.
			{T: jobwire.KindBill, Bill: &jobwire.BillFrame{Interval: 1, Lamports: 60_000_000, Millis: 60_000, Ref: ref(1)}},
			// The same interval again, smaller.
			{T: jobwire.KindBill, Bill: &jobwire.BillFrame{Interval: 1, Lamports: 1_000_000, Millis: 1_000, Ref: ref(1)}},
			{T: jobwire.KindExit, Exit: &jobwire.ExitFrame{Code: 0, Start: start, End: time.Now().UnixMilli()}},
		}
		return js.Send(frames...)
	})
	provBefore := balance(t, ln, prov.Info().SolanaAddress)
	j := runToEnd(t, ctx, sub, solSpec(t, "true"))
	log := jobLog(t, sub, j.ID)
	if !strings.Contains(log, "bill 1 of member 0") || !strings.Contains(log, "refused: its bills come to 1m0s of work, but this peer saw the member work") {
		t.Errorf("the log does not say the minute's bill was refused for the time worked:\n%s", log)
	}
	if !strings.Contains(log, "interval 1 was billed already") {
		t.Errorf("the log does not say the second bill of interval 1 was refused:\n%s", log)
	}
	if a, b := sub.Refused("bill", "longer_than_worked"), sub.Refused("bill", "duplicate_interval"); a != 1 || b != 1 {
		t.Errorf("bills refused counted (gpumesh_refused_total): %d longer than worked, %d duplicate; want 1, 1", a, b)
	}
	if j.State != node.JobFailed || !strings.Contains(j.Reason, "its provider billed what it is not owed") {
		t.Errorf("job %s (%s): want failed, the provider's fault", j.State, j.Reason)
	}
	if len(j.Runs) != 1 || j.Runs[0].Paid != 0 {
		t.Errorf("runs %+v: want one member, paid nothing", j.Runs)
	}
	if got := balance(t, ln, prov.Info().SolanaAddress); got != provBefore {
		t.Errorf("the hostile provider's balance went from %d to %d lamports", provBefore, got)
	}
}

// A submitter that holds a reservation of one GPU and sends a second start
// for it, on a stream of its own while its member runs, is refused: the
// provider runs one member a reservation, so no GPU nobody leased is used
// and the running member (same task name) is untouched.
func TestASecondStartOnOneReservationIsRefused(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(31, 1))
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	job, err := sub.SubmitJob(ctx, scriptSpec(t, 1, 0, "exec sleep 300", ""))
	if err != nil {
		t.Fatal(err)
	}
	j := waitJob(t, ctx, sub, job.ID, "to run its member", func(j node.Job) bool {
		return len(j.Runs) == 1 && j.Runs[0].State == node.MemberRunning
	})
	// The submitter's own host, the reservation's holder, speaks the job
	// protocol to the provider again.
	js, err := meshtest.OpenJob(ctx, sub.Host(), prov.Host().ID())
	if err != nil {
		t.Fatal(err)
	}
	defer js.Close()
	start := &jobwire.StartFrame{Job: j.ID, Attempt: j.Attempt, Rank: 0, Members: 1, WorldGPUs: 1, Spec: j.Spec}
	if err := js.Send(jobwire.Frame{T: jobwire.KindStart, Start: start}); err != nil {
		t.Fatal(err)
	}
	f, err := js.Next(ctx)
	if err != nil || f.T != jobwire.KindError || !strings.Contains(f.Reason, "already runs on this provider") {
		t.Fatalf("the second start answered %+v, %v; want an error frame", f, err)
	}
	if inUse := len(prov.GPUsInUse()); inUse != 1 {
		t.Errorf("%d GPUs in use after a second start on a 1-GPU reservation, want 1", inUse)
	}
	if free := prov.FreeGPUs()["H100-80GB"]; free != 7 {
		t.Errorf("%d GPUs free for new bids, want 7: the refused start must not release the running member's reservation", free)
	}
	if j, _ := sub.Job(job.ID); j.State != node.JobRunning || j.Runs[0].State != node.MemberRunning {
		t.Errorf("the running job: %s, member %s; want it running on", j.State, j.Runs[0].State)
	}
	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	waitFree(t, ctx, []*node.Node{prov})
}

// shiftClock is a peer's clock that a test moves on: the wall clock plus
// an offset.
type shiftClock struct{ off atomic.Int64 }

func (c *shiftClock) now() time.Time { return time.Now().Add(time.Duration(c.off.Load())) }

func (c *shiftClock) add(d time.Duration) { c.off.Add(int64(d)) }

// bidFor asks prov for bids on gpus H100s as adv, open until 10 s after
// now on the provider's clock, and returns the bid.
func bidFor(t *testing.T, ctx context.Context, adv *meshtest.Adversary, prov peer.ID, gpus uint32, now time.Time) gossip.Bid {
	t.Helper()
	job := meshtest.NewJobID()
	rfb := adv.Request(job, "H100-80GB", gpus, 2_500_000, "USDC:6")
	rfb.Deadline = now.Add(10 * time.Second).UnixMilli()
	if err := adv.Ask(ctx, prov, rfb); err != nil {
		t.Fatal(err)
	}
	m, err := adv.Received(ctx, func(m gossip.Message) bool {
		b, ok := m.(*gossip.Bid)
		return ok && b.Job == job && b.Provider == prov
	})
	if err != nil {
		t.Fatal(err)
	}
	return *m.(*gossip.Bid)
}

// A bystander that learns a job's ID and races the real
// submitter with its own award and confirm for that job (signed by
// itself, as the protocol demands; one that names the real submitter as
// its author is refused unread) gets nothing: the provider refuses it, the
// honest job forms on all 8 GPUs and runs.
func TestAnAwardFromABystanderIsRefused(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(32, 1))
	prov, sub := m.Nodes[0], m.Nodes[1]
	adv := m.AddAdversary(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	job, err := sub.SubmitJob(ctx, jobSpec(t, 8, ""))
	if err != nil {
		t.Fatal(err)
	}
	// The request went only to the provider; a job's ID is no secret all
	// the same (every provider asked learns it).
	var rfb gossip.RequestForBids
	if err := rfb.Job.UnmarshalText([]byte(job.ID)); err != nil {
		t.Fatal(err)
	}
	provID := prov.Host().ID()
	hijack := &gossip.Award{Job: rfb.Job, Submitter: adv.ID.PeerID, Provider: provID, Class: "H100-80GB", GPUs: 8,
		Price: 2_100_000, LeaseExpires: time.Now().Add(24 * time.Hour).UnixMilli(), Gang: rfb.Job, GangSize: 1}
	if err := adv.Send(ctx, provID, hijack); err != nil {
		t.Fatal(err)
	}
	if err := adv.Send(ctx, provID, &gossip.Confirm{Job: rfb.Job, Submitter: adv.ID.PeerID, Provider: provID}); err != nil {
		t.Fatal(err)
	}
	forged := *hijack
	forged.Submitter = sub.Host().ID() // written as the submitter, signed by the bystander
	data, err := node.SealNegotiation(adv.ID, &forged)
	if err != nil {
		t.Fatal(err)
	}
	_ = adv.SendRaw(ctx, provID, data)
	ans, err := adv.Received(ctx, func(m gossip.Message) bool { return m.JobID() == rfb.Job })
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ans.(*gossip.Refusal); !ok {
		t.Fatalf("the bystander's award was answered %T %+v, want a refusal", ans, ans)
	}
	j := waitJob(t, ctx, sub, job.ID, "to run on the provider", func(j node.Job) bool {
		return j.State == node.JobRunning && len(j.Runs) == 1 && j.Runs[0].State == node.MemberRunning
	})
	if len(j.Members) != 1 || j.Members[0].Provider != provID || j.Members[0].GPUs != 8 {
		t.Fatalf("members %+v: want the provider's 8 GPUs", j.Members)
	}
	if inUse := prov.GPUsInUse(); len(inUse) != 8 {
		t.Errorf("%d GPUs in use, want the honest job's 8", len(inUse))
	}
	for _, msg := range adv.Inbox() {
		if a, ok := msg.(*gossip.Acceptance); ok {
			t.Errorf("the provider accepted the bystander's award: %+v", a)
		}
	}
	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	waitFree(t, ctx, []*node.Node{prov})
}

// A submitter that reserves GPUs and never starts anything holds them a
// minute at most, and at most 4 reservations at once: its fifth award is
// refused though GPUs are free, and a minute later (on the provider's
// clock) every GPU is free again and an honest 8-GPU job forms.
func TestReservationsThatNeverStartLapse(t *testing.T) {
	clock := &shiftClock{} // the peers' one clock, moved on together
	o := h100s(33, 1)
	o.Config = func(i int, c *node.Config) { c.Clock = clock.now }
	m := meshtest.Start(t, 2, o)
	prov, sub := m.Nodes[0], m.Nodes[1]
	adv := m.AddAdversary(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	provID := prov.Host().ID()
	for k := range 4 {
		if _, err := adv.Reserve(ctx, provID, meshtest.NewJobID(), "H100-80GB", 1, 2_500_000, "USDC:6"); err != nil {
			t.Fatalf("reservation %d: %v", k+1, err)
		}
	}
	_, err := adv.Reserve(ctx, provID, meshtest.NewJobID(), "H100-80GB", 1, 2_500_000, "USDC:6")
	if err == nil || !strings.Contains(err.Error(), "award refused") {
		t.Fatalf("a fifth reservation: %v, want it refused", err)
	}
	testwait.Until(t, ctx, "the 4 reservations to hold 4 GPUs", func() (bool, string) {
		free := prov.FreeGPUs()["H100-80GB"]
		return free == 4, fmt.Sprintf("%d free", free)
	})
	clock.add(61 * time.Second)
	waitFree(t, ctx, []*node.Node{prov})
	j := waitJob(t, ctx, sub, mustSubmit(t, ctx, sub, jobSpec(t, 8, "")), "to run", func(j node.Job) bool {
		return j.State == node.JobRunning
	})
	if _, err := sub.CancelJob(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
}

func mustSubmit(t *testing.T, ctx context.Context, nd *node.Node, spec jobspec.Spec) string {
	t.Helper()
	j, err := nd.SubmitJob(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	return j.ID
}

// A reservation whose member runs does not end with its lease: with the
// provider's clock moved two hours past it, the member's GPU stays held
// (GPUs in use never exceed those reserved: a new request gets a bid for
// the other 7 only), until the member ends.
func TestALeaseDoesNotEndWhileItsMemberRuns(t *testing.T) {
	clock := &shiftClock{}
	o := h100s(34, 1)
	o.Config = func(i int, c *node.Config) {
		if i == 0 {
			c.Clock = clock.now
		}
	}
	m := meshtest.Start(t, 1, o)
	prov := m.Nodes[0]
	adv, other := m.AddAdversary(t, 0), m.AddAdversary(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	provID := prov.Host().ID()
	job := meshtest.NewJobID()
	if _, err := adv.Reserve(ctx, provID, job, "H100-80GB", 1, 2_500_000, "USDC:6"); err != nil {
		t.Fatal(err)
	}
	js, err := adv.OpenJob(ctx, provID)
	if err != nil {
		t.Fatal(err)
	}
	defer js.Close()
	start := &jobwire.StartFrame{Job: job.String(), Members: 1, WorldGPUs: 1, Spec: scriptSpec(t, 1, 0, "exec sleep 300", "")}
	if err := js.Send(jobwire.Frame{T: jobwire.KindStart, Start: start}); err != nil {
		t.Fatal(err)
	}
	if fs, err := js.Until(ctx, func(f jobwire.Frame) bool { return f.T == jobwire.KindStarted }); err != nil {
		t.Fatalf("frames %s: %v", kinds(fs), err)
	}
	clock.add(2 * time.Hour) // past the lease of an hour, and the start deadline
	for k := range 2 {       // the second bid comes after the loop has seen the new time
		if b := bidFor(t, ctx, other, provID, 8, clock.now()); b.GPUs != 7 {
			t.Fatalf("bid %d after the lease: %d GPUs, want 7 (one runs the member)", k+1, b.GPUs)
		}
	}
	if inUse := prov.GPUsInUse(); len(inUse) != 1 {
		t.Fatalf("%d GPUs in use, want 1", len(inUse))
	}
	if err := js.Send(jobwire.Frame{T: jobwire.KindStop, Reason: "done"}); err != nil {
		t.Fatal(err)
	}
	if fs, err := js.Until(ctx, func(f jobwire.Frame) bool { return f.T == jobwire.KindExit }); err != nil {
		t.Fatalf("frames %s: %v", kinds(fs), err)
	}
	_ = js.Close()
	waitFree(t, ctx, []*node.Node{prov})
}

// A member whose heartbeats repeat one number, however much else it says
// (log lines every 100 ms), does not count as alive: it is lost three
// heartbeats after its last fresh frame, and the job fails saying so.
func TestAMemberReplayingHeartbeatsIsLost(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(36, 1))
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	meshtest.ServeJobs(t, prov.Host(), func(js *meshtest.JobStream, st *jobwire.StartFrame) error {
		if err := js.Send(jobwire.Frame{T: jobwire.KindStarted, At: time.Now().UnixMilli()}); err != nil {
			return err
		}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for range 300 { // 30 s at most; the submitter closes the stream long before
			<-tick.C
			err := js.Send(jobwire.Frame{T: jobwire.KindHeartbeat, Seq: 1},
				jobwire.Frame{T: jobwire.KindLog, Stream: "out", Data: []byte("still here\n")})
			if err != nil {
				return nil // closed by the submitter: the point
			}
		}
		return fmt.Errorf("the submitter kept a member that replays one heartbeat for 30 s")
	})
	j := runToEnd(t, ctx, sub, scriptSpec(t, 1, 0, "exec sleep 300", ""))
	if j.State != node.JobFailed || !strings.Contains(j.Reason, "stopped answering (no heartbeat for 3s)") {
		t.Fatalf("job %s (%s): want failed, its member lost", j.State, j.Reason)
	}
	if len(j.Runs) != 1 || j.Runs[0].State != node.MemberLost {
		t.Fatalf("runs %+v: want the member lost", j.Runs)
	}
}

// Member 0 of a two-member job that says ready five times starts the
// other member once: the submitter takes one ready frame (its rendezvous
// port) and starts the rest on it, never again.
func TestReadyFiveTimesStartsTheOthersOnce(t *testing.T) {
	m := meshtest.Start(t, 3, h100s(37, 2))
	sub := m.Nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	starts := map[int]int{} // rank → start frames received
	member := func(js *meshtest.JobStream, st *jobwire.StartFrame) error {
		mu.Lock()
		starts[st.Rank]++
		mu.Unlock()
		now := time.Now().UnixMilli()
		var fs []jobwire.Frame
		if st.Rank == 0 {
			for k := range 5 {
				fs = append(fs, jobwire.Frame{T: jobwire.KindReady, Port: 29500 + k})
			}
		}
		fs = append(fs, jobwire.Frame{T: jobwire.KindStarted, At: now}, jobwire.Frame{T: jobwire.KindHeartbeat, Seq: 1})
		if err := js.Send(fs...); err != nil {
			return err
		}
		if st.Rank == 0 { // runs until the job is cancelled
			_, _ = js.Until(ctx, func(f jobwire.Frame) bool { return f.T == jobwire.KindStop })
			return nil
		}
		return js.Send(jobwire.Frame{T: jobwire.KindExit, Exit: &jobwire.ExitFrame{Code: 0, Start: now, End: time.Now().UnixMilli()}})
	}
	for _, p := range m.Nodes[:2] {
		meshtest.ServeJobs(t, p.Host(), member)
	}
	job, err := sub.SubmitJob(ctx, scriptSpec(t, 16, 8, "true", ""))
	if err != nil {
		t.Fatal(err)
	}
	waitJob(t, ctx, sub, job.ID, "member 1 to exit", func(j node.Job) bool {
		return len(j.Runs) == 2 && j.Runs[1].State == node.MemberExited
	})
	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	waitEnded(t, ctx, sub, job.ID)
	mu.Lock()
	defer mu.Unlock()
	if starts[0] != 1 || starts[1] != 1 {
		t.Fatalf("start frames by rank %v: want one each", starts)
	}
}

// A provider priced by an auto policy bids at its ask of now, not at its
// first: once the market (another provider asking 4.00) has moved its ask
// up from its floor, a request gets a bid at the new ask.
func TestBidsFollowAnAutoPrice(t *testing.T) {
	clock := &shiftClock{} // the peers' one clock, moved on together
	o := h100s(38, 2)
	o.Config = func(i int, c *node.Config) {
		c.Clock = clock.now
		c.PriceBoard = gossip.BoardConfig{Probation: time.Millisecond, Maturity: time.Millisecond}
		switch i {
		case 0:
			c.Price = "auto:floor=1.00,target=0.7"
		case 1:
			c.Price = "fixed:4.00"
		}
	}
	m := meshtest.Start(t, 2, o)
	prov := m.Nodes[0]
	adv := m.AddAdversary(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	first := bidFor(t, ctx, adv, prov.Host().ID(), 1, clock.now())
	testwait.Until(t, ctx, "the provider's board to hear the other's ask", func() (bool, string) {
		q := board(prov)
		return q.GPUs == 16, fmt.Sprintf("%d GPUs on the board", q.GPUs)
	})
	clock.add(31 * time.Second) // a policy step is due
	var ask uint64
	testwait.Until(t, ctx, "the ask to move", func() (bool, string) {
		ask, _ = prov.Ask("H100-80GB")
		return ask != first.Price, fmt.Sprintf("ask %d", ask)
	})
	if b := bidFor(t, ctx, adv, prov.Host().ID(), 1, clock.now()); b.Price != ask {
		t.Fatalf("bid at %d after the ask moved from %d to %d: want the ask of now", b.Price, first.Price, ask)
	}
}

// A provider whose receipt bills more GPUs than it leased is told why the
// submitter will not countersign it (an error frame on the job stream), so
// the record it anchors says who refused what.
func TestAReceiptRefusedIsAnsweredWithWhy(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(39, 1))
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	raw, err := meshtest.Key(39, 0).Key.Raw()
	if err != nil {
		t.Fatal(err)
	}
	key := ed25519.PrivateKey(raw[:64])
	declined := make(chan string, 1)
	meshtest.ServeJobs(t, prov.Host(), func(js *meshtest.JobStream, st *jobwire.StartFrame) error {
		start := time.Now()
		if err := js.Send(jobwire.Frame{T: jobwire.KindStarted, At: start.UnixMilli()}, jobwire.Frame{T: jobwire.KindHeartbeat, Seq: 1}); err != nil {
			return err
		}
		end := time.Now()
		if err := js.Send(jobwire.Frame{T: jobwire.KindExit, Exit: &jobwire.ExitFrame{Start: start.UnixMilli(), End: end.UnixMilli()}}); err != nil {
			return err
		}
		r := receipt.Receipt{
			Version: receipt.Version, Job: st.Job, Provider: receipt.Address(key), Consumer: sub.Info().SolanaAddress,
			Class: "H100-80GB", Unit: "USDC:6", ResultHash: receipt.ResultHash(0, nil), Util: -1,
		}
		r.Meter(8, start, end, 2_100_000) // 8 GPUs of a 1-GPU lease
		sr, err := receipt.Sign(r, key)
		if err != nil {
			return err
		}
		if err := js.Send(jobwire.Frame{T: jobwire.KindReceipt, Receipt: &sr}); err != nil {
			return err
		}
		fs, err := js.Until(ctx, func(f jobwire.Frame) bool { return f.T == jobwire.KindError || f.T == jobwire.KindCountersign })
		if err != nil {
			return fmt.Errorf("no answer to the receipt: %v", err)
		}
		declined <- fs[len(fs)-1].T + ": " + fs[len(fs)-1].Reason
		return nil
	})
	j := runToEnd(t, ctx, sub, scriptSpec(t, 1, 0, "true", ""))
	if len(j.Runs) != 1 || !strings.Contains(j.Runs[0].Receipt, "it bills 8 H100-80GB GPUs, the lease was 1") {
		t.Fatalf("runs %+v: want the receipt refused for its GPUs", j.Runs)
	}
	select {
	case got := <-declined:
		if got != "error: receipt refused: it bills 8 H100-80GB GPUs, the lease was 1 H100-80GB" {
			t.Fatalf("the provider heard %q", got)
		}
	case <-ctx.Done():
		t.Fatal("the hostile provider heard no answer to its receipt")
	}
}
