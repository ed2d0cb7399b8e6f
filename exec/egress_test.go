package exec_test

import (
	"context"
	"fmt"
	osexec "os/exec"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/network"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/internal/netlab"
)

func TestEgressReachesTheInternetButNotTheHost(t *testing.T) {
	testImage(t)
	inet := netlab.NewFakeInternet(t)
	cli := dockerClient(t)
	d, err := exec.NewDocker(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = d.Close()
		}
	})
	if err := d.OpenEgress(context.Background()); err != nil {
		t.Fatal(err)
	}
	ins, err := cli.NetworkInspect(context.Background(), exec.EgressNetwork, network.InspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var gateway string
	for _, c := range ins.IPAM.Config {
		gateway = c.Gateway
	}

	lo := listenHost(t, "127.0.0.1:0")
	all := listenHost(t, "0.0.0.0:0")
	targets := []string{fmt.Sprintf("127.0.0.1 %d", lo.port()), inet.HostIP + " " + fmt.Sprint(all.port()), "169.254.169.254 80"}
	if gateway != "" {
		targets = append(targets, fmt.Sprintf("%s %d", gateway, all.port()))
	}
	for _, ip := range hostAddrs(t) {
		targets = append(targets, fmt.Sprintf("%s %d", ip, all.port()))
	}
	script := `echo "internet: $(printf 'GET /hello HTTP/1.0\r\n\r\n' | busybox nc -w 3 ` + inet.IP + ` 8080 | busybox tail -n 1)"; `
	for _, tg := range targets {
		script += fmt.Sprintf(`echo "%s: $(busybox nc -w 1 %s </dev/null 2>&1)"; `, tg, tg)
	}
	task := dockerTask(t, script)
	task.Egress = true
	out := newSyncBuf()
	task.Stdout = out
	if _, err := d.Run(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	t.Logf("what the task saw:\n%s", out.String())
	if !strings.Contains(out.String(), "internet: "+strings.TrimSpace(netlab.FakeHello)) {
		t.Errorf("the task with egress did not reach the (fake) internet:\n%s", out.String())
	}
	if n := lo.accepted.Load() + all.accepted.Load(); n != 0 || strings.Contains(out.String(), "host secret") {
		t.Errorf("the task with egress reached the host's servers (%d connections):\n%s", n, out.String())
	}

	// Closed, the executor takes its network and rules away.
	closed = true
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.NetworkInspect(context.Background(), exec.EgressNetwork, network.InspectOptions{}); !cerrdefs.IsNotFound(err) {
		t.Errorf("the egress network is still there after Close (inspect: %v)", err)
	}
	rules, _ := osexec.Command("iptables", "-S").CombinedOutput()
	if strings.Contains(string(rules), exec.EgressBridge) || strings.Contains(string(rules), "GPUMESH-EGRESS") {
		t.Errorf("firewall rules left after Close:\n%s", rules)
	}
}

func TestATaskWithoutEgressSetUpIsRefused(t *testing.T) {
	d := newDocker(t)
	task := dockerTask(t, "true")
	task.Egress = true
	if _, err := d.Run(context.Background(), task); err == nil || !strings.Contains(err.Error(), "egress") {
		t.Errorf("err = %v, want a refusal naming egress", err)
	}
}

// A member of a job network whose job asks for egress (and whose provider
// allows it) reaches the internet through the egress network while its
// job's subnet stays on its job interface; it still reaches nothing of the
// host's. Without egress, the same member reaches no internet: only its
// job interface and loopback.
func TestJobNetworkMemberWithEgressReachesTheInternetButNotTheHost(t *testing.T) {
	testImage(t)
	inet := netlab.NewFakeInternet(t)
	d, err := exec.NewDocker(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	if err := d.OpenEgress(context.Background()); err != nil {
		t.Fatal(err)
	}
	lo := listenHost(t, "127.0.0.1:0")
	all := listenHost(t, "0.0.0.0:0")
	targets := []string{fmt.Sprintf("127.0.0.1 %d", lo.port()), inet.HostIP + " " + fmt.Sprint(all.port()), "169.254.169.254 80"}
	for _, ip := range hostAddrs(t) {
		targets = append(targets, fmt.Sprintf("%s %d", ip, all.port()))
	}
	script := `echo "nets: $(ls /sys/class/net | tr '\n' ' ')"; echo "job route: $(busybox ip route get 10.9.0.3 | busybox head -n 1)"; ` +
		`echo "internet: $(printf 'GET /hello HTTP/1.0\r\n\r\n' | busybox nc -w 3 ` + inet.IP + ` 8080 2>&1 | busybox tail -n 1)"; `
	for _, tg := range targets {
		script += fmt.Sprintf(`echo "%s: $(busybox nc -w 1 %s </dev/null 2>&1)"; `, tg, tg)
	}
	for _, egress := range []bool{true, false} {
		task := dockerTask(t, script)
		task.Name += fmt.Sprint("-", egress)
		task.Egress = egress
		task.JoinNet = func(pid int) error {
			out, err := osexec.Command("nsenter", "-t", fmt.Sprint(pid), "-n", "sh", "-c",
				"ip tuntap add dev "+exec.JoinNetIface+" mode tun && ip addr add 10.9.0.2/16 dev "+exec.JoinNetIface+" && ip link set "+exec.JoinNetIface+" up").CombinedOutput()
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		}
		out := newSyncBuf()
		task.Stdout = out
		if _, err := d.Run(context.Background(), task); err != nil {
			t.Fatal(err)
		}
		seen := out.String()
		t.Logf("what the member (egress %v) saw:\n%s", egress, seen)
		if got := strings.Contains(seen, "internet: "+strings.TrimSpace(netlab.FakeHello)); got != egress {
			t.Errorf("egress %v: the member reached the (fake) internet: %v", egress, got)
		}
		if !strings.Contains(seen, "job route: 10.9.0.3 dev "+exec.JoinNetIface) {
			t.Errorf("egress %v: the job's subnet is not on %s", egress, exec.JoinNetIface)
		}
		if !egress && !strings.Contains(seen, "nets: "+exec.JoinNetIface+" lo \n") {
			t.Errorf("without egress the member has interfaces beside its job's and loopback")
		}
	}
	if n := lo.accepted.Load() + all.accepted.Load(); n != 0 {
		t.Errorf("a member reached the host's servers (%d connections)", n)
	}
}
