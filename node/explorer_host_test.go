package node

import (
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
)

// The explorer answers only requests whose Host names it, wherever it is
// bound: a web page on another site that gets its own name resolved to
// this machine (DNS rebinding) reads nothing, while a person on the LAN who
// types this machine's address, its name, or a name given with
// --explorer-host gets the page.
func TestExplorerAnswersOnlyItsOwnNames(t *testing.T) {
	n := startNode(t, Config{Explorer: "127.0.0.1:0", ExplorerHosts: []string{"GPUBox.lan", "explorer.example.org."}})
	host, _ := os.Hostname()
	for _, tc := range []struct {
		host string
		want int
	}{
		{n.ExplorerAddr(), http.StatusOK},
		{"localhost:8080", http.StatusOK},
		{"[::1]:9", http.StatusOK},
		{"gpubox.lan:8080", http.StatusOK},
		{"explorer.example.org", http.StatusOK},
		{host, http.StatusOK},
		{"evil.example:80", http.StatusMisdirectedRequest},
		{"gpubox.lan.evil.example", http.StatusMisdirectedRequest},
		{"localhost.evil.example", http.StatusMisdirectedRequest},
		{"127.0.0.1.nip.io", http.StatusMisdirectedRequest},
	} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+n.ExplorerAddr()+"/", nil)
		req.Host = tc.host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("Host %q: %s, want %d", tc.host, resp.Status, tc.want)
		}
	}

	// Bound to a LAN address (or every address), a request that names the
	// address it came in on is the explorer's; another address is not.
	e := n.explorer
	lan := net.ParseIP("192.0.2.7")
	for _, tc := range []struct {
		host string
		ok   bool
	}{
		{"192.0.2.7:8080", true},
		{"192.0.2.8:8080", false},
		{"[2001:db8::7]:8080", false},
		{"gpubox.lan", true},
		{"attacker.example", false},
	} {
		if got := e.hostAllowed(tc.host, lan); got != tc.ok {
			t.Errorf("Host %q on a request to %s: allowed %v, want %v", tc.host, lan, got, tc.ok)
		}
	}

	if _, err := New(Config{Explorer: "127.0.0.1:0", ExplorerHosts: []string{"http://gpubox:8080"}}); err == nil || !strings.Contains(err.Error(), "--explorer-host") {
		t.Errorf("an explorer host with a scheme and port: %v, want refused", err)
	}
}
