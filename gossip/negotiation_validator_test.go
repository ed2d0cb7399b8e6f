package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// floodRFB is request n of submitter i, with a deadline d after at.
func floodRFB(t testing.TB, i, n int, at time.Time, d time.Duration) []byte {
	t.Helper()
	rfb := RequestForBids{Submitter: testID(i), Needs: needsOf(8, 0, Spread, usdc(250)), Deadline: at.Add(d).UnixMilli()}
	binary.BigEndian.PutUint32(rfb.Job[:4], uint32(i))
	binary.BigEndian.PutUint64(rfb.Job[8:], uint64(n))
	data, err := MarshalNegotiation(&rfb)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestRequestsThatNoHonestPeerSendsAreRejected(t *testing.T) {
	v := NewRFBValidator(RFBValidatorConfig{})
	good := floodRFB(t, 1, 1, t0, 5*time.Second)
	withAddrs := append(slices.Clone(good[:len(good)-1]), []byte(`,"addrs":["/ip4/127.0.0.1/tcp/4001"]}`)...)
	tests := []struct {
		name    string
		data    []byte
		signer  int
		now     time.Time
		verdict Verdict
		err     string
	}{
		{"a good request", good, 1, t0, Accept, ""},
		{"garbage", []byte("\x01{"), 1, t0, Reject, "bad negotiation message"},
		{"another kind", append([]byte{kindBid}, good[1:]...), 1, t0, Reject, "kind"},
		{"addresses to dial", withAddrs, 1, t0, Reject, `unknown field "addrs"`},
		{"signed by another peer", good, 2, t0, Reject, "names a submitter other than its signer"},
		{"past its deadline", good, 1, t0.Add(5 * time.Second), Ignore, "deadline has passed"},
		{"a deadline too far ahead", floodRFB(t, 1, 2, t0, 2*time.Minute), 1, t0, Ignore, "2m0s from now, at most 1m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, verdict, err := v.Validate(tt.data, testID(tt.signer), testID(tt.signer), tt.now)
			if verdict != tt.verdict {
				t.Errorf("verdict %v (%v), want %v", verdict, err, tt.verdict)
			}
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Errorf("err = %v, want one saying %q", err, tt.err)
			}
		})
	}
}

// A submitter that sends faster than its rate is rejected when it delivers
// its requests itself (GossipSub lowers its score) and ignored through a
// relay (which may have let a different part of the burst through); other
// submitters are not touched, and the submitter may go on at its rate.
func TestASubmitterOverItsRateIsRejected(t *testing.T) {
	v := NewRFBValidator(RFBValidatorConfig{Limits: RFBLimits{Burst: 4, Rate: 2}})
	flooder, relay, honest := testID(1), testID(2), testID(3)
	var accepted, rejected, ignored int
	for n := range 6000 {
		now := t0.Add(time.Duration(n) * 766 * time.Microsecond) // 6,000 in 4.6 s
		from := flooder
		if n%2 == 1 {
			from = relay
		}
		_, verdict, err := v.Validate(floodRFB(t, 1, n, now, 5*time.Second), flooder, from, now)
		switch verdict {
		case Accept:
			accepted++
		case Reject:
			rejected++
			if !errors.Is(err, ErrRequestRate) {
				t.Fatalf("request %d rejected for %v, want the rate", n, err)
			}
		case Ignore:
			ignored++
			if from != relay {
				t.Fatalf("request %d from the submitter itself ignored, want rejected: %v", n, err)
			}
		}
	}
	// 4 at once, then 2 a second for 4.6 s.
	if accepted < 4+9 || accepted > 4+10 {
		t.Errorf("%d of 6000 accepted, want the burst of 4 and 2 a second (13 or 14)", accepted)
	}
	if rejected < 2900 || ignored < 2900 {
		t.Errorf("%d rejected, %d ignored; want about half of the rest each", rejected, ignored)
	}
	now := t0.Add(4600 * time.Millisecond)
	if _, verdict, err := v.Validate(floodRFB(t, 3, 1, now, 5*time.Second), honest, relay, now); verdict != Accept {
		t.Fatalf("the honest submitter's request: %v (%v), want accepted", verdict, err)
	}
	later := now.Add(time.Second)
	if _, verdict, err := v.Validate(floodRFB(t, 1, 7000, later, 5*time.Second), flooder, flooder, later); verdict != Accept {
		t.Fatalf("the flooder's request at its rate: %v (%v), want accepted", verdict, err)
	}
}

