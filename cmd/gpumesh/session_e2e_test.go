package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/gpumesh/gpumesh/internal/testdocker"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
)

// runningServer submits a one-member container job serving a page (and a
// 64 MiB file, big) with busybox httpd on port 8000, and waits until it
// runs and serves.
func runningServer(t testing.TB, sub *gmNode) node.Job {
	spec := writeJob(t, 8, 8, `mkdir -p /tmp/www && echo served > /tmp/www/index.html && `+
		`dd if=/dev/zero of=/tmp/www/big bs=1048576 count=64 2>/dev/null && exec busybox httpd -f -p 8000 -h /tmp/www`, "")
	var j node.Job
	if err := gmJSON(sub.data, &j, "job", "submit", spec); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, cliWait, "the job to run", func() (bool, string) {
		if err := gmJSON(sub.data, &j, "job", "status", j.ID); err != nil {
			return false, err.Error()
		}
		return j.State == node.JobRunning && len(j.Runs) == 1 && j.Runs[0].State == node.MemberRunning, string(j.State)
	})
	testwait.For(t, cliWait, "the job's server to answer", func() (bool, string) {
		out, err := gm(sub.data, "job", "exec", j.ID, "--", "sh", "-c", `printf 'GET / HTTP/1.0\r\n\r\n' | busybox nc 127.0.0.1 8000`)
		return err == nil && strings.HasPrefix(string(out), "HTTP/1"), fmt.Sprintf("%q, %v", out, err)
	})
	return j
}

// `job exec` prints the command's output and exits with its code; -it
// runs a shell under this terminal (typed into, resized); `job
// port-forward` serves 50 requests at once and stops with the job.
func TestJobExecAndPortForwardFromTheCLI(t *testing.T) {
	testdocker.EnsureImage(t)
	_, sub := jobSwarm(t, 1)
	j := runningServer(t, sub)

	out, err := gm(sub.data, "job", "exec", j.ID, "--", "cat", "/etc/hostname")
	in, ierr := testdocker.Client(t).ContainerInspect(context.Background(), fmt.Sprintf("gpumesh-%s-%d-0", j.ID, j.Attempt))
	if err != nil || ierr != nil || strings.TrimSpace(string(out)) != in.Config.Hostname {
		t.Errorf("job exec cat /etc/hostname: %q, %v (inspect: %v); want the container's hostname", out, err, ierr)
	}
	_, err = gm(sub.data, "job", "exec", j.ID, "--", "sh", "-c", "echo bad >&2; exit 5")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 || !strings.Contains(err.Error(), "bad") {
		t.Errorf("job exec of a command exiting 5: %v; want exit code 5 and its stderr", err)
	}

	// -it: the CLI under a pseudo-terminal of the test's.
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 24, Cols: 80}); err != nil {
		t.Fatal(err)
	}
	shell := exec.Command(gmBin, "--data", sub.data, "job", "exec", j.ID, "-it", "--", "sh")
	shell.Stdin, shell.Stdout, shell.Stderr = tty, tty, tty
	shell.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := shell.Start(); err != nil {
		t.Fatal(err)
	}
	tty.Close()
	shellDone := make(chan error, 1)
	go func() { shellDone <- shell.Wait() }()
	defer func() { _ = shell.Process.Kill() }()
	screen := &testwait.Output{}
	go func() { _, _ = io.Copy(screen, ptmx) }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	typeLine := func(s string) {
		if _, err := io.WriteString(ptmx, s+"\r"); err != nil {
			t.Fatal(err)
		}
	}
	typeLine("PS1='cli-ready> '")
	screen.WaitFor(t, ctx, "cli-ready> ", 2) // the typed line, then the prompt
	typeLine("echo $((6*7))")
	screen.WaitFor(t, ctx, "42\r\n", 1)
	typeLine("stty size")
	screen.WaitFor(t, ctx, "24 80\r\n", 1)
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 33, Cols: 101}); err != nil { // SIGWINCH to the CLI
		t.Fatal(err)
	}
	testwait.Until(t, ctx, "the new size in the member", func() (bool, string) {
		typeLine("stty size")
		return strings.Contains(screen.String(), "33 101\r\n"), "no 33 101 yet"
	})
	typeLine("exit 4")
	select {
	case err := <-shellDone:
		if !errors.As(err, &ee) || ee.ExitCode() != 4 {
			t.Errorf("job exec -it sh, exit 4: %v", err)
		}
	case <-ctx.Done():
		t.Fatalf("the shell did not end; the screen:\n%s", screen.String())
	}

	// port-forward, LOCAL 0: the port it picked is on its first line.
	pf := exec.Command(gmBin, "--data", sub.data, "job", "port-forward", j.ID, "0:8000")
	pfOut, err := pf.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var pfErr bytes.Buffer
	pf.Stderr = &pfErr
	if err := pf.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pf.Process.Kill() }()
	lines := bufio.NewScanner(pfOut)
	if !lines.Scan() {
		t.Fatalf("port-forward printed nothing: %s", pfErr.String())
	}
	addr, _, ok := strings.Cut(strings.TrimPrefix(lines.Text(), "forwarding "), " ")
	if !ok || !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("port-forward's first line: %q", lines.Text())
	}
	url := "http://" + addr + "/index.html"
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if body, err := get(ctx, url); err != nil || body != "served\n" {
				errs <- fmt.Errorf("%q, %v", body, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("one of 50 requests at once: %v", err)
	}
	if _, err := gm(sub.data, "job", "cancel", j.ID); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(pfOut)
	pfDone := make(chan error, 1)
	go func() { pfDone <- pf.Wait() }()
	select {
	case err := <-pfDone:
		if err != nil || !strings.Contains(string(rest), "forwarding stopped") {
			t.Errorf("port-forward at the job's end: %v, %q %s", err, rest, pfErr.String())
		}
	case <-ctx.Done():
		t.Fatal("port-forward outlived the job")
	}
}

func get(ctx context.Context, url string) (string, error) {
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
	return string(body), err
}
