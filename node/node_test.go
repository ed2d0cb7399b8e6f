package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/libp2p/go-libp2p/core/peer"
)

const loopback = "/ip4/127.0.0.1/tcp/0"

// shortTempDir keeps unix socket paths under the kernel's 107-byte limit.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "gm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func startNode(t *testing.T, cfg Config) *Node {
	t.Helper()
	cfg.NoMDNS, cfg.NoNAT = true, true
	if len(cfg.Listen) == 0 {
		cfg.Listen = []string{loopback}
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func addrInfo(n *Node) peer.AddrInfo {
	return peer.AddrInfo{ID: n.Host().ID(), Addrs: n.Host().Addrs()}
}

func TestPrivateSwarmMembersConnectOutsidersDoNot(t *testing.T) {
	keyA, _ := NewSwarmKey()
	keyB, _ := NewSwarmKey()
	swarmA, _ := ParseSwarmKey(keyA)
	swarmB, _ := ParseSwarmKey(keyB)

	a := startNode(t, Config{Swarm: swarmA})
	boot := []string{a.Info().Addrs[0]}
	b := startNode(t, Config{Swarm: swarmA, Bootstrap: boot})
	other := startNode(t, Config{Swarm: swarmB, Bootstrap: boot})
	public := startNode(t, Config{Bootstrap: boot})

	testwait.For(t, 10*time.Second, "b to join a's swarm", func() (bool, string) {
		na, nb := len(a.Peers()), len(b.Peers())
		return na == 1 && nb == 1, fmt.Sprintf("a has %d peers, b %d", na, nb)
	})
	if got := a.Peers()[0].PeerID; got != b.Identity().PeerID.String() {
		t.Fatalf("a's peer is %s, want b %s", got, b.Identity().PeerID)
	}
	// Both outsiders have tried the bootstrap peer and failed.
	for _, o := range []*Node{other, public} {
		testwait.For(t, 20*time.Second, "the outsider's bootstrap attempt", func() (bool, string) {
			st := o.Status().Bootstrap
			return len(st) == 1 && st[0].Attempts > 0, fmt.Sprintf("bootstrap %+v", st)
		})
		st := o.Status()
		if st.Bootstrap[0].Connected || st.Peers != 0 {
			t.Fatalf("outsider in swarm %s connected: %+v", st.Swarm, st)
		}
		if !strings.Contains(st.Bootstrap[0].Error, "swarm") {
			t.Errorf("bootstrap error %q should hint at a swarm mismatch", st.Bootstrap[0].Error)
		}
	}
	if n := len(a.Peers()); n != 1 {
		t.Fatalf("a has %d peers after the outsiders tried, want 1", n)
	}
	// Dialing directly fails too.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := other.Connect(ctx, addrInfo(a)); err == nil {
		t.Fatal("a peer of another swarm connected")
	}
	if a.Info().Swarm == other.Info().Swarm || a.Info().Swarm == PublicSwarm {
		t.Fatalf("swarm IDs: a %s, other %s", a.Info().Swarm, other.Info().Swarm)
	}
}