// A submitter may have at most MaxOpen requests whose deadline has not
// passed, however slowly it sends them.
func TestOpenRequestsOfASubmitterAreCapped(t *testing.T) {
	v := NewRFBValidator(RFBValidatorConfig{Limits: RFBLimits{Burst: 100, Rate: 100, MaxOpen: 3}})
	for n := range 3 {
		if _, verdict, err := v.Validate(floodRFB(t, 1, n, t0, 50*time.Second), testID(1), testID(1), t0); verdict != Accept {
			t.Fatalf("request %d: %v (%v)", n, verdict, err)
		}
	}
	at := t0.Add(10 * time.Second)
	_, verdict, err := v.Validate(floodRFB(t, 1, 3, at, 5*time.Second), testID(1), testID(1), at)
	if verdict != Reject || !errors.Is(err, ErrTooManyRequests) || !strings.Contains(err.Error(), "3 whose deadline has not passed, at most 3") {
		t.Fatalf("the fourth open request: %v (%v), want rejected for too many open", verdict, err)
	}
	at = t0.Add(50 * time.Second) // the first three have passed their deadline
	if _, verdict, err := v.Validate(floodRFB(t, 1, 4, at, 5*time.Second), testID(1), testID(1), at); verdict != Accept {
		t.Fatalf("a request once the others closed: %v (%v)", verdict, err)
	}
}

func TestTheValidatorForgetsTheLeastRecentlySeenSubmitter(t *testing.T) {
	v := NewRFBValidator(RFBValidatorConfig{MaxAuthors: 3, Limits: RFBLimits{Burst: 1, Rate: 0.001}})
	for i := 1; i <= 4; i++ {
		if _, verdict, err := v.Validate(floodRFB(t, i, 1, t0, time.Second), testID(i), testID(i), t0); verdict != Accept {
			t.Fatalf("submitter %d: %v (%v)", i, verdict, err)
		}
	}
	if got := v.Submitters(); got != 3 {
		t.Fatalf("%d submitters remembered, want 3", got)
	}
	// Submitter 4 is remembered (its bucket is empty); 1 was forgotten.
	if _, verdict, _ := v.Validate(floodRFB(t, 4, 2, t0, time.Second), testID(4), testID(4), t0); verdict != Reject {
		t.Errorf("submitter 4 again: %v, want rejected", verdict)
	}
	if _, verdict, _ := v.Validate(floodRFB(t, 1, 2, t0, time.Second), testID(1), testID(1), t0); verdict != Accept {
		t.Errorf("submitter 1 after it was forgotten: %v, want accepted", verdict)
	}
}

