package attempt

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func twoMembers() Config {
	return Config{
		Job: "job", Consumer: "c", Timeout: time.Minute,
		Members: []Member{
			{Name: "p0", Provider: "s0", GPUs: 2, Class: "H100-80GB", Price: 3_600_000},
			{Name: "p1", Provider: "s1", GPUs: 2, Class: "H100-80GB", Price: 3_600_000},
		},
	}
}

// run starts cfg and opens and starts every member.
func run(t *testing.T, cfg Config) *Attempt {
	t.Helper()
	a, err := New(cfg, t0)
	if err != nil {
		t.Fatal(err)
	}
	rd := a.Ready()
	a.Advance()
	for _, s := range rd.Start {
		mustStep(t, a, Opened{Rank: s.Rank, Addr: "10.0.0.1"}, t0)
		mustStep(t, a, Started{Rank: s.Rank, At: t0.UnixMilli()}, t0)
	}
	a.Ready()
	a.Advance()
	return a
}

func mustStep(t *testing.T, a *Attempt, ev Event, now time.Time) {
	t.Helper()
	if err := a.Step(ev, now); err != nil {
		t.Fatalf("step %T: %v", ev, err)
	}
}

func TestNewRefusesABadConfig(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Config)
	}{
		{"no members", func(c *Config) { c.Members = nil }},
		{"a member without GPUs", func(c *Config) { c.Members[1].GPUs = 0 }},
		{"negative retries", func(c *Config) { c.Retries = -1 }},
		{"negative attempt", func(c *Config) { c.Attempt = -1 }},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := twoMembers()
			tc.change(&cfg)
			if _, err := New(cfg, t0); !errors.Is(err, ErrBadConfig) {
				t.Fatalf("New: %v, want ErrBadConfig", err)
			}
		})
	}
}

func TestReadyHoldsDecisionsUntilAdvance(t *testing.T) {
	a, err := New(twoMembers(), t0)
	if err != nil {
		t.Fatal(err)
	}
	first := a.Ready()
	if len(first.Start) != 2 || first.Runs == nil || len(first.Notes) != 1 {
		t.Fatalf("first Ready: %+v, want two starts, the runs and a note", first)
	}
	if again := a.Ready(); len(again.Start) != 2 {
		t.Fatalf("Ready again before Advance: %d starts, want the same 2", len(again.Start))
	}
	mustStep(t, a, Opened{Rank: 0}, t0) // while acting on the Ready
	a.Advance()
	if a.HasReady() {
		t.Fatalf("after Advance: %+v, want nothing (an Opened decides nothing)", a.Ready())
	}
	mustStep(t, a, Errored{Rank: 0, Reason: "no GPU"}, t0)
	a.Ready()
	mustStep(t, a, Opened{Rank: 1}, t0) // stopping: it gets a stop
	a.Advance()
	if rd := a.Ready(); len(rd.Stop) != 1 || rd.Stop[0].Rank != 1 {
		t.Fatalf("a step between Ready and Advance was lost: %+v", rd)
	}
}

func TestStepRefusesEventsOfStreamsNotOpen(t *testing.T) {
	cfg := twoMembers()
	cfg.Rendezvous = true
	a, err := New(cfg, t0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ev   Event
		want error
	}{
		{Started{Rank: 0}, ErrUnexpected},       // before its Opened
		{Opened{Rank: 1}, ErrUnexpected},        // not started yet: rendezvous
		{Heard{Rank: 2}, ErrUnknownRank},        // no such member
		{Opened{Rank: -1}, ErrUnknownRank},      // no such member
		{Countersigned{Rank: 0}, ErrUnexpected}, // not asked
	} {
		if err := a.Step(tc.ev, t0); !errors.Is(err, tc.want) {
			t.Errorf("Step(%T%+v) = %v, want %v", tc.ev, tc.ev, err, tc.want)
		}
	}
}

