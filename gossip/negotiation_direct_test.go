package gossip

import (
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// A direct negotiation asks only providers it was told of, never more
// than Fanout, never one twice, never one whose ask is above the max
// price, and broadcasts nothing while the candidates can be enough.
func TestDirectNegotiationAsksABoundedSetOfTheNamed(t *testing.T) {
	needs := needsOf(64, 8, Spread, 2_500_000)
	n, err := NewNegotiation(rfbOf(0, 1, needs), NegotiationConfig{Direct: true, Fanout: 10}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if r := n.Ready(); !r.Empty() {
		t.Fatalf("a direct negotiation did something before it was told of anyone: %+v", r)
	}
	var cs []Candidate
	named := map[peer.ID]bool{}
	for i := 1; i <= 300; i++ {
		price := uint64(2_000_000 + i*1000)
		if i%3 == 0 {
			price = 3_000_000 // above the max: never asked
		}
		cs = append(cs, Candidate{Provider: testID(i), GPUs: 8, Price: price})
		named[testID(i)] = price <= needs.MaxPrice
	}
	var asked []peer.ID
	for k := 0; k < len(cs); k += 50 { // as the board, then the directory, name them
		n.Candidates(cs[k:k+50], k+50 == len(cs), t0.Add(time.Duration(k)*time.Millisecond))
		r := n.Ready()
		if r.RequestForBids != nil {
			t.Fatalf("broadcast with %d candidates that list enough", k+50)
		}
		asked = append(asked, r.Ask...)
	}
	if len(asked) != 10 {
		t.Errorf("asked %d providers, want the fan-out of 10", len(asked))
	}
	seen := map[peer.ID]bool{}
	for _, p := range asked {
		if !named[p] {
			t.Errorf("asked %s: not named, or above the max price", p)
		}
		if seen[p] {
			t.Errorf("asked %s twice", p)
		}
		seen[p] = true
	}
	// The cheapest first: the first batch's cheapest 8 GPUs each, in order.
	want := []peer.ID{testID(1), testID(2), testID(4), testID(5), testID(7), testID(8), testID(10), testID(11), testID(13), testID(14)}
	if !slices.Equal(asked, want) {
		t.Errorf("asked %v, want the 10 cheapest %v", asked, want)
	}
}

// Told of no one by the time the directory has answered, a direct
// negotiation goes to the topic at once; told of nobody at all, it does
// so at FallbackWait.
func TestDirectNegotiationFallsBackToTheTopic(t *testing.T) {
	needs := needsOf(8, 0, Spread, 2_500_000)
	n, _ := NewNegotiation(rfbOf(0, 1, needs), NegotiationConfig{Direct: true}, t0)
	n.Candidates(nil, true, t0.Add(time.Millisecond))
	if r := n.Ready(); r.RequestForBids == nil {
		t.Errorf("the directory named no one: no broadcast")
	}
	n, _ = NewNegotiation(rfbOf(0, 2, needs), NegotiationConfig{Direct: true, FallbackWait: 300 * time.Millisecond}, t0)
	if w := n.Wake(); !w.Equal(t0.Add(300 * time.Millisecond)) {
		t.Errorf("wake %v, want the fallback wait", w.Sub(t0))
	}
	n.Tick(t0.Add(299 * time.Millisecond))
	if r := n.Ready(); r.RequestForBids != nil {
		t.Errorf("broadcast before the fallback wait")
	}
	n.Tick(t0.Add(300 * time.Millisecond))
	if r := n.Ready(); r.RequestForBids == nil {
		t.Errorf("no broadcast at the fallback wait")
	}
}

// A provider answers the requests sent to it directly before those of the
// topic, however many of the topic's wait, and the topic's when no direct
// one does.
func TestDirectRequestsArePoppedBeforeTheTopics(t *testing.T) {
	q := NewRequestQueues(0, 0)
	needs := needsOf(8, 0, Spread, 2_500_000)
	for i := 1; i <= 100; i++ {
		q.Push(rfbOf(i, byte(i), needs), false)
	}
	honest := rfbOf(200, 1, needs)
	q.Push(honest, true)
	if r, ok := q.Pop(t0); !ok || r.Job != honest.Job || r.Submitter != honest.Submitter {
		t.Fatalf("popped %v %v first, want the direct request", r.Submitter, ok)
	}
	if got := q.Len(); got != 100 {
		t.Errorf("%d waiting, want the topic's 100", got)
	}
	if r, ok := q.Pop(t0); !ok || r.Submitter != testID(1) {
		t.Errorf("then popped %v %v, want the topic's first", r.Submitter, ok)
	}
}

// The topic's requests are answered at most TopicAnswerRate a second, all
// submitters together: of the waiting requests of as many flooders as the
// burst (4 each), a burst's worth at once (one of each), then one every
// 1/TopicAnswerRate s (Next says when); a direct request is answered
// whenever it comes, and a new submitter on the topic is the next
// answered when the rate allows.
func TestTheTopicsRequestsAreAnsweredAtABoundedRate(t *testing.T) {
	q := NewRequestQueues(0, 0)
	needs := needsOf(8, 0, Spread, 2_500_000)
	for j := range 4 {
		for i := 1; i <= TopicAnswerBurst; i++ {
			r := rfbOf(i, byte(j), needs)
			r.Deadline = t0.Add(time.Hour).UnixMilli()
			q.Push(r, false)
		}
	}
	for k := range TopicAnswerBurst {
		if _, ok := q.Pop(t0); !ok {
			t.Fatalf("answer %d of the burst refused", k+1)
		}
	}
	if r, ok := q.Pop(t0); ok {
		t.Fatalf("answered %v past the burst, want none until the rate allows", r.Submitter)
	}
	step := time.Second / TopicAnswerRate
	if got := q.Next(t0); got != t0.Add(step) {
		t.Errorf("next answer at %v, want %v", got.Sub(t0), step)
	}
	direct := rfbOf(200, 1, needs)
	q.Push(direct, true)
	if got := q.Next(t0); got != t0 {
		t.Errorf("with a direct request waiting, next answer at %v, want now", got.Sub(t0))
	}
	if r, ok := q.Pop(t0); !ok || r.Submitter != direct.Submitter {
		t.Fatalf("popped %v %v, want the direct request however the topic's rate stands", r.Submitter, ok)
	}
	honest := rfbOf(201, 1, needs)
	honest.Deadline = t0.Add(time.Hour).UnixMilli()
	q.Push(honest, false)
	if r, ok := q.Pop(t0.Add(step)); !ok || r.Submitter != honest.Submitter {
		t.Fatalf("at the next token popped %v %v, want the new submitter on the topic", r.Submitter, ok)
	}
	if _, ok := q.Pop(t0.Add(step)); ok {
		t.Errorf("two topic answers for one token")
	}
	if got, want := q.Len(), 3*TopicAnswerBurst; got != want {
		t.Errorf("%d waiting, want %d", got, want)
	}
}
