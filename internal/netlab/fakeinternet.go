package netlab

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
)

// FakeInternet stands in for the internet in egress tests: a network
// namespace joined to this host's own network by a veth pair, with an
// HTTP server on its far end that serves /hello (FakeHello). Traffic this
// host routes there (a container's, through its bridge and NAT) reaches
// it as it would reach a server on the internet.
//
// Its addresses are a /30 of 198.51.100.0/24, a documentation range, so
// clearly fake. Each one claims its /30 by the names of its veth pair
// ("gpmfi<N>h", "gpmfi<N>n" for the N-th /30), which the kernel gives one
// holder at a time: fake internets of tests that run at once, in one test
// binary or in several (the exec and node packages' tests), never share
// addresses or names, and a claim whose interface is still on its way out
// (the kernel removes a veth after its namespace) is passed over. The
// first /30 (198.51.100.0-3) is never used.
type FakeInternet struct {
	HostIP string // this host's end of the link, e.g. "198.51.100.5": an address of the host, not of the internet
	IP     string // the fake internet's own address, e.g. "198.51.100.6"
	Addr   string // its HTTP server, IP:8080
}

// FakeHello is what the fake internet's server answers for /hello.
const FakeHello = "internet-ok\n"

// fakeSlots is how many /30s of 198.51.100.0/24 fake internets take,
// from the second.
const fakeSlots = 63

// NewFakeInternet makes a fake internet for t, removed by t.Cleanup. It
// skips t where this machine cannot make one (not root, no ip or busybox).
func NewFakeInternet(t testing.TB) *FakeInternet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("netlab: the fake internet is a network namespace, which needs root")
	}
	for _, tool := range []string{"ip", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("netlab: %s is missing, which the fake internet needs", tool)
		}
	}
	run := func(argv ...string) {
		t.Helper()
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("netlab: %s: %v: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
		}
	}
	// Claim a /30: the veth pair's names are the claim.
	slot, host, peer := 0, "", ""
	first := mrand.IntN(fakeSlots)
	for i := range fakeSlots {
		s := 1 + (first+i)%fakeSlots
		h, p := fmt.Sprintf("gpmfi%dh", s), fmt.Sprintf("gpmfi%dn", s)
		out, err := exec.Command("ip", "link", "add", h, "type", "veth", "peer", "name", p).CombinedOutput()
		if err == nil {
			slot, host, peer = s, h, p
			break
		}
		if !bytes.Contains(out, []byte("exists")) {
			t.Fatalf("netlab: ip link add %s type veth peer name %s: %v: %s", h, p, err, bytes.TrimSpace(out))
		}
	}
	if slot == 0 {
		t.Fatalf("netlab: every one of the %d fake internets' address blocks is taken (gpmfi* interfaces): are tests leaving them behind?", fakeSlots)
	}
	// Until the peer is in the namespace, deleting the host's end removes
	// both; after, deleting the namespace does.
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", host).Run() })
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	ns := fmt.Sprintf("gpmfi%d-%s", slot, hex.EncodeToString(rnd[:]))
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	f := &FakeInternet{HostIP: fmt.Sprintf("198.51.100.%d", 4*slot+1), IP: fmt.Sprintf("198.51.100.%d", 4*slot+2)}
	f.Addr = net.JoinHostPort(f.IP, "8080")
	run("ip", "link", "set", peer, "netns", ns)
	run("ip", "addr", "add", f.HostIP+"/30", "dev", host)
	run("ip", "link", "set", host, "up")
	run("ip", "netns", "exec", ns, "ip", "addr", "add", f.IP+"/30", "dev", peer)
	run("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
	run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello"), []byte(FakeHello), 0o644); err != nil {
		t.Fatal(err)
	}
	httpd := exec.Command("ip", "netns", "exec", ns, "busybox", "httpd", "-f", "-p", f.Addr, "-h", dir)
	if err := httpd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = httpd.Process.Kill(); _ = httpd.Wait() })
	testwait.For(t, 10*time.Second, "the fake internet's server at "+f.Addr, func() (bool, string) {
		c, err := net.DialTimeout("tcp", f.Addr, time.Second)
		if err != nil {
			return false, err.Error()
		}
		_ = c.Close()
		return true, ""
	})
	return f
}
