package exec_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/internal/testwait"
)

// hostListener is a TCP server on this host that counts the connections it
// accepts.
type hostListener struct {
	l        net.Listener
	accepted atomic.Int64
}

func listenHost(t *testing.T, addr string) *hostListener {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h := &hostListener{l: l}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			h.accepted.Add(1)
			_, _ = c.Write([]byte("host secret\n"))
			_ = c.Close()
		}
	}()
	t.Cleanup(func() { _ = l.Close(); <-done })
	return h
}

func (h *hostListener) port() int { return h.l.Addr().(*net.TCPAddr).Port }

// hostAddrs is this host's addresses other than loopback, IPv4.
func hostAddrs(t *testing.T) []string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if ip, ok := a.(*net.IPNet); ok && ip.IP.To4() != nil && !ip.IP.IsLoopback() {
			out = append(out, ip.IP.String())
		}
	}
	return out
}

func TestASingleMemberTaskCannotReachTheHost(t *testing.T) {
	d := newDocker(t)
	// One server on the host's loopback, one on every address it has.
	lo := listenHost(t, "127.0.0.1:0")
	all := listenHost(t, "0.0.0.0:0")
	targets := []string{fmt.Sprintf("127.0.0.1 %d", lo.port()), fmt.Sprintf("127.0.0.1 %d", all.port()), "169.254.169.254 80"}
	for _, ip := range hostAddrs(t) {
		targets = append(targets, fmt.Sprintf("%s %d", ip, all.port()))
	}
	// The task may still meet itself over its own loopback (one member's
	// launcher rendezvous, as torchrun's).
	script := `busybox nc -l -p 29500 -e echo self >/dev/null 2>&1 & ` +
		`for i in 1 2 3 4 5 6 7 8 9 10; do r=$(busybox nc -w 1 127.0.0.1 29500 </dev/null 2>/dev/null); [ -n "$r" ] && break; sleep 0.2; done; echo "self: $r"; `
	for _, tg := range targets {
		script += fmt.Sprintf(`echo "%s: $(busybox nc -w 2 %s </dev/null 2>&1)"; `, tg, tg)
	}
	task := dockerTask(t, script)
	out := newSyncBuf()
	task.Stdout = out
	res, err := d.Run(context.Background(), task)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("exit %d: %s", res.ExitCode, out.String())
	}
	if n := lo.accepted.Load() + all.accepted.Load(); n != 0 {
		t.Errorf("the host's servers accepted %d connections from the task; want none", n)
	}
	if strings.Contains(out.String(), "host secret") {
		t.Errorf("the task read from a host server:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "self: self") {
		t.Errorf("the task could not reach itself over its own loopback:\n%s", out.String())
	}
	t.Logf("what the task saw:\n%s", out.String())
}

