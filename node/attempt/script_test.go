package attempt

import (
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/golden"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected transcripts of testdata/*.txt")

// TestScripts runs the scripts in testdata: commands, a line "----", then
// the transcript the attempt must print. Run with -rewrite to write the
// transcripts anew (then read the diff).
//
//	new members=2 gpus=4 price=3600 retries=1 timeout=10s rendezvous head settles auto
//	    heartbeat=1s startwithin=30s stopwait=5s starttimeout=10s
//	    an attempt of members p0, p1 (4 GPUs each at 3600 a GPU-hour); auto:
//	    every Start opens at once (address 10.0.0.<rank>), every Countersign
//	    succeeds, every Close ends its stream
//	open 1 addr=10.0.0.9 err="dial: refused"   the I/O layer's Opened
//	ready 0 port=29500   started 0 [at=MS]   heard 0   beat 0 [seq=N]   error 0 reason="..."
//	                       (heard: a log line or output data; beat: a heartbeat,
//	                       numbered one past the member's last unless seq says)
//	exit 0 code=3 [timedout] [reason="..."] [hash=H]
//	bill 1 interval=1 ms=1000 [amount=N]      the exact amount by default
//	paid 1 sig=S amount=N
//	receipt 1 [paid=N] [payments=S,T] [job=J] [gpus=N] [code=N] [hash=H] [ms=N]
//	countersigned 1 [err="..."]   end 1 [err=EOF]   cancel   shutdown
//	overran 1 reason="..."   its provider sent more than the quotas allow
//	wait 5s [silent=1,2]   the clock moves on, ticking at every heartbeat;
//	                       open members beat, the silent ones do not
//	tick                   a tick now
func TestScripts(t *testing.T) {
	golden.Run(t, "testdata/*.txt", *rewrite, runScript)
}

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// harness is the I/O layer of a script: it prints what the attempt decides.
type harness struct {
	t        *testing.T
	a        *Attempt
	cfg      Config
	now      time.Time
	auto     bool
	open     map[int]bool   // streams open now
	seq      map[int]uint64 // the last heartbeat number of each member
	prevRuns []Run
	out      []string
}

func (h *harness) printf(format string, args ...any) {
	h.out = append(h.out, fmt.Sprintf("%6dms ", h.now.Sub(t0).Milliseconds())+fmt.Sprintf(format, args...))
}

func (h *harness) step(ev Event, echo string) {
	if echo != "" {
		h.printf("> %s", echo)
	}
	if err := h.a.Step(ev, h.now); err != nil {
		h.printf("  step: %v", err)
	}
	switch e := ev.(type) {
	case Opened:
		if e.Err == "" && h.a.ms[e.Rank].opened {
			h.open[e.Rank] = true
		}
	case StreamEnded:
		delete(h.open, e.Rank)
	}
}

// drain acts on every Ready as the package doc says.
func (h *harness) drain() {
	for h.a.HasReady() {
		rd := h.a.Ready()
		for _, n := range rd.Notes {
			h.printf("  note %s", n)
		}
		for _, s := range rd.Stop {
			h.printf("  stop %d %q", s.Rank, s.Reason)
		}
		for _, r := range rd.Close {
			h.printf("  close %d", r)
		}
		for _, s := range rd.Start {
			if s.MasterPort != 0 || s.MasterAddr != "" {
				h.printf("  start %d master=%s:%d", s.Rank, s.MasterAddr, s.MasterPort)
			} else {
				h.printf("  start %d", s.Rank)
			}
		}
		for _, p := range rd.Pay {
			h.printf("  pay %d interval=%d amount=%d ref=%s", p.Rank, p.Bill.Interval, p.Bill.Amount, p.Bill.Ref)
		}
		for _, c := range rd.Countersign {
			h.printf("  countersign %d", c)
		}
		for _, d := range rd.Decline {
			h.printf("  decline %d %q", d.Rank, d.Reason)
		}
		if rd.Runs != nil {
			for i, r := range rd.Runs {
				if i < len(h.prevRuns) && h.prevRuns[i] == r {
					continue
				}
				h.printf("  run %s", h.runString(r))
			}
			h.prevRuns = rd.Runs
		}
		if d := rd.Done; d != nil {
			code := "-"
			if d.ExitCode != nil {
				code = strconv.Itoa(*d.ExitCode)
			}
			h.printf("  done %s code=%s release=%v %q", d.State, code, d.Release, d.Reason)
		}
		if h.auto {
			for _, s := range rd.Start {
				h.step(Opened{Rank: s.Rank, Addr: fmt.Sprintf("10.0.0.%d", s.Rank)}, fmt.Sprintf("open %d (auto)", s.Rank))
			}
			for _, c := range rd.Countersign {
				h.step(Countersigned{Rank: c}, fmt.Sprintf("countersigned %d (auto)", c))
			}
			for _, r := range rd.Close {
				if h.open[r] {
					h.step(StreamEnded{Rank: r, Err: "closed"}, fmt.Sprintf("end %d err=closed (auto)", r))
				}
			}
		}
		h.a.Advance()
	}
}

