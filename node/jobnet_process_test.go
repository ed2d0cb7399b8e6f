package node_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobnet"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
	"github.com/gpumesh/gpumesh/node/sessionwire"
)

// A process job of two members on its job network, while it runs: job
// status shows each member's meter and how its provider reaches the
// other, before any member ends; job exec into member 1 runs in its
// network namespace (its interfaces, its job network) and reaches member 0
// at its job address.
func TestProcessMembersJobNetworkLiveStatusAndExec(t *testing.T) {
	needJobNet(t)
	m := meshtest.Start(t, 3, h100s(173, 2))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sub := m.Nodes[2]
	script := `if [ "$NODE_RANK" = 0 ]; then busybox nc -l -p 7000 > got; echo "rank0 got $(cat got)"; fi; exec sleep 600`
	y := fmt.Sprintf("name: jobnet-live\ncommand: [sh, -c, %q]\nlauncher: torchrun\nresources:\n  gpus: 16\n  perNode: 8\n  gpu: {model: H100}\nmaxPrice: 2.50\ntimeout: 5m\n", script)
	spec, err := jobspec.Parse([]byte(y), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	job, err := sub.SubmitJob(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	live := func(j node.Job) bool {
		if j.State != node.JobRunning || len(j.Runs) != 2 {
			return false
		}
		for _, r := range j.Runs {
			if r.State != node.MemberRunning || r.Net == nil || r.Net.Direct != 1 || r.Net.Relayed != 0 {
				return false
			}
		}
		return true
	}
	j := waitJob(t, ctx, sub, job.ID, "both members' job network meters while they run", live)
	for i, r := range j.Runs {
		if r.Addr != jobnet.Addr(j.ID, i).String() {
			t.Errorf("member %d's address %q, want %s", i, r.Addr, jobnet.Addr(j.ID, i))
		}
	}

	out, errOut, code, err := execIn(ctx, sub, j.ID, sessionwire.Open{Rank: 1, Command: []string{"sh", "-c",
		`tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' '`}}, nil)
	if err != nil || code != 0 || strings.TrimSpace(out) != jobnet.IfName+" lo" {
		t.Errorf("interfaces an exec in member 1 sees: %q (%q), code %d, %v; want its own %s and lo", out, errOut, code, err, jobnet.IfName)
	}
	out, errOut, code, err = execIn(ctx, sub, j.ID, sessionwire.Open{Rank: 1, Command: []string{"sh", "-c",
		`for i in $(busybox seq 1 100); do echo hello from an exec | busybox nc -w 2 "$MASTER_ADDR" 7000 2>/dev/null && exit 0; sleep 0.1; done; exit 1`}}, nil)
	if err != nil || code != 0 {
		t.Fatalf("an exec in member 1 sending to member 0's job address: %q %q, code %d, %v", out, errOut, code, err)
	}
	waitJob(t, ctx, sub, job.ID, "member 1's live meter to count what the exec sent", func(j node.Job) bool {
		return live(j) && j.Runs[1].Net.SentBytes > 0 && j.Runs[0].Net.ReceivedBytes > 0
	})
	if _, err := sub.CancelJob(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	j = waitEnded(t, ctx, sub, j.ID)
	if log := jobLog(t, sub, j.ID); !strings.Contains(log, "[0] rank0 got hello from an exec") {
		t.Errorf("member 0 did not get what the exec in member 1 sent; the log:\n%s", log)
	}
}

// In a private swarm a provider that cannot make job networks (not root:
// played here by its probe) still takes a member of a job of several;
// the other provider can, yet the whole job meets on the host network,
// never a mix: MASTER_ADDR is member 0's provider's address as the
// submitter reached it, and the job's log and each member's run say so.
func TestAJobWithAProviderWithoutJobNetworksMeetsOnTheHostNetwork(t *testing.T) {
	t.Cleanup(node.SetJobNetProbe(func(region string) error {
		if region == "no-tun" {
			return errors.New("a provider that cannot make TUN devices (the test's)")
		}
		return jobnet.Probe()
	}))
	o := h100s(176, 2)
	o.Config = func(i int, c *node.Config) {
		switch i {
		case 0:
			c.Region = "no-tun"
		case 1:
			c.Price = "fixed:2.00" // the cheaper: member 0, at 127.0.0.1 on the simulated network
		}
	}
	m := meshtest.Start(t, 3, o)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sub := m.Nodes[2]
	// Member 0 listens until a connection brings the line (nc may end a
	// connection before its bytes arrive); member 1 sends it until, having
	// sent it once, it finds member 0 no longer listening (five tries in a
	// row: member 0 listens again a moment after an empty connection).
	script := `if [ "$NODE_RANK" = 0 ]; then echo "rank0 master $MASTER_ADDR"; ` +
		`for i in $(busybox seq 1 50); do busybox nc -l -p "$MASTER_PORT" > got; grep -q hello got && break; done; echo "rank0 got: $(cat got)"; ` +
		`else sent=0; fails=0; for i in $(busybox seq 1 300); do if echo "hello over the host network" | busybox nc -w 2 "$MASTER_ADDR" "$MASTER_PORT" 2>/dev/null; then sent=1; fails=0; else fails=$((fails+1)); fi; ` +
		`[ "$sent" = 1 ] && [ "$fails" -ge 5 ] && exit 0; sleep 0.1; done; exit 1; fi`
	y := fmt.Sprintf("name: host-net\ncommand: [sh, -c, %q]\nlauncher: torchrun\nresources:\n  gpus: 16\n  perNode: 8\n  gpu: {model: H100}\nmaxPrice: 2.50\ntimeout: 5m\n", script)
	spec, err := jobspec.Parse([]byte(y), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	j := runToEnd(t, ctx, sub, spec)
	log := jobLog(t, sub, j.ID)
	if j.State != node.JobDone || len(j.Runs) != 2 {
		t.Fatalf("job %s (%s), %d members; want done on two. Its log:\n%s", j.State, j.Reason, len(j.Runs), log)
	}
	if j.Members[0].Provider != m.Nodes[1].Host().ID() || j.Members[0].HostNet || !j.Members[1].HostNet {
		t.Errorf("members %+v; want member 0 on node 1 (job networks), member 1 on node 0 (none)", j.Members)
	}
	for _, r := range j.Runs {
		if r.Network != node.NetworkHost || r.Addr != "" {
			t.Errorf("member %d: network %q, job address %q; want the host network, no job address", r.Rank, r.Network, r.Addr)
		}
	}
	for _, want := range []string{
		"[gpumesh] the members meet on the host network (provider cannot make job networks: member 1 (",
		"[0] rank0 master 127.0.0.1\n", "[0] rank0 got: hello over the host network\n",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the job's log lacks %q:\n%s", want, log)
		}
	}
}
