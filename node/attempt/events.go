package attempt

// Event is what the caller steps an Attempt with: one of the types below.
type Event interface{ event() }

// Opened reports a Start: the member's stream is open and its start frame
// sent, or Err says why not.
type Opened struct {
	Rank int
	Addr string // the member's address as this peer reaches it (member 0's is the rendezvous address)
	Err  string // "": opened
}

// Listening is a member's ready frame: it listens on Port for the
// rendezvous (member 0 of a job with one).
type Listening struct {
	Rank int
	Port int
}

// Started is a member's started frame: its work began At (unix ms, its
// clock).
type Started struct {
	Rank int
	At   int64
}

// Heard is any other frame of a member: a heartbeat (Beat, its sequence
// number), or a log line, output data or the like (Beat 0). Only a
// heartbeat numbered above every earlier one shows that the member is
// alive: a repeat, or a frame of any other kind, does not.
type Heard struct {
	Rank int
	Beat uint64 // a heartbeat's sequence number; 0: not a heartbeat
}

// Errored is a member's error frame: it could not run the job.
type Errored struct {
	Rank   int
	Reason string
}

// Exited is a member's exit frame.
type Exited struct {
	Rank       int
	Code       int
	Start, End int64  // unix ms, its clock
	TimedOut   bool   // the spec's timeout ended the work
	Reason     string // why the member stopped the work itself (an unpaid bill); "": it did not
	ResultHash string // of the exit code and the outputs received whole (exec.ResultHash)
}

// Bill is a member's bill for one interval of its work.
type Bill struct {
	Interval int    // from 1
	Millis   uint64 // running time billed, ms
	Amount   uint64 // in the unit's smallest unit
	Ref      string // the payment's memo
}

// Billed is a member's bill frame.
type Billed struct {
	Rank int
	Bill Bill
}

// Paid reports a payment made for a Pay decision (payments that failed
// are not reported).
type Paid struct {
	Rank      int
	Signature string // the payment's transaction
	Amount    uint64
}

// Receipted is a member's receipt frame.
type Receipted struct {
	Rank    int
	Receipt Receipt
	// CheckpointReceived is the checkpoint bytes this peer read from the
	// member's provider in this attempt, counted as they arrived (before
	// the stream that carried them was closed): the most its receipt may
	// claim.
	CheckpointReceived uint64
}

// Countersigned reports a Countersign decision: the receipt was signed,
// kept and its signature sent, or Err says why not.
type Countersigned struct {
	Rank int
	Err  string
}

// StreamEnded reports that a member's stream ended: the member closed it,
// a frame was bad, or the caller closed it.
type StreamEnded struct {
	Rank int
	Err  string // e.g. "EOF"
}

// Overran is a member whose provider sent more than this peer keeps of a
// job (its log, output bytes or output files, by the submitter's quotas):
// the caller has stopped writing what it sends.
type Overran struct {
	Rank   int
	Reason string // what was sent, and the quota
}

// Cancelled is the submitter cancelling the job.
type Cancelled struct {
	Reason string // for the stop frames; "": "cancelled by the submitter"
}

// PeerStopping is this peer shutting down while the job runs.
type PeerStopping struct {
	Reason string // for the stop frames; "": "this peer is stopping"
}

func (Opened) event()        {}
func (Listening) event()     {}
func (Started) event()       {}
func (Heard) event()         {}
func (Errored) event()       {}
func (Exited) event()        {}
func (Billed) event()        {}
func (Paid) event()          {}
func (Receipted) event()     {}
func (Countersigned) event() {}
func (StreamEnded) event()   {}
func (Overran) event()       {}
func (Cancelled) event()     {}
func (PeerStopping) event()  {}
