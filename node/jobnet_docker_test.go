package node_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/netlab"
	"github.com/gpumesh/gpumesh/internal/testdocker"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobnet"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// hostServer listens on every address of this host and counts the
// connections it accepts; each is told a secret.
func hostServer(t *testing.T) (port int, accepted *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	accepted = new(atomic.Int64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			_, _ = c.Write([]byte("host secret\n"))
			_ = c.Close()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port, accepted
}

// lanAddr is an IPv4 address of this host's that is not loopback, or "".
func lanAddr() string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.String()
		}
	}
	return ""
}

func jobnetSpec(t *testing.T, img string, gpus int, script string) jobspec.Spec {
	t.Helper()
	y := fmt.Sprintf("name: jobnet\nimage: %s\ncommand: [sh, -c, %q]\nlauncher: torchrun\nresources:\n  gpus: %d\n  perNode: 8\n  gpu: {model: H100}\nmaxPrice: 2.50\ntimeout: 5m\n", img, script, gpus)
	spec, err := jobspec.Parse([]byte(y), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// A container job of two members meets on its own network: member 1 sends
// data to member 0's job address (MASTER_ADDR), and member 0 checks it.
// Neither member has any other network: the provider's loopback and LAN
// addresses are out of reach.
func TestTwoContainerMembersMeetOnTheirJobNetworkOnly(t *testing.T) {
	needJobNet(t)
	img := testdocker.EnsureImage(t)
	port, accepted := hostServer(t)
	lan := lanAddr()
	m := meshtest.Start(t, 3, meshtest.Options{Seed: 131, Providers: 2, Price: "fixed:2.10"})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	script := `echo "master=$MASTER_ADDR nets=$(ls /sys/class/net | tr '\n' ' ')"; echo "rank$NODE_RANK ifname=$GLOO_SOCKET_IFNAME,$NCCL_SOCKET_IFNAME"; ` +
		`busybox seq 1 30000 > /tmp/data; want=$(busybox md5sum < /tmp/data); ` +
		`if [ "$NODE_RANK" = 0 ]; then ` +
		`printf '#!/bin/sh\ncat > /tmp/got\n' > /tmp/recv; chmod +x /tmp/recv; ` +
		`busybox nc -l -p "$MASTER_PORT" -e /tmp/recv; ` +
		`got=$(busybox md5sum < /tmp/got); echo "rank0 got $(wc -c < /tmp/got) bytes"; [ "$got" = "$want" ] && echo "rank0 data ok"; ` +
		`else ` +
		`for i in $(busybox seq 1 100); do busybox nc -w 3 "$MASTER_ADDR" "$MASTER_PORT" < /tmp/data 2>/dev/null && break; sleep 0.2; done; echo "rank1 sent try $i"; ` +
		`fi; ` +
		fmt.Sprintf(`echo "rank$NODE_RANK loopback=$(busybox nc -w 2 127.0.0.1 %d </dev/null 2>&1)"; `, port) +
		fmt.Sprintf(`echo "rank$NODE_RANK lan=$(busybox nc -w 2 %s %d </dev/null 2>&1)"; `, lan, port) +
		`echo "rank$NODE_RANK metadata=$(busybox nc -w 2 169.254.169.254 80 </dev/null 2>&1)"`
	j := runToEnd(t, ctx, m.Nodes[2], jobnetSpec(t, img, 16, script))
	log := jobLog(t, m.Nodes[2], j.ID)
	t.Logf("the job's log:\n%s", log)
	if j.State != node.JobDone {
		t.Fatalf("job %s (%s)", j.State, j.Reason)
	}
	master := jobnet.Addr(j.ID, 0).String()
	for _, want := range []string{"[0] master=" + master + " nets=jobnet0 lo", "[1] master=" + master + " nets=jobnet0 lo",
		"[0] rank0 data ok", "[0] rank0 got 168894 bytes", "[1] rank1 ifname=jobnet0,jobnet0"} {
		if !strings.Contains(log, want) {
			t.Errorf("the job's log lacks %q", want)
		}
	}
	for i, r := range j.Runs {
		if r.Addr != jobnet.Addr(j.ID, i).String() || r.Net == nil {
			t.Fatalf("member %d's run: address %q, meter %v; want %s and a meter", i, r.Addr, r.Net, jobnet.Addr(j.ID, i))
		}
	}
	for i, r := range j.Runs {
		if r.Net.Direct != 1 || r.Net.Relayed != 0 {
			t.Errorf("member %d's provider reached %d others directly and %d through a relay; want 1 and 0", i, r.Net.Direct, r.Net.Relayed)
		}
	}
	if sent, got := j.Runs[1].Net.SentBytes, j.Runs[0].Net.ReceivedBytes; sent < 168894 || got < 168894 {
		t.Errorf("meters: member 1 sent %d bytes, member 0 received %d; want each at least the 168894 of the data", sent, got)
	}
	if strings.Contains(log, "gpumesh-jobnet") {
		t.Errorf("the wait for the job network said something")
	}
	if accepted.Load() != 0 || strings.Contains(log, "host secret") {
		t.Errorf("the job reached its provider's host (%d connections)", accepted.Load())
	}
}

// A container job of three members: every member reaches every other on
// its job address. (Over TCP: busybox's ping needs a raw socket, and a
// member has no capability to open one. ICMP between members is checked
// in package jobnet.)
func TestThreeContainerMembersReachEachOther(t *testing.T) {
	needJobNet(t)
	img := testdocker.EnsureImage(t)
	m := meshtest.Start(t, 4, meshtest.Options{Seed: 137, Providers: 3, Price: "fixed:2.10"})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// Each member answers on port 7000 (noting who asked), asks each
	// other member, then stays until every other member has asked it.
	script := `base=${MASTER_ADDR%.*}; n=$GPUMESH_MEMBERS; echo "rank$NODE_RANK addr=$GPUMESH_ADDR"; ` +
		`printf '#!/bin/sh\nread r; echo "pong $NODE_RANK"; : > /tmp/seen.$r\n' > /tmp/pong; chmod +x /tmp/pong; ` +
		`busybox nc -ll -p 7000 -e /tmp/pong & srv=$!; ` +
		`for r in $(busybox seq 0 $((n-1))); do [ "$r" = "$NODE_RANK" ] && continue; ok=no; ` +
		`for i in $(busybox seq 1 100); do got=$(echo "$NODE_RANK" | busybox nc -w 1 "$base.$((r+2))" 7000 2>/dev/null); [ "$got" = "pong $r" ] && { ok=yes; break; }; sleep 0.1; done; ` +
		`echo "rank$NODE_RANK reached $r $ok"; done; ` +
		`for i in $(busybox seq 1 300); do [ "$(ls /tmp/seen.* 2>/dev/null | wc -l)" -ge $((n-1)) ] && break; sleep 0.1; done; kill $srv`
	j := runToEnd(t, ctx, m.Nodes[3], jobnetSpec(t, img, 24, script))
	log := jobLog(t, m.Nodes[3], j.ID)
	t.Logf("the job's log:\n%s", log)
	if j.State != node.JobDone {
		t.Fatalf("job %s (%s)", j.State, j.Reason)
	}
	for i := range 3 {
		if want := fmt.Sprintf("rank%d addr=%s", i, jobnet.Addr(j.ID, i)); !strings.Contains(log, want) {
			t.Errorf("the job's log lacks %q", want)
		}
		for k := range 3 {
			if want := fmt.Sprintf("rank%d reached %d yes", i, k); i != k && !strings.Contains(log, want) {
				t.Errorf("the job's log lacks %q", want)
			}
		}
	}
}

// A container job of two members that asks for egress, on providers that
// allow it (--job-egress): each member reaches the (fake) internet, and
// still meets the other on its job network, and reaches nothing of its
// provider's host.
func TestContainerMembersWithEgressReachTheInternetNotTheHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("job networks and egress need root")
	}
	img := testdocker.EnsureImage(t)
	inet := netlab.NewFakeInternet(t)
	port, accepted := hostServer(t)
	lan := lanAddr()
	m := meshtest.Start(t, 3, meshtest.Options{Seed: 139, Providers: 2, Price: "fixed:2.10",
		Config: func(i int, c *node.Config) { c.JobEgress = i < 2 }})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	script := `echo "rank$NODE_RANK internet: $(printf 'GET /hello HTTP/1.0\r\n\r\n' | busybox nc -w 3 ` + inet.IP + ` 8080 2>&1 | busybox tail -n 1)"; ` +
		`if [ "$NODE_RANK" = 0 ]; then busybox nc -l -p "$MASTER_PORT" > /tmp/got; echo "rank0 got: $(cat /tmp/got)"; ` +
		`else for i in $(busybox seq 1 100); do echo "hello over the job network" | busybox nc -w 3 "$MASTER_ADDR" "$MASTER_PORT" 2>/dev/null && break; sleep 0.2; done; fi; ` +
		fmt.Sprintf(`echo "rank$NODE_RANK loopback=$(busybox nc -w 2 127.0.0.1 %d </dev/null 2>&1)"; `, port) +
		fmt.Sprintf(`echo "rank$NODE_RANK lan=$(busybox nc -w 2 %s %d </dev/null 2>&1)"; `, lan, port) +
		`echo "rank$NODE_RANK metadata=$(busybox nc -w 2 169.254.169.254 80 </dev/null 2>&1)"`
	spec := jobnetSpec(t, img, 16, script)
	spec.Network = &jobspec.Network{Egress: true}
	j := runToEnd(t, ctx, m.Nodes[2], spec)
	log := jobLog(t, m.Nodes[2], j.ID)
	t.Logf("the job's log:\n%s", log)
	if j.State != node.JobDone {
		t.Fatalf("job %s (%s)", j.State, j.Reason)
	}
	for _, want := range []string{"[0] rank0 internet: " + strings.TrimSpace(netlab.FakeHello), "[1] rank1 internet: " + strings.TrimSpace(netlab.FakeHello), "[0] rank0 got: hello over the job network"} {
		if !strings.Contains(log, want) {
			t.Errorf("the job's log lacks %q", want)
		}
	}
	if accepted.Load() != 0 || strings.Contains(log, "host secret") {
		t.Errorf("the job reached its provider's host (%d connections)", accepted.Load())
	}
}

// needJobNet skips a test of job networks where this process cannot make
// them (not root, no tun module), as a provider then takes no members of
// several.
func needJobNet(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("job networks need root")
	}
	if err := jobnet.Probe(); err != nil {
		t.Skipf("job networks: %v", err)
	}
}
