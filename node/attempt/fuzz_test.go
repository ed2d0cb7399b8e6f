package attempt

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// FuzzAttempt throws event sequences at an attempt, through an I/O layer
// that keeps the loop contract (but not the members, who may say anything),
// and checks what holds whatever the members say: Done comes once and
// nothing is decided after it, no member is started twice, streams are
// stopped or closed only while open, no bill is paid beyond the lease or
// beyond the time measured, and once every stream has ended the attempt is
// done.
func FuzzAttempt(f *testing.F) {
	f.Add([]byte{0x13, 2, 0, 1, 0, 2, 1, 3, 0, 4, 4, 7, 0, 9, 8, 0, 9})
	f.Add([]byte{0x3f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
	f.Add([]byte{0x07, 0, 0, 3, 0, 3, 1, 5, 0, 5, 1, 7, 0, 40, 7, 0, 40, 7, 0, 1, 6, 0, 8, 1, 10, 10, 10})
	f.Add([]byte{0x22, 0, 0, 1, 0, 3, 0, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		fz := newFuzzIO(t, data[0])
		data = data[1:]
		next := func() int {
			if len(data) == 0 {
				return 0
			}
			b := data[0]
			data = data[1:]
			return int(b)
		}
		for len(data) > 0 {
			op, r := next()%13, next()%len(fz.cfg.Members)
			switch op {
			case 0: // the oldest pending start opens, or fails
				if len(fz.starting) > 0 {
					s := fz.starting[0]
					fz.starting = fz.starting[1:]
					err := ""
					if r == 0 && next()%4 == 0 {
						err = "unreachable"
					}
					fz.step(Opened{Rank: s, Addr: "10.0.0.1", Err: err})
				}
			case 1:
				fz.step(Listening{Rank: r, Port: 1 + next()})
			case 2:
				fz.step(Started{Rank: r, At: fz.now.UnixMilli() - int64(next())})
			case 3:
				fz.step(Heard{Rank: r, Beat: uint64(next() % 4)})
			case 4:
				fz.step(Errored{Rank: r, Reason: "bad"})
			case 5:
				fz.step(Exited{Rank: r, Code: next() % 3, Start: fz.now.UnixMilli() - 5000, End: fz.now.UnixMilli(), TimedOut: next()%5 == 0})
			case 6: // a bill, honest or not
				ms := uint64(next()) * 100
				m := fz.cfg.Members[r]
				amt := amount(m.Price, m.GPUs, ms) + uint64(next()%3)
				fz.step(Billed{Rank: r, Bill: Bill{Interval: next() % 6, Millis: ms, Amount: amt}})
			case 7:
				fz.now = fz.now.Add(time.Duration(next()) * 50 * time.Millisecond)
				fz.a.Tick(fz.now)
			case 8:
				if fz.open[r] {
					fz.step(StreamEnded{Rank: r, Err: "EOF"})
				}
			case 9:
				fz.step(Cancelled{})
			case 10:
				fz.step(PeerStopping{})
			case 11:
				fz.step(Receipted{Rank: r, Receipt: Receipt{Job: "job", Rank: r, Consumer: "c", Provider: fmt.Sprint(r), GPUs: 1, Class: "X", ResultHash: "h"}})
			case 12:
				if fz.payments[r] > 0 {
					fz.step(Paid{Rank: r, Signature: fmt.Sprint("tx", next()), Amount: 1})
				}
			}
			fz.drain()
		}
		// The I/O layer winds up: every start fails, every stream ends.
		for range 2 * len(fz.cfg.Members) {
			for len(fz.starting) > 0 {
				s := fz.starting[0]
				fz.starting = fz.starting[1:]
				fz.step(Opened{Rank: s, Err: "gone"})
				fz.drain()
			}
			for r := range fz.cfg.Members {
				if fz.open[r] {
					fz.step(StreamEnded{Rank: r, Err: "EOF"})
					fz.drain()
				}
			}
		}
		if fz.done == nil {
			t.Fatalf("every stream ended and the attempt is not done: %+v", fz.a.Runs())
		}
	})
}

type fuzzIO struct {
	t        *testing.T
	cfg      Config
	a        *Attempt
	now      time.Time
	starting []int        // started, not yet opened
	started  map[int]bool // ever started
	open     map[int]bool
	closed   map[int]bool
	firstRun map[int]time.Time // first Started taken
	workEnd  map[int]time.Time // the exit or loss
	billed   map[int]uint64    // ms paid
	payments map[int]int
	paidInt  map[[2]int]bool
	done     *Done
}

func newFuzzIO(t *testing.T, shape byte) *fuzzIO {
	n := 1 + int(shape&3)
	cfg := Config{
		Job: "job", Consumer: "c", Retries: int(shape>>2) & 1, Timeout: 20 * time.Second,
		Rendezvous: shape&16 != 0, EndsWithRankZero: shape&32 != 0, Settles: shape&64 == 0,
		StartWithin: 5 * time.Second, StopWait: 3 * time.Second,
	}
	for r := range n {
		cfg.Members = append(cfg.Members, Member{Name: fmt.Sprint("p", r), Provider: fmt.Sprint(r), GPUs: uint32(1 + r), Class: "X", Price: 3_600_000})
	}
	a, err := New(cfg, t0)
	if err != nil {
		t.Fatal(err)
	}
	fz := &fuzzIO{
		t: t, cfg: cfg.withDefaults(), a: a, now: t0, started: map[int]bool{}, open: map[int]bool{}, closed: map[int]bool{},
		firstRun: map[int]time.Time{}, workEnd: map[int]time.Time{}, billed: map[int]uint64{}, payments: map[int]int{}, paidInt: map[[2]int]bool{},
	}
	fz.drain()
	return fz
}

func (fz *fuzzIO) step(ev Event) {
	before := fz.a.Runs()
	err := fz.a.Step(ev, fz.now)
	if fz.done != nil && err != ErrDone {
		fz.t.Fatalf("%T after Done: %v, want ErrDone", ev, err)
	}
	if err != nil {
		return
	}
	switch e := ev.(type) {
	case Opened:
		if e.Err == "" {
			fz.open[e.Rank] = true
		}
	case StreamEnded:
		delete(fz.open, e.Rank)
	case Started:
		if _, ok := fz.firstRun[e.Rank]; !ok {
			fz.firstRun[e.Rank] = fz.now
		}
	}
	fz.noteEnds(before)
}

// noteEnds remembers when a member's work ended as the machine saw it.
func (fz *fuzzIO) noteEnds(before []Run) {
	for i, r := range fz.a.Runs() {
		if _, ok := fz.workEnd[i]; !ok && before[i].State != r.State && (r.State == MemberExited || r.State == MemberLost) {
			fz.workEnd[i] = fz.now
		}
	}
}

func (fz *fuzzIO) drain() {
	t := fz.t
	for fz.a.HasReady() {
		rd := fz.a.Ready()
		if fz.done != nil {
			t.Fatalf("decisions after Done: %+v", rd)
		}
		for _, s := range rd.Start {
			if fz.started[s.Rank] {
				t.Fatalf("member %d started twice", s.Rank)
			}
			if s.Rank != 0 && fz.cfg.Rendezvous && s.MasterPort == 0 {
				t.Fatalf("member %d started without member 0's port", s.Rank)
			}
			fz.started[s.Rank] = true
			fz.starting = append(fz.starting, s.Rank)
		}
		for _, s := range rd.Stop {
			if !fz.open[s.Rank] {
				t.Fatalf("stop of member %d, whose stream is not open", s.Rank)
			}
		}
		for _, r := range rd.Close {
			if !fz.open[r] || fz.closed[r] {
				t.Fatalf("close of member %d: open %v, closed before %v", r, fz.open[r], fz.closed[r])
			}
			fz.closed[r] = true
		}
		for _, p := range rd.Pay {
			m := fz.cfg.Members[p.Rank]
			if !fz.cfg.Settles {
				t.Fatalf("paid a bill without settling")
			}
			if most := amount(m.Price, m.GPUs, p.Bill.Millis); p.Bill.Amount > most {
				t.Fatalf("paid %d for %d ms, the lease allows %d", p.Bill.Amount, p.Bill.Millis, most)
			}
			k := [2]int{p.Rank, p.Bill.Interval}
			if fz.paidInt[k] || p.Bill.Interval < 1 {
				t.Fatalf("paid interval %d of member %d", p.Bill.Interval, p.Rank)
			}
			fz.paidInt[k] = true
			first, ok := fz.firstRun[p.Rank]
			if !ok {
				t.Fatalf("paid member %d, which never started", p.Rank)
			}
			end := fz.now
			if e, ok := fz.workEnd[p.Rank]; ok {
				end = e
			}
			fz.billed[p.Rank] += p.Bill.Millis
			if bound := end.Sub(first) + fz.cfg.BillSlack; time.Duration(fz.billed[p.Rank])*time.Millisecond > bound {
				t.Fatalf("paid member %d for %d ms, more than the %s measured", p.Rank, fz.billed[p.Rank], bound)
			}
			fz.payments[p.Rank]++
		}
		if d := rd.Done; d != nil {
			fz.done = d
			var want []int
			for i, r := range fz.a.Runs() {
				if r.State != MemberExited {
					want = append(want, i)
				}
			}
			if !slices.Equal(d.Release, want) {
				t.Fatalf("release %v, want %v", d.Release, want)
			}
			if len(fz.open) > 0 || len(fz.starting) > 0 {
				t.Fatalf("done with streams open %v or opening %v", fz.open, fz.starting)
			}
			switch d.State {
			case StateDone:
				if d.ExitCode == nil || *d.ExitCode != 0 || d.Reason != "" {
					t.Fatalf("done with code %v, reason %q", d.ExitCode, d.Reason)
				}
			case StateFailed:
				if d.Reason == "" {
					t.Fatal("failed without a reason")
				}
			case StateCancelled, StateRetry:
				if d.ExitCode != nil {
					t.Fatalf("%s with an exit code", d.State)
				}
			default:
				t.Fatalf("state %q", d.State)
			}
		}
		for _, r := range rd.Countersign {
			fz.step(Countersigned{Rank: r})
		}
		for _, r := range rd.Close {
			fz.step(StreamEnded{Rank: r, Err: "closed"})
		}
		fz.a.Advance()
	}
	if fz.done != nil {
		fz.a.Tick(fz.now.Add(time.Hour))
		if fz.a.HasReady() {
			t.Fatal("a tick after Done decided something")
		}
	}
}
