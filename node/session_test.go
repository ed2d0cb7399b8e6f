package node_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/internal/pipe"
	"github.com/gpumesh/gpumesh/internal/testdocker"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
	"github.com/gpumesh/gpumesh/node/sessionwire"
)

const memberPage = "hello from the member\n"

// A process member: job exec runs in its folder as its user, with its
// exit code, stdin and a terminal; port-forward reaches its server, 50
// requests at once, and nothing else of the provider's; another peer
// speaking the protocol is refused; everything ends with the job.
func TestExecAndPortForwardIntoAProcessMember(t *testing.T) {
	m := meshtest.Start(t, 3, h100s(171, 1))
	script := memberServer(t, fmt.Sprintf(`mkdir -p www && echo %q > www/index.html`, strings.TrimSpace(memberPage)))
	sessionScenario(t, m, scriptSpec(t, 1, 0, script, ""), 0, func(t *testing.T, ctx context.Context, sub *node.Node, j node.Job) {
		out, _, code, err := execIn(ctx, sub, j.ID, sessionwire.Open{Command: []string{"pwd"}}, nil)
		if err != nil || code != 0 || !strings.HasSuffix(strings.TrimSpace(out), "/work") {
			t.Errorf("pwd in the member: %q, code %d, %v; want its work folder, 0", out, code, err)
		}
		execsAtOnceAreBounded(t, ctx, sub, j.ID)
		terminalExecIsRecorded(t, ctx, m.Nodes[0], sub, j)
	})
}

// terminalExecIsRecorded: a command under a terminal leads a session of
// its own, out of the work's process group; while it runs, the member's
// task record holds its group (what a restart after a crash kills), and
// once it ends, no longer.
func terminalExecIsRecorded(t *testing.T, ctx context.Context, provider, sub *node.Node, j node.Job) {
	t.Helper()
	// The execs the last step held are closed, and their provider counts
	// them out as it sees each stream end: until then it refuses, saying so.
	var conn io.ReadWriteCloser
	testwait.Until(t, ctx, "a terminal exec let in", func() (bool, string) {
		var err error
		conn, err = sub.OpenSession(ctx, j.ID, sessionwire.Open{Kind: sessionwire.KindExec, Command: []string{"sh", "-c", "sleep 300 & echo started; wait"}, TTY: true})
		if err != nil && !strings.Contains(err.Error(), "execs run in this member already") {
			t.Fatal(err)
		}
		return err == nil, fmt.Sprint(err)
	})
	screen := &testwait.Output{}
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		_, _ = sessionwire.RunExec(ctx, conn, sessionwire.ExecIO{Stdout: screen})
	}()
	screen.WaitFor(t, ctx, "started", 1)
	gs, err := provider.RecordedExecs(j.ID, j.Attempt, 0)
	if err != nil || len(gs) != 1 || gs[0].PGID <= 1 || gs[0].Start == 0 {
		t.Fatalf("the task record's terminal execs: %+v, %v; want the one running", gs, err)
	}
	if k, err := exec.KillGroup(gs[0], 0); k != 2 {
		t.Errorf("the recorded group held %d processes (%v), want the shell and its sleep", k, err)
	}
	conn.Close()
	<-ended
	testwait.Until(t, ctx, "the ended exec gone from the record", func() (bool, string) {
		gs, err := provider.RecordedExecs(j.ID, j.Attempt, 0)
		return err == nil && len(gs) == 0, fmt.Sprintf("%+v, %v", gs, err)
	})
}