// Requests a peer paces with its limits' Pace pass every validator with
// those limits, even when gossip delivers them late by up to a second,
// unevenly, out of order, and to a peer whose clock runs a second behind.
func TestPacedRequestsPassEveryValidator(t *testing.T) {
	limits := RFBLimits{}
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 20 {
		pacer := NewRFBPacer(limits.Pace())
		type sent struct {
			data []byte
			at   time.Time
		}
		var out []sent
		now := t0
		if at := pacer.Next(now); !at.Equal(now) {
			t.Fatalf("a fresh pacer makes the first request wait %v", at.Sub(now))
		}
		for n := range 200 {
			// A submitter that wants to go as fast as it can, in bursts.
			if rng.IntN(4) == 0 {
				now = now.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
			}
			now = pacer.Next(now)
			deadline := now.Add(5 * time.Second)
			if !pacer.Take(deadline, now) {
				t.Fatalf("trial %d: request %d refused at the time Next gave", trial, n)
			}
			out = append(out, sent{floodRFB(t, 1, n, now, 5*time.Second), now.Add(time.Duration(rng.IntN(1000)) * time.Millisecond)})
		}
		slices.SortStableFunc(out, func(a, b sent) int { return a.at.Compare(b.at) })
		v := NewRFBValidator(RFBValidatorConfig{Limits: limits})
		for n, s := range out {
			behind := s.at.Add(-time.Second)
			if _, verdict, err := v.Validate(s.data, testID(1), testID(1), behind); verdict != Accept {
				t.Fatalf("trial %d: paced request %d: %v (%v)", trial, n, verdict, err)
			}
		}
	}
}

// A provider answers waiting requests one submitter at a time: an honest
// request behind a flood waits for one request of each other submitter,
// not for the whole flood; a submitter keeps at most its newest
// PerSubmitter requests waiting; a full queue takes from the submitter with
// the most; requests past their deadline are dropped.
func TestWaitingRequestsAreAnsweredOneSubmitterAtATime(t *testing.T) {
	q := NewRequestQueue(64, 16)
	req := func(i, n int, d time.Duration) RequestForBids {
		r := floodJob(i, n)
		r.Deadline = t0.Add(d).UnixMilli()
		return r
	}
	dropped := 0
	for n := range 100 {
		dropped += q.Push(req(1, n, time.Second))
	}
	for n := range 3 {
		dropped += q.Push(req(2, n, time.Second))
	}
	q.Push(req(3, 0, time.Second))
	if q.Len() != 16+3+1 || dropped != 84 {
		t.Fatalf("%d waiting, %d pushed out; want 20 and 84", q.Len(), dropped)
	}
	var order []string
	for {
		r, ok := q.Pop(t0)
		if !ok {
			break
		}
		order = append(order, fmt.Sprintf("%d:%d", r.Job[14], int(r.Job[1])<<8|int(r.Job[2])))
	}
	want := "1:84 2:0 3:0 1:85 2:1 1:86 2:2 1:87 1:88 1:89 1:90 1:91 1:92 1:93 1:94 1:95 1:96 1:97 1:98 1:99"
	if got := strings.Join(order, " "); got != want {
		t.Fatalf("answered in the order\n%s\nwant\n%s", got, want)
	}

	// Full: the submitter with the most waiting gives up its oldest.
	q = NewRequestQueue(4, 4)
	for n := range 4 {
		q.Push(req(1, n, time.Second))
	}
	if d := q.Push(req(2, 0, time.Second)); d != 1 || q.Len() != 4 {
		t.Fatalf("a push to a full queue pushed out %d, %d waiting; want 1 and 4", d, q.Len())
	}
	if r, _ := q.Pop(t0); r.Job != req(1, 1, 0).Job {
		t.Errorf("first answered %v, want submitter 1's second request", r.Job)
	}

	// Past its deadline: dropped, not answered.
	q = NewRequestQueue(0, 0)
	q.Push(req(1, 0, time.Millisecond))
	q.Push(req(2, 0, time.Hour))
	if r, ok := q.Pop(t0.Add(time.Second)); !ok || r.Submitter != testID(2) || q.Len() != 0 {
		t.Errorf("popped %v (%v), %d left; want submitter 2's live request and nothing left", r.Submitter, ok, q.Len())
	}
}

