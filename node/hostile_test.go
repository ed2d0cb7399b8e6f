package node_test

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

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
	s, err := sub.Host().NewStream(ctx, prov.Host().ID(), jobwire.Protocol)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := &jobwire.StartFrame{Job: j.ID, Attempt: j.Attempt, Rank: 0, Members: 1, WorldGPUs: 1, Spec: j.Spec}
	if err := jobwire.NewWriter(s).Write(jobwire.Frame{T: jobwire.KindStart, Start: start}); err != nil {
		t.Fatal(err)
	}
	f, err := jobwire.Read(bufio.NewReader(s))
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
