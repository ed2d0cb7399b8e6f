package node_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// Hostile peers against the direct request for bids (node.RFBProtocol):
// each speaks the real protocol, and the provider's answer is read off
// the wire (bids in the adversary's inbox) and off its own count of the
// negotiation messages it sent.

// rfbBurst and rfbRate are the bounds a provider holds each submitter's
// direct requests to (gossip.RFBLimits): 8 at once, 5 a second.
const rfbBurst, rfbRate = 8, 5.0

// bidsOf counts the bids an adversary was sent.
func bidsOf(a *meshtest.Adversary) int {
	n := 0
	for _, m := range a.Inbox() {
		if _, ok := m.(*gossip.Bid); ok {
			n++
		}
	}
	return n
}

// maxBids is what one submitter may get in answer to requests sent over
// elapsed: the burst, the rate's worth, and one of slack for rounding.
func maxBids(elapsed time.Duration) int {
	return rfbBurst + int(rfbRate*elapsed.Seconds()) + 1
}

// One identity sends a provider 400 direct requests as fast as it can
// while an honest job is submitted: the provider answers no more than the
// per-author rate allows (the rest are refused before their bytes are
// read or their signatures checked), and the honest job forms.
func TestAFloodOfDirectRequestsFromOneIdentityIsBounded(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(0xd1, 1))
	prov, sub := m.Nodes[0], m.Nodes[1]
	adv := m.AddAdversary(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	provID := prov.Host().ID()
	start := time.Now()
	refused := 0
	for range 400 {
		if adv.Ask(ctx, provID, adv.Request(meshtest.NewJobID(), h100, 8, 2_500_000, "USDC:6")) != nil {
			refused++
		}
	}
	job := submit(t, ctx, sub, jobSpec(t, 8, ""))
	elapsed := time.Since(start)
	if job.State != node.JobFormed && job.State != node.JobRunning {
		t.Fatalf("the honest job: %s (%s), want formed", job.State, job.Reason)
	}
	if got, most := bidsOf(adv), maxBids(elapsed); got > most {
		t.Errorf("the flooder got %d bids in %v, want at most %d", got, elapsed.Round(time.Millisecond), most)
	}
	if refused == 0 {
		t.Errorf("no request of 400 was refused on the stream")
	}
	t.Logf("flooder: %d bids, %d of 400 refused on the stream, in %v", bidsOf(adv), refused, elapsed.Round(time.Millisecond))
	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	waitFree(t, ctx, []*node.Node{prov})
}

// Twenty identities send 30 direct requests each at once, while an honest
// job is submitted: each gets no more bids than its own rate allows, and
// the honest job forms (the fair queue answers one request of each
// submitter in turn).
func TestAFloodOfDirectRequestsFromManyIdentitiesIsBounded(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(0xd2, 1))
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	provID := prov.Host().ID()
	advs := make([]*meshtest.Adversary, 20)
	for i := range advs {
		advs[i] = m.AddAdversary(t, i)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, a := range advs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 30 {
				_ = a.Ask(ctx, provID, a.Request(meshtest.NewJobID(), h100, 8, 2_500_000, "USDC:6"))
			}
		}()
	}
	job := submit(t, ctx, sub, jobSpec(t, 8, ""))
	wg.Wait()
	elapsed := time.Since(start)
	if job.State != node.JobFormed && job.State != node.JobRunning {
		t.Fatalf("the honest job: %s (%s), want formed", job.State, job.Reason)
	}
	total := 0
	for i, a := range advs {
		got := bidsOf(a)
		total += got
		if most := maxBids(elapsed); got > most {
			t.Errorf("flooder %d got %d bids in %v, want at most %d", i, got, elapsed.Round(time.Millisecond), most)
		}
	}
	t.Logf("20 flooders: %d bids for 600 requests in %v", total, elapsed.Round(time.Millisecond))
	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	waitFree(t, ctx, []*node.Node{prov})
}