// A submitter new to the queue is answered before every flooder the
// queue has answered already, however many of them wait: 100 flooders
// with 16 requests each, each answered once, then an honest request
// comes; it is the next answered. Flooders that wait from then on still
// take turns, the one answered longest ago first.
func TestANewSubmitterIsAnsweredBeforeFloodersAnsweredBefore(t *testing.T) {
	q := NewRequestQueue(4096, 16)
	for n := range 16 {
		for i := 1; i <= 100; i++ {
			q.Push(floodJob(i, n))
		}
	}
	for i := 1; i <= 100; i++ {
		if r, ok := q.Pop(t0); !ok || r.Submitter != testID(i) {
			t.Fatalf("answer %d went to %v (%v), want flooder %d (in the order they came)", i, r.Submitter, ok, i)
		}
	}
	honest := floodJob(200, 0)
	q.Push(honest)
	if r, ok := q.Pop(t0); !ok || r.Submitter != honest.Submitter {
		t.Fatalf("after 100 flooders' first answers, answered %v (%v); want the new honest submitter", r.Submitter, ok)
	}
	for i := 1; i <= 100; i++ {
		if r, ok := q.Pop(t0); !ok || r.Submitter != testID(i) {
			t.Fatalf("then answer %d went to %v (%v), want flooder %d (answered longest ago)", i, r.Submitter, ok, i)
		}
	}
	if got := q.Len(); got != 100*14 {
		t.Errorf("%d waiting, want 1,400", got)
	}
}

// Refuses says ahead of the signature check what Validate would refuse
// for the rate: a submitter over its allowance, not one under it, not one
// never seen (a forged name must not use up a real submitter's allowance),
// and it counts nothing itself.
func TestRefusesNamesOnlyASubmitterOverItsAllowance(t *testing.T) {
	v := NewRFBValidator(RFBValidatorConfig{Limits: RFBLimits{Burst: 2, Rate: 1}})
	flooder, stranger := testID(1), testID(2)
	if v.Refuses(stranger, t0) {
		t.Fatal("a submitter never seen is refused")
	}
	for n := range 100 {
		if v.Refuses(stranger, t0) {
			t.Fatalf("asking %d times used up a stranger's allowance", n+1)
		}
	}
	if v.Submitters() != 0 {
		t.Fatalf("Refuses remembered %d submitters, want none", v.Submitters())
	}
	for n := range 2 {
		if _, verdict, err := v.Validate(floodRFB(t, 1, n, t0, 5*time.Second), flooder, flooder, t0); verdict != Accept {
			t.Fatalf("request %d of the burst: %v (%v)", n, verdict, err)
		}
	}
	if !v.Refuses(flooder, t0) {
		t.Fatal("a submitter that spent its burst is not refused")
	}
	if _, verdict, _ := v.Validate(floodRFB(t, 1, 3, t0, 5*time.Second), flooder, testID(3), t0); verdict != Ignore {
		t.Fatalf("relayed request over the rate: %v, want ignored (what Refuses foretold)", verdict)
	}
	later := t0.Add(time.Second)
	if v.Refuses(flooder, later) {
		t.Fatal("a submitter whose allowance refilled is still refused")
	}
}

