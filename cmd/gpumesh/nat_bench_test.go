package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/netlab"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
)

// labJob writes a process job spec of gpus GPUs of model (one member of 8
// per provider) whose members print a line at once.
func labJob(tb testing.TB, model string, gpus int) string {
	tb.Helper()
	y := fmt.Sprintf("name: lab\ncommand: [sh, -c, 'echo first byte']\nresources: {gpus: %d, perNode: 8, gpu: {model: %s}}\nmaxPrice: 2.50\ntimeout: 5m\n", gpus, model)
	path := filepath.Join(tb.TempDir(), "job.yaml")
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// submitTimed runs `job submit -f` on data and returns how long after the
// start the first line starting with want came, and the whole run's output.
func submitTimed(tb testing.TB, data, spec, want string) (time.Duration, string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*cliWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, gmBin, "--data", data, "job", "submit", spec, "-f")
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	var first time.Duration
	var all strings.Builder
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if first == 0 && strings.HasPrefix(sc.Text(), want) {
			first = time.Since(t0)
		}
		all.WriteString(sc.Text() + "\n")
	}
	if err := cmd.Wait(); err != nil || first == 0 {
		tb.Fatalf("job submit: %v; no line %q in:\n%s", err, want, all.String())
	}
	return first, all.String()
}

// holdsRelay waits until n advertises addresses through a relay.
func holdsRelay(tb testing.TB, n *gmNode) {
	tb.Helper()
	testwait.For(tb, natWait, n.name+" to hold a relay reservation", func() (bool, string) {
		st, err := n.status()
		if err != nil {
			return false, err.Error()
		}
		return len(st.Relay.Relays) > 0, st.Relay.Service
	})
}

// percentile of sorted durations, p in 0..100.
func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := (len(d)*p + 99) / 100
	return d[min(max(i-1, 0), len(d)-1)]
}

// BenchmarkNATFirstLogByte: a submitter and a provider, each behind a NAT
// of its own, meet for the first time at `job submit` (through a relay,
// then a hole punch); the time to the first byte of the job's log at the
// submitter, against the same job between two public peers in the same
// lab (the baseline). Target: under 5 s behind NAT.
func BenchmarkNATFirstLogByte(b *testing.B) {
	var nat, direct []time.Duration
	warm := 0
	for range b.N {
		n, d, w := natFirstByteOnce(b)
		nat, direct = append(nat, n), append(direct, d)
		if w {
			warm++
		}
	}
	slices.Sort(nat)
	slices.Sort(direct)
	b.ReportMetric(float64(percentile(nat, 50).Milliseconds()), "nat-p50-ms")
	b.ReportMetric(float64(percentile(nat, 100).Milliseconds()), "nat-max-ms")
	b.ReportMetric(float64(percentile(direct, 50).Milliseconds()), "direct-p50-ms")
	b.ReportMetric(float64(percentile(nat, 50))/float64(percentile(direct, 50)), "nat/direct")
	// Peers of a swarm meet in the background (the DHT's and GossipSub's
	// upkeep): the share of runs whose two NATed peers had a hole-punched
	// connection already when the job was submitted.
	b.ReportMetric(float64(warm)/float64(b.N), "punched-before-submit")
}

// natFirstByteOnce builds one lab: two public peers (relays; the second
// also a public provider of H100s), a provider of A100s behind NAT and a
// submitter behind another; it times an A100 job from the NATed submitter
// and an H100 job from the first public peer.
func natFirstByteOnce(b *testing.B) (nat, direct time.Duration, punched bool) {
	b.Helper()
	b.StopTimer()
	lab := netlab.New(b)
	defer lab.Close()
	pubHost, pub2Host := lab.Public("public"), lab.Public("public-2")
	provHost, subHost := lab.BehindNAT("provider"), lab.BehindNAT("submitter")
	common := append([]string{"--heartbeat", "500ms"}, privateSwarm(b)...)
	_, jobFlags := jobDir(b)
	pub := startLabNode(b, pubHost, dataDir(b), append(common, "--gpus", "none")...)
	common = append(common, "--bootstrap", labAddr(pubHost, pub))
	provider := func(gpus string) []string {
		return append(append(slices.Clone(common), "--gpus", gpus, "--price", "fixed:2.10", "--executors", "process"), jobFlags...)
	}
	nodes := []*gmNode{
		pub,
		startLabNode(b, pub2Host, dataDir(b), provider("mock:dgxh100")...),
		startLabNode(b, provHost, dataDir(b), provider("mock:dgxa100")...),
	}
	sub := startLabNode(b, subHost, dataDir(b), append(common, "--gpus", "none")...)
	nodes = append(nodes, sub)
	defer func() {
		for _, n := range nodes {
			n.stop()
		}
	}()
	holdsRelay(b, nodes[2])
	holdsRelay(b, sub)
	kinds, _, err := connKinds(sub)
	if err != nil {
		b.Fatal(err)
	}
	punched = kinds[nodes[2].id.PeerID].Kind == node.ConnHolePunched
	b.StartTimer()
	nat, _ = submitTimed(b, sub.data, labJob(b, "A100", 8), "[0] first byte")
	direct, _ = submitTimed(b, pub.data, labJob(b, "H100", 8), "[0] first byte")
	b.StopTimer()
	return nat, direct, punched
}

