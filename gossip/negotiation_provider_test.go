package gossip

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// providerOf is test peer i with gpus H100s at price in zone.
func providerOf(t testing.TB, i int, gpus uint32, price uint64, zone string) *Reservations {
	t.Helper()
	r, err := NewReservations(ProviderConfig{
		ID: testID(i), Unit: "USDC:6", Zone: zone, Addrs: []string{"/ip4/127.0.0.1/tcp/4001"},
		GPUs: []Capacity{{Class: "H100-80GB", Model: "H100", VRAMGB: 80, GPUs: gpus, Price: price}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// rfbOf is a request of submitter i for job j.
func rfbOf(i int, j byte, needs Needs) RequestForBids {
	job := negJob
	job[15] = j
	job[14] = byte(i)
	return RequestForBids{Job: job, Submitter: testID(i), Needs: needs, Deadline: t0.Add(time.Second).UnixMilli()}
}

// awardOf awards gpus of a bid, as its submitter would.
func awardOf(rfb RequestForBids, b Bid, gpus uint32, now time.Time) Award {
	return Award{Job: rfb.Job, Submitter: rfb.Submitter, Provider: b.Provider, Class: b.Class, GPUs: gpus, Price: b.Price,
		LeaseExpires: now.Add(time.Hour).UnixMilli(), Gang: rfb.Job, GangSize: 1}
}

func TestProviderBidsWhatItHasFree(t *testing.T) {
	tests := []struct {
		name    string
		needs   func(*Needs)
		gpus    uint32 // bid, 0: none
		noBidIs string
	}{
		{"all it has, when it has fewer than needed", func(n *Needs) { n.GPUs = 16 }, 8, ""},
		{"what is needed, when it has more", func(n *Needs) { n.GPUs = 4 }, 4, ""},
		{"nothing above the max price", func(n *Needs) { n.MaxPrice = usdc(199) }, 0, "at or below the max price"},
		{"nothing of another class", func(n *Needs) { n.Class = "A100-40GB" }, 0, "no free GPUs of the class"},
		{"any class of the model", func(n *Needs) { n.Class, n.Model = "", "H100" }, 8, ""},
		{"nothing with too little memory", func(n *Needs) { n.MinVRAMGB = 141 }, 0, "no free GPUs"},
		{"its fragment, even for a bigger perNode", func(n *Needs) { n.GPUs, n.PerNode = 16, 16 }, 8, ""},
		{"nothing in another unit", func(n *Needs) { n.Unit = "SOL:9" }, 0, "request in SOL:9, prices in USDC:6"},
		{"nothing for a lease longer than it grants", func(n *Needs) { n.LeaseSeconds = 48 * 3600 }, 0, "lease of 48h0m0s, at most 24h0m0s"},
	}
	for _, tt := range tests {
		r := providerOf(t, 1, 8, usdc(200), "a")
		needs := needsOf(8, 0, Spread, usdc(250))
		tt.needs(&needs)
		b, err := r.Bid(rfbOf(0, 1, needs), t0)
		switch {
		case tt.gpus == 0 && err == nil:
			t.Errorf("%s: bid %d GPUs, want no bid", tt.name, b.GPUs)
		case tt.gpus == 0 && !strings.Contains(err.Error(), tt.noBidIs):
			t.Errorf("%s: no bid because %q, want it to say %q", tt.name, err, tt.noBidIs)
		case tt.gpus != 0 && err != nil:
			t.Errorf("%s: no bid: %v", tt.name, err)
		case tt.gpus != 0 && (b.GPUs != tt.gpus || b.Price != usdc(200) || b.Zone != "a"):
			t.Errorf("%s: bid %d GPUs at %d in %q, want %d at %d in a", tt.name, b.GPUs, b.Price, b.Zone, tt.gpus, usdc(200))
		}
	}
}

// A provider that cannot make job networks, in the public swarm, bids only
// on jobs it takes whole.
func TestAProviderWithoutJobNetworksInThePublicSwarmBidsOnlyOnJobsItCanTakeWhole(t *testing.T) {
	tests := []struct {
		name  string
		needs func(*Needs)
		gpus  uint32 // bid, 0: none
	}{
		{"all the GPUs needed, as one member", func(n *Needs) { n.GPUs = 4 }, 4},
		{"every GPU it has", func(n *Needs) { n.GPUs = 8 }, 8},
		{"not more than it has (several members)", func(n *Needs) { n.GPUs = 16 }, 0},
		{"not a perNode split into several members", func(n *Needs) { n.GPUs, n.PerNode = 4, 2 }, 0},
		{"one member of perNode", func(n *Needs) { n.GPUs, n.PerNode = 4, 4 }, 4},
	}
	for _, tt := range tests {
		r, err := NewReservations(ProviderConfig{
			ID: testID(1), Unit: "USDC:6", Zone: "a", NoJobNet: true,
			GPUs: []Capacity{{Class: "H100-80GB", Model: "H100", VRAMGB: 80, GPUs: 8, Price: usdc(200)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		needs := needsOf(8, 0, Spread, usdc(250))
		tt.needs(&needs)
		b, err := r.Bid(rfbOf(0, 1, needs), t0)
		switch {
		case tt.gpus == 0 && err == nil:
			t.Errorf("%s: bid %d GPUs, want no bid", tt.name, b.GPUs)
		case tt.gpus == 0 && !strings.Contains(err.Error(), "only jobs it can run whole"):
			t.Errorf("%s: no bid because %q, want it to say it takes whole jobs only", tt.name, err)
		case tt.gpus != 0 && err != nil:
			t.Errorf("%s: no bid: %v", tt.name, err)
		case tt.gpus != 0 && (b.GPUs != tt.gpus || b.HostNet):
			t.Errorf("%s: bid %d GPUs (hostNet %v), want %d not for the host network", tt.name, b.GPUs, b.HostNet, tt.gpus)
		}
	}
}

// In a private swarm the same provider bids on every job, members of
// several included, each bid marked for the host network; a provider
// that can make job networks never marks one.
func TestAProviderWithoutJobNetworksInAPrivateSwarmBidsForTheHostNetwork(t *testing.T) {
	for _, noJobNet := range []bool{true, false} {
		r, err := NewReservations(ProviderConfig{
			ID: testID(1), Unit: "USDC:6", Zone: "a", NoJobNet: noJobNet, HostNetOK: true,
			GPUs: []Capacity{{Class: "H100-80GB", Model: "H100", VRAMGB: 80, GPUs: 8, Price: usdc(200)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		for i, needs := range []Needs{needsOf(16, 8, Spread, usdc(250)), needsOf(4, 0, Spread, usdc(250))} {
			b, err := r.Bid(rfbOf(0, byte(i+1), needs), t0)
			if err != nil {
				t.Fatalf("noJobNet %v, %d GPUs: no bid: %v", noJobNet, needs.GPUs, err)
			}
			if want := min(needs.GPUs, 8); b.GPUs != want || b.HostNet != noJobNet {
				t.Errorf("noJobNet %v, %d GPUs: bid %d GPUs, hostNet %v; want %d, hostNet %v", noJobNet, needs.GPUs, b.GPUs, b.HostNet, want, noJobNet)
			}
		}
	}
}

// A job that asks for the internet gets bids only from providers that give
// jobs egress; the others say why they do not bid.
func TestOnlyAProviderWithEgressBidsOnAJobThatAsksForIt(t *testing.T) {
	for _, egress := range []bool{false, true} {
		r, err := NewReservations(ProviderConfig{
			ID: testID(1), Unit: "USDC:6", Zone: "a", Egress: egress,
			GPUs: []Capacity{{Class: "H100-80GB", Model: "H100", VRAMGB: 80, GPUs: 8, Price: usdc(200)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		needs := needsOf(8, 0, Spread, usdc(250))
		if _, err := r.Bid(rfbOf(0, 1, needs), t0); err != nil {
			t.Errorf("egress %v: no bid on a job without egress: %v", egress, err)
		}
		needs.Egress = true
		_, err = r.Bid(rfbOf(1, 1, needs), t0)
		switch {
		case egress && err != nil:
			t.Errorf("a provider with egress did not bid on a job asking for it: %v", err)
		case !egress && (err == nil || !strings.Contains(err.Error(), "--job-egress")):
			t.Errorf("a provider without egress answered a job asking for it with %v, want no bid naming --job-egress", err)
		}
	}
}

func TestTheSecondAwardForTheSameGPUsIsRefused(t *testing.T) {
	r := providerOf(t, 1, 8, usdc(200), "a")
	needs := needsOf(8, 0, Spread, usdc(250))
	a, b := rfbOf(2, 1, needs), rfbOf(3, 2, needs)
	bidA, err := r.Bid(a, t0)
	if err != nil {
		t.Fatal(err)
	}
	bidB, err := r.Bid(b, t0) // a bid reserves nothing: both get one
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := r.Award(awardOf(a, bidA, 8, t0), t0).(*Acceptance); !ok || got.GPUs != 8 {
		t.Fatalf("first award answered %+v, want an acceptance of 8", got)
	}
	ref, ok := r.Award(awardOf(b, bidB, 8, t0), t0).(*Refusal)
	if !ok || ref.Reason != "award refused: 0 GPUs of H100-80GB free, award of 8" {
		t.Fatalf("second award answered %+v, want a refusal saying 0 free", ref)
	}
	if again, ok := r.Award(awardOf(a, bidA, 8, t0), t0).(*Acceptance); !ok || again.GPUs != 8 {
		t.Errorf("the same award again answered %+v, want the same acceptance", again)
	}
	if free := r.Free("H100-80GB", t0); free != 0 {
		t.Errorf("%d GPUs free after awarding the same job twice, want 0", free)
	}
}

func TestAwardsThatDoNotMatchTheBidAreRefused(t *testing.T) {
	r := providerOf(t, 1, 8, usdc(200), "a")
	rfb := rfbOf(2, 1, needsOf(4, 0, Spread, usdc(250)))
	bid, err := r.Bid(rfb, t0)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		award func(*Award)
		at    time.Time
		want  string
	}{
		{"more than bid", func(a *Award) { a.GPUs = 5 }, t0, "award of 5 GPUs, bid 4"},
		{"below the bid's price", func(a *Award) { a.Price = usdc(150) }, t0, "award at 1.50, bid 2.00"},
		{"another provider", func(a *Award) { a.Provider = testID(9) }, t0, "award names provider"},
		{"after the bid expired", func(*Award) {}, t0.Add(11 * time.Second), "no live bid"},
		{"another job", func(a *Award) { a.Job[0] ^= 1 }, t0, "no live bid"},
	}
	for _, tt := range tests {
		a := awardOf(rfb, bid, 4, t0)
		tt.award(&a)
		ref, ok := r.Award(a, tt.at).(*Refusal)
		if !ok || !strings.Contains(ref.Reason, tt.want) {
			t.Errorf("%s: answered %+v, want a refusal saying %q", tt.name, ref, tt.want)
		}
	}
}

func TestReservationsLapseUnlessConfirmedAndEndWithTheLease(t *testing.T) {
	r := providerOf(t, 1, 8, usdc(200), "a")
	needs := needsOf(4, 0, Spread, usdc(250))
	a, b := rfbOf(2, 1, needs), rfbOf(3, 2, needs)
	bidA, _ := r.Bid(a, t0)
	bidB, _ := r.Bid(b, t0)
	r.Award(awardOf(a, bidA, 4, t0), t0)
	r.Award(awardOf(b, bidB, 4, t0), t0)
	if err := r.Confirm(Confirm{Job: b.Job, Submitter: b.Submitter, Provider: testID(1)}, t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := r.Confirm(Confirm{Job: a.Job, Submitter: testID(7), Provider: testID(1)}, t0.Add(time.Second)); err == nil {
		t.Error("a confirmation from another submitter was taken")
	}
	ended := r.Tick(t0.Add(10 * time.Second)) // the hold
	if len(ended) != 1 || ended[0].Job != a.Job {
		t.Fatalf("at the hold ended %+v, want only the unconfirmed job", ended)
	}
	if free := r.Free("H100-80GB", t0.Add(10*time.Second)); free != 4 {
		t.Errorf("%d free after the hold, want 4", free)
	}
	if err := r.Confirm(Confirm{Job: a.Job, Submitter: a.Submitter, Provider: testID(1)}, t0.Add(11*time.Second)); err == nil {
		t.Error("a lapsed reservation was confirmed")
	}
	if ended := r.Tick(t0.Add(time.Hour)); len(ended) != 1 || ended[0].Job != b.Job {
		t.Errorf("at the lease's end ended %+v, want the confirmed job", ended)
	}
	if free := r.Free("H100-80GB", t0.Add(time.Hour)); free != 8 {
		t.Errorf("%d free after the lease, want 8", free)
	}
}

func TestReleaseFreesOnlyForItsSubmitter(t *testing.T) {
	r := providerOf(t, 1, 8, usdc(200), "a")
	a := rfbOf(2, 1, needsOf(8, 0, Spread, usdc(250)))
	bid, _ := r.Bid(a, t0)
	r.Award(awardOf(a, bid, 8, t0), t0)
	if r.Release(Release{Job: a.Job, From: testID(5), Provider: testID(1)}, t0) {
		t.Error("another peer released the reservation")
	}
	if !r.Release(Release{Job: a.Job, From: a.Submitter, Provider: testID(1)}, t0) {
		t.Error("the submitter's release did not release")
	}
	if free := r.Free("H100-80GB", t0); free != 8 {
		t.Errorf("%d free after release, want 8", free)
	}
}

// TestRacingAwardsNeverDoubleLease: 100 submitters race for one provider's
// 8 GPUs. Each gets a bid; their awards, confirmations, releases and ticks
// arrive in a shuffled order, from 100 goroutines through the provider's
// one owner (a lock here, the node's loop in production). At no moment do
// the reservations hold more than 8 GPUs, and every acceptance is backed.
func TestRacingAwardsNeverDoubleLease(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 100))
		r := providerOf(t, 1, 8, usdc(200), "a")
		var mu sync.Mutex // guards r, accepted
		check := func() {
			var held uint32
			for _, h := range r.held {
				held += h.GPUs
			}
			if held > 8 || held != r.inUse["H100-80GB"] {
				t.Fatalf("seed %d: %d GPUs held of 8 (in use %d)", seed, held, r.inUse["H100-80GB"])
			}
		}
		type job struct {
			rfb RequestForBids
			bid Bid
		}
		var jobs []job
		for i := range 100 {
			rfb := rfbOf(10+i, byte(i), needsOf(uint32(1+rng.IntN(8)), 0, Spread, usdc(250)))
			b, err := r.Bid(rfb, t0)
			if err != nil {
				t.Fatal(err)
			}
			jobs = append(jobs, job{rfb, b})
		}
		accepted := map[JobID]uint32{}
		var wg sync.WaitGroup
		for i, j := range jobs {
			delay := time.Duration(rng.IntN(5000)) * time.Millisecond
			release := rng.IntN(3) == 0
			wg.Add(1)
			go func() {
				defer wg.Done()
				now := t0.Add(delay)
				mu.Lock()
				defer mu.Unlock()
				if acc, ok := r.Award(awardOf(j.rfb, j.bid, j.bid.GPUs, t0), now).(*Acceptance); ok {
					accepted[j.rfb.Job] = acc.GPUs
					if i%2 == 0 {
						_ = r.Confirm(Confirm{Job: j.rfb.Job, Submitter: j.rfb.Submitter, Provider: testID(1)}, now)
					}
				}
				check()
				if release {
					r.Release(Release{Job: j.rfb.Job, From: j.rfb.Submitter, Provider: testID(1)}, now)
				}
				r.Tick(now)
				check()
			}()
		}
		wg.Wait()
		if len(accepted) == 0 {
			t.Fatalf("seed %d: nobody got GPUs", seed)
		}
	}
}

func TestAnAwardCanGrowAReservationUpToTheBid(t *testing.T) {
	r := providerOf(t, 1, 8, usdc(200), "a")
	a := rfbOf(2, 1, needsOf(8, 0, Spread, usdc(250)))
	bid, _ := r.Bid(a, t0)
	r.Award(awardOf(a, bid, 4, t0), t0)
	if acc, ok := r.Award(awardOf(a, bid, 6, t0), t0).(*Acceptance); !ok || acc.GPUs != 6 {
		t.Fatalf("top-up to 6 answered %+v, want an acceptance of 6", acc)
	}
	if free := r.Free("H100-80GB", t0); free != 2 {
		t.Errorf("%d free after a top-up to 6 of 8, want 2", free)
	}

	// Another job takes the last 2; a top-up to 8 finds them gone and the
	// refusal leaves nothing held for the job.
	b := rfbOf(3, 2, needsOf(2, 0, Spread, usdc(250)))
	bidB, _ := r.Bid(b, t0)
	r.Award(awardOf(b, bidB, 2, t0), t0)
	ref, ok := r.Award(awardOf(a, bid, 8, t0), t0).(*Refusal)
	if !ok || ref.Reason != "award refused: 6 GPUs of H100-80GB free, award of 8" {
		t.Fatalf("top-up past the free GPUs answered %+v", ref)
	}
	if _, held := r.Held(a.Job, a.Submitter); held {
		t.Error("a refused top-up left the reservation in place")
	}
	if free := r.Free("H100-80GB", t0); free != 6 {
		t.Errorf("%d free, want 6", free)
	}
}

// heldAny is any reservation a provider holds for a job, whoever asked.
func heldAny(r *Reservations, job JobID) (Reservation, bool) {
	for k, h := range r.held {
		if k.job == job {
			return *h, true
		}
	}
	return Reservation{}, false
}

// A bystander reads a public request for bids and sends its own award for
// that job, before the submitter's: the provider bid to the request's
// author, so the award of anyone else is refused and holds nothing; the
// author's award then takes the GPUs.
func TestAnAwardFromAnyoneButTheRequestsAuthorIsRefused(t *testing.T) {
	r := providerOf(t, 1, 8, usdc(200), "a")
	honest := rfbOf(2, 1, needsOf(8, 0, Spread, usdc(250)))
	bid, err := r.Bid(honest, t0)
	if err != nil {
		t.Fatal(err)
	}
	hijack := awardOf(honest, bid, 8, t0)
	hijack.Submitter = testID(9)
	hijack.LeaseExpires = t0.Add(24 * time.Hour).UnixMilli()
	ref, ok := r.Award(hijack, t0).(*Refusal)
	if !ok || !strings.Contains(ref.Reason, "no live bid for job") {
		t.Fatalf("the bystander's award answered %+v, want a refusal", ref)
	}
	if _, held := heldAny(r, honest.Job); held || r.Free("H100-80GB", t0) != 8 {
		t.Fatalf("a refused award holds GPUs: %d free", r.Free("H100-80GB", t0))
	}
	// Nor can the bystander confirm or release what the author holds.
	if acc, ok := r.Award(awardOf(honest, bid, 8, t0), t0).(*Acceptance); !ok || acc.GPUs != 8 {
		t.Fatalf("the author's award answered %+v, want an acceptance of 8", acc)
	}
	if err := r.Confirm(Confirm{Job: honest.Job, Submitter: testID(9), Provider: testID(1)}, t0); err == nil {
		t.Error("a bystander's confirm of the author's reservation was taken")
	}
	if r.Release(Release{Job: honest.Job, From: testID(9), Provider: testID(1)}, t0) {
		t.Error("a bystander's release freed the author's reservation")
	}
	if h, ok := r.Held(honest.Job, honest.Submitter); !ok || h.GPUs != 8 || h.Confirmed {
		t.Fatalf("the author's reservation: %+v %v, want 8 GPUs, unconfirmed", h, ok)
	}
}

// A request for bids that reuses another submitter's job ID is another
// job: it gets its own bid and does not replace the first submitter's, so
// the first submitter's award still finds the bid it was made for.
func TestARequestReusingAJobIDDoesNotTakeTheFirstSubmittersBid(t *testing.T) {
	r := providerOf(t, 1, 8, usdc(200), "a")
	honest := rfbOf(2, 1, needsOf(8, 0, Spread, usdc(250)))
	bid, err := r.Bid(honest, t0)
	if err != nil {
		t.Fatal(err)
	}
	copycat := honest
	copycat.Submitter = testID(9)
	copycat.Needs = needsOf(1, 0, Spread, usdc(250))
	if _, err := r.Bid(copycat, t0); err != nil {
		t.Fatal(err)
	}
	if acc, ok := r.Award(awardOf(honest, bid, 8, t0), t0).(*Acceptance); !ok || acc.GPUs != 8 {
		t.Fatalf("the first submitter's award answered %+v, want an acceptance of 8", acc)
	}
	// The job ID is held now: the copycat's own award for it is refused
	// (a member's task, bills and receipt are named by the ID).
	r.Release(Release{Job: honest.Job, From: honest.Submitter, Provider: testID(1)}, t0)
	again, err := r.Bid(honest, t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Award(awardOf(honest, again, 4, t0), t0).(*Acceptance); !ok {
		t.Fatal("the first submitter's award after a release was refused")
	}
	cbid, err := r.Bid(copycat, t0)
	if err != nil {
		t.Fatal(err)
	}
	if ref, ok := r.Award(awardOf(copycat, cbid, 1, t0), t0).(*Refusal); !ok || !strings.Contains(ref.Reason, "already holding") {
		t.Fatalf("the copycat's award for a held job ID answered %+v, want a refusal", ref)
	}
}

// A provider whose ask moves (an auto policy) bids at the ask of now; a
// reservation keeps the price it was awarded at; no ask, no bid.
func TestBidsFollowTheProvidersAskOfNow(t *testing.T) {
	r := providerOf(t, 1, 8, usdc(200), "a")
	needs := needsOf(4, 0, Spread, usdc(250))
	first := rfbOf(2, 1, needs)
	bid, err := r.Bid(first, t0)
	if err != nil || bid.Price != usdc(200) {
		t.Fatalf("bid %+v, %v: want one at 2.00", bid, err)
	}
	if _, ok := r.Award(awardOf(first, bid, 4, t0), t0).(*Acceptance); !ok {
		t.Fatal("award refused")
	}
	if !r.SetPrice("H100-80GB", usdc(230)) || r.SetPrice("A100-40GB", usdc(1)) {
		t.Fatal("SetPrice: want true for the class it has, false for one it has not")
	}
	if b, err := r.Bid(rfbOf(3, 2, needs), t0); err != nil || b.Price != usdc(230) {
		t.Errorf("after the ask moved: bid %+v, %v; want one at 2.30", b, err)
	}
	if h, _ := r.Held(first.Job, first.Submitter); h.Price != usdc(200) {
		t.Errorf("the reservation's price moved to %d with the ask, want the awarded 2.00", h.Price)
	}
	r.SetPrice("H100-80GB", 0)
	if b, err := r.Bid(rfbOf(4, 3, needs), t0); err == nil {
		t.Errorf("without an ask: bid %+v, want none", b)
	}
}

// A reservation whose member runs neither lapses nor ends with its lease,
// nor by a release: its GPUs are never leased again under a running
// member. It runs one member: a second start is refused. The member's end
// frees it.
func TestARunningReservationOutlivesItsLeaseUntilReleased(t *testing.T) {
	r := providerOf(t, 1, 8, usdc(200), "a")
	a := rfbOf(2, 1, needsOf(8, 0, Spread, usdc(250)))
	bid, err := r.Bid(a, t0)
	if err != nil {
		t.Fatal(err)
	}
	award := awardOf(a, bid, 8, t0)
	award.LeaseExpires = t0.Add(time.Minute).UnixMilli()
	if _, ok := r.Award(award, t0).(*Acceptance); !ok {
		t.Fatal("award refused")
	}
	if _, err := r.Start(a.Job, testID(9), t0); !errors.Is(err, ErrNoReservation) {
		t.Fatalf("a stranger's start: %v, want ErrNoReservation", err)
	}
	h, err := r.Start(a.Job, a.Submitter, t0) // before the confirm: it confirms
	if err != nil || !h.Running || !h.Confirmed {
		t.Fatalf("start: %+v, %v", h, err)
	}
	if _, err := r.Start(a.Job, a.Submitter, t0); !errors.Is(err, ErrMemberRuns) {
		t.Fatalf("a second start: %v, want ErrMemberRuns", err)
	}
	later := t0.Add(2 * time.Hour) // past the hold and the lease
	if ended := r.Tick(later); len(ended) != 0 {
		t.Fatalf("reservations ended under a running member: %+v", ended)
	}
	if free := r.Free("H100-80GB", later); free != 0 {
		t.Fatalf("%d GPUs free under a running member, want 0", free)
	}
	if b, err := r.Bid(rfbOf(3, 2, needsOf(1, 0, Spread, usdc(250))), later); err == nil {
		t.Fatalf("bid %+v on GPUs a running member holds", b)
	}
	// Nor does the submitter's release free GPUs a member still runs on:
	// the member's end does.
	if r.Release(Release{Job: a.Job, From: a.Submitter, Provider: testID(1)}, later) || r.Free("H100-80GB", later) != 0 {
		t.Fatal("a release freed the GPUs of a running member")
	}
	if !r.End(a.Job, a.Submitter) || r.Free("H100-80GB", later) != 8 {
		t.Fatal("the member's end did not free its GPUs")
	}
}

// Reserve everything and never start: a confirmed reservation whose member
// has not started StartWithin after the confirm lapses, and one submitter
// holds at most MaxWaiting reservations that have not started.
func TestReservationsThatNeverStartLapseAndAreCapped(t *testing.T) {
	r, err := NewReservations(ProviderConfig{
		ID: testID(1), Unit: "USDC:6", Zone: "a", Addrs: []string{"/ip4/127.0.0.1/tcp/4001"},
		GPUs:        []Capacity{{Class: "H100-80GB", Model: "H100", VRAMGB: 80, GPUs: 8, Price: usdc(200)}},
		StartWithin: time.Minute, MaxWaiting: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	reserve := func(sub int, j byte) RequestForBids {
		t.Helper()
		req := rfbOf(sub, j, needsOf(1, 0, Spread, usdc(250)))
		bid, err := r.Bid(req, t0)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := r.Award(awardOf(req, bid, 1, t0), t0).(*Acceptance); !ok {
			t.Fatalf("award of job %d refused", j)
		}
		if err := r.Confirm(Confirm{Job: req.Job, Submitter: req.Submitter, Provider: testID(1)}, t0); err != nil {
			t.Fatal(err)
		}
		return req
	}
	first, second := reserve(2, 1), reserve(2, 2)
	// A third for the same submitter: refused; another submitter's: taken.
	third := rfbOf(2, 3, needsOf(1, 0, Spread, usdc(250)))
	bid, err := r.Bid(third, t0)
	if err != nil {
		t.Fatal(err)
	}
	if ref, ok := r.Award(awardOf(third, bid, 1, t0), t0).(*Refusal); !ok || !strings.Contains(ref.Reason, "2 reservations here that have not started, at most 2") {
		t.Fatalf("a third waiting reservation answered %+v, want a refusal", ref)
	}
	reserve(3, 4)
	// The first starts; the second never does and lapses with the other
	// submitter's a minute after the confirm.
	if _, err := r.Start(first.Job, first.Submitter, t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	ended := r.Tick(t0.Add(time.Minute))
	if len(ended) != 2 || ended[0].Job == first.Job || ended[1].Job == first.Job {
		t.Fatalf("lapsed at the start deadline: %+v, want the two that never started", ended)
	}
	if _, ok := r.Held(second.Job, second.Submitter); ok {
		t.Error("a reservation that never started still holds its GPU")
	}
	if h, ok := r.Held(first.Job, first.Submitter); !ok || !h.Running {
		t.Errorf("the started reservation: %+v %v, want it running", h, ok)
	}
	if free := r.Free("H100-80GB", t0.Add(time.Minute)); free != 7 {
		t.Errorf("%d GPUs free, want 7", free)
	}
}

// floodJob is request n of submitter i.
func floodJob(i, n int) RequestForBids {
	rfb := rfbOf(i, 0, needsOf(8, 0, Spread, usdc(250)))
	rfb.Job[0], rfb.Job[1], rfb.Job[2] = byte(n>>16), byte(n>>8), byte(n)
	return rfb
}

// One submitter's 6,000 requests (the flood that filled the 4,096 bids a
// provider kept) leave it at most MaxSubmitterBids bids, its newest; the
// provider still bids for everyone else, and still takes an award for the
// other submitter's bid.
func TestOneSubmitterCannotFillTheProvidersBids(t *testing.T) {
	r := providerOf(t, 1, 8, usdc(200), "a")
	for n := range 6000 {
		if _, err := r.Bid(floodJob(5, n), t0); err != nil {
			t.Fatalf("request %d: %v", n, err)
		}
	}
	all, its := r.Bids(testID(5))
	if all != 16 || its != 16 {
		t.Fatalf("%d bids, %d of the flooder's; want 16 and 16", all, its)
	}
	honest := floodJob(6, 1)
	b, err := r.Bid(honest, t0)
	if err != nil {
		t.Fatalf("the honest request got no bid: %v", err)
	}
	// The flooder's oldest bids went; its newest is still good.
	if _, ok := r.Award(awardOf(floodJob(5, 0), b, 1, t0), t0).(*Refusal); !ok {
		t.Errorf("an award for the flooder's first request was taken; its bid should have gone")
	}
	if _, ok := r.Award(awardOf(floodJob(5, 5999), b, 1, t0), t0).(*Acceptance); !ok {
		t.Errorf("an award for the flooder's newest request was refused")
	}
	if m, ok := r.Award(awardOf(honest, b, 8-1, t0), t0).(*Acceptance); !ok {
		t.Errorf("the honest award was refused: %+v", m)
	}
}

// When every one of MaxBids is out, a submitter holding fewer bids than
// the one holding the most takes that one's oldest; one holding as many as
// anyone gets no bid.
func TestAFullProviderSharesItsBidsEvenly(t *testing.T) {
	r, err := NewReservations(ProviderConfig{
		ID: testID(1), Unit: "USDC:6", MaxBids: 8, MaxSubmitterBids: 4,
		GPUs: []Capacity{{Class: "H100-80GB", Model: "H100", VRAMGB: 80, GPUs: 8, Price: usdc(200)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{5, 6} { // two identities, four bids each: full
		for n := range 4 {
			if _, err := r.Bid(floodJob(i, n), t0); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := r.Bid(floodJob(7, 1), t0); err != nil {
		t.Fatalf("a newcomer to a full provider got no bid: %v", err)
	}
	all5, its5 := r.Bids(testID(5))
	_, its6 := r.Bids(testID(6))
	if all5 != 8 || its5+its6 != 7 || its5 != 3 {
		t.Fatalf("%d bids, %d and %d of the two; want 8, the first to give one up", all5, its5, its6)
	}
	// Submitter 5 (3 bids) may take from 6 (4), and then no one holds more
	// than it: its next request gets no bid, but replaces nothing.
	if _, err := r.Bid(floodJob(5, 4), t0); err != nil {
		t.Fatal(err)
	}
	_, its5 = r.Bids(testID(5))
	_, its6 = r.Bids(testID(6))
	if its5 != 4 || its6 != 3 {
		t.Fatalf("%d and %d bids, want 4 and 3", its5, its6)
	}
	// 5 is at its own cap: a newer request replaces its oldest bid.
	if _, err := r.Bid(floodJob(5, 5), t0); err != nil {
		t.Fatal(err)
	}
	for n := 2; n <= 3; n++ {
		if _, err := r.Bid(floodJob(7, n), t0); err != nil {
			t.Fatalf("the newcomer's request %d: %v", n, err)
		}
	}
	// 8 bids among three: 3, 2 and 3 (or 2, 3 and 3).
	if _, err := r.Bid(floodJob(7, 4), t0); err == nil || !strings.Contains(err.Error(), "no bid: 8 bids outstanding, 3 of them") {
		t.Fatalf("a request when no one holds more than it: %v, want no bid", err)
	}
}

// A bid expires BidTTL after it was made, not before: a request asked
// again renews its bid, and the first bid's expiry then drops nothing;
// bids of other submitters expire each at its own time.
func TestBidsExpireEachAtItsOwnTime(t *testing.T) {
	r := providerOf(t, 1, 8, usdc(200), "")
	needs := needsOf(8, 0, Spread, usdc(250))
	ttl := 10 * time.Second // the default BidTTL
	a, b := rfbOf(1, 1, needs), rfbOf(2, 1, needs)
	a.Deadline = t0.Add(time.Hour).UnixMilli()
	b.Deadline = a.Deadline
	if _, err := r.Bid(a, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Bid(b, t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Bid(a, t0.Add(ttl/2)); err != nil { // asked again: its bid renewed
		t.Fatal(err)
	}
	r.Tick(t0.Add(ttl))
	if all, _ := r.Bids(a.Submitter); all != 2 {
		t.Fatalf("%d bids at the first bid's expiry, want 2 (it was renewed)", all)
	}
	r.Tick(t0.Add(ttl + time.Second))
	if all, its := r.Bids(a.Submitter); all != 1 || its != 1 {
		t.Fatalf("%d bids (%d of the first submitter's) after the second's expiry, want only the renewed one", all, its)
	}
	r.Tick(t0.Add(ttl + ttl/2))
	if all, _ := r.Bids(a.Submitter); all != 0 {
		t.Fatalf("%d bids after the renewed one's expiry, want none", all)
	}
}

// A provider that refuses the host network says so in its bids, unless
// its bids are for the host network themselves; a bid saying both is bad.
func TestAProviderRefusingTheHostNetworkSaysSoInItsBids(t *testing.T) {
	for _, tt := range []struct {
		noJobNet, hostNetOK, noHostNet bool
		wantHost, wantNoHost           bool
	}{
		{noHostNet: true, wantNoHost: true},
		{noHostNet: false},
		{noJobNet: true, hostNetOK: true, wantHost: true},
	} {
		r, err := NewReservations(ProviderConfig{
			ID: testID(1), Unit: "USDC:6", Zone: "a", NoJobNet: tt.noJobNet, HostNetOK: tt.hostNetOK, NoHostNet: tt.noHostNet,
			GPUs: []Capacity{{Class: "H100-80GB", Model: "H100", VRAMGB: 80, GPUs: 8, Price: usdc(200)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		b, err := r.Bid(rfbOf(0, 1, needsOf(16, 8, Spread, usdc(250))), t0)
		if err != nil {
			t.Fatalf("%+v: no bid: %v", tt, err)
		}
		if b.HostNet != tt.wantHost || b.NoHostNet != tt.wantNoHost {
			t.Errorf("%+v: bid hostNet %v noHostNet %v", tt, b.HostNet, b.NoHostNet)
		}
		if err := b.Check(); err != nil {
			t.Errorf("%+v: its own bid: %v", tt, err)
		}
	}
	b := bidOf(1, "H100-80GB", 8, usdc(200), "a")
	b.HostNet, b.NoHostNet = true, true
	if err := b.Check(); err == nil || !strings.Contains(err.Error(), "noHostNet") {
		t.Errorf("a bid both for and refusing the host network: %v, want it bad", err)
	}
}