// However many identities ask, a peer accepts at most its total bound of
// the topic's requests (each of these submitters keeps to its own rate);
// what is over it is ignored, never rejected, even from the submitter
// itself; and a submitter quiet for a minute still finds the reserve left
// for it in the middle of the flood.
func TestAPeerAcceptsAtMostItsTotalOfAllSubmitters(t *testing.T) {
	total := TopicTotal()
	v := NewRFBValidator(RFBValidatorConfig{Limits: TopicLimits(), Total: total})
	const flooders, steps = 100, 1000 // one request every 10 ms, each flooder once a second, for 10 s
	honest := testID(1000)
	var accepted, honestAt int
	for n := range steps {
		now := t0.Add(time.Duration(n) * 10 * time.Millisecond)
		i := n % flooders
		_, verdict, err := v.Validate(floodRFB(t, i, n, now, 5*time.Second), testID(i), testID(i), now)
		switch verdict {
		case Accept:
			accepted++
		case Ignore:
			if !errors.Is(err, ErrTopicBusy) {
				t.Fatalf("request %d ignored for %v, want the total bound", n, err)
			}
		default:
			t.Fatalf("request %d of a submitter within its rate: %v (%v), want accepted or ignored", n, verdict, err)
		}
		if n == steps/2 {
			_, verdict, err := v.Validate(floodRFB(t, 1000, 1, now, 5*time.Second), honest, testID(2000), now)
			if verdict != Accept {
				t.Fatalf("a quiet submitter's request amid the flood: %v (%v), want accepted", verdict, err)
			}
			honestAt = n
			if _, verdict, err := v.Validate(floodRFB(t, i, n+steps, now, 5*time.Second), testID(i), testID(i), now); verdict != Ignore || !errors.Is(err, ErrTopicBusy) {
				t.Fatalf("a flooder's request at the same moment: %v (%v), want ignored for the total bound", verdict, err)
			}
		}
	}
	elapsed := time.Duration(steps-1) * 10 * time.Millisecond
	most := total.Burst + int(total.Rate*elapsed.Seconds())
	if accepted > most {
		t.Errorf("%d of the flood's %d accepted in %v, want at most %d", accepted, steps, elapsed, most)
	}
	// The quiet flooders' first requests take the whole burst, then those
	// that asked take what rises above the reserve.
	if least := total.Burst + int(total.Rate*elapsed.Seconds()) - total.Reserve - 2; accepted < least {
		t.Errorf("%d of the flood's %d accepted in %v, want at least %d (the bound used)", accepted, steps, elapsed, least)
	}
	t.Logf("%d flooders: %d of %d accepted in %v; a quiet submitter's at step %d", flooders, accepted, steps, elapsed, honestAt)
}

// With a total bound, Refuses foretells what Validate refuses for it:
// while only the reserve is left, a submitter that asked within the quiet
// time, not one that did not nor one never seen; once the reserve is
// spent too, anyone.
func TestRefusesFollowsTheTotalBound(t *testing.T) {
	v := NewRFBValidator(RFBValidatorConfig{Limits: RFBLimits{Burst: 10, Rate: 10, MaxOpen: 10},
		Total: TotalLimits{Burst: 4, Rate: 0.001, Reserve: 2, Quiet: time.Minute}})
	for n := range 2 {
		if _, verdict, err := v.Validate(floodRFB(t, 1, n, t0, 5*time.Second), testID(1), testID(1), t0); verdict != Accept {
			t.Fatalf("request %d: %v (%v)", n, verdict, err)
		}
	}
	if !v.Refuses(testID(1), t0) {
		t.Error("a submitter that asked, with only the reserve left, is not refused")
	}
	if v.Refuses(testID(2), t0) {
		t.Error("a submitter never seen is refused while the reserve is left")
	}
	if _, verdict, err := v.Validate(floodRFB(t, 1, 2, t0, 5*time.Second), testID(1), testID(1), t0); verdict != Ignore || !errors.Is(err, ErrTopicBusy) {
		t.Fatalf("the submitter that asked: %v (%v), want ignored for the total bound", verdict, err)
	}
	for i := 2; i <= 3; i++ {
		if _, verdict, err := v.Validate(floodRFB(t, i, 0, t0, 5*time.Second), testID(i), testID(9), t0); verdict != Accept {
			t.Fatalf("quiet submitter %d: %v (%v), want accepted from the reserve", i, verdict, err)
		}
	}
	if !v.Refuses(testID(4), t0) {
		t.Error("a submitter never seen is not refused once the reserve is spent")
	}
	if _, verdict, err := v.Validate(floodRFB(t, 4, 0, t0, 5*time.Second), testID(4), testID(4), t0); verdict != Ignore || !errors.Is(err, ErrTopicBusy) {
		t.Fatalf("a quiet submitter once the reserve is spent: %v (%v), want ignored", verdict, err)
	}
}