// execsAtOnceAreBounded holds as many execs open in member 0 of job id as
// its provider allows: one more is refused, saying why; once one ends, the
// next is let in.
func execsAtOnceAreBounded(t *testing.T, ctx context.Context, sub *node.Node, id string) {
	t.Helper()
	const most = 8 // the provider's bound (provider_session.go)
	var open []io.ReadWriteCloser
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for i := range most {
		c, err := sub.OpenSession(ctx, id, sessionwire.Open{Kind: sessionwire.KindExec, Command: []string{"sleep", "600"}})
		if err != nil {
			t.Fatalf("exec %d of %d: %v", i+1, most, err)
		}
		open = append(open, c)
	}
	_, err := sub.OpenSession(ctx, id, sessionwire.Open{Kind: sessionwire.KindExec, Command: []string{"true"}})
	if !errors.Is(err, node.ErrSessionRefused) || !strings.Contains(err.Error(), "execs run in this member already") {
		t.Fatalf("exec %d with %d open: %v; want refused, saying how many run", most+1, most, err)
	}
	open[0].Close()
	open = open[1:]
	testwait.Until(t, ctx, "a place freed by an ended exec", func() (bool, string) {
		out, _, code, err := execIn(ctx, sub, id, sessionwire.Open{Command: []string{"echo", "in"}}, nil)
		return err == nil && code == 0 && out == "in\n", fmt.Sprintf("%q, %d, %v", out, code, err)
	})
}

