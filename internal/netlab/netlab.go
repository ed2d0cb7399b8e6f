// Package netlab builds, for tests, a small internet out of Linux network
// namespaces: public hosts on one "internet" bridge, hosts behind NAT
// routers (iptables MASQUERADE that drops unsolicited inbound traffic), and
// links slowed by tc netem (delay, jitter, loss), or by the test process
// itself where the kernel has no netem. Tests run real processes
// inside it with Host.Command (ip netns exec).
//
// Everything a Lab makes lives in namespaces of its own, named with a
// random prefix, and is removed by t.Cleanup: the host's own routes,
// interfaces and firewall rules are never touched, and labs of parallel
// tests do not meet.
//
// The internet's addresses are in 11.0.0.0/16, a range go-multiaddr calls
// public: libp2p's AutoNAT, relay reservations and hole punching use only
// public addresses, and it calls the documentation ranges (192.0.2.0/24,
// 198.51.100.0/24, 203.0.113.0/24) unroutable and 100.64.0.0/10 private.
// The lab's internet has no link to the real one, so the range is safe to
// borrow. Hosts behind NAT N get 10.N.0.2/24, their router 10.N.0.1.
//
// New skips the test, saying why, where the machine does not allow network
// namespaces (not root, no ip or iptables); Link skips where the kernel has
// no netem and packets cannot be queued to userspace (NFQUEUE) either.
//
// NewFakeInternet is smaller: one namespace joined to this host's own
// network, standing in for the internet in egress tests (a server a
// container reaches through this host's routing and NAT), on a /30 of
// 198.51.100.0/24 that no other fake internet holds at the same time, in
// any test process.
package netlab

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Internet is the lab's public address range, as a prefix of its hosts'
// addresses (11.0.0.N).
const Internet = "11.0.0."

// Lab is one test's internet. Its methods are safe for one goroutine (the
// test's); the hosts' commands may run concurrently.
type Lab struct {
	t      testing.TB
	prefix string // of every namespace name, e.g. "gml3fa9c"
	inet   string // the internet namespace, holding the bridge

	mu      sync.Mutex    // guards nextIP, nats, hosts, delays
	nextIP  int           // last octet of the next public address
	nats    int           // NAT routers made
	hosts   int           // hosts made
	netemOK *bool         // whether the kernel has netem, once tried
	delays  []*delayQueue // userspace netem's queues (delay.go), where the kernel has none
}

// Host is one machine of the lab: a network namespace with one uplink.
type Host struct {
	lab  *Lab
	Name string // for logs
	NS   string // network namespace name (ip netns exec NS ...)
	IP   string // its own address
	// PublicIP is the address others see it from: IP for a public host,
	// its router's public address for a host behind NAT.
	PublicIP string
	uplink   string // its interface towards the internet (or its router)
	router   string // for a host behind NAT, its router's namespace; "" for a public host
}

// New makes an empty internet (a namespace with a bridge) and registers its
// removal, with everything added to it, on t.Cleanup. It skips t where
// namespaces cannot be made.
func New(t testing.TB) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("netlab: network namespaces need root")
	}
	for _, tool := range []string{"ip", "iptables", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("netlab: %s is missing (install iproute2 and iptables)", tool)
		}
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	l := &Lab{t: t, prefix: "gml" + hex.EncodeToString(b[:]), nextIP: 2}
	l.inet = l.prefix + "-inet"
	if out, err := exec.Command("ip", "netns", "add", l.inet).CombinedOutput(); err != nil {
		t.Skipf("netlab: this machine does not allow network namespaces: ip netns add: %v: %s", err, bytes.TrimSpace(out))
	}
	t.Cleanup(l.Close)
	l.in(l.inet, "ip", "link", "set", "lo", "up")
	l.in(l.inet, "ip", "link", "add", "br0", "type", "bridge")
	l.in(l.inet, "ip", "addr", "add", Internet+"1/16", "dev", "br0")
	l.in(l.inet, "ip", "link", "set", "br0", "up")
	return l
}