// A peer's own requests go out however busy others have made it: they
// are not held to the total bound (its own pacer bounds them), and take
// nothing of it.
func TestAPeersOwnRequestsAreNotHeldToTheTotalBound(t *testing.T) {
	self := testID(7)
	v := NewRFBValidator(RFBValidatorConfig{Limits: TopicLimits(), Total: TotalLimits{Burst: 2, Rate: 0.001, Reserve: 1}, Self: self})
	for i := 1; i <= 2; i++ {
		if _, verdict, err := v.Validate(floodRFB(t, i, 0, t0, 5*time.Second), testID(i), testID(i), t0); verdict != Accept {
			t.Fatalf("quiet submitter %d: %v (%v)", i, verdict, err)
		}
	}
	if _, verdict, err := v.Validate(floodRFB(t, 3, 0, t0, 5*time.Second), testID(3), testID(3), t0); verdict != Ignore || !errors.Is(err, ErrTopicBusy) {
		t.Fatalf("another submitter once the bound is spent: %v (%v), want ignored", verdict, err)
	}
	for n := range 2 {
		if _, verdict, err := v.Validate(floodRFB(t, 7, n, t0, 5*time.Second), self, self, t0); verdict != Accept {
			t.Fatalf("this peer's own request %d: %v (%v), want accepted", n, verdict, err)
		}
	}
	if _, verdict, err := v.Validate(floodRFB(t, 7, 2, t0, 5*time.Second), self, testID(3), t0); verdict != Ignore || !errors.Is(err, ErrTopicBusy) {
		t.Fatalf("this peer's name on a request a relay delivered: %v (%v), want held to the bound", verdict, err)
	}
}

// A copy of a request this peer dropped for the total bound (GossipSub
// offers an ignored message again) is checked as that request: a quiet
// submitter's one request, dropped while a flood spent the bound, passes
// at a later copy once a token is back, rather than needing the reserve
// as a submitter that just asked. Copies past maxDroppedCopies are new
// requests again.
func TestACopyOfADroppedRequestIsCheckedAsThatRequest(t *testing.T) {
	newV := func() *RFBValidator {
		v := NewRFBValidator(RFBValidatorConfig{Limits: RFBLimits{Burst: 20, Rate: 10, MaxOpen: 20},
			Total: TotalLimits{Burst: 4, Rate: 10, Reserve: 2, Quiet: time.Minute}})
		for i := range 4 { // four quiet submitters spend the bound
			if _, verdict, err := v.Validate(floodRFB(t, i, 0, t0, 5*time.Second), testID(i), testID(i), t0); verdict != Accept {
				t.Fatalf("submitter %d: %v (%v)", i, verdict, err)
			}
		}
		return v
	}
	stranger, relay := testID(100), testID(200)
	req := floodRFB(t, 100, 1, t0, 5*time.Second)

	v := newV()
	if _, verdict, err := v.Validate(req, stranger, relay, t0); verdict != Ignore || !errors.Is(err, ErrTopicBusy) {
		t.Fatalf("the stranger's request with the bound spent: %v (%v), want ignored for the total", verdict, err)
	}
	later := t0.Add(150 * time.Millisecond) // 1.5 tokens back: enough for a quiet submitter, not for one that asked
	if _, verdict, err := v.Validate(req, stranger, relay, later); verdict != Accept {
		t.Fatalf("a copy of it once a token is back: %v (%v), want accepted as the quiet submitter's request it is", verdict, err)
	}
	// Another request of the stranger now is a new one of a submitter
	// that asked: it needs the reserve.
	if _, verdict, _ := v.Validate(floodRFB(t, 100, 2, later, 5*time.Second), stranger, relay, later); verdict != Ignore {
		t.Errorf("the stranger's second request: %v, want ignored (it asked within the minute)", verdict)
	}

	v = newV()
	for k := range maxDroppedCopies + 1 {
		if _, verdict, _ := v.Validate(req, stranger, relay, t0); verdict != Ignore {
			t.Fatalf("copy %d with the bound spent: %v, want ignored", k, verdict)
		}
	}
	if _, verdict, _ := v.Validate(req, stranger, relay, later); verdict != Ignore {
		t.Errorf("a copy past %d copies: %v, want ignored (checked as a new request of a submitter that asked)", maxDroppedCopies, verdict)
	}
}

