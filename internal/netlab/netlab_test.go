package netlab_test

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/netlab"
	"github.com/gpumesh/gpumesh/internal/testwait"
)

// serve runs busybox httpd on port 7000 of h until the test ends.
func serve(t *testing.T, h *netlab.Host) {
	t.Helper()
	srv := h.Command("busybox", "httpd", "-f", "-p", "7000", "-h", t.TempDir())
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
}

// get says whether from gets an HTTP answer from ip:7000 within a second.
func get(from *netlab.Host, ip string) bool {
	cmd := from.Command("busybox", "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 1 "+ip+" 7000")
	out, _ := cmd.Output()
	return strings.HasPrefix(string(out), "HTTP/")
}

func TestNATLetsOutAndKeepsOut(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs busybox")
	}
	lab := netlab.New(t)
	pub := lab.Public("pub")
	a := lab.BehindNAT("a")
	b := lab.BehindNAT("b")
	if !strings.HasPrefix(pub.IP, netlab.Internet) || a.PublicIP == a.IP || !strings.HasPrefix(a.PublicIP, netlab.Internet) {
		t.Fatalf("addresses: public %s, NATed %s via %s", pub.IP, a.IP, a.PublicIP)
	}
	serve(t, pub)
	testwait.For(t, 10*time.Second, "the NATed host to reach the public one", func() bool { return get(a, pub.IP) })

	// b listens; a's packets to b's public address or its LAN address
	// go nowhere, though b's own router reaches it.
	serve(t, b)
	testwait.For(t, 10*time.Second, "b to serve on its LAN", func() bool { return get(b, b.IP) })
	for _, ip := range []string{b.PublicIP, b.IP} {
		if get(a, ip) || get(pub, ip) {
			t.Errorf("%s reached the host behind NAT unasked", ip)
		}
	}
}

func TestLinkDelaysTraffic(t *testing.T) {
	lab := netlab.New(t)
	a, b := lab.Public("a"), lab.Public("b")
	a.Link(netlab.Netem{Delay: 50 * time.Millisecond})
	out, err := b.Command("busybox", "ping", "-c", "3", "-q", a.IP).CombinedOutput()
	if err != nil {
		t.Fatalf("ping: %v: %s", err, out)
	}
	// "round-trip min/avg/max = 100.1/100.3/100.5 ms": both ways delayed.
	if !strings.Contains(string(out), "min/avg/max = 10") {
		t.Errorf("ping over a 50 ms link: %s, want about 100 ms round trips", out)
	}
}

// Fake internets up at once, as the exec and node packages' tests make
// them, get addresses and names of their own, and each serves /hello to
// this host. (Their claims are the kernel's: a veth pair's names, which
// one holder at a time gets, across processes too.)
func TestFakeInternetsUpAtOnceShareNothing(t *testing.T) {
	seen := map[string]bool{}
	for range 3 {
		f := netlab.NewFakeInternet(t)
		for _, ip := range []string{f.IP, f.HostIP} {
			if seen[ip] || !strings.HasPrefix(ip, "198.51.100.") {
				t.Errorf("a fake internet has %s: taken already, or not in 198.51.100.0/24", ip)
			}
			seen[ip] = true
		}
		body, err := httpGet(f.Addr, "/hello")
		if err != nil || body != netlab.FakeHello {
			t.Errorf("GET /hello from %s: %q, %v; want %q", f.Addr, body, err, netlab.FakeHello)
		}
	}
}

// httpGet is the body of an HTTP/1.0 GET of path from addr, within 5 s.
func httpGet(addr, path string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\n\r\n", path); err != nil {
		return "", err
	}
	resp, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	_, body, ok := strings.Cut(string(resp), "\r\n\r\n")
	if !ok {
		return "", fmt.Errorf("no HTTP answer: %q", resp)
	}
	return body, nil
}

func TestLinkLosesWhatItIsToldTo(t *testing.T) {
	lab := netlab.New(t)
	a, b := lab.Public("a"), lab.Public("b")
	a.Link(netlab.Netem{Loss: 100})
	out, _ := b.Command("busybox", "ping", "-c", "2", "-W", "1", "-q", a.IP).CombinedOutput()
	if !strings.Contains(string(out), "100% packet loss") {
		t.Errorf("ping over a link losing every packet: %s, want 100%% packet loss", out)
	}
}
