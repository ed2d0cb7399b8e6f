// Package reputation scores providers from evidence a peer can check
// itself, with every input of the score visible. It is pure: no I/O, no
// clock, no network; the node gathers the evidence, verifies it and keeps
// it, and asks this package what it adds up to.
//
// # Evidence
//
// First-hand: the runs this peer saw as a submitter. Each member's run of
// an attempt ends finished (its member exited, with any code: a job's own
// non-zero exit is the job's fault), failed by its provider (it broke a
// rule: billed what it was not owed, sent more than allowed) or lost (it
// vanished, stopped answering, never started). Runs stopped by this peer
// or by another member's failure count for nothing. A first-hand run
// counts fully: this peer saw it.
//
// First-hand too: the awards a provider refused (or took back) after it
// had bid, in this peer's negotiations, and those it did not answer
// before the award timeout (silent: it kept the submitter waiting, then
// was replaced), counted alike. A provider that bids and then
// refuses every award costs its submitters a negotiation each time; an
// honest one refuses when another submitter's award took the GPUs first,
// which any provider meets now and then. So a refusal weighs RefusalWeight
// of a failure (0.2: one finished run makes up for it), and refusals
// together at most MaxRefusals of them (5: as much as one failed run):
//
//	refused = RefusalWeight × min(refusals, MaxRefusals)
//
// An unknown provider that refused once (0.77) is below an unknown one
// (0.8) and is asked last, until a finished run lifts it again (0.81); one
// that refuses everything stays at 0.67 at worst from refusals alone.
//
// Third-party: receipts another submitter co-signed with the provider,
// anchored on Solana, which the provider shows on request. The node counts
// one only after checking both signatures, the Merkle proof against the
// root in the anchoring transaction, and each payment the receipt names
// (a transfer from its consumer to its provider on chain). Such a receipt
// can only show work finished (a provider shows none of its failures), so
// it counts only as much as its consumer paid on chain for it:
//
//	weight = min(1, paid / FullWeightPaid)
//
// and one consumer's receipts count at most MaxPerConsumer together, so a
// ring of fresh identities co-signing each other's receipts adds what it
// paid on chain, no more. A receipt without the consumer's signature (the
// provider's word alone), one whose consumer is its provider, and one of
// this peer's own jobs (already first-hand) count for nothing.
//
// # Score
//
// The score is the expected share of a provider's work it finishes, the
// mean of a Beta posterior:
//
//	score = (PriorFinished + finished) / (PriorFinished + PriorFailed + finished + failed + lost + refused)
//
// where finished is the first-hand finished runs plus the third-party
// weight, failed and lost the first-hand ones, refused the weighed
// refusals. The prior (4 finished, 1
// failed: a score of 0.8 for a provider nobody has seen) says a provider
// is presumed to finish most work, and weighs as much as five jobs. A mean
// rather than a lower bound: under a lower bound every unknown provider
// ranks below one that fails half its jobs, and a market that never tries
// a newcomer never learns; under the mean a provider of half failures
// falls below an unknown one after its first failure.
//
// Selection compares scores to two decimals (Score.Rank): less than 0.01
// between two providers is a tie.
package reputation

import (
	"fmt"
	"math"
	"sort"
)

// Outcome is how a member's run ended, as its submitter saw it.
type Outcome string

// Outcomes of a first-hand run.
const (
	Finished       Outcome = "finished"        // its member exited (any code)
	ProviderFailed Outcome = "provider-failed" // its provider broke a rule
	Lost           Outcome = "lost"            // its provider vanished or stopped answering
	// Refused is no run: the provider refused (or took back) an award of
	// this peer's after it had bid, or did not answer it in time (see
	// Evidence for its weight).
	Refused Outcome = "refused"
)

// Valid reports whether o is one of the outcomes.
func (o Outcome) Valid() bool {
	return o == Finished || o == ProviderFailed || o == Lost || o == Refused
}

