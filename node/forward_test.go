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
	port := freeTCPPort(t)
	dir, err := os.MkdirTemp("", "gm") // short: the API's unix socket
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	o := h100s(173, 1)
	o.Config = func(i int, c *node.Config) {
		if i == 1 {
			c.DataDir = dir
		}
	}
	m := meshtest.Start(t, 2, o)
	sub := m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const big = 3 << 20
	script := fmt.Sprintf(`mkdir -p www && head -c %d /dev/zero > www/big && exec busybox httpd -f -p 127.0.0.1:%d -h www`, big, port)
	job, err := sub.SubmitJob(ctx, scriptSpec(t, 1, 0, script, ""))
	if err != nil {
		t.Fatal(err)
	}
	j := waitJob(t, ctx, sub, job.ID, "to run", func(j node.Job) bool {
		return j.State == node.JobRunning && len(j.Runs) == 1 && j.Runs[0].State == node.MemberRunning
	})
	defer func() { _, _ = sub.CancelJob(context.Background(), j.ID) }()
	// "Running" comes before the member's server listens: a process member
	// on this machine listens on the host's own loopback, so wait there.
	testwait.Until(t, ctx, "the member's server to listen", func() (bool, string) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return true, ""
	})

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
	defer func() { l.Close(); wg.Wait() }()
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
