package node_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A forward through the local API, made as `gpumesh job port-forward`
// makes it: while it is held the node lists it (where it listens, the
// member's port) and counts its connections and bytes; each connection is
// handed to the node itself over the unix socket, so the client copies
// nothing; the hold ends when the job ends, and the forward goes with it.
func TestForwardsThroughTheLocalAPIAreShownCountedAndPassed(t *testing.T) {
	const big = 3 << 20
	m, dir, ctx, j, port := forwardMesh(t, 173, fmt.Sprintf(`mkdir -p www && head -c %d /dev/zero > www/big`, big))
	sub := m.Nodes[1]
	cl, err := node.NewClient(dir)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	key, held, err := cl.HoldForward(ctx, j.ID, node.ForwardRequest{Port: port, Local: l.Addr().String()})
	if err != nil || key == "" {
		t.Fatalf("HoldForward: key %q, %v", key, err)
	}
	defer held.Close()
	if fs := sub.Forwards(j.ID); len(fs) != 1 || fs[0].Local != l.Addr().String() || fs[0].Port != port || fs[0].Conns != 0 {
		t.Fatalf("Forwards = %+v; want the one held, listening on %s, to port %d, no connections yet", fs, l.Addr(), port)
	}

	// The client's side of each connection: as the CLI does it.
	passed := make(chan bool, 10)
	var wg sync.WaitGroup
	defer func() {
		l.Close()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the client's side of a forwarded connection still ran 30 s after the test")
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				fc, err := cl.ForwardConn(ctx, j.ID, key, 0, port)
				if err != nil {
					t.Errorf("ForwardConn: %v", err)
					return
				}
				defer fc.Close()
				passed <- node.TakesConn(fc)
				if err := node.PassConn(ctx, fc, c.(*net.TCPConn)); err != nil {
					t.Errorf("PassConn: %v", err)
				}
			}()
		}
	}()

	body, err := httpGet(ctx, "http://"+l.Addr().String()+"/big")
	if err != nil || len(body) != big || strings.Trim(body, "\x00") != "" {
		t.Fatalf("through the forward: %d bytes, %v; want %d zeros", len(body), err, big)
	}
	if !<-passed {
		t.Error("the node did not take the connection over its unix socket")
	}
	testwait.Until(t, ctx, "the connection counted and closed", func() (bool, string) {
		fs := sub.Forwards(j.ID)
		return len(fs) == 1 && fs[0].Total == 1 && fs[0].Conns == 0 && fs[0].BytesIn > big && fs[0].BytesOut > 0, fmt.Sprintf("%+v", fs)
	})

	// A connection held open counts as open.
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "GET /big HTTP/1.0\r\n"); err != nil { // not finished: the server waits
		t.Fatal(err)
	}
	testwait.Until(t, ctx, "the open connection counted", func() (bool, string) {
		fs := sub.Forwards(j.ID)
		return len(fs) == 1 && fs[0].Conns == 1 && fs[0].Total == 2, fmt.Sprintf("%+v", fs)
	})
	c.Close()

	// The job's end ends the hold (its body) and the forward.
	if _, err := sub.CancelJob(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, held); ended <- err }()
	select {
	case err := <-ended:
		if err != nil {
			t.Errorf("the hold ended with %v, want its end", err)
		}
	case <-ctx.Done():
		t.Fatal("the hold outlived the job")
	}
	testwait.Until(t, ctx, "the forward gone", func() (bool, string) {
		fs := sub.Forwards(j.ID)
		return len(fs) == 0, fmt.Sprintf("%+v", fs)
	})
}

// forwardMesh starts a provider (node 0) and a submitter (node 1, its data
// dir the one returned, for a client of its local API), and runs a job of
// one process member that serves www, made by setup, on the port
// returned (memberServer). The context bounds the test.
func forwardMesh(t *testing.T, seed uint64, setup string) (*meshtest.Mesh, string, context.Context, node.Job, int) {
	t.Helper()
	dir := shortDir(t)
	o := h100s(seed, 1)
	o.Config = func(i int, c *node.Config) {
		if i == 1 {
			c.DataDir = dir
		}
	}
	m := meshtest.Start(t, 2, o)
	ctx, j, port := runServer(t, m.Nodes[1], setup)
	return m, dir, ctx, j, port
}