// Run is one first-hand run: a member's run of an attempt of this peer's
// job.
type Run struct {
	Key      string  `json:"key"`      // <job>-<attempt>-<rank>
	Provider string  `json:"provider"` // peer ID
	Outcome  Outcome `json:"outcome"`
	Cosigned bool    `json:"cosigned,omitempty"` // this peer co-signed its receipt
	Reason   string  `json:"reason,omitempty"`   // why it failed or was lost
	At       int64   `json:"at"`                 // unix ms, when it ended
}

// Receipt is one third-party receipt, verified: both signatures, the
// proof against its anchored root, and its payments on chain.
type Receipt struct {
	Key      string `json:"key"`      // <job>-<attempt>-<rank>
	Provider string `json:"provider"` // peer ID
	Consumer string `json:"consumer"` // the consumer's Solana address
	Amount   uint64 `json:"amount"`   // the receipt's amount, in the unit's smallest unit
	Paid     uint64 `json:"paid"`     // what the chain shows its consumer paid its provider for it
	Unit     string `json:"unit"`
	Root     string `json:"root"`     // the anchored Merkle root, hex
	Anchor   string `json:"anchor"`   // the anchoring transaction
	Slot     uint64 `json:"slot"`     // its slot
	Verified int64  `json:"verified"` // unix ms, when this peer checked it
	Cosigned bool   `json:"cosigned"` // both parties signed it
	SelfPaid bool   `json:"selfPaid"` // its consumer is its provider's own key
	OwnJob   bool   `json:"ownJob"`   // its consumer is this peer: first-hand already
}

// Params are the constants of the formula. The zero value takes every
// default.
type Params struct {
	PriorFinished  float64 // pseudo-runs finished; 0: 4
	PriorFailed    float64 // pseudo-runs failed; 0: 1
	FullWeightPaid uint64  // paid for a third-party receipt to count as one run, in the unit's smallest unit; 0: one whole unit (10^decimals)
	Decimals       int     // of the unit, for the default FullWeightPaid; 0: 6
	MaxPerConsumer float64 // the most one consumer's receipts count together; 0: 3
	RefusalWeight  float64 // what one refused award weighs, in failed runs; 0: 0.2
	MaxRefusals    int     // refused awards counted at most; 0: 5
}

func (p Params) withDefaults() Params {
	if p.PriorFinished <= 0 {
		p.PriorFinished = 4
	}
	if p.PriorFailed <= 0 {
		p.PriorFailed = 1
	}
	if p.Decimals <= 0 {
		p.Decimals = 6
	}
	if p.FullWeightPaid == 0 {
		p.FullWeightPaid = uint64(math.Pow10(min(p.Decimals, 18)))
	}
	if p.MaxPerConsumer <= 0 {
		p.MaxPerConsumer = 3
	}
	if p.RefusalWeight <= 0 {
		p.RefusalWeight = 0.2
	}
	if p.MaxRefusals <= 0 {
		p.MaxRefusals = 5
	}
	return p
}

// FullWeight is what must be paid for a third-party receipt to count as
// one run, defaults taken.
func (p Params) FullWeight() uint64 { return p.withDefaults().FullWeightPaid }

// Unknown is the score of a provider without evidence.
func (p Params) Unknown() float64 {
	p = p.withDefaults()
	return p.PriorFinished / (p.PriorFinished + p.PriorFailed)
}

