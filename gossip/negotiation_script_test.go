package gossip

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/golden"
	"github.com/libp2p/go-libp2p/core/peer"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected transcripts of testdata/negotiation/*.txt")

// TestNegotiationScripts runs the scripts in testdata/negotiation: commands,
// a line "----", then the transcript the in-memory mesh must print. Run
// with -rewrite to write the transcripts anew (then read the diff).
//
//	provider N gpus=8 price=2.00 zone=eu-west/ams1  provider N (test peer N) with 8 H100-80GB at 2.00 USDC/GPU-h
//	provider N ... nojobnet=1 private=1   one that cannot make job networks, in a private swarm (or not)
//	provider N ... nohostnet=1             one that refuses the host network (--no-host-network)
//	submit gpus=16 perNode=8 placement=colocated max=2.50 expect=0 grace=20ms private=0
//	steal N gpus=4    another job takes 4 GPUs of provider N (after its bid)
//	deliver N         deliver the next N messages in order, 1 ms apart
//	expect N          the directory's count of providers arrives: N
//	submit ... direct=1 fanout=4 fallback=1s   a direct negotiation (Ready.Ask)
//	candidates 1 2 3 final=1   providers named to a direct negotiation, with
//	                  their GPUs and price (final: the directory has answered)
//	slow N after=3s   provider N's answers to awards arrive 3 s after they are sent
//	topic lost=1      requests broadcast on the topic reach no provider (lost=0: they do)
//	free N            the reservation that steal took on provider N ends
//	run until=400ms   deliver in order until the negotiation ends (or until 400 ms)
func TestNegotiationScripts(t *testing.T) {
	golden.Run(t, "testdata/negotiation/*.txt", *rewrite, runScript)
}

func runScript(t *testing.T, script string) string {
	m := newMeshNet(t, 1)
	for ln, line := range strings.Split(script, "\n") {
		line, _, _ = strings.Cut(line, "#")
		words := strings.Fields(line)
		if len(words) == 0 {
			continue
		}
		fail := func(format string, a ...any) {
			t.Helper()
			t.Fatalf("line %d: %s: %s", ln+1, line, fmt.Sprintf(format, a...))
		}
		args := map[string]string{}
		var pos []int
		for _, w := range words[1:] {
			if k, v, ok := strings.Cut(w, "="); ok {
				args[k] = v
			} else if n, err := strconv.Atoi(w); err == nil {
				pos = append(pos, n)
			} else {
				fail("argument %q", w)
			}
		}
		num := func(k string, def uint64) uint64 {
			v, ok := args[k]
			if !ok {
				return def
			}
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				fail("%s=%s: %v", k, v, err)
			}
			return n
		}
		price := func(k string) uint64 {
			p, err := DefaultUnit.Parse(args[k])
			if err != nil {
				fail("%s: %v", k, err)
			}
			return p
		}
		// after is the provider a line names and its after= duration.
		after := func() (peer.ID, time.Duration) {
			if len(pos) != 1 {
				fail("want the provider's number")
			}
			d, err := time.ParseDuration(args["after"])
			if err != nil {
				fail("after: %v", err)
			}
			return testID(pos[0]), d
		}
		switch words[0] {
		case "provider":
			if len(pos) != 1 {
				fail("want the provider's number")
			}
			m.provider(pos[0], uint32(num("gpus", 8)), price("price"), args["zone"])
			r := m.provs[testID(pos[0])]
			r.cfg.NoJobNet, r.cfg.HostNetOK = num("nojobnet", 0) == 1, num("private", 0) == 1
			r.cfg.NoHostNet = num("nohostnet", 0) == 1
		case "submit":
			needs := needsOf(uint32(num("gpus", 8)), uint32(num("perNode", 0)), Placement(args["placement"]), price("max"))
			cfg := NegotiationConfig{Expect: int(num("expect", 0)), Direct: num("direct", 0) == 1, Fanout: int(num("fanout", 0)), Private: num("private", 0) == 1,
				SendReports: num("reports", 0) == 1}
			if g, ok := args["fallback"]; ok {
				d, err := time.ParseDuration(g)
				if err != nil {
					fail("fallback: %v", err)
				}
				cfg.FallbackWait = d
			}
			if g, ok := args["grace"]; ok {
				d, err := time.ParseDuration(g)
				if err != nil {
					fail("grace: %v", err)
				}
				cfg.Grace = d
			}
			m.submit(rfbOf(0, 1, needs), cfg)
		case "steal":
			if len(pos) != 1 {
				fail("want the provider's number")
			}
			thief := rfbOf(9, 9, needsOf(uint32(num("gpus", 1)), 0, Spread, MaxPrice))
			r := m.provs[testID(pos[0])]
			b, err := r.Bid(thief, m.now)
			if err != nil {
				fail("%v", err)
			}
			if _, ok := r.Award(awardOf(thief, b, b.GPUs, m.now), m.now).(*Acceptance); !ok {
				fail("the theft was refused")
			}
		case "deliver":
			if len(pos) != 1 {
				fail("want how many messages")
			}
			for range pos[0] {
				if len(m.queue) == 0 {
					fail("no message left to deliver")
				}
				msg := m.queue[0]
				m.queue = m.queue[1:]
				m.now = m.now.Add(time.Millisecond)
				m.deliver(msg)
			}
		case "expect":
			if len(pos) != 1 {
				fail("want the providers expected")
			}
			m.logf("directory: %d providers", pos[0])
			for _, n := range m.negs {
				n.Expect(pos[0], m.now)
				m.drain(n)
			}
		case "candidates":
			var cs []Candidate
			var names []string
			for _, i := range pos {
				r, ok := m.provs[testID(i)]
				if !ok {
					fail("no provider %d", i)
				}
				c := r.cfg.GPUs[0]
				cs = append(cs, Candidate{Provider: testID(i), GPUs: c.GPUs, Price: c.Price})
				names = append(names, fmt.Sprintf("p%d", i))
			}
			final := num("final", 0) == 1
			m.logf("candidates %s final=%v", strings.Join(names, " "), final)
			for _, n := range m.negs {
				n.Candidates(cs, final, m.now)
				m.drain(n)
			}
		case "slow":
			p, d := after()
			if m.slow == nil {
				m.slow = map[peer.ID]time.Duration{}
			}
			m.slow[p] = d
		case "sendlag":
			// The submitter's request to the provider leaves this long
			// after it was asked for (its CPU, a dial, a lookup).
			p, d := after()
			if m.sendLag == nil {
				m.sendLag = map[peer.ID]time.Duration{}
			}
			m.sendLag[p] = d
		case "topic":
			m.lost = num("lost", 0) == 1
		case "free":
			if len(pos) != 1 {
				fail("want the provider's number")
			}
			thief := rfbOf(9, 9, needsOf(1, 0, Spread, MaxPrice))
			m.logf("p%d: the other job ends", pos[0])
			m.provs[testID(pos[0])].Release(Release{Job: thief.Job, From: thief.Submitter, Provider: testID(pos[0])}, m.now)
		case "run":
			m.until = time.Time{}
			if u, ok := args["until"]; ok {
				d, err := time.ParseDuration(u)
				if err != nil {
					fail("until: %v", err)
				}
				m.until = t0.Add(d)
			}
			m.run(false)
		default:
			fail("unknown command %q", words[0])
		}
	}
	got := strings.Join(m.trace, "\n") + "\n"
	for id, n := range m.names {
		got = strings.ReplaceAll(got, id.String(), n)
	}
	return got
}
