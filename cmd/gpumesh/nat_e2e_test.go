package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/netlab"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobnet"
)

// natWait bounds NAT traversal: AutoNAT finding a peer public or not (its
// dial back to a NATed peer times out), a relay reservation, a hole punch.
const natWait = 60 * time.Second

// labPort is the port every lab peer listens on (each has its own
// namespace, so they do not collide).
const labPort = "4021"

// startLabNode runs `gpumesh node` on data inside the lab host h, on every
// interface, with mDNS off, plus args.
func startLabNode(t testing.TB, h *netlab.Host, data string, args ...string) *gmNode {
	t.Helper()
	argv := append([]string{"--data", data, "node", "--listen", "/ip4/0.0.0.0/tcp/" + labPort, "--mdns=false"}, args...)
	return runNode(t, h.Name, data, argv, h.Command(gmBin, argv...))
}

// labAddr is h's node's address as the internet sees it (for --bootstrap).
func labAddr(h *netlab.Host, n *gmNode) string {
	return "/ip4/" + h.PublicIP + "/tcp/" + labPort + "/p2p/" + n.id.PeerID
}

// connKinds asks n how it reaches each peer: peer ID → kind.
func connKinds(n *gmNode) (map[string]node.PeerConn, node.Status, error) {
	st, err := n.status()
	if err != nil {
		return nil, st, err
	}
	out := map[string]node.PeerConn{}
	for _, c := range st.Connections {
		out[c.Peer] = c
	}
	return out, st, nil
}