// Score is a provider's score with its inputs.
type Score struct {
	Provider string  `json:"provider"`
	Score    float64 `json:"score"` // 0..1: the expected share of its work it finishes

	// First-hand runs.
	Finished       int `json:"finished"`
	ProviderFailed int `json:"providerFailed"`
	Lost           int `json:"lost"`
	Cosigned       int `json:"cosigned"` // finished runs whose receipt this peer co-signed
	// Refused is the awards it refused (or did not answer) after bidding; RefusedWeight what
	// they weigh, in failed runs (RefusalWeight each, MaxRefusals at most).
	Refused       int     `json:"refused"`
	RefusedWeight float64 `json:"refusedWeight"`

	// Third-party receipts.
	Receipts      int     `json:"receipts"`      // verified receipts shown
	Counted       int     `json:"counted"`       // of them, those of any weight
	Weight        float64 `json:"weight"`        // their weight together, in runs
	Consumers     int     `json:"consumers"`     // distinct consumers of weight
	PaidTotal     uint64  `json:"paidTotal"`     // what their consumers paid, per the chain
	Uncountable   int     `json:"uncountable"`   // not co-signed, self-paid or this peer's own: weight 0
	PriorFinished float64 `json:"priorFinished"` // the prior, as pseudo-runs
	PriorFailed   float64 `json:"priorFailed"`
	FullWeight    uint64  `json:"fullWeightPaid"` // paid for a receipt to count as one run
	PerConsumer   float64 `json:"maxPerConsumer"` // the most one consumer's receipts count
	Formula       string  `json:"formula"`        // the computation with these numbers
}

// Rank is the score as selection compares it: to two decimals, so that a
// difference under 0.01 (a receipt for a few lamports, say) is no
// evidence at all and leaves a tie to the other rules.
func (s Score) Rank() float64 { return math.Round(s.Score*100) / 100 }

// Compute scores one provider from its first-hand runs and verified
// third-party receipts. Runs and receipts of other providers are ignored;
// a receipt key counted twice counts once.
func Compute(params Params, provider string, runs []Run, receipts []Receipt) Score {
	p := params.withDefaults()
	s := Score{Provider: provider, PriorFinished: p.PriorFinished, PriorFailed: p.PriorFailed, FullWeight: p.FullWeightPaid, PerConsumer: p.MaxPerConsumer}
	seen := map[string]bool{}
	for _, r := range runs {
		if r.Provider != provider || seen["run:"+r.Key] {
			continue
		}
		seen["run:"+r.Key] = true
		switch r.Outcome {
		case Finished:
			s.Finished++
			if r.Cosigned {
				s.Cosigned++
			}
		case ProviderFailed:
			s.ProviderFailed++
		case Lost:
			s.Lost++
		case Refused:
			s.Refused++
		}
	}
	s.RefusedWeight = p.RefusalWeight * float64(min(s.Refused, p.MaxRefusals))
	perConsumer := map[string]float64{}
	var consumers []string
	for _, r := range receipts {
		if r.Provider != provider || seen["receipt:"+r.Key] {
			continue
		}
		seen["receipt:"+r.Key] = true
		s.Receipts++
		if !r.Cosigned || r.SelfPaid || r.OwnJob || seen["run:"+r.Key] {
			s.Uncountable++
			continue
		}
		w := math.Min(1, float64(r.Paid)/float64(p.FullWeightPaid))
		if w <= 0 {
			continue
		}
		if _, ok := perConsumer[r.Consumer]; !ok {
			consumers = append(consumers, r.Consumer)
		}
		perConsumer[r.Consumer] += w
		s.Counted++
		if s.PaidTotal+r.Paid >= s.PaidTotal {
			s.PaidTotal += r.Paid
		}
	}
	sort.Strings(consumers)
	for _, c := range consumers {
		s.Weight += math.Min(perConsumer[c], p.MaxPerConsumer)
	}
	s.Consumers = len(consumers)
	good := p.PriorFinished + float64(s.Finished) + s.Weight
	all := good + p.PriorFailed + float64(s.ProviderFailed+s.Lost) + s.RefusedWeight
	s.Score = good / all
	s.Formula = fmt.Sprintf("(%g prior + %d finished + %.3f third-party) / (%g prior + %d finished + %.3f third-party + %g prior failed + %d provider-failed + %d lost + %.3f refused) = %.3f",
		p.PriorFinished, s.Finished, s.Weight, p.PriorFinished, s.Finished, s.Weight, p.PriorFailed, s.ProviderFailed, s.Lost, s.RefusedWeight, s.Score)
	return s
}