// A container member: the same, in the container (its hostname, its own
// loopback reached from inside its network namespace).
func TestExecAndPortForwardIntoADockerMember(t *testing.T) {
	img := testdocker.EnsureImage(t)
	m := meshtest.Start(t, 3, meshtest.Options{Seed: 172, Providers: 1, Price: "fixed:2.10"})
	script := fmt.Sprintf(`mkdir -p /tmp/www && echo %q > /tmp/www/index.html && exec busybox httpd -f -p 8000 -h /tmp/www`, strings.TrimSpace(memberPage))
	y := fmt.Sprintf("name: sessions\nimage: %s\ncommand: [sh, -c, %q]\nresources:\n  gpus: 1\n  gpu: {model: H100}\nmaxPrice: 2.50\ntimeout: 5m\n", img, script)
	spec, err := jobspec.Parse([]byte(y), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	sessionScenario(t, m, spec, 8000, func(t *testing.T, ctx context.Context, sub *node.Node, j node.Job) {
		out, _, code, err := execIn(ctx, sub, j.ID, sessionwire.Open{Command: []string{"cat", "/etc/hostname"}}, nil)
		in, ierr := testdocker.Client(t).ContainerInspect(ctx, fmt.Sprintf("gpumesh-%s-%d-0", j.ID, j.Attempt))
		if err != nil || ierr != nil || code != 0 || strings.TrimSpace(out) != in.Config.Hostname {
			t.Errorf("cat /etc/hostname in the member: %q, code %d, %v (inspect: %v); want the container's hostname, 0", out, code, err, ierr)
		}
	})
}

// sessionScenario runs spec (a server of memberPage on port, or a
// memberServer where port is 0) from node 1 of m on node 0, and checks
// exec and port-forward into it; own checks what only one executor can.
// Node 2 plays a stranger.
func sessionScenario(t *testing.T, m *meshtest.Mesh, spec jobspec.Spec, port int, own func(*testing.T, context.Context, *node.Node, node.Job)) {
	provider, sub, stranger := m.Nodes[0], m.Nodes[1], m.Nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	job, err := sub.SubmitJob(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	j := waitRunning(t, ctx, sub, job.ID)
	defer func() { _, _ = sub.CancelJob(context.Background(), j.ID) }()
	if port == 0 {
		port = memberServerPort(t, ctx, sub, j.ID)
	}

	own(t, ctx, sub, j)
	_, errOut, code, err := execIn(ctx, sub, j.ID, sessionwire.Open{Command: []string{"sh", "-c", "echo nope >&2; exit 3"}}, nil)
	if err != nil || code != 3 || errOut != "nope\n" {
		t.Errorf("a failing command: stderr %q, code %d, %v; want nope, 3", errOut, code, err)
	}
	out, _, code, err := execIn(ctx, sub, j.ID, sessionwire.Open{Command: []string{"cat"}}, strings.NewReader("typed\n"))
	if err != nil || code != 0 || out != "typed\n" {
		t.Errorf("cat of stdin: %q, code %d, %v; want what was typed", out, code, err)
	}
	_, _, _, err = execIn(ctx, sub, j.ID, sessionwire.Open{Command: []string{"/no/such/thing"}}, nil)
	t.Logf("a command that is not there: %v", err)
	shellUnderATerminal(t, ctx, sub, j.ID)

	// Port-forward: 50 requests at once through one local listener.
	addr := forwardPort(t, ctx, sub, j.ID, port)
	url := "http://" + addr + "/index.html"
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	testwait.Until(t, wctx, "the member's server to answer through the forward", func() (bool, string) {
		body, err := httpGet(ctx, url)
		return err == nil && body == memberPage, fmt.Sprintf("%q, %v", body, err)
	})
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if body, err := httpGet(ctx, url); err != nil || body != memberPage {
				errs <- fmt.Errorf("%q, %v", body, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a request of 50 at once: %v", err)
	}

	// A port nobody in the member listens on: the provider's own service
	// there is not reached.
	own2 := providerService(t)
	_, err = sub.OpenSession(ctx, j.ID, sessionwire.Open{Kind: sessionwire.KindForward, Port: own2})
	if !errors.Is(err, node.ErrSessionRefused) {
		t.Errorf("a forward to a port of the provider's own: %v, want refused", err)
	}
	t.Logf("a port not the member's: %v", err)

	// A stranger speaking the real protocol, with the job's right names.
	for _, o := range []sessionwire.Open{
		{Kind: sessionwire.KindExec, Job: j.ID, Attempt: j.Attempt, Command: []string{"sh", "-c", "echo pwned > /tmp/gm-pwned-" + j.ID}},
		{Kind: sessionwire.KindForward, Job: j.ID, Attempt: j.Attempt, Port: port},
	} {
		s, err := stranger.Host().NewStream(ctx, provider.Host().ID(), sessionwire.Protocol)
		if err != nil {
			t.Fatal(err)
		}
		if err := sessionwire.WriteOpen(s, o); err != nil {
			t.Fatal(err)
		}
		rep, err := sessionwire.ReadReply(bufio.NewReader(s))
		if err != nil || rep.Error == "" {
			t.Errorf("a stranger's %s: reply %+v, %v; want refused", o.Kind, rep, err)
		}
		s.Close()
	}
	if _, err := stranger.OpenSession(ctx, j.ID, sessionwire.Open{Kind: sessionwire.KindExec, Command: []string{"true"}}); !errors.Is(err, node.ErrNoSuchJob) {
		t.Errorf("a stranger's own node: %v, want no such job", err)
	}
	out, _, _, _ = execIn(ctx, sub, j.ID, sessionwire.Open{Command: []string{"sh", "-c", "cat /tmp/gm-pwned-" + j.ID + " 2>/dev/null; echo checked"}}, nil)
	if out != "checked\n" {
		t.Errorf("the stranger's command ran: %q", out)
	}

	// The job's end ends its sessions: a command still running, a
	// connection still open, and the forward's next connection.
	slow := make(chan error, 1)
	go func() {
		_, _, _, err := execIn(ctx, sub, j.ID, sessionwire.Open{Command: []string{"sleep", "600"}}, nil)
		slow <- err
	}()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\n"); err != nil { // not finished: the server waits
		t.Fatal(err)
	}
	inctx, incancel := context.WithTimeout(ctx, time.Minute)
	defer incancel()
	testwait.Until(t, inctx, "the slow command and the connection to be in the member", func() (bool, string) {
		select {
		case err := <-slow:
			t.Fatalf("the slow command ended before the job: %v", err)
		default:
		}
		n := provider.LiveSessions(j.ID)
		return n >= 2, fmt.Sprintf("%d sessions", n)
	})
	if _, err := sub.CancelJob(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-slow:
		if err == nil {
			t.Errorf("a command running in the member outlived the job")
		}
		t.Logf("the running command, at the job's end: %v", err)
	case <-ctx.Done():
		t.Fatal("a command running in the member outlived the job")
	}
	_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
	if n, err := io.Copy(io.Discard, conn); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Errorf("a forwarded connection at the job's end: %d bytes, %v; want it closed", n, err)
	}
	if _, err := httpGet(ctx, url); err == nil {
		t.Errorf("a forwarded request after the job ended succeeded")
	}
	waitEnded(t, ctx, sub, j.ID)
	if _, err := sub.OpenSession(ctx, j.ID, sessionwire.Open{Kind: sessionwire.KindExec, Command: []string{"true"}}); !errors.Is(err, node.ErrJobNotRunning) {
		t.Errorf("an exec into an ended job: %v, want job not running", err)
	}
}

// shellUnderATerminal drives a shell under the member's terminal: a prompt
// set and read back, a line typed and its result read, a resize seen by
// stty, and the shell's exit code.
func shellUnderATerminal(t *testing.T, ctx context.Context, sub *node.Node, id string) {
	t.Helper()
	conn, err := sub.OpenSession(ctx, id, sessionwire.Open{Kind: sessionwire.KindExec, Command: []string{"sh", "-i"}, TTY: true, Stdin: true, Rows: 24, Cols: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	keys, typist := io.Pipe()
	defer typist.Close()
	screen := &testwait.Output{}
	resize := make(chan [2]int, 1)
	exited := make(chan int, 1)
	go func() {
		code, err := sessionwire.RunExec(ctx, conn, sessionwire.ExecIO{Stdin: keys, Stdout: screen, Resize: resize})
		if err != nil {
			t.Errorf("the shell: %v", err)
		}
		exited <- code
	}()
	typeLine := func(line string) {
		if _, err := io.WriteString(typist, line+"\r"); err != nil {
			t.Fatal(err)
		}
	}
	typeLine("PS1='gm-ready> '")
	screen.WaitFor(t, ctx, "gm-ready> ", 2) // the typed line, then the prompt
	typeLine("echo $((6*7))")
	screen.WaitFor(t, ctx, "42\r\n", 1)
	typeLine("stty size")
	screen.WaitFor(t, ctx, "24 80\r\n", 1)
	resize <- [2]int{30, 100}
	// The terminal takes its new size apart from the keys typed (a docker
	// exec's, through the engine's API), maybe after the next command has
	// run: ask until stty sees it.
	rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
	defer rcancel()
	testwait.Until(t, rctx, "stty to see the terminal's new size", func() (bool, string) {
		if strings.Contains(screen.String(), "30 100\r\n") {
			return true, ""
		}
		typeLine("stty size")
		return false, screen.String()
	})
	typeLine("exit 7")
	select {
	case code := <-exited:
		if code != 7 {
			t.Errorf("the shell exited with %d, want 7", code)
		}
	case <-ctx.Done():
		t.Fatalf("the shell did not exit; the screen:\n%s", screen.String())
	}
}

// execIn runs a command in member 0 of job id through its submitter,
// for at most execWait.
func execIn(ctx context.Context, sub *node.Node, id string, o sessionwire.Open, stdin io.Reader) (stdout, stderr string, code int, err error) {
	const execWait = time.Minute
	ctx, cancel := context.WithTimeout(ctx, execWait)
	defer cancel()
	o.Kind, o.Stdin = sessionwire.KindExec, stdin != nil
	conn, err := sub.OpenSession(ctx, id, o)
	if err != nil {
		return "", "", -1, err
	}
	defer conn.Close()
	var out, errOut bytes.Buffer
	code, err = sessionwire.RunExec(ctx, conn, sessionwire.ExecIO{Stdin: stdin, Stdout: &out, Stderr: &errOut})
	return out.String(), errOut.String(), code, err
}

// forwardPort listens on 127.0.0.1 and forwards each connection to port
// of member 0 of job id through its submitter, as `job port-forward` does
// (pipe.Join, as the node joins them). At the test's end it closes what is
// still open and fails the test if a connection's copies do not end
// within forwardsEnd.
func forwardPort(t *testing.T, ctx context.Context, sub *node.Node, id string, port int) string {
	t.Helper()
	const forwardsEnd = 30 * time.Second
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[io.Closer]bool{}
	track := func(c io.Closer, on bool) {
		mu.Lock()
		defer mu.Unlock()
		if on {
			open[c] = true
		} else {
			delete(open, c)
		}
	}
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(forwardsEnd):
			t.Errorf("forwarded connections still copying %s after they were closed", forwardsEnd)
		}
	})
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
				s, err := sub.OpenSession(ctx, id, sessionwire.Open{Kind: sessionwire.KindForward, Port: port})
				if err != nil {
					return
				}
				defer s.Close()
				track(c, true)
				track(s, true)
				defer track(c, false)
				defer track(s, false)
				pipe.Join(c, c, s, s)
			}()
		}
	}()
	return l.Addr().String()
}