// Close deletes every namespace of the lab now (processes still in them
// lose their network); interfaces, routes and firewall rules inside go with
// them. The test's cleanup calls it; a second call finds nothing to do.
func (l *Lab) Close() {
	l.mu.Lock()
	delays := l.delays
	l.delays = nil
	l.mu.Unlock()
	for _, q := range delays {
		q.close()
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		l.t.Logf("netlab: ip netns list: %v", err)
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], l.prefix+"-") {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", f[0]).CombinedOutput(); err != nil {
			l.t.Errorf("netlab: ip netns del %s: %v: %s", f[0], err, out)
		}
	}
}

// in runs a command in namespace ns and fails the test if it fails.
func (l *Lab) in(ns string, argv ...string) {
	l.t.Helper()
	full := append([]string{"netns", "exec", ns}, argv...)
	if out, err := exec.Command("ip", full...).CombinedOutput(); err != nil {
		l.t.Fatalf("netlab: ip %s: %v: %s", strings.Join(full, " "), err, bytes.TrimSpace(out))
	}
}

// newNS makes a namespace named prefix-role with loopback up.
func (l *Lab) newNS(role string) string {
	l.t.Helper()
	ns := l.prefix + "-" + role
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		l.t.Fatalf("netlab: ip netns add %s: %v: %s", ns, err, bytes.TrimSpace(out))
	}
	l.in(ns, "ip", "link", "set", "lo", "up")
	return ns
}

// veth links namespace a (interface aName) to namespace b (interface bName).
func (l *Lab) veth(a, aName, b, bName string) {
	l.t.Helper()
	l.in(a, "ip", "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b)
	l.in(a, "ip", "link", "set", aName, "up")
	l.in(b, "ip", "link", "set", bName, "up")
}

// publicIP hands out the next internet address.
func (l *Lab) publicIP() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.nextIP > 254 {
		l.t.Fatal("netlab: the lab's internet is full (253 public addresses)")
	}
	ip := fmt.Sprintf("%s%d", Internet, l.nextIP)
	l.nextIP++
	return ip
}

func (l *Lab) count(n *int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	*n++
	return *n
}

// attach plugs namespace ns into the internet bridge with address ip on
// its interface dev.
func (l *Lab) attach(ns, dev, ip string) {
	l.t.Helper()
	port := fmt.Sprintf("p%d", l.count(&l.hosts)) // the bridge port's name in the internet namespace
	l.veth(l.inet, port, ns, dev)
	l.in(l.inet, "ip", "link", "set", port, "master", "br0")
	l.in(ns, "ip", "addr", "add", ip+"/16", "dev", dev)
	l.in(ns, "ip", "route", "add", "default", "via", Internet+"1")
}

// Public adds a host with a public address of its own.
func (l *Lab) Public(name string) *Host {
	l.t.Helper()
	ns := l.newNS(fmt.Sprintf("h%d", l.count(&l.hosts)))
	ip := l.publicIP()
	l.attach(ns, "eth0", ip)
	return &Host{lab: l, Name: name, NS: ns, IP: ip, PublicIP: ip, uplink: "eth0"}
}