func (h *harness) runString(r Run) string {
	s := fmt.Sprintf("%d %s", r.Rank, r.State)
	if r.State == MemberExited {
		s += fmt.Sprintf(" code=%d", r.ExitCode)
	}
	if !r.Started.IsZero() {
		s += fmt.Sprintf(" started=%dms", r.Started.Sub(t0).Milliseconds())
	}
	if !r.Ended.IsZero() {
		s += fmt.Sprintf(" ended=%dms", r.Ended.Sub(t0).Milliseconds())
	}
	if r.Error != "" {
		s += fmt.Sprintf(" error=%q", r.Error)
	}
	if r.Receipt != "" {
		s += fmt.Sprintf(" receipt=%q", r.Receipt)
	}
	if r.Paid != 0 {
		s += fmt.Sprintf(" paid=%d", r.Paid)
	}
	if r.Fault != "" {
		s += " fault=" + r.Fault
	}
	return s
}

// words splits a line on spaces, but not inside double quotes.
func words(line string) []string {
	var out []string
	var cur strings.Builder
	quoted, has := false, false
	for _, c := range line {
		switch {
		case c == '"':
			quoted, has = !quoted, true
		case c == ' ' && !quoted:
			if has {
				out = append(out, cur.String())
			}
			cur.Reset()
			has = false
		default:
			cur.WriteRune(c)
			has = true
		}
	}
	if has {
		out = append(out, cur.String())
	}
	return out
}