// Direct requests that no honest submitter sends are answered with
// nothing: one that names another submitter (signed by the sender), an
// honest submitter's signed request sent on by someone else (a replay),
// one too large to be a request, a request on the negotiation protocol
// (which bounds no author's rate), and a request to a peer that offers no
// GPUs. The provider sends no bid to anyone for them — its count of sent
// messages does not move — and still answers the adversary's next plain
// request with one bid.
func TestDirectRequestsNoHonestPeerSendsGetNoBid(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(0xd3, 1))
	prov, sub := m.Nodes[0], m.Nodes[1]
	adv := m.AddAdversary(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	provID := prov.Host().ID()
	sent0 := prov.NegotiationMessages()

	victim := sub.Host().ID()
	forged := adv.Request(meshtest.NewJobID(), h100, 8, 2_500_000, "USDC:6")
	forged.Submitter = victim // written as the honest submitter, signed by the adversary
	if data, err := node.SealNegotiation(adv.ID, forged); err != nil {
		t.Fatal(err)
	} else {
		_ = adv.AskRaw(ctx, provID, data)
	}

	other, err := node.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	honest := adv.Request(meshtest.NewJobID(), h100, 8, 2_500_000, "USDC:6")
	honest.Submitter = other.PeerID
	replayed, err := node.SealNegotiation(other, honest) // rightly signed by its author, sent by the adversary
	if err != nil {
		t.Fatal(err)
	}
	_ = adv.AskRaw(ctx, provID, replayed)

	_ = adv.AskRaw(ctx, provID, bytes.Repeat([]byte{'x'}, 64<<10))

	_ = adv.Send(ctx, provID, adv.Request(meshtest.NewJobID(), h100, 8, 2_500_000, "USDC:6"))

	if err := adv.Ask(ctx, victim, adv.Request(meshtest.NewJobID(), h100, 8, 2_500_000, "USDC:6")); err == nil {
		// The stream may be reset before or after the write: either way no bid.
		t.Logf("a peer without GPUs took the stream; it must send nothing")
	}

	marker := meshtest.NewJobID()
	if err := adv.Ask(ctx, provID, adv.Request(marker, h100, 8, 2_500_000, "USDC:6")); err != nil {
		t.Fatal(err)
	}
	if _, err := adv.Received(ctx, func(m gossip.Message) bool { return m.JobID() == marker }); err != nil {
		t.Fatal(err)
	}
	if got := bidsOf(adv); got != 1 {
		t.Errorf("the adversary got %d bids, want 1 (for its plain request)", got)
	}
	// The marker's bid was sent after everything before it was refused or
	// answered: the provider's loop takes requests in order.
	if got := prov.NegotiationMessages() - sent0; got != 1 {
		t.Errorf("the provider sent %d negotiation messages, want 1 (the marker's bid)", got)
	}
	if got := sub.NegotiationMessages(); got != 0 {
		t.Errorf("the peer without GPUs sent %d negotiation messages, want 0", got)
	}
	// And the honest submitter's own job forms from the provider.
	job := submit(t, ctx, sub, jobSpec(t, 8, ""))
	if job.State != node.JobFormed && job.State != node.JobRunning {
		t.Fatalf("the honest job: %s (%s), want formed", job.State, job.Reason)
	}
	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	waitFree(t, ctx, []*node.Node{prov})
}

// A job's request goes to the providers the directory and the price board
// name, and to no one else: of 6 providers of 8 GPUs each, an 8-GPU job
// asks a few (twice the GPUs needed), never the whole mesh, and forms.
func TestARequestGoesOnlyToTheProvidersNamed(t *testing.T) {
	m := meshtest.Start(t, 8, h100s(0xd4, 6))
	sub := m.Nodes[7]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	testwait.Until(t, ctx, "the directory to list every provider", func() (bool, string) {
		res, err := sub.FindGPUs(ctx, dht.Query{Model: "H100"})
		return err == nil && res.Providers == 6, fmt.Sprintf("%d of 6 (%v)", res.Providers, err)
	})
	sent := func() uint64 {
		var s uint64
		for _, p := range m.Nodes[:6] {
			s += p.NegotiationMessages()
		}
		return s
	}
	before := sent()
	job := submit(t, ctx, sub, jobSpec(t, 8, ""))
	if job.State != node.JobFormed && job.State != node.JobRunning {
		t.Fatalf("the job: %s (%s), want formed", job.State, job.Reason)
	}
	// The providers' messages: bids of those asked, and one acceptance.
	// Asked: enough for twice the 8 GPUs (2), plus those the board named
	// first; never all 6 unless the request went to the topic.
	if got := sent() - before; got > 5 {
		t.Errorf("the providers sent %d negotiation messages for one 8-GPU job, want at most 5 (a few bids and an acceptance)", got)
	}
	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	waitFree(t, ctx, m.Nodes[:6])
}