// BehindNAT adds a host alone on the LAN of a NAT router of its own. The
// router rewrites the host's outgoing traffic to its public address
// (MASQUERADE, which keeps the source port where it is free, as most home
// routers do) and drops whatever arrives unasked from the internet: only
// replies to the host's own traffic get in, so reaching the host takes a
// relay or a hole punch.
func (l *Lab) BehindNAT(name string) *Host {
	l.t.Helper()
	n := l.count(&l.nats)
	router := l.newNS(fmt.Sprintf("r%d", n))
	ns := l.newNS(fmt.Sprintf("n%d", n))
	pub := l.publicIP()
	l.attach(router, "wan", pub)
	lanNet := fmt.Sprintf("10.%d.0.", n)
	l.veth(router, "lan", ns, "eth0")
	l.in(router, "ip", "addr", "add", lanNet+"1/24", "dev", "lan")
	l.in(ns, "ip", "addr", "add", lanNet+"2/24", "dev", "eth0")
	l.in(ns, "ip", "route", "add", "default", "via", lanNet+"1")
	l.in(router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	l.in(router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE")
	l.in(router, "iptables", "-A", "FORWARD", "-i", "wan", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	l.in(router, "iptables", "-A", "FORWARD", "-i", "wan", "-j", "DROP")
	// Nothing listens on the router: unasked packets to it are dropped
	// too, not refused (a refusal would end a hole punch whose other
	// half has not left yet).
	l.in(router, "iptables", "-A", "INPUT", "-i", "wan", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	l.in(router, "iptables", "-A", "INPUT", "-i", "wan", "-j", "DROP")
	return &Host{lab: l, Name: name, NS: ns, IP: lanNet + "2", PublicIP: pub, uplink: "eth0", router: router}
}

// Command is exec.Command of name and args run inside the host's namespace.
// `ip netns exec` execs the program, so the process's PID is the program's.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Netem describes a link's impairment, each way.
type Netem struct {
	Delay  time.Duration // one-way delay added
	Jitter time.Duration // ± around Delay
	Loss   float64       // percent of packets lost, 0 to 100
}

func (n Netem) args() []string {
	a := []string{"netem"}
	if n.Delay > 0 {
		a = append(a, "delay", fmt.Sprintf("%dus", n.Delay.Microseconds()))
		if n.Jitter > 0 {
			a = append(a, fmt.Sprintf("%dus", n.Jitter.Microseconds()), "distribution", "normal")
		}
	}
	if n.Loss > 0 {
		a = append(a, "loss", fmt.Sprintf("%g%%", n.Loss))
	}
	return a
}

// Link impairs the host's uplink both ways with netem: a round trip through
// it takes 2×Delay more. Where the kernel has no netem qdisc (sch_netem)
// the test process delays and drops the uplink's packets itself (see
// delay.go); it skips the test, saying why, where it cannot do that either.
func (h *Host) Link(n Netem) {
	l := h.lab
	l.t.Helper()
	if !l.netem() {
		if err := h.userLink(n); err != nil {
			l.t.Skipf("netlab: this kernel has no netem qdisc (sch_netem), and %v", err)
		}
		return
	}
	args := n.args()
	l.in(h.NS, append([]string{"tc", "qdisc", "replace", "dev", h.uplink, "root"}, args...)...)
	// The other end of the uplink: the router's LAN side, or the bridge
	// port in the internet namespace (found by its peer index).
	if h.router != "" {
		l.in(h.router, append([]string{"tc", "qdisc", "replace", "dev", "lan", "root"}, args...)...)
		return
	}
	port := h.bridgePort()
	l.in(l.inet, append([]string{"tc", "qdisc", "replace", "dev", port, "root"}, args...)...)
}

// bridgePort finds the internet-side end of a public host's uplink.
func (h *Host) bridgePort() string {
	l := h.lab
	l.t.Helper()
	out, err := exec.Command("ip", "-n", h.NS, "-o", "link", "show", h.uplink).Output()
	if err != nil {
		l.t.Fatalf("netlab: ip link show %s in %s: %v", h.uplink, h.NS, err)
	}
	// "2: eth0@if7: <...": the peer's index is after "@if".
	f := strings.Fields(string(out))
	if len(f) < 2 {
		l.t.Fatalf("netlab: unexpected ip link output %q", out)
	}
	_, idx, ok := strings.Cut(strings.TrimSuffix(f[1], ":"), "@if")
	if !ok {
		l.t.Fatalf("netlab: no peer index in %q", f[1])
	}
	out, err = exec.Command("ip", "-n", l.inet, "-o", "link", "show").Output()
	if err != nil {
		l.t.Fatalf("netlab: ip link show in %s: %v", l.inet, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && strings.TrimSuffix(f[0], ":") == idx {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			return name
		}
	}
	l.t.Fatalf("netlab: no interface %s in %s", idx, l.inet)
	return ""
}

// netem says whether the kernel has netem, trying once per lab in a
// namespace of the lab's own.
func (l *Lab) netem() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.netemOK == nil {
		err := exec.Command("ip", "netns", "exec", l.inet, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms").Run()
		ok := err == nil
		if ok {
			_ = exec.Command("ip", "netns", "exec", l.inet, "tc", "qdisc", "del", "dev", "lo", "root").Run()
		}
		l.netemOK = &ok
	}
	return *l.netemOK
}