// TestJobAcrossNATsRunsOverHolePunchedConnections: two providers, each
// behind a NAT of its own, a submitter behind a third, and one public peer
// in a private swarm. The public peer relays (AutoNAT finds it public);
// the NATed peers reserve a slot with it and advertise relayed addresses;
// the submitter finds both providers, and a job of two members runs on
// them with logs and outputs back, over connections hole-punched through
// the NATs, its members meeting on their job network (process members)
// over a connection hole-punched between the two providers. `status`
// shows how each connection was made.
func TestJobAcrossNATsRunsOverHolePunchedConnections(t *testing.T) {
	if err := jobnet.Probe(); os.Geteuid() == 0 && err != nil {
		t.Skipf("the job's members meet on a job network: %v", err)
	}
	lab := netlab.New(t)
	// Two public peers: AutoNAT asks peers with public addresses to dial
	// back, so a lone public peer has no one to tell it it is public.
	pubHost, pub2Host := lab.Public("public"), lab.Public("public-2")
	provHosts := []*netlab.Host{lab.BehindNAT("provider-0"), lab.BehindNAT("provider-1")}
	subHost := lab.BehindNAT("submitter")

	common := append([]string{"--heartbeat", "500ms"}, privateSwarm(t)...)
	pubArgs := []string{"--gpus", "none", "--metrics", "127.0.0.1:9090"}
	pub := startLabNode(t, pubHost, dataDir(t), append(common, pubArgs...)...)
	boot := labAddr(pubHost, pub)
	common = append(common, "--bootstrap", boot)
	pub2 := startLabNode(t, pub2Host, dataDir(t), append(common, pubArgs...)...)
	_, jobFlags := jobDir(t)
	var provs []*gmNode
	for _, h := range provHosts {
		args := append(slices.Clone(common), "--gpus", "mock:dgxh100", "--price", "fixed:2.10", "--executors", "process")
		provs = append(provs, startLabNode(t, h, dataDir(t), append(args, jobFlags...)...))
	}
	sub := startLabNode(t, subHost, dataDir(t), append(common, "--gpus", "none")...)

	// The public peer serves as a relay; each NATed peer holds a
	// reservation with it.
	for _, p := range []*gmNode{pub, pub2} {
		testwait.For(t, natWait, p.name+" to relay", func() (bool, string) {
			st, err := p.status()
			if err != nil {
				return false, err.Error()
			}
			return st.Relay.Service == "serving", st.Relay.Service
		})
	}
	for _, n := range append(slices.Clone(provs), sub) {
		testwait.For(t, natWait, n.name+" to hold a relay reservation", func() (bool, string) {
			st, err := n.status()
			if err != nil {
				return false, err.Error()
			}
			return slices.Contains(st.Relay.Relays, pub.id.PeerID) || slices.Contains(st.Relay.Relays, pub2.id.PeerID), fmt.Sprintf("relays %v, service %s", st.Relay.Relays, st.Relay.Service)
		})
	}
	testwait.For(t, natWait, "the submitter to find both providers", func() (bool, string) {
		res, err := findGPUs(sub.data, "--model", "H100")
		if err != nil {
			return false, err.Error()
		}
		return res.Providers == 2, fmt.Sprintf("%d providers", res.Providers)
	})

	// A job of two members of 8 GPUs: one on each provider. They meet
	// on their job network (a launcher's job: each process member in a
	// network namespace of its own, with a TUN interface its provider
	// made): member 1 sends to member 0's job address, whose provider is
	// behind another NAT, and member 0 says what it got.
	y := `name: nat
command: [sh, -c, 'echo "hello from rank $GPUMESH_RANK"; echo "result of $GPUMESH_RANK" > "$GPUMESH_OUTPUTS/result.txt"; if [ "$NODE_RANK" = 0 ]; then busybox nc -l -p "$MASTER_PORT" > got; echo "rank 0 got: $(cat got)"; else for i in $(busybox seq 1 200); do echo "data from $GPUMESH_ADDR" | busybox nc -w 2 "$MASTER_ADDR" "$MASTER_PORT" 2>/dev/null && break; sleep 0.2; done; echo "rank 1 sent to $MASTER_ADDR, try $i"; fi']
launcher: torchrun
resources: {gpus: 16, perNode: 8, gpu: {model: H100}}
maxPrice: 2.50
timeout: 5m
`
	spec := filepath.Join(t.TempDir(), "job.yaml")
	if err := os.WriteFile(spec, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := gm(sub.data, "job", "submit", spec, "-f")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	text := string(out)
	for r := range 2 {
		if want := fmt.Sprintf("[%d] hello from rank %d", r, r); !strings.Contains(text, want) {
			t.Fatalf("the job's output lacks %q:\n%s", want, text)
		}
	}
	if !strings.Contains(text, "exit code: 0") {
		t.Fatalf("no exit code 0:\n%s", text)
	}
	var jobs node.JobsPage
	if err := gmJSON(sub.data, &jobs, "job", "ls"); err != nil || len(jobs.Jobs) != 1 {
		t.Fatalf("job ls: %+v %v", jobs, err)
	}
	// Member 0 got member 1's data over the job network; each member's
	// provider reached the other's directly (hole-punched through both
	// NATs: the job network's streams go over no relay).
	jb := jobs.Jobs[0]
	if len(jb.Runs) != 2 {
		t.Fatalf("the job's runs: %+v", jb.Runs)
	}
	if want := "[0] rank 0 got: data from " + jb.Runs[1].Addr; jb.Runs[1].Addr == "" || !strings.Contains(text, want) {
		t.Errorf("the job's output lacks %q:\n%s", want, text)
	}
	for r, run := range jb.Runs {
		if run.Net == nil || run.Net.Direct != 1 || run.Net.Relayed != 0 {
			t.Errorf("member %d's job network: %+v; want its provider reaching the other directly", r, run.Net)
		}
	}
	if n := jb.Runs[1].Net; n == nil || n.SentBytes == 0 || jb.Runs[0].Net.ReceivedBytes == 0 {
		t.Errorf("meters: member 1 sent %+v, member 0 received %+v; want bytes each", jb.Runs[1].Net, jb.Runs[0].Net)
	}
	dst := t.TempDir()
	if out, err := gm(sub.data, "job", "get", jobs.Jobs[0].ID, "-o", dst); err != nil {
		t.Fatalf("job get: %v\n%s", err, out)
	}
	for r := range 2 {
		b, err := os.ReadFile(filepath.Join(dst, fmt.Sprintf("rank-%d", r), "result.txt"))
		if err != nil || string(b) != fmt.Sprintf("result of %d\n", r) {
			t.Errorf("rank %d's output: %q %v", r, b, err)
		}
	}

	// How each connection was made: every NATed peer reaches the public
	// one directly; the submitter reaches each provider through a hole
	// in both NATs, and so does each provider the submitter.
	kinds, st, err := connKinds(sub)
	if err != nil {
		t.Fatal(err)
	}
	if k := kinds[pub.id.PeerID].Kind; k != node.ConnDirect {
		t.Errorf("submitter → public peer: %q, want %q (status %+v)", k, node.ConnDirect, st.Connections)
	}
	for _, p := range provs {
		if k := kinds[p.id.PeerID].Kind; k != node.ConnHolePunched {
			t.Errorf("submitter → %s: %q, want %q (status %+v)", p.name, k, node.ConnHolePunched, st.Connections)
		}
		pk, pst, err := connKinds(p)
		if err != nil {
			t.Fatal(err)
		}
		if k := pk[sub.id.PeerID].Kind; k != node.ConnHolePunched {
			t.Errorf("%s → submitter: %q, want %q (status %+v)", p.name, k, node.ConnHolePunched, pst.Connections)
		}
	}
	// The relays metered what they carried.
	relayed := 0.0
	for _, h := range []*netlab.Host{pubHost, pub2Host} {
		relayed += labMetric(t, h, "libp2p_relaysvc_data_transferred_bytes_total")
	}
	if relayed <= 0 {
		t.Errorf("the relays' metrics show %v bytes relayed, want some", relayed)
	}
	// And the CLI says so.
	txt, err := gm(sub.data, "status")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"relays in use:\n  12D3", provs[0].id.PeerID + "  hole-punched", pub.id.PeerID + "  direct"} {
		if !strings.Contains(string(txt), want) {
			t.Errorf("status lacks %q:\n%s", want, txt)
		}
	}
}

// labMetric sums the samples of a Prometheus metric that h's node serves
// on 127.0.0.1:9090 (in h's namespace).
func labMetric(t *testing.T, h *netlab.Host, name string) float64 {
	t.Helper()
	out, err := h.Command("busybox", "sh", "-c", "printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 5 127.0.0.1 9090").Output()
	if err != nil {
		t.Fatalf("metrics of %s: %v", h.Name, err)
	}
	sum := 0.0
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}