// envInt reads a count from the environment, def where unset.
func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a count, at least 1", name, v)
	}
	return n
}

// BenchmarkRelayServiceHoldsReservations: one public peer runs the relay
// service with room for N reservations (GPUMESH_BENCH_NATED, default 100);
// N peers, each behind a NAT of its own, and a tenth more, reserve with it.
// It holds N, no more, and its memory per reservation is reported against
// its own before the NATed peers came (the baseline).
func BenchmarkRelayServiceHoldsReservations(b *testing.B) {
	nated := envInt(b, "GPUMESH_BENCH_NATED", 100)
	extra := max(nated/10, 1)
	for range b.N {
		b.StopTimer()
		lab := netlab.New(b)
		relayHost := lab.Public("relay")
		common := append([]string{"--heartbeat", "5s", "--gpus", "none"}, privateSwarm(b)...)
		relay := startLabNode(b, relayHost, dataDir(b), append(common, "--relay-service", "on", "--relay-max-reservations", strconv.Itoa(nated))...)
		before, err := vmRSS(relay.cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		common = append(common, "--relay-service", "off", "--bootstrap", labAddr(relayHost, relay))
		var peers []*gmNode
		b.StartTimer()
		t0 := time.Now()
		for i := range nated + extra {
			peers = append(peers, startLabNode(b, lab.BehindNAT(fmt.Sprintf("nated-%d", i)), dataDir(b), common...))
		}
		held := 0
		testwait.For(b, 3*natWait, fmt.Sprintf("%d reservations", nated), func() (bool, string) {
			held = 0
			for _, p := range peers {
				if st, err := p.status(); err == nil && slices.Contains(st.Relay.Relays, relay.id.PeerID) {
					held++
				}
			}
			return held >= nated, fmt.Sprintf("%d held", held)
		})
		full := time.Since(t0)
		b.StopTimer()
		if held > nated {
			b.Fatalf("the relay holds %d reservations, over its limit of %d", held, nated)
		}
		after, err := vmRSS(relay.cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(held), "reservations")
		b.ReportMetric(full.Seconds(), "all-held-s")
		b.ReportMetric(before, "relay-idle-MB")
		b.ReportMetric((after-before)*1024/float64(held), "KB/reservation")
		for _, p := range append(peers, relay) {
			p.stop()
		}
		lab.Close()
	}
}

// BenchmarkWANLinks: GPUMESH_BENCH_WAN_PEERS peers (default 20: 19
// providers of 8 GPUs and a submitter), public, on links of 0 ms (the
// baseline) and of 50 ms ± 10 ms round trips with 1% loss, in the same run:
// directory lookups (`gpus find`) and GPUMESH_BENCH_WAN_FORMS (default 5)
// 8-GPU formations (`job submit -f` to its "running" line, the CLI's own
// time included: the baseline shows it), p50 and p95. The slow links are
// the kernel's netem, or netlab's own delay where the kernel has none.
func BenchmarkWANLinks(b *testing.B) {
	peers := envInt(b, "GPUMESH_BENCH_WAN_PEERS", 20)
	for _, link := range []struct {
		name  string
		netem *netlab.Netem
	}{
		{"0ms", nil},
		// A packet crosses two uplinks (its sender's and its receiver's), each
		// slowed 12.5 ms ± 5 ms and losing 0.5%: 2 × 12.5 ms
		// each way is a 50 ms round trip.
		{"50ms-1pct", &netlab.Netem{Delay: 12500 * time.Microsecond, Jitter: 5 * time.Millisecond, Loss: 0.5}},
	} {
		b.Run(link.name, func(b *testing.B) {
			for range b.N {
				wanOnce(b, peers, link.netem)
			}
		})
	}
}

func wanOnce(b *testing.B, peers int, link *netlab.Netem) {
	b.StopTimer()
	lab := netlab.New(b)
	defer lab.Close()
	var hosts []*netlab.Host
	for i := range peers {
		h := lab.Public(fmt.Sprintf("peer-%d", i))
		if link != nil {
			h.Link(*link)
		}
		hosts = append(hosts, h)
	}
	common := append([]string{"--heartbeat", "1s"}, privateSwarm(b)...)
	_, jobFlags := jobDir(b)
	var nodes []*gmNode
	defer func() {
		for _, n := range nodes {
			n.stop()
		}
	}()
	for i, h := range hosts {
		args := slices.Clone(common)
		if i > 0 {
			args = append(args, "--bootstrap", labAddr(hosts[0], nodes[0]))
		}
		if i < peers-1 {
			args = append(append(args, "--gpus", "mock:dgxh100", "--price", "fixed:2.10", "--executors", "process"), jobFlags...)
		} else {
			args = append(args, "--gpus", "none")
		}
		nodes = append(nodes, startLabNode(b, h, dataDir(b), args...))
	}
	sub := nodes[len(nodes)-1]
	testwait.For(b, 2*meshWait, "every provider found", func() (bool, string) {
		res, err := findGPUs(sub.data, "--model", "H100")
		if err != nil {
			return false, err.Error()
		}
		return res.Providers == peers-1, fmt.Sprintf("%d providers", res.Providers)
	})
	b.StartTimer()
	var lookups, forms []time.Duration
	for range 10 {
		t0 := time.Now()
		if _, err := findGPUs(sub.data, "--model", "H100"); err != nil {
			b.Fatal(err)
		}
		lookups = append(lookups, time.Since(t0))
	}
	var last time.Time
	for range envInt(b, "GPUMESH_BENCH_WAN_FORMS", 5) {
		// At most the rate a peer keeps its own requests under
		// (gossip.RFBLimits.Pace: 4 a second), so no job waits for its
		// pacer: outside the timing.
		if d := time.Until(last.Add(300 * time.Millisecond)); d > 0 {
			b.StopTimer()
			<-time.After(d)
			b.StartTimer()
		}
		last = time.Now()
		d, _ := submitTimed(b, sub.data, labJob(b, "H100", 8), "[gpumesh] attempt 1: running")
		forms = append(forms, d)
	}
	b.StopTimer()
	sort.Slice(lookups, func(i, j int) bool { return lookups[i] < lookups[j] })
	sort.Slice(forms, func(i, j int) bool { return forms[i] < forms[j] })
	b.ReportMetric(float64(percentile(lookups, 50).Milliseconds()), "lookup-p50-ms")
	b.ReportMetric(float64(percentile(lookups, 95).Milliseconds()), "lookup-p95-ms")
	b.ReportMetric(float64(percentile(forms, 50).Milliseconds()), "formation-p50-ms")
	b.ReportMetric(float64(percentile(forms, 95).Milliseconds()), "formation-p95-ms")
	if link != nil && link.Delay > 0 {
		rtt := 4 * link.Delay // each way crosses two uplinks
		b.ReportMetric(float64(percentile(forms, 50))/float64(rtt), "formation-p50-rtts")
		b.ReportMetric(float64(percentile(forms, 95))/float64(rtt), "formation-p95-rtts")
		// The round trip as measured, submitter to a provider: jitter and
		// a busy link's queue make it longer than the nominal one.
		if ms, ok := pingAvg(hosts[len(hosts)-1], hosts[0].IP); ok {
			b.ReportMetric(ms, "ping-rtt-ms")
		}
	}
}

// pingAvg is the average round trip of 20 pings from h to ip in ms, and
// whether busybox ping could tell.
func pingAvg(h *netlab.Host, ip string) (float64, bool) {
	out, _ := h.Command("busybox", "ping", "-c", "20", "-i", "0.1", "-q", ip).CombinedOutput()
	_, rest, ok := strings.Cut(string(out), "min/avg/max = ")
	if !ok {
		return 0, false
	}
	f := strings.Split(strings.Fields(rest)[0], "/")
	if len(f) != 3 {
		return 0, false
	}
	avg, err := strconv.ParseFloat(f[1], 64)
	return avg, err == nil
}
