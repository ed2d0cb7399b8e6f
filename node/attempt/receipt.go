package attempt

import (
	"fmt"
	"math/bits"
	"time"

	"github.com/gpumesh/gpumesh/exec/receipt"
)

// Receipt is what CheckReceipt reads of a member's signed receipt (the
// fields of exec.Receipt that this peer can hold against what it saw).
type Receipt struct {
	Job        string
	Attempt    int
	Rank       int
	Provider   string // Solana address
	Consumer   string // Solana address
	Class      string
	GPUs       uint32
	Price      uint64 // per GPU-hour
	ExitCode   int
	ResultHash string
	Start, End int64 // unix ms, the provider's clock
	Paid       uint64
	Payments   []string // transaction signatures
	// CheckpointBytes: the checkpoint bytes its provider says it sent
	// this peer (member 0's; 0 for the others).
	CheckpointBytes uint64
}

// Expect is what this peer saw and agreed of a member's run.
type Expect struct {
	Job        string
	Attempt    int
	Rank       int
	Provider   string
	Consumer   string
	Class      string
	GPUs       uint32
	Price      uint64
	Exited     bool              // its exit frame arrived
	ExitCode   int               // from its exit frame
	ResultHash string            // of the exit code and the outputs received
	Started    time.Time         // when the member says its work started
	Payments   map[string]uint64 // payments this peer made to it: signature → amount
	// CheckpointReceived is the checkpoint bytes this peer read from the
	// member's provider in this attempt, on its own count: a receipt may
	// claim as many, never more.
	CheckpointReceived uint64
}

// ReceiptSlack is how much longer than the member ran, as this peer saw it,
// a receipt may bill: clocks differ.
const ReceiptSlack = time.Minute

// CheckReceipt says what is wrong with a member's receipt, or "" when this
// peer may countersign it. now is the time of the check.
func CheckReceipt(r Receipt, want Expect, now time.Time) string {
	var sum uint64
	seen := make(map[string]bool, len(r.Payments))
	for _, p := range r.Payments {
		v, ok := want.Payments[p]
		if !ok {
			return "it lists a payment this peer did not make: " + p
		}
		if seen[p] {
			return "it lists a payment twice: " + p
		}
		seen[p] = true
		var carry uint64
		if sum, carry = bits.Add64(sum, v, 0); carry != 0 {
			sum = ^uint64(0)
		}
	}
	switch {
	case r.Paid != sum:
		return fmt.Sprintf("it says %d was paid, the payments it lists are %d", r.Paid, sum)
	case r.Job != want.Job || r.Rank != want.Rank || r.Attempt != want.Attempt:
		return fmt.Sprintf("it is for job %s attempt %d member %d", r.Job, r.Attempt, r.Rank)
	case r.Consumer != want.Consumer:
		return "it names another consumer, " + r.Consumer
	case r.Provider != want.Provider:
		return "it names another provider, " + r.Provider
	case r.GPUs != want.GPUs || r.Class != want.Class:
		return fmt.Sprintf("it bills %d %s GPUs, the lease was %d %s", r.GPUs, r.Class, want.GPUs, want.Class)
	case r.Price != want.Price:
		return fmt.Sprintf("it bills %d per GPU-hour, the bid was %d", r.Price, want.Price)
	case !want.Exited:
		return "the member's exit was not received"
	case r.ExitCode != want.ExitCode || r.ResultHash != want.ResultHash:
		return "its result does not match the exit code and outputs received"
	case r.End < r.Start:
		return "it ends before it starts"
	case r.CheckpointBytes > want.CheckpointReceived:
		return fmt.Sprintf("it says %d checkpoint bytes were sent, this peer received %d", r.CheckpointBytes, want.CheckpointReceived)
	}
	ran := now.Sub(want.Started) + ReceiptSlack
	if ms := uint64(r.End) - uint64(r.Start); ran < 0 || ms > uint64(ran/time.Millisecond) {
		return fmt.Sprintf("it bills %s, longer than the member ran", msDuration(ms))
	}
	return ""
}

// amount is what a lease allows for gpus over millis: receipt.Amount of
// the GPU-ms, saturated where GPUs × ms overflows.
func amount(pricePerHour uint64, gpus uint32, millis uint64) uint64 {
	hi, gpuMillis := bits.Mul64(uint64(gpus), millis)
	if hi != 0 {
		return ^uint64(0)
	}
	return receipt.Amount(pricePerHour, gpuMillis)
}

// msDuration writes ms as a duration, saturated.
func msDuration(ms uint64) time.Duration {
	const most = uint64(1<<63-1) / uint64(time.Millisecond)
	if ms > most {
		ms = most
	}
	return time.Duration(ms) * time.Millisecond
}
