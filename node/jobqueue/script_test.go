package jobqueue

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/golden"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected transcripts of testdata/*.txt")

// TestScripts runs the golden scripts in testdata: each line a command,
// then "----" and the transcript the queue must print. Commands:
//
//	config floor=D backoff=D max=D rate=R burst=N jobs=N offers=N   (first, optional)
//	add ID [model=M] [class=C] [vram=GB] [price=P] [unit=U] for=D [news] [reason=WORD]
//	failed ID [reason=WORD]
//	remove ID
//	offer PROVIDER class=C ask=P avail=N [unit=U]
//	wait D        time passes, then Tick
//	tick          Tick now
//	status ID
//
// After each command the transcript shows what Ready holds and when the
// queue wakes next.
func TestScripts(t *testing.T) {
	golden.Run(t, "testdata/*.txt", *rewrite, runScript)
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func runScript(t *testing.T, script string) string {
	var out strings.Builder
	var q *Queue
	var cfg Config
	now := t0
	ms := func(at time.Time) string { return fmt.Sprintf("%dms", at.Sub(t0).Milliseconds()) }
	for _, line := range strings.Split(script, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fmt.Fprintf(&out, "%8s > %s\n", ms(now), line)
		words := strings.Fields(line)
		args := map[string]string{}
		flags := map[string]bool{}
		var pos []string
		for _, w := range words[1:] {
			if k, v, ok := strings.Cut(w, "="); ok {
				args[k] = v
			} else if w == "news" {
				flags[w] = true
			} else {
				pos = append(pos, w)
			}
		}
		dur := func(k string) time.Duration {
			if args[k] == "" {
				return 0
			}
			d, err := time.ParseDuration(args[k])
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return d
		}
		num := func(k string) uint64 {
			if args[k] == "" {
				return 0
			}
			v, err := strconv.ParseUint(args[k], 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return v
		}
		unit := args["unit"]
		if unit == "" {
			unit = "USDC:6"
		}
		if q == nil && words[0] != "config" {
			q = New(cfg)
		}
		switch words[0] {
		case "config":
			rate, _ := strconv.ParseFloat(args["rate"], 64)
			cfg = Config{Floor: dur("floor"), Backoff: dur("backoff"), MaxBackoff: dur("max"), Rate: rate,
				Burst: int(num("burst")), MaxJobs: int(num("jobs")), MaxOffers: int(num("offers"))}
			q = New(cfg)
		case "add":
			w := Want{Model: args["model"], Class: args["class"], MinVRAMGB: uint32(num("vram")), Unit: unit, MaxPrice: num("price")}
			if w.Model == "" && w.Class == "" {
				w.Model = "H100"
			}
			if w.MaxPrice == 0 {
				w.MaxPrice = 2_500_000
			}
			if err := q.Add(pos[0], w, now.Add(dur("for")), args["reason"], flags["news"], now); err != nil {
				fmt.Fprintf(&out, "%8s   error %v\n", "", err)
			}
		case "failed":
			q.Failed(pos[0], args["reason"], now)
		case "remove":
			q.Remove(pos[0])
		case "offer":
			news := q.Offer(Offer{Provider: pos[0], Class: args["class"], Unit: unit, Ask: num("ask"), Available: uint32(num("avail"))}, now)
			fmt.Fprintf(&out, "%8s   news=%v\n", "", news)
		case "wait":
			d, err := time.ParseDuration(pos[0])
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			now = now.Add(d)
			q.Tick(now)
		case "tick":
			q.Tick(now)
		case "status":
			s, ok := q.Status(pos[0])
			if !ok {
				fmt.Fprintf(&out, "%8s   not queued\n", "")
				break
			}
			next := "-"
			if !s.Next.IsZero() {
				next = ms(s.Next)
			}
			fmt.Fprintf(&out, "%8s   position=%d tries=%d trying=%v next=%s until=%s reason=%q\n", "", s.Position, s.Tries, s.Trying, next, ms(s.Until), s.Reason)
		default:
			t.Fatalf("unknown command %q", line)
		}
		rd := q.Ready()
		for _, id := range rd.Try {
			fmt.Fprintf(&out, "%8s   try %s\n", "", id)
		}
		for _, e := range rd.Expire {
			fmt.Fprintf(&out, "%8s   expire %s tries=%d reason=%q\n", "", e.ID, e.Tries, e.Reason)
		}
		if w := q.Wake(now); !w.IsZero() {
			fmt.Fprintf(&out, "%8s   wake %s (queued %d)\n", "", ms(w), q.Len())
		} else {
			fmt.Fprintf(&out, "%8s   asleep (queued %d)\n", "", q.Len())
		}
	}
	return out.String()
}