// stepLog records a peer's negotiation steps (node.LevelTrace) in order.
type stepLog struct {
	mu    sync.Mutex
	steps []loggedStep
}

type loggedStep struct{ job, step string }

func (l *stepLog) Enabled(_ context.Context, lv slog.Level) bool { return lv == node.LevelTrace }

func (l *stepLog) Handle(_ context.Context, r slog.Record) error {
	var s loggedStep
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "job":
			s.job = a.Value.String()
		case "step":
			s.step = a.Value.String()
		}
		return true
	})
	l.mu.Lock()
	l.steps = append(l.steps, s)
	l.mu.Unlock()
	return nil
}

func (l *stepLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *stepLog) WithGroup(string) slog.Handler      { return l }

// Fifty identities send a provider 8 direct requests each at once (their
// burst); once each has had a bid, and while the rest of theirs wait, an
// honest job is submitted. The provider answers the honest request
// before any flooder it has answered already: between the honest
// request's arrival and its answer, it answers at most the flooders it
// had not answered yet, plus the one request it was answering and one
// it may have taken as the honest one arrived — not one of each waiting
// flooder, as a plain round robin would.
func TestANewSubmitterIsAnsweredBeforeFloodersAnsweredAlready(t *testing.T) {
	steps := &stepLog{}
	o := h100s(0xd5, 1)
	o.Config = func(i int, c *node.Config) {
		if i == 0 {
			c.Logger = slog.New(steps)
		}
	}
	m := meshtest.Start(t, 2, o)
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	provID := prov.Host().ID()
	advs := make([]*meshtest.Adversary, 50)
	flood := map[string]int{} // a flooder's job: which flooder
	reqs := make([][]*gossip.RequestForBids, len(advs))
	for i := range advs {
		advs[i] = m.AddAdversary(t, i)
		for range rfbBurst {
			r := advs[i].Request(meshtest.NewJobID(), h100, 8, 2_500_000, "USDC:6")
			flood[r.Job.String()] = i
			reqs[i] = append(reqs[i], r)
		}
	}
	var wg sync.WaitGroup
	for i, a := range advs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, r := range reqs[i] {
				_ = a.Ask(ctx, provID, r)
			}
		}()
	}
	for i, a := range advs {
		if _, err := a.Received(ctx, func(m gossip.Message) bool { _, ok := m.(*gossip.Bid); return ok }); err != nil {
			t.Fatalf("flooder %d: %v", i, err)
		}
	}
	job := submit(t, ctx, sub, jobSpec(t, 8, ""))
	wg.Wait()
	if job.State != node.JobFormed && job.State != node.JobRunning {
		t.Fatalf("the honest job: %s (%s), want formed", job.State, job.Reason)
	}
	steps.mu.Lock()
	log := slices.Clone(steps.steps)
	steps.mu.Unlock()
	answered := map[int]bool{} // flooders answered before the honest request came
	queued, between, waiting := -1, 0, 0
	for k, s := range log {
		i, isFlood := flood[s.job]
		switch {
		case queued < 0 && isFlood && s.step == "answered":
			answered[i] = true
		case queued < 0 && !isFlood && s.step == "queued":
			queued = k
			waiting = len(advs) - len(answered)
		case queued >= 0 && isFlood && s.step == "answered":
			between++
		case queued >= 0 && !isFlood && s.step == "answered":
			if most := waiting + 2; between > most {
				t.Errorf("the provider answered %d flooders' requests between the honest request's arrival and its answer; want at most %d (%d flooders not answered yet, and 2)", between, most, waiting)
			}
			t.Logf("%d flooders' requests answered while the honest one waited (%d flooders answered before it came)", between, len(answered))
			if _, err := sub.CancelJob(ctx, job.ID); err != nil {
				t.Fatal(err)
			}
			waitFree(t, ctx, []*node.Node{prov})
			return
		}
	}
	t.Fatalf("the provider's steps show no honest request queued and answered (%d steps)", len(log))
}