func TestDoneWaitsForTheCountersignature(t *testing.T) {
	cfg := twoMembers()
	cfg.Members = cfg.Members[:1]
	a := run(t, cfg)
	now := t0.Add(time.Second)
	mustStep(t, a, Exited{Rank: 0, Start: t0.UnixMilli(), End: now.UnixMilli(), ResultHash: "h"}, now)
	mustStep(t, a, Receipted{Rank: 0, Receipt: Receipt{
		Job: "job", Provider: "s0", Consumer: "c", GPUs: 2, Class: "H100-80GB", Price: 3_600_000,
		ResultHash: "h", Start: t0.UnixMilli(), End: now.UnixMilli(),
	}}, now)
	mustStep(t, a, StreamEnded{Rank: 0, Err: "EOF"}, now)
	rd := a.Ready()
	a.Advance()
	if rd.Done != nil || len(rd.Countersign) != 1 {
		t.Fatalf("Ready: countersign %v, done %+v; want a countersign and no end yet", rd.Countersign, rd.Done)
	}
	mustStep(t, a, Countersigned{Rank: 0}, now)
	rd = a.Ready()
	if rd.Done == nil || rd.Done.State != StateDone || rd.Runs[0].Receipt != "countersigned" {
		t.Fatalf("after Countersigned: done %+v, runs %+v", rd.Done, rd.Runs)
	}
}

func TestHeadOfARendezvousEndingAloneFails(t *testing.T) {
	cfg := twoMembers()
	cfg.Rendezvous = true
	a, err := New(cfg, t0)
	if err != nil {
		t.Fatal(err)
	}
	mustStep(t, a, Opened{Rank: 0}, t0)
	mustStep(t, a, Started{Rank: 0, At: t0.UnixMilli()}, t0)
	mustStep(t, a, Exited{Rank: 0, Code: 0}, t0)
	mustStep(t, a, StreamEnded{Rank: 0, Err: "EOF"}, t0)
	d := a.Outcome()
	if d == nil || d.State != StateFailed || !strings.Contains(d.Reason, "before the other members could start") {
		t.Fatalf("outcome %+v, want failed: member 0 ended before the others started", d)
	}
}

