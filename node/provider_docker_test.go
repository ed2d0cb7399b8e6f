package node_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	osexec "os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testdocker"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A one-member container job with a launcher has no network but its own
// loopback: it meets itself there (MASTER_ADDR 127.0.0.1), cannot reach a
// server on the host's loopback, and gets its GPUs' share of the memory and
// cores the provider gives jobs.
func TestASingleMemberDockerJobRunsIsolatedWithItsShare(t *testing.T) {
	img := testdocker.EnsureImage(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
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
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port

	m := meshtest.Start(t, 2, meshtest.Options{Seed: 71, Providers: 1, Price: "fixed:2.10", Config: func(i int, c *node.Config) {
		if i == 0 {
			c.JobMemory, c.JobCPUs = 8<<30, 16 // one GPU of 8: 1 GiB, 2 cores
		}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	script := `echo "master=$MASTER_ADDR"; echo "nets=$(ls /sys/class/net)"; ` +
		`echo "mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"; ` +
		`echo "quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || busybox cut -d' ' -f1 /sys/fs/cgroup/cpu.max)"; ` +
		`busybox nc -l -p "$MASTER_PORT" -e echo self >/dev/null 2>&1 & ` +
		`for i in 1 2 3 4 5 6 7 8 9 10; do r=$(busybox nc -w 1 "$MASTER_ADDR" "$MASTER_PORT" </dev/null 2>/dev/null); [ -n "$r" ] && break; sleep 0.2; done; echo "self=$r"; ` +
		fmt.Sprintf(`echo "host=$(busybox nc -w 2 127.0.0.1 %d </dev/null 2>&1)"`, port)
	y := fmt.Sprintf("name: isolated\nimage: %s\ncommand: [sh, -c, %q]\nlauncher: torchrun\nresources:\n  gpus: 1\n  gpu: {model: H100}\nmaxPrice: 2.50\ntimeout: 5m\n", img, script)
	spec, err := jobspec.Parse([]byte(y), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	j := runToEnd(t, ctx, m.Nodes[1], spec)
	log := jobLog(t, m.Nodes[1], j.ID)
	if j.State != node.JobDone {
		t.Fatalf("job %s (%s):\n%s", j.State, j.Reason, log)
	}
	for _, want := range []string{"master=127.0.0.1", "nets=lo\n", "mem=1073741824", "quota=200000", "self=self"} {
		if !strings.Contains(log, want) {
			t.Errorf("the job's log lacks %q:\n%s", want, log)
		}
	}
	t.Logf("the job's log:\n%s", log)
	if accepted.Load() != 0 || strings.Contains(log, "host secret") {
		t.Errorf("the job reached the host's loopback (%d connections):\n%s", accepted.Load(), log)
	}
}

// A provider with NoHostNetwork runs jobs of several members on their job
// network, never over its host's: it runs a job of two members (each on
// its job address), and refuses a start of a member of several that
// comes with no job network, saying why.
func TestANoHostNetworkProviderRunsMembersOnlyOnAJobNetwork(t *testing.T) {
	o := h100s(73, 2)
	o.Config = func(i int, c *node.Config) { c.NoHostNetwork = i < 2 }
	m := meshtest.Start(t, 3, o)
	sub := m.Nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	j := runToEnd(t, ctx, sub, scriptSpec(t, 16, 8, `echo "at $GPUMESH_ADDR"`, ""))
	if j.State != node.JobDone || len(j.Runs) != 2 || j.Runs[1].Addr == "" {
		t.Errorf("a job of two members: %s (%s), runs %+v; want done on two, on job addresses", j.State, j.Reason, j.Runs)
	} else if log := jobLog(t, sub, j.ID); !strings.Contains(log, "[1] at "+j.Runs[1].Addr+"\n") {
		t.Errorf("member 1 did not run at its job address %s:\n%s", j.Runs[1].Addr, log)
	}
	j = runToEnd(t, ctx, sub, scriptSpec(t, 8, 0, "echo whole", ""))
	if j.State != node.JobDone || len(j.Runs) != 1 {
		t.Errorf("a job of 8 GPUs: %s (%s), %d members; want done on one", j.State, j.Reason, len(j.Runs))
	}

	s, err := sub.Host().NewStream(ctx, m.Nodes[0].Host().ID(), jobwire.Protocol)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := &jobwire.StartFrame{Job: j.ID, Attempt: 1, Rank: 1, Members: 2, WorldGPUs: 16, Spec: j.Spec, Rendezvous: true, MasterAddr: "127.0.0.1", MasterPort: 29500}
	if err := jobwire.NewWriter(s).Write(jobwire.Frame{T: jobwire.KindStart, Start: start}); err != nil {
		t.Fatal(err)
	}
	f, err := jobwire.Read(bufio.NewReader(s))
	if err != nil || f.T != jobwire.KindError || !strings.Contains(f.Reason, "--no-host-network") {
		t.Fatalf("a start of a member of 2 answered %+v, %v; want an error frame naming --no-host-network", f, err)
	}
	waitFree(t, ctx, m.Nodes[:2])
}

// With JobEgress a one-member container job has a network (the egress
// bridge's), still without a way to the host; the node's Close takes the
// network and its firewall rules away.
func TestJobEgressGivesOneMemberANetworkButNotTheHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("job egress installs firewall rules: run as root")
	}
	img := testdocker.EnsureImage(t)
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			_ = c.Close()
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
	m := meshtest.Start(t, 2, meshtest.Options{Seed: 75, Providers: 1, Price: "fixed:2.10", Config: func(i int, c *node.Config) {
		c.JobEgress = i == 0
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	script := fmt.Sprintf(`echo "nets=$(ls /sys/class/net | busybox tr '\n' ' ')"; `+
		`gw=$(busybox ip route | busybox awk '/default/ {print $3}'); echo "gw=$gw"; `+
		`for a in 127.0.0.1 $gw; do echo "$a: $(busybox nc -w 1 $a %d </dev/null 2>&1)"; done`, port)
	y := fmt.Sprintf("name: egress\nimage: %s\ncommand: [sh, -c, %q]\nresources:\n  gpus: 1\n  gpu: {model: H100}\nmaxPrice: 2.50\ntimeout: 5m\n", img, script)
	spec, err := jobspec.Parse([]byte(y), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	j := runToEnd(t, ctx, m.Nodes[1], spec)
	log := jobLog(t, m.Nodes[1], j.ID)
	t.Logf("the job's log:\n%s", log)
	if j.State != node.JobDone {
		t.Fatalf("job %s (%s)", j.State, j.Reason)
	}
	if !strings.Contains(log, "nets=eth0 lo") || strings.Contains(log, "gw=\n") {
		t.Errorf("the job has no network of its own:\n%s", log)
	}
	if accepted.Load() != 0 {
		t.Errorf("the job reached the host (%d connections)", accepted.Load())
	}
	m.Close()
	rules, _ := osexec.Command("iptables", "-S").CombinedOutput()
	if strings.Contains(string(rules), "GPUMESH-EGRESS") {
		t.Errorf("firewall rules left after the node closed:\n%s", rules)
	}
}