func runScript(t *testing.T, script string) string {
	h := &harness{t: t, now: t0, open: map[int]bool{}, seq: map[int]uint64{}}
	for ln, raw := range strings.Split(script, "\n") {
		line, _, _ := strings.Cut(raw, "#")
		line = strings.TrimSpace(line)
		ws := words(line)
		if len(ws) == 0 {
			continue
		}
		fail := func(format string, a ...any) {
			t.Helper()
			t.Fatalf("line %d: %s: %s", ln+1, line, fmt.Sprintf(format, a...))
		}
		args, flags := map[string]string{}, map[string]bool{}
		var pos []int
		for _, w := range ws[1:] {
			if k, v, ok := strings.Cut(w, "="); ok {
				args[k] = v
			} else if n, err := strconv.Atoi(w); err == nil {
				pos = append(pos, n)
			} else {
				flags[w] = true
			}
		}
		num := func(k string, def int64) int64 {
			v, ok := args[k]
			if !ok {
				return def
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				fail("%s=%s: %v", k, v, err)
			}
			return n
		}
		dur := func(k string) time.Duration {
			v, ok := args[k]
			if !ok {
				return 0
			}
			d, err := time.ParseDuration(v)
			if err != nil {
				fail("%s=%s: %v", k, v, err)
			}
			return d
		}
		ints := func(k string) []int {
			var out []int
			for _, s := range strings.Split(args[k], ",") {
				if s == "" {
					continue
				}
				n, err := strconv.Atoi(s)
				if err != nil {
					fail("%s: %v", k, err)
				}
				out = append(out, n)
			}
			return out
		}
		rank := func() int {
			if len(pos) != 1 {
				fail("want a member's rank")
			}
			return pos[0]
		}
		if ws[0] != "new" && h.a == nil {
			fail("no attempt: start with new")
		}
		switch ws[0] {
		case "new":
			cfg := Config{
				Job: "job1", Consumer: "consumer", Attempt: int(num("attempt", 0)), Retries: int(num("retries", 0)),
				Timeout: dur("timeout"), TimeoutText: args["timeout"],
				Rendezvous: flags["rendezvous"], EndsWithRankZero: flags["head"], Settles: flags["settles"],
				Heartbeat: dur("heartbeat"), StartWithin: dur("startwithin"), StopWait: dur("stopwait"),
				StartTimeout: dur("starttimeout"), Unit: args["unit"], MasterAddr: args["jobnet"],
			}
			hostNet := ints("hostnet")
			for r := range int(num("members", 1)) {
				cfg.Members = append(cfg.Members, Member{
					Name: fmt.Sprintf("p%d", r), Provider: fmt.Sprintf("provider%d", r),
					GPUs: uint32(num("gpus", 1)), Class: "H100-80GB", Price: uint64(num("price", 3600)),
					HostNet: slices.Contains(hostNet, r),
				})
			}
			a, err := New(cfg, h.now)
			if err != nil {
				fail("%v", err)
			}
			h.a, h.cfg, h.auto = a, cfg.withDefaults(), flags["auto"]
			h.printf("> %s", line)
		case "open":
			h.step(Opened{Rank: rank(), Addr: or(args["addr"], fmt.Sprintf("10.0.0.%d", rank())), Err: args["err"]}, line)
		case "ready":
			h.step(Listening{Rank: rank(), Port: int(num("port", 29500))}, line)
		case "started":
			h.step(Started{Rank: rank(), At: num("at", h.now.UnixMilli())}, line)
		case "heard":
			h.step(Heard{Rank: rank()}, line)
		case "beat":
			r := rank()
			seq := uint64(num("seq", int64(h.seq[r]+1)))
			h.seq[r] = max(h.seq[r], seq)
			h.step(Heard{Rank: r, Beat: seq}, line)
		case "error":
			h.step(Errored{Rank: rank(), Reason: args["reason"]}, line)
		case "exit":
			r := rank()
			start := h.a.ms[r].run.Started
			if start.IsZero() {
				start = t0
			}
			h.step(Exited{
				Rank: r, Code: int(num("code", 0)), Start: start.UnixMilli(), End: h.now.UnixMilli(),
				TimedOut: flags["timedout"], Reason: args["reason"], ResultHash: or(args["hash"], fmt.Sprintf("h%d", r)),
			}, line)
		case "bill":
			r := rank()
			ms := uint64(num("ms", 1000))
			m := h.cfg.Members[r]
			b := Bill{Interval: int(num("interval", 1)), Millis: ms, Ref: fmt.Sprintf("job1-0-%d-%d", r, num("interval", 1))}
			b.Amount = uint64(num("amount", int64(amount(m.Price, m.GPUs, ms))))
			h.step(Billed{Rank: r, Bill: b}, line)
		case "paid":
			h.step(Paid{Rank: rank(), Signature: args["sig"], Amount: uint64(num("amount", 0))}, line)
		case "receipt":
			r := rank()
			m, run := h.cfg.Members[r], h.a.ms[r].run
			rc := Receipt{
				Job: or(args["job"], "job1"), Attempt: h.cfg.Attempt, Rank: r, Provider: m.Provider, Consumer: "consumer",
				Class: m.Class, GPUs: uint32(num("gpus", int64(m.GPUs))), Price: m.Price,
				ExitCode: int(num("code", int64(run.ExitCode))), ResultHash: or(args["hash"], fmt.Sprintf("h%d", r)),
				Start: run.Started.UnixMilli(), End: run.Ended.UnixMilli(), Paid: uint64(num("paid", int64(run.Paid))),
			}
			if ms, ok := args["ms"]; ok {
				n, _ := strconv.ParseInt(ms, 10, 64)
				rc.End = rc.Start + n
			}
			if p, ok := args["payments"]; ok {
				rc.Payments = strings.Split(p, ",")
			} else {
				for s := range h.a.ms[r].paid {
					rc.Payments = append(rc.Payments, s)
				}
				slices.Sort(rc.Payments)
			}
			rc.CheckpointBytes = uint64(num("ckpt", 0))
			h.step(Receipted{Rank: r, Receipt: rc, CheckpointReceived: uint64(num("received", 0))}, line)
		case "countersigned":
			h.step(Countersigned{Rank: rank(), Err: args["err"]}, line)
		case "overran":
			h.step(Overran{Rank: rank(), Reason: args["reason"]}, line)
		case "end":
			h.step(StreamEnded{Rank: rank(), Err: or(args["err"], "EOF")}, line)
		case "cancel":
			h.step(Cancelled{Reason: args["reason"]}, line)
		case "shutdown":
			h.step(PeerStopping{Reason: args["reason"]}, line)
		case "tick":
			h.printf("> tick")
			h.a.Tick(h.now)
		case "wait":
			if len(ws) < 2 {
				fail("wait how long?")
			}
			d, err := time.ParseDuration(ws[1])
			if err != nil {
				fail("%v", err)
			}
			h.printf("> %s", line)
			h.wait(d, ints("silent"))
			continue
		default:
			fail("unknown command %q", ws[0])
		}
		h.drain()
	}
	return strings.Join(h.out, "\n") + "\n"
}

// wait moves the clock on by d, ticking at every heartbeat since t0; open
// members not silent beat just before each tick.
func (h *harness) wait(d time.Duration, silent []int) {
	end := h.now.Add(d)
	hb := h.cfg.Heartbeat
	for {
		next := t0.Add((h.now.Sub(t0)/hb + 1) * hb)
		if next.After(end) {
			break
		}
		h.now = next
		for r := range h.cfg.Members {
			if h.open[r] && !slices.Contains(silent, r) && h.a.Outcome() == nil {
				h.seq[r]++
				_ = h.a.Step(Heard{Rank: r, Beat: h.seq[r]}, h.now)
			}
		}
		before := len(h.out)
		h.a.Tick(h.now)
		h.drain()
		if len(h.out) > before {
			h.out = slices.Insert(h.out, before, fmt.Sprintf("%6dms tick", h.now.Sub(t0).Milliseconds()))
		}
	}
	h.now = end
}