// shortDir is a folder short enough for the local API's unix socket.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// runServer runs a job of one process member from sub that serves www,
// made by setup, on the port returned (memberServer), within a context
// that bounds the test.
func runServer(t *testing.T, sub *node.Node, setup string) (context.Context, node.Job, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	job, err := sub.SubmitJob(ctx, scriptSpec(t, 1, 0, memberServer(t, setup), ""))
	if err != nil {
		t.Fatal(err)
	}
	j := waitRunning(t, ctx, sub, job.ID)
	t.Cleanup(func() { _, _ = sub.CancelJob(context.Background(), j.ID) })
	return ctx, j, memberServerPort(t, ctx, sub, j.ID)
}

// tcpNodes starts a provider and a submitter (its data dir returned) as
// real peers on loopback TCP in a private swarm, so their sessions run on
// real libp2p streams (the simulated network's behave otherwise: a
// stream's close there tells its far end, and it has no deadlines).
func tcpNodes(t *testing.T, seed uint64) (provider, sub *node.Node, subDir string) {
	t.Helper()
	start := func(cfg node.Config) *node.Node {
		cfg.Listen, cfg.NoMDNS, cfg.NoNAT, cfg.Swarm = []string{"/ip4/127.0.0.1/tcp/0"}, true, true, meshtest.SwarmOf(seed)
		nd, err := node.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := nd.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Close() })
		return nd
	}
	provider = start(node.Config{DataDir: shortDir(t), GPUs: "mock:dgxh100", Price: "fixed:2.10", Executors: []string{"process"}})
	boot := provider.Host().Addrs()[0].String() + "/p2p/" + provider.Host().ID().String()
	subDir = shortDir(t)
	sub = start(node.Config{DataDir: subDir, GPUs: "none", Bootstrap: []string{boot}})
	testwait.For(t, time.Minute, "the submitter to find the provider's GPUs", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r, err := sub.FindGPUs(ctx, dht.Query{Model: "H100"})
		return err == nil && r.Providers == 1, fmt.Sprintf("%+v, %v", r, err)
	})
	return provider, sub, subDir
}

// A forwarded connection whose client goes while the member still sends
// (a download given up) ends at the member's provider too, at once: the
// submitter resets the session's stream rather than closing it, so the
// provider's writes fail instead of waiting for room the submitter will
// never give (its stream is gone), which held the member's place and the
// server's connection until the job ended.
func TestAForwardWhoseClientGoesMidwayEndsAtTheProvider(t *testing.T) {
	const big = 64 << 20 // more than a stream's window (16 MiB)
	provider, sub, dir := tcpNodes(t, 174)
	ctx, j, port := runServer(t, sub, fmt.Sprintf(`mkdir -p www && head -c %d /dev/zero > www/big`, big))
	cl, err := node.NewClient(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, pass := range []bool{false, true} {
		var c net.Conn
		var passed chan error
		if pass { // as the CLI does it: the connection handed to the node
			local, remote := tcpPair(t)
			fc, err := cl.ForwardConn(ctx, j.ID, "", 0, port)
			if err != nil || !node.TakesConn(fc) {
				t.Fatalf("ForwardConn: %v (taken: %v)", err, err == nil && node.TakesConn(fc))
			}
			passed = make(chan error, 1)
			go func() { passed <- node.PassConn(ctx, fc, remote) }()
			c = local
		} else {
			c, err = cl.Forward(ctx, j.ID, 0, port)
			if err != nil {
				t.Fatal(err)
			}
		}
		if _, err := io.WriteString(c, "GET /big HTTP/1.0\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 64<<10)); err != nil {
			t.Fatalf("the first bytes of the download: %v", err)
		}
		testwait.Until(t, ctx, "the download's session counted at its provider", func() (bool, string) {
			n := provider.LiveSessions(j.ID)
			return n == 1, fmt.Sprintf("%d sessions", n)
		})
		c.Close() // the client goes
		testwait.For(t, 30*time.Second, fmt.Sprintf("the provider to end the forward whose client went (passed %v)", pass), func() (bool, string) {
			n := provider.LiveSessions(j.ID)
			return n == 0, fmt.Sprintf("%d sessions open at the provider", n)
		})
		if passed != nil {
			select {
			case err := <-passed:
				if err != nil {
					t.Errorf("PassConn: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("PassConn outlived the forward by 30 s")
			}
		}
	}
}

// tcpPair is two ends of a TCP connection on loopback, closed at the
// test's end.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.Accept()
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}
