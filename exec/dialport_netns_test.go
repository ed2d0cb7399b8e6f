package exec_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	osexec "os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/internal/testwait"
)

// A server of a task with a network namespace of its own that listens on
// its job address alone, not on loopback, is reached by DialPort too.
func TestDialPortReachesAServerOnTheJobAddressOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a network namespace for a process needs root")
	}
	if _, err := osexec.LookPath("busybox"); err != nil {
		t.Skip("no busybox for httpd")
	}
	task := processTask(t, `for i in $(seq 200); do ip -4 addr show 2>/dev/null | grep -q 10.9.0.2/ && break; sleep 0.05; done; `+
		`mkdir -p www && echo on-the-job-address > www/index.html && exec busybox httpd -f -p 10.9.0.2:7125 -h www`)
	task.JoinNet = func(pid int) error {
		out, err := osexec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "sh", "-c",
			"ip link set lo up && ip tuntap add dev "+exec.JoinNetIface+" mode tun && ip addr add 10.9.0.2/16 dev "+exec.JoinNetIface+" && ip link set "+exec.JoinNetIface+" up").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	var errs testwait.Output
	task.Stderr = &errs
	started := make(chan struct{})
	task.Started = func(time.Time) { close(started) }
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ran := make(chan error, 1)
	go func() {
		_, err := exec.Process{}.Run(ctx, task)
		ran <- err
	}()
	defer func() {
		cancel()
		<-ran
	}()
	select {
	case <-started:
	case err := <-ran:
		t.Fatalf("the task ended before it started: %v", err)
	}
	var c net.Conn
	testwait.Until(t, ctx, "the task's server to listen on its job address", func() (bool, string) {
		conn, err := exec.Process{}.DialPort(ctx, task.Name, 7125)
		if errors.Is(err, exec.ErrNotRunning) {
			t.Fatalf("the task ended; it wrote %q", errs.String())
		}
		if err != nil {
			return false, err.Error()
		}
		c = conn
		return true, ""
	})
	defer c.Close()
	if _, err := io.WriteString(c, "GET /index.html HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	page, err := io.ReadAll(c)
	if err != nil || !strings.Contains(string(page), "on-the-job-address") {
		t.Fatalf("the server answered %q, %v; want its page", page, err)
	}
}