func TestWakeIsTheNextDeadline(t *testing.T) {
	cfg := twoMembers()
	cfg.Heartbeat, cfg.StartWithin, cfg.StopWait, cfg.StartTimeout = time.Second, 30*time.Second, 5*time.Second, 10*time.Second
	a, err := New(cfg, t0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := a.Wake(), t0.Add(30*time.Second); !got.Equal(want) {
		t.Errorf("before any open: Wake %s, want the start deadline %s", got.Sub(t0), want.Sub(t0))
	}
	mustStep(t, a, Opened{Rank: 0}, t0)
	if got, want := a.Wake(), t0.Add(3*time.Second+time.Nanosecond); !got.Equal(want) {
		t.Errorf("opened: Wake %s, want just after 3 heartbeats", got.Sub(t0))
	}
	mustStep(t, a, Cancelled{}, t0)
	mustStep(t, a, Heard{Rank: 0, Beat: 1}, t0.Add(4*time.Second))
	if got, want := a.Wake(), t0.Add(5*time.Second); !got.Equal(want) {
		t.Errorf("stopping: Wake %s, want the end of the stop wait %s", got.Sub(t0), want.Sub(t0))
	}
}

func TestBillSlackIsAHeartbeatWhenLonger(t *testing.T) {
	for _, tc := range []struct {
		heartbeat, want time.Duration
	}{
		{0, 2 * time.Second},
		{500 * time.Millisecond, 2 * time.Second},
		{5 * time.Second, 5 * time.Second},
	} {
		c := Config{Heartbeat: tc.heartbeat}.withDefaults()
		if c.BillSlack != tc.want {
			t.Errorf("heartbeat %s: slack %s, want %s", tc.heartbeat, c.BillSlack, tc.want)
		}
	}
}

func TestBillsOfAMemberLostAreBoundedByItsLoss(t *testing.T) {
	cfg := twoMembers()
	cfg.Settles, cfg.Heartbeat = true, time.Second
	a := run(t, cfg)
	for s := range 10 {
		mustStep(t, a, Heard{Rank: 0, Beat: uint64(s + 1)}, t0.Add(time.Duration(s+1)*time.Second))
	}
	a.Tick(t0.Add(10 * time.Second)) // member 1 is lost at 10 s
	a.Ready()
	a.Advance()
	// A bill still in flight on its closing stream is held to the 10 s this
	// peer saw it work (plus slack), not to the minute since it started.
	mustStep(t, a, Billed{Rank: 1, Bill: Bill{Interval: 1, Millis: 20_000, Amount: 40_000}}, t0.Add(time.Minute))
	mustStep(t, a, Billed{Rank: 1, Bill: Bill{Interval: 2, Millis: 10_000, Amount: 20_000}}, t0.Add(time.Minute))
	rd := a.Ready()
	if len(rd.Refused) != 1 || rd.Refused[0].Bill.Interval != 1 || rd.Refused[0].Kind != BillLongerThanWorked || !strings.Contains(rd.Refused[0].Reason, "saw the member work 10s") {
		t.Fatalf("refused %+v, want interval 1, longer than the 10 s worked", rd.Refused)
	}
	if len(rd.Pay) != 1 || rd.Pay[0].Bill.Interval != 2 {
		t.Fatalf("paid %+v, want interval 2", rd.Pay)
	}
}

func TestAmountRoundsUpAndSaturates(t *testing.T) {
	for _, tc := range []struct {
		price  uint64
		gpus   uint32
		millis uint64
		want   uint64
	}{
		{3_600_000, 1, 1000, 1000},
		{3_600_000, 4, 1000, 4000},
		{1, 1, 1, 1},                         // ⌈1/3,600,000⌉
		{7, 3, 3_600_000, 21},                // an hour of 3 GPUs at 7
		{0, 8, 1 << 40, 0},                   // free
		{1 << 62, 8, 1 << 62, ^uint64(0)},    // saturated
		{1, 1 << 31, ^uint64(0), ^uint64(0)}, // GPU-ms overflow
	} {
		if got := amount(tc.price, tc.gpus, tc.millis); got != tc.want {
			t.Errorf("amount(%d, %d, %d) = %d, want %d", tc.price, tc.gpus, tc.millis, got, tc.want)
		}
	}
}

func TestCheckReceipt(t *testing.T) {
	now := t0.Add(10 * time.Second)
	good := Receipt{
		Job: "job", Attempt: 1, Rank: 2, Provider: "prov", Consumer: "me", Class: "H100-80GB", GPUs: 4, Price: 100,
		ExitCode: 0, ResultHash: "h", Start: t0.UnixMilli(), End: now.UnixMilli(), Paid: 30, Payments: []string{"a", "b"},
	}
	want := Expect{
		Job: "job", Attempt: 1, Rank: 2, Provider: "prov", Consumer: "me", Class: "H100-80GB", GPUs: 4, Price: 100,
		Exited: true, ExitCode: 0, ResultHash: "h", Started: t0, Payments: map[string]uint64{"a": 10, "b": 20},
	}
	for _, tc := range []struct {
		name   string
		change func(*Receipt, *Expect)
		reason string
	}{
		{"a good receipt", func(*Receipt, *Expect) {}, ""},
		{"a payment not made", func(r *Receipt, _ *Expect) { r.Payments = append(r.Payments, "x") }, "did not make: x"},
		{"a payment listed twice", func(r *Receipt, _ *Expect) { r.Payments, r.Paid = []string{"b", "b"}, 40 }, "twice: b"},
		{"a paid sum that is not the payments'", func(r *Receipt, _ *Expect) { r.Paid = 31 }, "says 31 was paid"},
		{"another job", func(r *Receipt, _ *Expect) { r.Job = "other" }, "for job other attempt 1 member 2"},
		{"another attempt", func(r *Receipt, _ *Expect) { r.Attempt = 0 }, "attempt 0"},
		{"another consumer", func(r *Receipt, _ *Expect) { r.Consumer = "you" }, "another consumer, you"},
		{"another provider", func(r *Receipt, _ *Expect) { r.Provider = "p2" }, "another provider, p2"},
		{"more GPUs", func(r *Receipt, _ *Expect) { r.GPUs = 8 }, "bills 8 H100-80GB GPUs, the lease was 4"},
		{"another price", func(r *Receipt, _ *Expect) { r.Price = 101 }, "bills 101 per GPU-hour, the bid was 100"},
		{"no exit seen", func(_ *Receipt, e *Expect) { e.Exited = false }, "exit was not received"},
		{"another exit code", func(r *Receipt, _ *Expect) { r.ExitCode = 1 }, "result does not match"},
		{"other outputs", func(r *Receipt, _ *Expect) { r.ResultHash = "x" }, "result does not match"},
		{"an end before the start", func(r *Receipt, _ *Expect) { r.End = r.Start - 1 }, "ends before it starts"},
		{"longer than it ran", func(r *Receipt, _ *Expect) { r.End = now.Add(2 * time.Minute).UnixMilli() }, "longer than the member ran"},
		{"a minute of clock skew", func(r *Receipt, _ *Expect) { r.End = now.Add(50 * time.Second).UnixMilli() }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, e := good, want
			r.Payments = append([]string(nil), good.Payments...)
			tc.change(&r, &e)
			got := CheckReceipt(r, e, now)
			if (tc.reason == "") != (got == "") || !strings.Contains(got, tc.reason) {
				t.Fatalf("CheckReceipt = %q, want %q", got, tc.reason)
			}
		})
	}
}