// Twenty identities each broadcast on the topic as many requests as the
// topic lets one submitter send at once (4): every one is accepted, and
// yet the provider answers them no faster than its topic answer rate
// (gossip.TopicAnswerRate a second, after a burst), all flooders together;
// meanwhile an honest job, whose requests go to the provider directly,
// forms.
func TestTheTopicsRequestsAreAnsweredAtABoundedRate(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(0xd6, 1))
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	advs := make([]*meshtest.Adversary, 20)
	for i := range advs {
		advs[i] = m.AddAdversary(t, i)
	}
	bids := func() int {
		n := 0
		for _, a := range advs {
			n += bidsOf(a)
		}
		return n
	}
	start := time.Now()
	for _, a := range advs {
		for range 4 {
			if err := a.Publish(ctx, a.Request(meshtest.NewJobID(), h100, 8, 2_500_000, "USDC:6")); err != nil {
				t.Fatal(err)
			}
		}
	}
	job := submit(t, ctx, sub, jobSpec(t, 8, ""))
	if job.State != node.JobFormed && job.State != node.JobRunning {
		t.Fatalf("the honest job: %s (%s), want formed", job.State, job.Reason)
	}
	testwait.Until(t, ctx, "the provider to answer a burst's worth of the topic's requests", func() (bool, string) {
		n := bids()
		return n >= gossip.TopicAnswerBurst, fmt.Sprintf("%d bids", n)
	})
	got := bids()
	elapsed := time.Since(start)
	if most := gossip.TopicAnswerBurst + int(gossip.TopicAnswerRate*elapsed.Seconds()) + 1; got > most {
		t.Errorf("the flooders got %d bids in %v for 80 requests on the topic, want at most %d", got, elapsed.Round(time.Millisecond), most)
	}
	t.Logf("20 flooders on the topic: %d bids in %v", got, elapsed.Round(time.Millisecond))
	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	waitFree(t, ctx, []*node.Node{prov})
}

// A submitter asks a provider again for the same request, as a direct
// negotiation does when its request may have been lost (its pacer counted
// the request once), speaking the real protocol: the provider counts it
// once too. Asked once and again MaxAskedAgain times, then seven new
// requests at once (eight, the burst, in all): every job gets a bid.
// Counted as new requests, the asks again would have left three of the
// seven over the submitter's burst.
func TestAsksAgainOfOneRequestCostTheSubmitterOneRequest(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(0xd7, 1))
	prov := m.Nodes[0]
	adv := m.AddAdversary(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	provID := prov.Host().ID()
	first := adv.Request(meshtest.NewJobID(), h100, 8, 2_500_000, "USDC:6")
	jobs := []gossip.JobID{first.Job}
	for range 1 + gossip.MaxAskedAgain {
		if err := adv.Ask(ctx, provID, first); err != nil {
			t.Fatal(err)
		}
	}
	for range rfbBurst - 1 {
		r := adv.Request(meshtest.NewJobID(), h100, 8, 2_500_000, "USDC:6")
		jobs = append(jobs, r.Job)
		_ = adv.Ask(ctx, provID, r) // a refusal shows as a job with no bid
	}
	for i, job := range jobs {
		if _, err := adv.Received(ctx, func(msg gossip.Message) bool {
			b, ok := msg.(*gossip.Bid)
			return ok && b.Job == job
		}); err != nil {
			t.Fatalf("job %d of %d (the first asked %d times) got no bid: %v", i+1, len(jobs), 1+gossip.MaxAskedAgain, err)
		}
	}
	// A hostile submitter sends the same request on and on: past
	// MaxAskedAgain each copy counts as a new request, so the copies run
	// into its rate like any flood and buy no more answers than it.
	refusedBefore := prov.Refused("rfb_direct", "rate")
	start := time.Now()
	const copies = 40
	for range copies {
		_ = adv.Ask(ctx, provID, first)
	}
	elapsed := time.Since(start)
	testwait.Until(t, ctx, "the provider to refuse copies past the asks again", func() (bool, string) {
		n := prov.Refused("rfb_direct", "rate") - refusedBefore
		return n > 0, fmt.Sprintf("%d refused for the rate", n)
	})
	bids := 0
	for _, msg := range adv.Inbox() {
		if b, ok := msg.(*gossip.Bid); ok && b.Job == first.Job {
			bids++
		}
	}
	t.Logf("the first job: %d bids", bids)
	// The first ask and its asks again, and what the rate refilled since.
	if most := 1 + gossip.MaxAskedAgain + int(rfbRate*elapsed.Seconds()) + 1; bids > most {
		t.Errorf("the first job got %d bids for %d copies in %v, want at most %d", bids, 1+gossip.MaxAskedAgain+copies, elapsed.Round(time.Millisecond), most)
	}
}