func httpGet(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("status %s", resp.Status)
	}
	return string(body), err
}

// providerService is a service of the provider's own on its loopback; it
// fails the test if anything reaches it.
func providerService(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Errorf("the provider's own service was reached from %s", c.RemoteAddr())
			c.Close()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// memberServer is a process member's command: setup (which makes the
// folder www), then busybox httpd serving www on 127.0.0.1 at the first of
// a few ports it can bind, written to the file port in its folder first.
// A port chosen by the test and left free until the member listens could
// be taken meanwhile by another package's test; these are below the
// kernel's ephemeral range, which listeners on port 0 and outgoing
// connections take from, and there are several. memberServerPort finds
// the one it listens on.
func memberServer(t *testing.T, setup string) string {
	t.Helper()
	var ports []string
	for len(ports) < 4 {
		p := 20000 + mrand.IntN(12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue // taken now
		}
		l.Close()
		ports = append(ports, strconv.Itoa(p))
	}
	return fmt.Sprintf(`%s && for p in %s; do echo $p > port; busybox httpd -f -p 127.0.0.1:$p -h www; done; echo "test server: no port free" >&2; exit 1`,
		setup, strings.Join(ports, " "))
}

// memberServerPort is the port the memberServer of member 0 of job id
// listens on: the port its file names, once a forward to it answers HTTP
// (a forward reaches only a port the member itself listens on). It fails
// the test within serverWait.
func memberServerPort(t *testing.T, ctx context.Context, sub *node.Node, id string) int {
	t.Helper()
	const serverWait = time.Minute
	ctx, cancel := context.WithTimeout(ctx, serverWait)
	defer cancel()
	port := 0
	testwait.Until(t, ctx, "the member's server to answer through a forward", func() (bool, string) {
		out, _, code, err := execIn(ctx, sub, id, sessionwire.Open{Command: []string{"cat", "port"}}, nil)
		p, perr := strconv.Atoi(strings.TrimSpace(out))
		if err != nil || code != 0 || perr != nil {
			return false, fmt.Sprintf("cat port: %q, code %d, %v", out, code, err)
		}
		c, err := sub.OpenSession(ctx, id, sessionwire.Open{Kind: sessionwire.KindForward, Port: p})
		if err != nil {
			return false, fmt.Sprintf("port %d: %v", p, err)
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		if _, err := io.WriteString(c, "HEAD / HTTP/1.0\r\n\r\n"); err != nil {
			return false, fmt.Sprintf("port %d: %v", p, err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if !strings.HasPrefix(line, "HTTP/1.") {
			return false, fmt.Sprintf("port %d answered %q, %v", p, line, err)
		}
		port = p
		return true, ""
	})
	return port
}

// waitRunning waits until member 0 of job id runs (its only member), and
// fails at once, saying why, if the job ends first.
func waitRunning(t *testing.T, ctx context.Context, sub *node.Node, id string) node.Job {
	t.Helper()
	return waitJob(t, ctx, sub, id, "to run", func(j node.Job) bool {
		switch j.State {
		case node.JobDone, node.JobFailed, node.JobCancelled:
			t.Fatalf("job %s ended before its member ran: %s (%s); its log:\n%s", id, j.State, j.Reason, jobLog(t, sub, id))
		}
		return j.State == node.JobRunning && len(j.Runs) == 1 && j.Runs[0].State == node.MemberRunning
	})
}
