package exec

import (
	"context"
	"errors"
	"fmt"
	"sync"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/coreos/go-iptables/iptables"
	"github.com/docker/docker/api/types/network"
)

// The egress network: where a provider lets one-member jobs reach the
// internet (Task.Egress), and nothing of its own.
const (
	// EgressNetwork is the Docker bridge network of tasks with egress.
	EgressNetwork = "gpumesh-egress"
	// EgressBridge is its Linux bridge, named so the rules can match it.
	EgressBridge = "gpm-egress0"
	// egressChain holds the destinations a task with egress may not reach;
	// Docker's DOCKER-USER chain (which Docker never rewrites, and checks
	// before its own forwarding rules) sends the bridge's packets to it.
	egressChain = "GPUMESH-EGRESS"
)

// blockedNets are the destinations no task reaches, even with egress: this
// host and its LAN (private, shared and loopback ranges), link-local (the
// cloud metadata service, 169.254.169.254), benchmarking, multicast and
// reserved ranges.
var blockedNets = []string{
	"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
	"172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
	"224.0.0.0/4", "240.0.0.0/4",
}

// DefaultEgressDNS are the resolvers of tasks with egress: public ones, as
// the host's own may sit on its LAN, which they cannot reach.
var DefaultEgressDNS = []string{"1.1.1.1", "9.9.9.9"}

// egressMu guards egressUsers and the rules: the executors of one process
// share one network and one set of rules, removed with the last.
var (
	egressMu    sync.Mutex
	egressUsers int
)

// OpenEgress makes the egress network and the firewall rules that keep its
// tasks off this host (every packet from the bridge to the host itself is
// dropped) and off the blocked ranges, so Task.Egress can be used. Close
// removes them. It needs root (iptables) and an engine that manages
// iptables (Docker's default).
func (d *Docker) OpenEgress(ctx context.Context) error {
	egressMu.Lock()
	defer egressMu.Unlock()
	if d.egress {
		return nil
	}
	ipt, err := iptables.NewWithProtocol(iptables.ProtocolIPv4)
	if err != nil {
		return fmt.Errorf("job egress: iptables: %w; install iptables, or run without --job-egress", err)
	}
	if ok, err := ipt.ChainExists("filter", "DOCKER-USER"); err != nil || !ok {
		return fmt.Errorf("job egress: the Docker engine manages no iptables rules here (no DOCKER-USER chain: %v); start dockerd with its default --iptables=true, or run without --job-egress", err)
	}
	if err := d.ensureEgressNetwork(ctx); err != nil {
		return err
	}
	if err := installEgressRules(ipt); err != nil {
		_ = removeEgressRules(ipt)
		return fmt.Errorf("job egress: firewall rules: %w; run the node as root, or without --job-egress", err)
	}
	egressUsers++
	d.egress = true
	return nil
}

func (d *Docker) ensureEgressNetwork(ctx context.Context) error {
	ins, err := d.cli.NetworkInspect(ctx, EgressNetwork, network.InspectOptions{})
	if err == nil {
		if ins.Options["com.docker.network.bridge.name"] != EgressBridge || ins.EnableIPv6 {
			return fmt.Errorf("job egress: a Docker network %s exists that gpumesh did not make (bridge %q, IPv6 %v); remove it (`docker network rm %s`)", EgressNetwork, ins.Options["com.docker.network.bridge.name"], ins.EnableIPv6, EgressNetwork)
		}
		return nil
	}
	if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("job egress: looking up the Docker network %s: %w", EgressNetwork, err)
	}
	ipv6 := false
	_, err = d.cli.NetworkCreate(ctx, EgressNetwork, network.CreateOptions{
		Driver:     "bridge",
		EnableIPv6: &ipv6,
		Options: map[string]string{
			"com.docker.network.bridge.name":                 EgressBridge,
			"com.docker.network.bridge.enable_icc":           "false", // tasks do not reach each other
			"com.docker.network.bridge.enable_ip_masquerade": "true",
		},
		Labels: map[string]string{LabelOwner: "gpumesh"},
	})
	if err != nil && !cerrdefs.IsConflict(err) {
		return fmt.Errorf("job egress: making the Docker network %s: %w", EgressNetwork, err)
	}
	return nil
}

func (d *Docker) egressOpen() bool {
	egressMu.Lock()
	defer egressMu.Unlock()
	return d.egress
}

// egressRules are the rules OpenEgress installs, as (chain, rule).
func egressRules() [][]string {
	var rules [][]string
	for _, n := range blockedNets {
		rules = append(rules, []string{egressChain, "-d", n, "-j", "DROP"})
	}
	return rules
}

func installEgressRules(ipt *iptables.IPTables) error {
	if ok, err := ipt.ChainExists("filter", egressChain); err != nil {
		return err
	} else if !ok {
		if err := ipt.NewChain("filter", egressChain); err != nil {
			return err
		}
	}
	for _, r := range egressRules() {
		if err := ipt.AppendUnique("filter", r[0], r[1:]...); err != nil {
			return err
		}
	}
	// Forwarded packets from the bridge pass the chain first; packets to
	// this host itself (any of its addresses, the bridge's gateway
	// included) are dropped.
	if err := ipt.InsertUnique("filter", "DOCKER-USER", 1, "-i", EgressBridge, "-j", egressChain); err != nil {
		return err
	}
	return ipt.InsertUnique("filter", "INPUT", 1, "-i", EgressBridge, "-j", "DROP")
}

func removeEgressRules(ipt *iptables.IPTables) error {
	var errs []error
	errs = append(errs, ipt.DeleteIfExists("filter", "INPUT", "-i", EgressBridge, "-j", "DROP"))
	errs = append(errs, ipt.DeleteIfExists("filter", "DOCKER-USER", "-i", EgressBridge, "-j", egressChain))
	if ok, err := ipt.ChainExists("filter", egressChain); err == nil && ok {
		errs = append(errs, ipt.ClearAndDeleteChain("filter", egressChain))
	}
	return errors.Join(errs...)
}

// closeEgress removes the rules and the network once the last executor of
// this process that opened them closes. Until then its tasks keep them.
func (d *Docker) closeEgress() error {
	egressMu.Lock()
	defer egressMu.Unlock()
	if !d.egress {
		return nil
	}
	d.egress = false
	egressUsers--
	if egressUsers > 0 {
		return nil
	}
	ipt, err := iptables.NewWithProtocol(iptables.ProtocolIPv4)
	if err != nil {
		return err
	}
	// The network goes first: with no bridge left, no packet needs the rules.
	ctx, cancel := context.WithTimeout(context.Background(), dockerCallTimeout)
	defer cancel()
	nerr := d.cli.NetworkRemove(ctx, EgressNetwork)
	if nerr != nil && !cerrdefs.IsNotFound(nerr) {
		// A slow engine may have removed it all the same.
		ictx, icancel := context.WithTimeout(context.Background(), dockerCallTimeout)
		_, ierr := d.cli.NetworkInspect(ictx, EgressNetwork, network.InspectOptions{})
		icancel()
		if cerrdefs.IsNotFound(ierr) {
			nerr = nil
		}
	}
	if nerr != nil && !cerrdefs.IsNotFound(nerr) {
		// A task still on it (another process's?): the rules stay with it.
		return fmt.Errorf("job egress: removing the Docker network %s: %w; the firewall rules stay until it is gone", EgressNetwork, nerr)
	}
	return removeEgressRules(ipt)
}
