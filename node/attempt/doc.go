// Package attempt decides one run attempt of a formed job, as its submitter
// sees it: which members to start and when, who is lost, when the job has
// failed, timed out or ended, which bills to pay, which receipts to
// countersign, and how the attempt ends (done, failed, cancelled, or a
// retry on a cluster negotiated again).
//
// An Attempt is a pure state machine in the manner of etcd's raft: no I/O,
// no goroutines, no clock. Time is an argument; input is Step(event, now)
// and Tick(now); output is a Ready the caller acts on before Advance. The
// job streams, the job log, the jobs file, the payments on chain and the
// signing key all stay with the caller (package node).
//
// # The loop
//
// One goroutine owns an Attempt:
//
//	a, err := attempt.New(cfg, time.Now())
//	for {
//		for a.HasReady() {
//			rd := a.Ready()
//			// 1. write rd.Notes to the job log
//			// 2. send a stop frame for each rd.Stop, close each rd.Close
//			// 3. for each rd.Start: open the member's stream and send its
//			//    start frame (in the background); report Opened
//			// 4. pay each rd.Pay (in the background); report Paid
//			// 5. countersign each rd.Countersign; report Countersigned
//			// 6. save rd.Runs when set
//			// 7. rd.Done: release rd.Done.Release, record the outcome, stop
//			a.Advance()
//		}
//		select {
//		case ev := <-events: // frames, opens, stream ends, payments, cancel
//			a.Step(ev, time.Now())
//		case now := <-ticker.C: // every heartbeat, or a timer set to a.Wake()
//			a.Tick(now)
//		}
//	}
//
// Ready returns every decision not yet acknowledged; Advance acknowledges
// what the last Ready returned. Steps taken while acting on a Ready (a
// Countersigned, say) are kept for the next one.
//
// # What the caller owes the machine
//
//   - Every Start is answered by exactly one Opened (with Err when the stream
//     could not be opened or the start frame not sent), and every stream
//     opened by exactly one StreamEnded, also after a Close.
//   - Frames of a rank are stepped in the order they came, after its Opened:
//     the simplest way is one channel for opens, frames and stream ends.
//   - Every Countersign is answered by a Countersigned: the attempt does not
//     end while a countersignature is outstanding.
//   - Tick is called at least every heartbeat, or at Wake.
//
// Events after Done are ignored (Step returns ErrDone); Done comes once.
//
// # Rules
//
// The rules are runJob's of old: a member silent for LostAfterBeats
// heartbeats is lost, its stream closed; a member whose stream ends before
// its exit is lost; a lost member fails the job, which is retried while the
// spec's retries last; the first failure stops every member, and StopWait
// later every stream still open is closed; member 0's ready frame starts
// the rest when they need a rendezvous; a head launcher's member 0 ending
// stops every member; the job as a whole times out at Timeout + StopWait +
// StartTimeout after the attempt began.
//
// New here: a member that has not started its work (no started frame)
// StartWithin after it was asked to start is lost ("never started"); one
// whose stream could not be opened once the attempt was stopping (a
// cancel, this peer stopping, another member's failure) is failed but
// nobody's fault: its provider did nothing wrong. And
// the hostile-peer rules of bills: what a provider bills is bounded by what
// this peer measured.
//
//   - A bill whose amount is more than price × GPUs × billed time is
//     refused (as before).
//   - A bill whose billed time, summed over the member's bills paid so far
//     and this one, is longer than the time this peer saw the member work
//     (from the moment its started frame arrived here to now, or to the
//     moment its exit or its loss was seen) plus BillSlack is refused.
//     BillSlack (2 s, or one heartbeat if longer) covers the latency of the
//     started frame: the provider starts its meter when its work starts,
//     a little before the frame reaches this peer.
//   - An interval billed twice is refused, whatever became of the first
//     bill; intervals count from 1.
//   - A bill of a member whose started frame has not arrived is refused.
//   - A member bills its last interval before its exit frame: its provider
//     releases the outputs once that bill is paid, so a submitter that
//     leaves with the outputs owes nothing. A bill after the exit is
//     refused.
//
// Each of these refusals is the provider's fault: a member still at work
// is stopped (its stream closed) and the attempt fails, not retried (a
// retry could form on the same provider); a refused bill of a member that
// has exited only goes unpaid. A peer that does not settle on chain
// refuses every bill, and that is no one's fault.
//
// Liveness: only fresh frames show that a member is alive: a heartbeat
// numbered above every earlier one of the member, or the first of a frame
// that moves its run on (ready, started, exit, receipt). Repeats, log
// lines, output data and bills do not, so a member whose work hangs cannot
// stay alive by replaying or talking. Every wait is bounded: a member
// silent (in that sense) for LostAfterBeats heartbeats is lost; one not
// started StartWithin after its start is lost; one that has exited has
// StopWait to send its receipt and end its stream, then it is closed.
//
// A member whose provider sends more than this peer keeps of a job (its
// log, output bytes or output files: the caller counts them and reports
// Overran) is the provider's fault in the same way: stopped, and the
// attempt fails, not retried.
//
// A receipt is countersigned only when CheckReceipt finds nothing wrong
// with it: it names this job, attempt, member, consumer and provider, the
// lease's GPUs, class and price, the exit code and outputs received, only
// payments this peer made (each once), and no more time than the member ran.
// A receipt refused (or not countersigned for a reason of this peer's) is
// declined: the member is told why (Ready.Decline), and its provider
// anchors the receipt with that reason and its own signature alone.
package attempt
