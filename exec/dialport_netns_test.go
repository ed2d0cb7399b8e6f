package exec_test

import (
	"errors"
	"io"
	"net"
	"os"
	osexec "os/exec"
	"strings"
	"testing"

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
	task.JoinNet = tunJoinNet
	var errs testwait.Output
	task.Stderr = &errs
	ctx := startTask(t, task)
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