// A direct negotiation asks a provider again when its request may have
// been lost, and its pacer counted the request once: the provider's
// validator (AskedAgain) takes the same request (submitter, job,
// deadline) again as often, counting it once; a copy past that, or one
// with another deadline, counts as a new request; on the topic
// (AskedAgain 0) every copy counts.
func TestAnOpenRequestAskedAgainCountsOnce(t *testing.T) {
	const burst = 8
	for _, tt := range []struct {
		name       string
		askedAgain int
		wantNew    int // of burst new requests right after, accepted
	}{
		{"direct", MaxAskedAgain, burst - 1},
		{"topic", 0, burst - 1 - MaxAskedAgain},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v := NewRFBValidator(RFBValidatorConfig{Limits: RFBLimits{Burst: burst, Rate: 0.001}, AskedAgain: tt.askedAgain})
			sub := testID(1)
			req := floodRFB(t, 1, 0, t0, 5*time.Second)
			for i := range 1 + MaxAskedAgain {
				if _, verdict, err := v.Validate(req, sub, sub, t0.Add(time.Duration(i)*time.Millisecond)); verdict != Accept {
					t.Fatalf("ask %d of the same request: %v (%v), want it accepted", i+1, verdict, err)
				}
			}
			accepted := 0
			for n := 1; n <= burst; n++ {
				if _, verdict, _ := v.Validate(floodRFB(t, 1, n, t0, 5*time.Second), sub, sub, t0.Add(10*time.Millisecond)); verdict == Accept {
					accepted++
				}
			}
			if accepted != tt.wantNew {
				t.Errorf("%d new requests of %d accepted after the same one asked %d times, want %d", accepted, burst, 1+MaxAskedAgain, tt.wantNew)
			}
		})
	}
	t.Run("past the asks again, or another deadline", func(t *testing.T) {
		v := NewRFBValidator(RFBValidatorConfig{Limits: RFBLimits{Burst: 3, Rate: 0.001}, AskedAgain: MaxAskedAgain})
		sub := testID(1)
		req := floodRFB(t, 1, 0, t0, 5*time.Second)
		for i := range 1 + MaxAskedAgain {
			if _, verdict, err := v.Validate(req, sub, sub, t0); verdict != Accept {
				t.Fatalf("ask %d: %v (%v)", i+1, verdict, err)
			}
		}
		// The same job with a later deadline is a new request: it takes
		// the second token.
		later := floodRFB(t, 1, 0, t0, 6*time.Second)
		if _, verdict, err := v.Validate(later, sub, sub, t0); verdict != Accept {
			t.Fatalf("the job with another deadline: %v (%v)", verdict, err)
		}
		// One copy past MaxAskedAgain takes the third, the next finds none.
		if _, verdict, err := v.Validate(req, sub, sub, t0); verdict != Accept {
			t.Fatalf("a copy past the asks again, a token left: %v (%v), want it counted and accepted", verdict, err)
		}
		if _, verdict, err := v.Validate(req, sub, sub, t0); verdict != Reject || !errors.Is(err, ErrRequestRate) {
			t.Fatalf("a copy past the asks again, no token left: %v (%v), want rejected for the rate", verdict, err)
		}
	})
}

// A negotiation never asks a provider again more often than providers
// take as asks again.
func TestReasksStayWithinWhatProvidersTakeAsAsksAgain(t *testing.T) {
	for _, r := range []int{0, 1, 2, 5, 100} {
		c := NegotiationConfig{Reasks: r}.withDefaults()
		if 1+c.Reasks > MaxAskedAgain { // one beside the fallback, one a round
			t.Errorf("Reasks %d → %d: with the one beside the fallback, %d asks again, providers take %d", r, c.Reasks, 1+c.Reasks, MaxAskedAgain)
		}
	}
}
