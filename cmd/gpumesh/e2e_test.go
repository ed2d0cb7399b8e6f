package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
)

// gmBin is the gpumesh binary that TestMain builds for the end-to-end tests
// and benchmarks: they run it as a user would, one process per peer.
var gmBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if bin := os.Getenv("GPUMESH_E2E_BIN"); bin != "" {
		// A binary built elsewhere: the compiled tests run on a machine
		// without the go tool (a GPU machine: make gpu-check).
		abs, err := filepath.Abs(bin)
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e: GPUMESH_E2E_BIN:", err)
			return 1
		}
		gmBin = abs
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "gpumesh-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	_ = os.Chmod(dir, 0o755) // tests run it as other users too
	gmBin = filepath.Join(dir, "gpumesh")
	goTool, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: the go tool is needed to build gpumesh:", err)
		return 1
	}
	build := exec.Command(goTool, "build", "-o", gmBin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// Deadlines of the end-to-end tests. They bound waits on events; a healthy
// run needs a fraction of each.
const (
	startWait = 20 * time.Second // a node's local API answers
	meshWait  = 30 * time.Second // peers find each other; a wrong-swarm dial times out (~10 s)
	stopWait  = 15 * time.Second // a node exits after SIGINT
	cliWait   = 30 * time.Second // one CLI command
)

// dataDir returns a fresh data dir short enough for the local API's unix
// socket (107 bytes at most on Linux).
func dataDir(tb testing.TB) string {
	dir := tb.TempDir()
	if len(filepath.Join(dir, "api.sock")) <= 100 {
		return dir
	}
	dir, err := os.MkdirTemp("", "gm")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// gmNode is one `gpumesh node` process.
type gmNode struct {
	name string
	data string
	cmd  *exec.Cmd
	out  syncBuffer    // stdout and stderr
	done chan struct{} // closed when the process has exited
	err  error         // of cmd.Wait, set before done is closed
	id   node.IDInfo   // from `gpumesh id` once started
}

// startNode runs `gpumesh node` on data (a dir from dataDir) on 127.0.0.1
// with mDNS off, plus args, waits until its local API answers, and asks it
// who it is. The process is stopped when the test ends.
func startNode(t testing.TB, name, data string, args ...string) *gmNode {
	t.Helper()
	argv := append([]string{"--data", data, "node", "--listen", "/ip4/127.0.0.1/tcp/0", "--mdns=false"}, args...)
	return runNode(t, name, data, argv, exec.Command(gmBin, argv...))
}

// runNode starts cmd, a `gpumesh node` with argv on data, as startNode
// does (cmd may wrap it, e.g. in a network namespace).
func runNode(t testing.TB, name, data string, argv []string, cmd *exec.Cmd) *gmNode {
	t.Helper()
	n := &gmNode{name: name, data: data, done: make(chan struct{}), cmd: cmd}
	n.cmd.Stdout = &n.out
	n.cmd.Stderr = &n.out
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		n.err = n.cmd.Wait()
		close(n.done)
	}()
	t.Cleanup(func() {
		n.stop() // a no-op if the test stopped it already
		if t.Failed() {
			t.Logf("output of %s (gpumesh %s):\n%s", name, strings.Join(argv, " "), n.out.String())
		}
	})
	if _, err := gm(data, "status", "--wait", startWait.String()); err != nil {
		select {
		case <-n.done:
			t.Fatalf("%s exited before it answered: %v\n%s", name, n.err, n.out.String())
		default:
		}
		t.Fatalf("%s does not answer: %v", name, err)
	}
	if err := gmJSON(data, &n.id, "id"); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return n
}

// stop interrupts the node as Ctrl-C would and waits for it to exit; past
// stopWait it kills it. It returns the exit error (nil for exit code 0).
func (n *gmNode) stop() error {
	select {
	case <-n.done:
		return n.err
	default:
	}
	_ = n.cmd.Process.Signal(os.Interrupt)
	select {
	case <-n.done:
		return n.err
	case <-time.After(stopWait):
		_ = n.cmd.Process.Kill()
		<-n.done
		return fmt.Errorf("%s did not exit within %v of SIGINT and was killed", n.name, stopWait)
	}
}

// bootstrapAddr is the node's first address with /p2p/, for --bootstrap.
func (n *gmNode) bootstrapAddr(t testing.TB) string {
	t.Helper()
	if len(n.id.Addrs) == 0 {
		t.Fatalf("%s has no addresses: %+v", n.name, n.id)
	}
	return n.id.Addrs[0]
}

// gm runs one gpumesh command on the data dir and returns its stdout; a
// failure returns an error with stderr.
func gm(data string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cliWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, gmBin, append([]string{"--data", data}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("gpumesh %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// gmJSON runs a gpumesh command with -o json and decodes its output.
func gmJSON(data string, v any, args ...string) error {
	out, err := gm(data, append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("gpumesh %s -o json: %w in %q", strings.Join(args, " "), err, out)
	}
	return nil
}

// peerIDs asks the node for its connected peers, sorted.
func (n *gmNode) peerIDs() ([]string, error) {
	var peers []node.PeerInfo
	if err := gmJSON(n.data, &peers, "peers"); err != nil {
		return nil, err
	}
	ids := make([]string, len(peers))
	for i, p := range peers {
		ids[i] = p.PeerID
	}
	slices.Sort(ids)
	return ids, nil
}

func (n *gmNode) status() (node.Status, error) {
	var st node.Status
	err := gmJSON(n.data, &st, "status")
	return st, err
}

// swarmInit runs `gpumesh swarm init` on data and returns the key's path.
func swarmInit(t *testing.T, data string) string {
	t.Helper()
	path := filepath.Join(data, "swarm.key")
	out, err := gm(data, "swarm", "init", "--out", path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte("--bootstrap")) {
		t.Fatalf("swarm init printed no join command:\n%s", out)
	}
	return path
}

func sameIDs(got, want []string) bool {
	slices.Sort(want)
	return slices.Equal(got, want)
}

func TestPrivateSwarmAdmitsOnlyPeersWithItsKey(t *testing.T) {
	// The lab's first peer makes the swarm key; it is copied to two more.
	d1 := dataDir(t)
	key := swarmInit(t, d1)
	shared := filepath.Join(dataDir(t), "swarm.key")
	data, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(shared, data, 0o600); err != nil {
		t.Fatal(err)
	}

	n1 := startNode(t, "#1", d1, "--swarm-key", key)
	boot := n1.bootstrapAddr(t)
	if !strings.HasPrefix(boot, "/ip4/127.0.0.1/tcp/") || !strings.HasSuffix(boot, "/p2p/"+n1.id.PeerID) {
		t.Fatalf("#1's address %q: want /ip4/127.0.0.1/tcp/PORT/p2p/%s", boot, n1.id.PeerID)
	}
	n2 := startNode(t, "#2", dataDir(t), "--swarm-key", shared, "--bootstrap", boot)
	n3 := startNode(t, "#3", dataDir(t), "--swarm-key", shared, "--bootstrap", boot)
	members := []*gmNode{n1, n2, n3}
	for _, n := range members {
		if !n.id.Private || n.id.Swarm != n1.id.Swarm || n.id.Swarm == node.PublicSwarm {
			t.Fatalf("%s is in swarm %q (private %v), want #1's private swarm %q", n.name, n.id.Swarm, n.id.Private, n1.id.Swarm)
		}
	}

	// #2 and #3 know only #1; they find each other through it (DHT lookups).
	for _, n := range members {
		var want []string
		for _, o := range members {
			if o != n {
				want = append(want, o.id.PeerID)
			}
		}
		testwait.For(t, meshWait, n.name+" connected to the other two members", func() (bool, string) {
			got, err := n.peerIDs()
			if err != nil {
				return false, err.Error()
			}
			return sameIDs(got, want), fmt.Sprintf("peers %v, want %v", got, want)
		})
	}

	// Two outsiders knock on #1's door: one with no key (the public swarm),
	// one with the key of another private swarm.
	otherKey := swarmInit(t, dataDir(t))
	n4 := startNode(t, "#4 (no key)", dataDir(t), "--bootstrap", boot)
	n5 := startNode(t, "#5 (other key)", dataDir(t), "--swarm-key", otherKey, "--bootstrap", boot)
	if n4.id.Private || n4.id.Swarm != node.PublicSwarm {
		t.Errorf("#4 is in swarm %q (private %v), want the public swarm", n4.id.Swarm, n4.id.Private)
	}
	if !n5.id.Private || n5.id.Swarm == n1.id.Swarm {
		t.Errorf("#5 is in swarm %q (private %v), want a private swarm other than %q", n5.id.Swarm, n5.id.Private, n1.id.Swarm)
	}
	outsiders := []*gmNode{n4, n5}
	for _, n := range outsiders {
		var last node.Status
		testwait.For(t, meshWait, n.name+"'s bootstrap dial to have failed", func() (bool, string) {
			st, err := n.status()
			if err != nil {
				return false, err.Error()
			}
			last = st
			if len(st.Bootstrap) != 1 {
				return false, fmt.Sprintf("bootstrap %+v, want one peer", st.Bootstrap)
			}
			b := st.Bootstrap[0]
			if b.Attempts >= 1 && b.Connected {
				t.Fatalf("%s connected to #1: %+v", n.name, b)
			}
			return b.Attempts >= 1, fmt.Sprintf("bootstrap %+v", b)
		})
		b := last.Bootstrap[0]
		t.Logf("%s: bootstrap dial to #1 failed after %d attempt(s): %s", n.name, b.Attempts, b.Error)
		if b.Peer != n1.id.PeerID {
			t.Errorf("%s's bootstrap peer is %s, want #1 %s", n.name, b.Peer, n1.id.PeerID)
		}
		if !strings.Contains(b.Error, "is that peer in another swarm?") {
			t.Errorf("%s's bootstrap error %q does not suggest another swarm", n.name, b.Error)
		}
		if last.Peers != 0 {
			t.Errorf("%s's status counts %d peers, want 0", n.name, last.Peers)
		}
		got, err := n.peerIDs()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 0 {
			t.Errorf("%s has peers %v, want none", n.name, got)
		}
	}

	// The members still see exactly each other.
	for _, n := range members {
		got, err := n.peerIDs()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 {
			t.Errorf("%s has %d peers %v, want the other 2 members", n.name, len(got), got)
		}
		for _, o := range outsiders {
			if slices.Contains(got, o.id.PeerID) {
				t.Errorf("%s is connected to outsider %s (%s)", n.name, o.name, o.id.PeerID)
			}
		}
	}

	// Ctrl-C stops every peer cleanly.
	for _, n := range append(outsiders, n3, n2, n1) {
		if err := n.stop(); err != nil {
			t.Errorf("%s: SIGINT gave %v, want exit code 0", n.name, err)
		}
		if !strings.Contains(n.out.String(), `msg="shutting down"`) {
			t.Errorf("%s did not log that it was shutting down", n.name)
		}
		if _, err := os.Stat(filepath.Join(n.data, "api")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left its api file behind (stat: %v)", n.name, err)
		}
	}
}

// A bootstrap peer that is down shows in status as unreachable with a hint,
// the node runs on, and SIGTERM (what a service manager sends) stops it with
// exit code 0.
func TestNodeReportsDeadBootstrapPeerAndExitsCleanlyOnSIGTERM(t *testing.T) {
	// A peer ID nobody runs, at a port nobody listens on.
	tmp := dataDir(t)
	idOut, err := gm(tmp, "key", "new", "--out", filepath.Join(tmp, "k.json"), "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var k struct{ PeerID string }
	if err := json.Unmarshal(idOut, &k); err != nil {
		t.Fatal(err)
	}
	dead := "/ip4/127.0.0.1/tcp/1/p2p/" + k.PeerID
	n := startNode(t, "node", dataDir(t), "--bootstrap", dead)
	testwait.For(t, meshWait, "the dead bootstrap peer marked unreachable", func() (bool, string) {
		st, err := n.status()
		if err != nil {
			return false, err.Error()
		}
		if len(st.Bootstrap) != 1 {
			return false, fmt.Sprintf("bootstrap %+v", st.Bootstrap)
		}
		b := st.Bootstrap[0]
		return b.Attempts >= 1 && !b.Connected, fmt.Sprintf("bootstrap %+v", b)
	})
	out, err := gm(n.data, "status")
	if err != nil {
		t.Fatal(err)
	}
	// The dial error spans lines: libp2p lists each address tried.
	want := regexp.MustCompile(`(?ms)^  ` + k.PeerID + `  unreachable: .*/ip4/127\.0\.0\.1/tcp/1\] .*connection refused \(is a gpumesh node running at that address\?\)$`)
	if !want.Match(out) {
		t.Errorf("status does not show the dead bootstrap peer as refused, want %s in:\n%s", want, out)
	}
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n.done:
	case <-time.After(stopWait):
		t.Fatalf("node did not exit within %v of SIGTERM", stopWait)
	}
	if n.err != nil {
		t.Errorf("SIGTERM gave %v, want exit code 0", n.err)
	}
}

// privateSwarm returns the flags that put a peer in a private swarm of the
// test's own (a fresh key): the process executor runs only in one.
func privateSwarm(tb testing.TB) []string {
	tb.Helper()
	key, err := node.NewSwarmKey()
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(tb.TempDir(), "swarm.key")
	if err := os.WriteFile(path, key, 0o600); err != nil {
		tb.Fatal(err)
	}
	return []string{"--swarm-key", path}
}

// jobDir returns a folder for a provider's process jobs that the job user
// may enter (a test's temporary folders are closed to other users), and
// with it the flags that give it to the provider.
func jobDir(tb testing.TB) (string, []string) {
	tb.Helper()
	dir, err := os.MkdirTemp("", "gmjobs")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		tb.Fatal(err)
	}
	flags := []string{"--job-dir", dir}
	if os.Geteuid() != 0 {
		flags = append(flags, "--jobs-as-node-user")
	}
	return dir, flags
}
