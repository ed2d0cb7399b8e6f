package gossip

import (
	"fmt"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// popAll empties q, naming each message "peer:value".
func popAll(q *FairQueue[int]) []string {
	var got []string
	for {
		p, v, ok := q.Pop()
		if !ok {
			return got
		}
		got = append(got, fmt.Sprintf("%s:%d", string(p), v))
	}
}

func TestFairQueueTakesPeersInTurn(t *testing.T) {
	q := NewFairQueue[int](100, 10)
	for i := range 3 {
		q.Push("a", i)
	}
	q.Push("b", 0)
	q.Push("c", 0)
	q.Push("c", 1)
	want := []string{"a:0", "b:0", "c:0", "a:1", "c:1", "a:2"}
	if got := popAll(q); !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	if q.Len() != 0 {
		t.Errorf("Len %d after popping all, want 0", q.Len())
	}
}

func TestFairQueueDropsPastAPeersBound(t *testing.T) {
	q := NewFairQueue[int](100, 4)
	for i := range 10 {
		ok := q.Push("flood", i)
		if want := i < 4; ok != want {
			t.Errorf("push %d: %v, want %v", i, ok, want)
		}
	}
	if !q.Full("flood") || q.Full("other") {
		t.Errorf("Full: flooder %v, other %v; want true, false", q.Full("flood"), q.Full("other"))
	}
	if !q.Push("other", 0) {
		t.Error("another peer's message was dropped: one peer's bound must not hold back another")
	}
	if got := q.Dropped("flood"); got != 6 {
		t.Errorf("flooder's drops %d, want 6", got)
	}
	if got := q.Dropped("other"); got != 0 {
		t.Errorf("other's drops %d, want 0", got)
	}
	if got := q.Drops(); got != (FairQueueDrops{PeerBound: 6}) {
		t.Errorf("drops by why %+v, want 6 for the peer's bound", got)
	}
	want := []string{"flood:0", "other:0", "flood:1", "flood:2", "flood:3"}
	if got := popAll(q); !slices.Equal(got, want) {
		t.Errorf("order %v, want %v (the oldest kept, the newest dropped)", got, want)
	}
}

func TestFairQueueBoundsTheTotal(t *testing.T) {
	q := NewFairQueue[int](8, 4)
	// Two flooders fill it.
	for i := range 4 {
		q.Push("f1", i)
		q.Push("f2", i)
	}
	if q.Len() != 8 {
		t.Fatalf("Len %d, want 8", q.Len())
	}
	// A third peer takes the place of a flooder's newest, once and again.
	if !q.Push("h", 0) || !q.Push("h", 1) {
		t.Fatal("a peer with fewer waiting than the flooders was dropped from a full queue")
	}
	if q.Len() != 8 {
		t.Errorf("Len %d, want 8 (the total bound)", q.Len())
	}
	if got := q.Dropped("f1") + q.Dropped("f2"); got != 2 {
		t.Errorf("flooders' drops %d, want 2", got)
	}
	// Three each: no one has more than h would, so h's next is dropped.
	q.Push("h", 2)
	if q.Len() > 8 {
		t.Errorf("Len %d, over the total bound 8", q.Len())
	}
	if q.Waiting("h") != 2 || q.Dropped("h") != 1 {
		t.Errorf("h: %d waiting, %d dropped; want 2, 1 (the flooders have 3 each, no more than h would)", q.Waiting("h"), q.Dropped("h"))
	}
	// A flooder at the total cannot push out anyone with fewer.
	before := q.Waiting("h")
	q.Push("f1", 99)
	if q.Waiting("h") != before {
		t.Errorf("a flooder's push took the place of a message of a peer with fewer waiting")
	}
	// Each drop counted by why: two pushed out (for h), two for a full
	// queue (h's third, f1's last), none for a peer's own bound.
	if got, want := q.Drops(), (FairQueueDrops{Full: 2, PushedOut: 2}); got != want {
		t.Errorf("drops by why %+v, want %+v", got, want)
	}
}

// A peer new to a queue that holds a flooder's whole backlog is served
// after at most one of the flooder's messages.
func TestFairQueueServesANewPeerAmongAFloodersBacklogNext(t *testing.T) {
	q := NewFairQueue[int](1024, 32)
	for i := range 1000 {
		q.Push("flood", i)
	}
	if q.Waiting("flood") != 32 || q.Dropped("flood") != 968 {
		t.Fatalf("flooder: %d waiting, %d dropped; want 32, 968", q.Waiting("flood"), q.Dropped("flood"))
	}
	q.Pop() // the loop takes one
	q.Push("honest", 7)
	for range 2 {
		if p, v, _ := q.Pop(); p == "honest" {
			if v != 7 {
				t.Errorf("honest peer's message %d, want 7", v)
			}
			return
		}
	}
	t.Error("the new peer's message was not among the next two taken")
}

// Many flooders: a new peer waits for at most one message of each.
func TestFairQueueNewPeerWaitsOneMessageOfEachFlooder(t *testing.T) {
	q := NewFairQueue[int](0, 0)
	const flooders = 20
	for i := range 40 * flooders {
		q.Push(peer.ID(fmt.Sprint("f", i%flooders)), i)
	}
	q.Push("honest", 0)
	for i := range flooders + 1 {
		if p, _, _ := q.Pop(); p == "honest" {
			return
		} else if i == flooders {
			t.Errorf("the new peer's message not taken within %d", flooders+1)
		}
	}
}

func TestFairQueueForgetsDropCountsOfFewestPastItsBound(t *testing.T) {
	q := NewFairQueue[int](1, 1)
	q.Push("x", 0)
	for range 10 {
		q.Push("big", 0)
	}
	for i := range maxDropCounts + 10 {
		q.Push(peer.ID(fmt.Sprint("p", i)), 0)
	}
	if len(q.dropped) > maxDropCounts {
		t.Errorf("%d peers' drops counted, want at most %d", len(q.dropped), maxDropCounts)
	}
	if q.Dropped("big") != 10 {
		t.Errorf("the biggest dropper's count %d, want 10 (kept)", q.Dropped("big"))
	}
}