func TestAMemoryHogIsKilledAlone(t *testing.T) {
	d := newDocker(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// A neighbour that runs until stopped.
	neighbour := dockerTask(t, "while true; do sleep 1; done")
	started := make(chan struct{})
	neighbour.Started = func(time.Time) { close(started) }
	neighbourDone := make(chan exec.Result, 1)
	go func() {
		res, err := d.Run(ctx, neighbour)
		if err != nil {
			t.Errorf("neighbour: %v", err)
		}
		neighbourDone <- res
	}()
	select {
	case <-started:
	case <-time.After(time.Minute):
		t.Fatal("the neighbour did not start in a minute")
	}

	hog := dockerTask(t, "exec busybox dd if=/dev/zero of=/dev/null bs=256M count=1")
	hog.Memory = 32 << 20
	errs := newSyncBuf()
	hog.Stderr = errs
	res, err := d.Run(ctx, hog)
	if err != nil {
		t.Fatal(err)
	}
	if !res.OOMKilled || res.ExitCode != 137 {
		t.Errorf("hog: exit %d, OOMKilled %v; want exit 137, OOMKilled", res.ExitCode, res.OOMKilled)
	}
	if !strings.Contains(errs.String(), "ran out of its memory limit of 32MiB; the kernel killed") {
		t.Errorf("hog's stderr does not say why it ended: %q", errs.String())
	}

	ins, err := dockerClient(t).ContainerInspect(context.Background(), neighbour.Name)
	if err != nil {
		t.Fatal(err)
	}
	if ins.State == nil || !ins.State.Running {
		t.Errorf("the neighbour is not running after the hog was killed: %+v", ins.State)
	}
	cancel()
	if res := <-neighbourDone; !res.Stopped || res.OOMKilled {
		t.Errorf("neighbour ended %+v; want stopped by its context, not OOM", res)
	}
}

func TestALogFloodIsCapped(t *testing.T) {
	d := newDocker(t)
	const logCap = 256 << 10
	task := dockerTask(t, "yes flood | busybox head -c 20000000; echo the flood ended; touch $GPUMESH_OUTPUTS/flooded; while true; do sleep 1; done")
	task.LogBytes = logCap
	out, errs := newSyncBuf(), newSyncBuf()
	task.Stdout, task.Stderr = out, errs
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type ran struct {
		res exec.Result
		err error
	}
	done := make(chan ran, 1)
	go func() {
		res, err := d.Run(ctx, task)
		done <- ran{res, err}
	}()
	testwait.For(t, 2*time.Minute, "the flood to be written", func() bool {
		_, err := os.Stat(filepath.Join(task.Outputs, "flooded"))
		return err == nil
	})
	// The container's log files, while it still runs. json-file rotates
	// after the write that passes its size, so a file may be empty for a
	// moment, until the line the work wrote after the flood reaches it.
	ins, err := dockerClient(t).ContainerInspect(context.Background(), task.Name)
	if err != nil {
		t.Fatal(err)
	}
	var onDisk int64
	var logs []string
	testwait.For(t, time.Minute, "the container's log files to hold the line after the flood", func() bool {
		logs, _ = filepath.Glob(ins.LogPath + "*")
		onDisk = 0
		for _, f := range logs {
			if fi, err := os.Stat(f); err == nil {
				onDisk += fi.Size()
			}
		}
		// json-file rotates once a file has passed its size: a line of slack.
		if onDisk > logCap+64<<10 {
			t.Fatalf("the container's log files hold %d bytes (%v), want at most %d", onDisk, logs, logCap+64<<10)
		}
		return onDisk > 0
	})
	cancel()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	got := len(out.String()) + len(errs.String())
	if got > logCap+1024 {
		t.Errorf("read back %d bytes of a 20 MB flood, want at most the cap %d and a note", got, logCap)
	}
	// What was read was cut at the cap, or was all the log files still
	// held (the flood rotated away before the reader came).
	if cut := strings.Contains(errs.String(), "output cut at 256KiB"); !cut && got >= logCap {
		t.Errorf("read back %d bytes without saying the output was cut: %q", got, text(errs.String(), 300))
	}
}

func TestWorkOverItsDiskLimitIsStopped(t *testing.T) {
	d, err := exec.NewDockerWith(context.Background(), exec.DockerConfig{DiskCheck: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	testImage(t)
	// 8 MiB into the container's own files, then 8 MiB of outputs: each
	// over a 4 MiB limit, whether the engine caps the layer or it is
	// measured.
	for _, where := range []string{"/tmp/big", "$GPUMESH_OUTPUTS/big"} {
		task := dockerTask(t, fmt.Sprintf("busybox dd if=/dev/zero of=%s bs=1M count=8; while true; do sleep 1; done", where))
		task.Disk = 4 << 20
		task.Timeout = time.Minute
		errs := newSyncBuf()
		task.Stderr = errs
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		res, err := d.Run(ctx, task)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		// An engine that caps the writable layer fails the write itself.
		if where == "/tmp/big" && res.TimedOut && strings.Contains(errs.String(), "No space left") {
			t.Logf("the engine capped the writable layer: %q", errs.String())
			continue
		}
		if !res.DiskFull || res.Stopped || res.TimedOut {
			t.Errorf("%s: ended %+v, want stopped for its disk", where, res)
		}
		if !strings.Contains(errs.String(), "more than its disk limit of 4MiB") {
			t.Errorf("%s: stderr does not say why it stopped: %q", where, errs.String())
		}
	}
}

func TestContainerLimitsFromTheTask(t *testing.T) {
	task := exec.Task{Name: "t", Image: "img", Memory: 3 << 30, CPUs: 1.5, LogBytes: 8 << 20, Outputs: "/tmp/o"}
	_, h := exec.ContainerConfigFor(task, 0, 0)
	if h.Memory != 3<<30 || h.MemorySwap != 3<<30 || h.NanoCPUs != 1.5e9 {
		t.Errorf("memory %d, swap %d, nanoCPUs %d; want 3 GiB, 3 GiB (no swap), 1.5e9", h.Memory, h.MemorySwap, h.NanoCPUs)
	}
	if h.PidsLimit == nil || *h.PidsLimit != exec.PidsLimit {
		t.Errorf("pids limit %v, want %d", h.PidsLimit, exec.PidsLimit)
	}
	if h.NetworkMode != "none" {
		t.Errorf("network %q, want none", h.NetworkMode)
	}
	if got := h.LogConfig.Config; h.LogConfig.Type != "json-file" || got["max-size"] != "4194304" || got["max-file"] != "2" {
		t.Errorf("log config %s %v, want json-file of 2 files of 4 MiB", h.LogConfig.Type, got)
	}
	_, h = exec.ContainerConfigFor(exec.Task{Name: "t", Image: "img"}, 0, 0)
	if got := h.LogConfig.Config["max-size"]; got != fmt.Sprint(exec.DefaultLogBytes/2) {
		t.Errorf("default log file size %s, want %d", got, exec.DefaultLogBytes/2)
	}
}

func text(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