func TestLocalAPIServesIDPeersStatusOnUnixSocket(t *testing.T) {
	dir := shortTempDir(t)
	a := startNode(t, Config{DataDir: filepath.Join(dir, "a")})
	b := startNode(t, Config{DataDir: filepath.Join(dir, "b"), Bootstrap: []string{a.Info().Addrs[0]}})

	st, err := os.Stat(filepath.Join(dir, "a", "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("api socket mode %v, want 0600", st.Mode().Perm())
	}
	cl, err := NewClient(filepath.Join(dir, "b"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id, err := cl.ID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if id.PeerID != b.Identity().PeerID.String() || id.SolanaAddress != b.Identity().SolanaAddress || id.Swarm != PublicSwarm {
		t.Fatalf("id = %+v, want b's identity in the public swarm", id)
	}
	// The key on disk is the one the node runs with.
	disk, err := ReadKeyFile(filepath.Join(dir, "b", "key.json"))
	if err != nil || disk.PeerID.String() != id.PeerID {
		t.Fatalf("key on disk %v (%v), node runs %s", disk.PeerID, err, id.PeerID)
	}
	testwait.For(t, 10*time.Second, "b to see a", func() (bool, string) {
		peers, err := cl.Peers(ctx)
		return err == nil && len(peers) == 1 && peers[0].PeerID == a.Identity().PeerID.String(), fmt.Sprintf("peers %+v, %v", peers, err)
	})
	var status Status
	testwait.For(t, 10*time.Second, "b's bootstrap dial to be recorded", func() (bool, string) {
		status, err = cl.Status(ctx)
		return err == nil && len(status.Bootstrap) == 1 && status.Bootstrap[0].Attempts > 0, fmt.Sprintf("bootstrap %+v, %v", status.Bootstrap, err)
	})
	if status.Peers != 1 || !status.Bootstrap[0].Connected || status.Bootstrap[0].Error != "" {
		t.Fatalf("status = %+v, want 1 peer and a connected bootstrap peer", status)
	}

	// After Close the api file is gone and clients say no node runs.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "b", "api")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("api file after close: %v", err)
	}
	_, err = NewClient(filepath.Join(dir, "b"))
	if !errors.Is(err, ErrNoNode) || !strings.Contains(err.Error(), "is `gpumesh node` running?") {
		t.Fatalf("client after close: %v", err)
	}
}

func TestStaleAPIFileSaysNoNodeRuns(t *testing.T) {
	dir := shortTempDir(t)
	d := &DataDir{Path: dir}
	if err := os.WriteFile(d.APIFile(), []byte("/unix"+d.APISocket()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cl, err := NewClient(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = cl.Status(context.Background())
	if !errors.Is(err, ErrNoNode) {
		t.Fatalf("err = %v, want ErrNoNode", err)
	}
}

func TestTCPAPINeedsToken(t *testing.T) {
	dir := shortTempDir(t)
	n := startNode(t, Config{DataDir: dir, APIListen: "127.0.0.1:0"})
	data, err := os.ReadFile(filepath.Join(dir, "api"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "/ip4/127.0.0.1/tcp/") {
		t.Fatalf("api file = %q, want the socket and a TCP address", data)
	}
	// A client reading only the TCP line must send the token.
	if err := os.WriteFile(filepath.Join(dir, "api"), []byte(lines[1]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cl, err := NewClient(dir)
	if err != nil {
		t.Fatal(err)
	}
	id, err := cl.ID(context.Background())
	if err != nil || id.PeerID != n.Identity().PeerID.String() {
		t.Fatalf("id over TCP with token: %+v, %v", id, err)
	}
	cl.token = "wrong"
	if _, err := cl.ID(context.Background()); err == nil || !strings.Contains(err.Error(), "token") {
		t.Fatalf("wrong token: err = %v, want a token error", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	psk, _ := NewSwarmKey()
	private, _ := ParseSwarmKey(psk)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"malformed listen", Config{Listen: []string{"127.0.0.1:4021"}}, "want a multiaddr"},
		{"udp without quic", Config{Listen: []string{"/ip4/127.0.0.1/udp/4021"}}, "/tcp/PORT"},
		{"quic in private swarm", Config{Swarm: private, Listen: []string{"/ip4/127.0.0.1/udp/4021/quic-v1"}}, "cannot use QUIC"},
		{"bootstrap without peer id", Config{Bootstrap: []string{"/ip4/127.0.0.1/tcp/4021"}}, "/p2p/"},
		{"bootstrap garbage", Config{Bootstrap: []string{"nope"}}, "bootstrap address"},
		{"port", Config{Port: 70000}, "port 70000"},
		{"dht mode", Config{DHTMode: "sometimes"}, "auto, server or client"},
		{"api without data dir", Config{APIListen: "127.0.0.1:0"}, "--data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q", err, tc.want)
			}
		})
	}
}

func TestPortInUseIsAClearError(t *testing.T) {
	a := startNode(t, Config{})
	addr := a.Host().Addrs()[0].String()
	n, err := New(Config{Listen: []string{addr}, NoMDNS: true, NoNAT: true})
	if err != nil {
		t.Fatal(err)
	}
	err = n.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "already in use") || !strings.Contains(err.Error(), "--listen") {
		t.Fatalf("err = %v, want 'already in use' and the --listen fix", err)
	}
}

func TestSecondNodeOnDataDirFails(t *testing.T) {
	dir := shortTempDir(t)
	startNode(t, Config{DataDir: dir})
	n, err := New(Config{DataDir: dir, Listen: []string{loopback}, NoMDNS: true, NoNAT: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); !errors.Is(err, ErrDataDirInUse) {
		t.Fatalf("err = %v, want ErrDataDirInUse", err)
	}
	// The failed start must not have removed the running node's api file.
	if _, err := os.Stat(filepath.Join(dir, "api")); err != nil {
		t.Fatalf("api file of the running node: %v", err)
	}
}

func TestMetricsServeLibp2pAndGpumeshSeries(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	a := startNode(t, Config{Metrics: addr})
	startNode(t, Config{Bootstrap: []string{a.Info().Addrs[0]}})
	testwait.For(t, 10*time.Second, "a peer", func() bool { return len(a.Peers()) == 1 })

	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		"gpumesh_peers_connected 1",
		"gpumesh_build_info{swarm=\"public\"",
		"gpumesh_dht_routing_table_peers",
		"libp2p_", // the host's own series
		"go_goroutines",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestStartAfterCloseIsRefused(t *testing.T) {
	n, err := New(Config{Listen: []string{loopback}, NoMDNS: true, NoNAT: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Start after Close: err = %v, want a refusal", err)
	}
}
