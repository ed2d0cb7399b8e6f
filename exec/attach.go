package exec

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	osexec "os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// An Attacher is an Executor that lets its task's submitter into a running
// task: to run another command beside the work (job exec) and to reach a
// TCP port the work listens on (job port-forward). Both end when the task
// ends.
type Attacher interface {
	// Exec runs x.Command in the running task name, in the work's own
	// environment (its container; or its user, folder, variables and
	// process group), and returns its exit code once it has ended and its
	// output has been written. Cancelling ctx kills it. The error is for a
	// command that could not run at all.
	Exec(ctx context.Context, name string, x ExecSpec) (int, error)
	// DialPort connects to TCP port of the running task name, from inside
	// its network; it refuses a port that would reach anything but the
	// work's own listeners, with ErrPortRefused.
	DialPort(ctx context.Context, name string, port int) (net.Conn, error)
}

// ExecSpec is a command to run inside a running task.
type ExecSpec struct {
	Command []string
	TTY     bool           // under a terminal: Stdout gets stdout and stderr, Stdin is the keyboard
	Size    WinSize        // the terminal's first size (TTY); zero: the default
	Resize  <-chan WinSize // the terminal's later sizes (TTY); may be nil
	Stdin   io.Reader      // nil: no stdin (it reads EOF)
	Stdout  io.Writer      // nil discards
	Stderr  io.Writer      // nil discards; unused under a TTY
	// Spawned, if set, is called by the process executor with the
	// process group of a command under a terminal (a session of its own,
	// out of the task's group) once it exists and before its output is
	// read: a provider records it, so that after a crash it can kill what
	// is left. An error kills the command, and Exec returns it. Commands
	// without a terminal join the task's own group, and containers'
	// commands go with their container: it is not called for them.
	Spawned func(ProcessGroup) error
}

// WinSize is a terminal's size in characters.
type WinSize struct{ Rows, Cols uint16 }

// ErrNotRunning marks a task that is not running (any more) on this
// provider.
var ErrNotRunning = errors.New("task not running")

// ErrPortRefused marks a port that a task's submitter may not reach.
var ErrPortRefused = errors.New("port not reachable")

var (
	_ Attacher = (*Docker)(nil)
	_ Attacher = Process{}
)

// Exec runs a command in the task's container (docker exec), as the
// container's user, with its variables and working folder.
func (d *Docker) Exec(ctx context.Context, name string, x ExecSpec) (int, error) {
	opts := container.ExecOptions{Cmd: x.Command, Tty: x.TTY, AttachStdin: x.Stdin != nil, AttachStdout: true, AttachStderr: true}
	start := container.ExecAttachOptions{Tty: x.TTY}
	if x.TTY && x.Size.Rows > 0 && x.Size.Cols > 0 {
		opts.ConsoleSize = &[2]uint{uint(x.Size.Rows), uint(x.Size.Cols)}
		start.ConsoleSize = opts.ConsoleSize
	}
	created, err := d.cli.ContainerExecCreate(ctx, name, opts)
	if err != nil {
		return -1, fmt.Errorf("docker executor: exec in %s: %w", name, err)
	}
	resp, err := d.cli.ContainerExecAttach(ctx, created.ID, start)
	if err != nil {
		return -1, fmt.Errorf("docker executor: attaching to an exec in %s: %w", name, err)
	}
	defer resp.Close()
	if opts.ConsoleSize != nil { // the engine does not apply the size it was created with to every exec
		_ = d.cli.ContainerExecResize(ctx, created.ID, container.ResizeOptions{Height: uint(x.Size.Rows), Width: uint(x.Size.Cols)})
	}
	done := make(chan struct{})
	defer close(done)
	go func() { // a cancelled exec: its process goes, and so does the attach
		select {
		case <-done:
		case <-ctx.Done():
			d.killExec(created.ID)
			resp.Close()
		}
	}()
	if x.Resize != nil {
		go func() {
			for {
				select {
				case <-done:
					return
				case sz := <-x.Resize:
					_ = d.cli.ContainerExecResize(ctx, created.ID, container.ResizeOptions{Height: uint(sz.Rows), Width: uint(sz.Cols)})
				}
			}
		}()
	}
	if x.Stdin != nil {
		go func() {
			_, _ = io.Copy(resp.Conn, x.Stdin)
			_ = resp.CloseWrite()
		}()
	}
	stdout, stderr := orDiscard(x.Stdout), orDiscard(x.Stderr)
	if x.TTY {
		_, err = io.Copy(stdout, resp.Reader)
	} else {
		_, err = stdcopy.StdCopy(stdout, stderr, resp.Reader)
	}
	if ctx.Err() != nil {
		return -1, fmt.Errorf("docker executor: exec in %s: %w", name, ctx.Err())
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		d.killExec(created.ID)
		return -1, fmt.Errorf("docker executor: exec in %s: its output: %w", name, err)
	}
	// The output has ended; the engine notes the exit a moment later.
	ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		in, err := d.cli.ContainerExecInspect(ictx, created.ID)
		if err != nil {
			return -1, fmt.Errorf("docker executor: exec in %s: its exit code: %w", name, err)
		}
		if !in.Running {
			return in.ExitCode, nil
		}
		select {
		case <-ictx.Done():
			d.killExec(created.ID)
			return -1, fmt.Errorf("docker executor: exec in %s closed its output but did not exit", name)
		case <-time.After(wait):
		}
	}
}

// killExec kills an exec's process (best effort: this peer must be allowed
// to signal it); the engine has no call that does.
func (d *Docker) killExec(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if in, err := d.cli.ContainerExecInspect(ctx, id); err == nil && in.Running && in.Pid > 1 {
		_ = syscall.Kill(in.Pid, syscall.SIGKILL)
	}
}

// DialPort connects to a port of the task's container. A container with a
// network of its own (none, or the egress bridge) is dialled at 127.0.0.1
// from inside its network namespace (this peer needs CAP_SYS_ADMIN: root);
// one on the host's network only at a port one of its own processes
// listens on, so that the host's other loopback services stay out of
// reach.
func (d *Docker) DialPort(ctx context.Context, name string, port int) (net.Conn, error) {
	in, err := d.cli.ContainerInspect(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("docker executor: %s: %w", name, err)
	}
	if in.State == nil || !in.State.Running || in.State.Pid <= 0 {
		return nil, fmt.Errorf("docker executor: %s: %w", name, ErrNotRunning)
	}
	if in.HostConfig != nil && in.HostConfig.NetworkMode.IsHost() {
		top, err := d.cli.ContainerTop(ctx, name, nil)
		if err != nil {
			return nil, fmt.Errorf("docker executor: processes of %s: %w", name, err)
		}
		col := -1
		for i, t := range top.Titles {
			if t == "PID" {
				col = i
			}
		}
		var pids []int
		for _, p := range top.Processes {
			if col >= 0 && col < len(p) {
				if pid, err := strconv.Atoi(p[col]); err == nil {
					pids = append(pids, pid)
				}
			}
		}
		return dialListener(ctx, name, pids, port)
	}
	return dialInNetns(ctx, in.State.Pid, port)
}

// dialInNetns dials port from inside the network namespace of process
// pid, at the address a socket there listens on (every socket of that
// namespace is the member's: a server on its job address is reached as
// well as one on loopback; 127.0.0.1 for a wildcard, or where none
// listens yet). The socket is made on a thread moved into the namespace
// and then moved back; a thread that cannot move back is thrown away with
// its goroutine.
func dialInNetns(ctx context.Context, pid, port int) (net.Conn, error) {
	nsPath := fmt.Sprintf("/proc/%d/ns/net", pid)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for _, table := range []string{"net/tcp", "net/tcp6"} {
		ip, ok := listenerIn(fmt.Sprintf("/proc/%d/%s", pid, table), port, nil)
		if ok && !ip.IsUnspecified() {
			addr = net.JoinHostPort(ip.String(), strconv.Itoa(port))
			break
		}
		if ok {
			break
		}
	}
	type dialed struct {
		c   net.Conn
		err error
	}
	ch := make(chan dialed, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- dialed{err: err}
			return
		}
		defer own.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- dialed{err: fmt.Errorf("the container's network: %w", err)}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- dialed{err: fmt.Errorf("%w: entering the container's network: %v; forwarding to a container with a network of its own needs a provider running as root", ErrPortRefused, err)}
			return
		}
		var dl net.Dialer
		c, err := dl.DialContext(ctx, "tcp", addr)
		if unix.Setns(int(own.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and ends with this goroutine
		ch <- dialed{c, err}
	}()
	d := <-ch
	return d.c, d.err
}

// procTask is a running process task, for Pause, Resume, Exec and
// DialPort.
type procTask struct {
	pgid int
	dir  string
	env  []string
	user *JobUser
	// ownNet: the work has a network namespace of its own (Task.JoinNet),
	// the one its group's leader is in; execs run there too.
	ownNet bool

	mu   sync.Mutex
	ttys map[int]bool // process groups of the execs under a terminal (each a session of its own)
}

func lookupTask(name string) (*procTask, error) {
	v, ok := running.Load(name)
	if !ok {
		return nil, fmt.Errorf("process executor: %q: %w", name, ErrNotRunning)
	}
	return v.(*procTask), nil
}

// Exec runs a command beside a process task: as its user, in its folder,
// with its variables, in its network namespace (a job network's, where it
// has one). Without a terminal it joins the work's process group,
// so it is stopped, paused and killed with the work; under a terminal it
// leads a session of its own (a terminal needs one), killed when the work
// ends or ctx is cancelled.
func (p Process) Exec(ctx context.Context, name string, x ExecSpec) (int, error) {
	pt, err := lookupTask(name)
	if err != nil {
		return -1, err
	}
	cmd := osexec.Command(x.Command[0], x.Command[1:]...)
	cmd.Dir, cmd.Env = pt.dir, pt.env
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if pt.user != nil {
		attr.Credential = &syscall.Credential{Uid: pt.user.UID, Gid: pt.user.GID, Groups: []uint32{}}
	}
	stdout, stderr := orDiscard(x.Stdout), orDiscard(x.Stderr)
	var (
		ptmx    *os.File
		readers []*os.File // ours: closed at the end
		closers []*os.File // the child's: closed once it has them
	)
	if x.TTY {
		attr.Setsid, attr.Setctty = true, true
	} else {
		attr.Setpgid, attr.Pgid = true, pt.pgid
		or, ow, err := os.Pipe()
		if err != nil {
			return -1, err
		}
		er, ew, err := os.Pipe()
		if err != nil {
			or.Close()
			ow.Close()
			return -1, err
		}
		cmd.Stdout, cmd.Stderr = ow, ew
		readers, closers = append(readers, or, er), append(closers, ow, ew)
		if x.Stdin != nil {
			ir, iw, err := os.Pipe()
			if err != nil {
				for _, f := range append(readers, closers...) {
					f.Close()
				}
				return -1, err
			}
			cmd.Stdin = ir
			closers = append(closers, ir)
			go func() { _, _ = io.Copy(iw, x.Stdin); iw.Close() }()
			defer iw.Close()
		}
	}
	cmd.SysProcAttr = attr
	var ns netns.NsHandle = -1
	if pt.ownNet {
		// The work's namespace, held from now: the leader may end while
		// the command starts.
		if ns, err = netns.GetFromPid(pt.pgid); err != nil {
			for _, f := range append(readers, closers...) {
				f.Close()
			}
			return -1, fmt.Errorf("process executor: exec in %q: its network namespace: %w (has the work ended?)", name, err)
		}
		defer ns.Close()
	}

	// Started and waited for on one locked thread: the parent-death signal
	// fires when the thread that forked the command ends. A thread that
	// entered the work's network namespace is never unlocked, so it ends
	// with its goroutine rather than serve others there.
	started := make(chan error, 1)
	done := make(chan error, 1)
	// A terminal's command leads a session of its own; its group is read
	// before the wait, which may reap a leader that ends at once.
	var (
		sess ProcessGroup
		serr error
	)
	go func() {
		runtime.LockOSThread()
		var err error
		if ns.IsOpen() {
			if err = netns.Set(ns); err != nil {
				started <- fmt.Errorf("entering the work's network namespace: %w", err)
				return
			}
		} else {
			defer runtime.UnlockOSThread()
		}
		if x.TTY {
			sz := &pty.Winsize{Rows: x.Size.Rows, Cols: x.Size.Cols}
			if sz.Rows == 0 || sz.Cols == 0 {
				sz = &pty.Winsize{Rows: 24, Cols: 80}
			}
			ptmx, err = pty.StartWithAttrs(cmd, sz, attr)
			if err == nil {
				sess, serr = GroupOf(cmd.Process.Pid)
				sess.Session = true
			}
		} else {
			err = cmd.Start()
		}
		started <- err
		if err == nil {
			done <- cmd.Wait()
		}
	}()
	if err := <-started; err != nil {
		for _, f := range append(readers, closers...) {
			f.Close()
		}
		return -1, fmt.Errorf("process executor: exec %q in %q: %w", x.Command, name, err)
	}
	for _, f := range closers {
		f.Close()
	}
	pid := cmd.Process.Pid
	kill := func() { _ = syscall.Kill(pid, syscall.SIGKILL) }
	stopResize := func() {}
	if x.TTY {
		readers = append(readers, ptmx)
		// The command leads a session of its own: what it started goes
		// with it, background jobs in groups of their own included.
		kill = func() {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			if serr == nil && sess.PGID == pid {
				_, _ = KillGroup(sess, 0)
			}
		}
		pt.mu.Lock()
		pt.ttys[pid] = true
		pt.mu.Unlock()
		defer func() {
			pt.mu.Lock()
			delete(pt.ttys, pid)
			pt.mu.Unlock()
		}()
		// A leader already gone (and waited for) leaves nothing to record.
		if serr == nil && x.Spawned != nil && sess.PGID == pid {
			if err := x.Spawned(sess); err != nil {
				kill()
				<-done
				for _, f := range readers {
					f.Close()
				}
				return -1, fmt.Errorf("process executor: exec in %q: %w", name, err)
			}
		}
		if x.Stdin != nil {
			go func() { _, _ = io.Copy(ptmx, x.Stdin) }()
		}
		if x.Resize != nil {
			stop, stopped := make(chan struct{}), make(chan struct{})
			stopResize = func() { close(stop); <-stopped } // before ptmx closes: Setsize reads its fd
			go func() {
				defer close(stopped)
				for {
					select {
					case <-stop:
						return
					case sz := <-x.Resize:
						_ = pty.Setsize(ptmx, &pty.Winsize{Rows: sz.Rows, Cols: sz.Cols})
					}
				}
			}()
		}
	}
	copied := make(chan struct{}, 2)
	copyOut := func(r *os.File, w io.Writer) {
		_, _ = io.Copy(w, r) // a terminal's master ends with EIO
		copied <- struct{}{}
	}
	if x.TTY {
		go copyOut(ptmx, stdout)
	} else {
		go copyOut(readers[0], stdout)
		go copyOut(readers[1], stderr)
	}
	var waitErr error
	select {
	case waitErr = <-done:
	case <-ctx.Done():
		kill()
		waitErr = <-done
	}
	stopResize()
	if x.TTY {
		kill() // what the shell left in its session goes with it
	}
	drain := time.NewTimer(processDrainTimeout)
	defer drain.Stop()
	copiers := 2
	if x.TTY {
		copiers = 1
	}
	for range copiers {
		select {
		case <-copied:
		case <-drain.C:
			for _, f := range readers {
				_ = f.Close()
			}
			drain.Reset(time.Hour)
		}
	}
	for _, f := range readers {
		_ = f.Close()
	}
	if ctx.Err() != nil {
		return -1, fmt.Errorf("process executor: exec in %q: %w", name, ctx.Err())
	}
	var exitErr *osexec.ExitError
	if waitErr != nil && !errors.As(waitErr, &exitErr) {
		return -1, fmt.Errorf("process executor: exec in %q: %w", name, waitErr)
	}
	return exitCode(cmd.ProcessState), nil
}

// DialPort connects to a port that a process of the task listens on (its
// process group, or an exec's terminal session, background jobs included),
// and to nothing else: the
// work shares this host's network, and 127.0.0.1 there is this provider's
// own services too. A work with a network namespace of its own (a job
// network's) is dialled at 127.0.0.1 inside it.
func (p Process) DialPort(ctx context.Context, name string, port int) (net.Conn, error) {
	pt, err := lookupTask(name)
	if err != nil {
		return nil, err
	}
	if pt.ownNet {
		return dialInNetns(ctx, pt.pgid, port)
	}
	sessions := map[int]bool{} // of the execs under a terminal, each led by its first process
	pt.mu.Lock()
	for s := range pt.ttys {
		sessions[s] = true
	}
	pt.mu.Unlock()
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil && (st.pgrp == pt.pgid || sessions[st.session]) && st.state != "Z" {
			pids = append(pids, pid)
		}
	}
	return dialListener(ctx, name, pids, port)
}

// dialListener dials a TCP port on this host's network if one of pids
// holds a socket listening on it, at the address it listens on (loopback
// for a wildcard).
func dialListener(ctx context.Context, name string, pids []int, port int) (net.Conn, error) {
	inodes := map[string]bool{}
	for _, pid := range pids {
		fds, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
		for _, fd := range fds {
			l, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "fd", fd.Name()))
			if err == nil && strings.HasPrefix(l, "socket:[") {
				inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
			}
		}
	}
	// The tables are read through a process of the work, not /proc/net:
	// that is the table of this process's first thread's namespace, which
	// for a moment is a member's while a dial into a job network
	// (dialInNetns) runs on that thread.
	for _, pid := range pids {
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid), "net", "tcp")); err != nil {
			continue // gone already: another of the work's processes is in the same namespace
		}
		for _, table := range []string{"tcp", "tcp6"} {
			ip, ok := listenerIn(filepath.Join("/proc", strconv.Itoa(pid), "net", table), port, inodes)
			if !ok {
				continue
			}
			if ip.IsUnspecified() {
				ip = net.IPv4(127, 0, 0, 1)
				if table == "tcp6" {
					ip = net.IPv6loopback
				}
			}
			var dl net.Dialer
			return dl.DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
		}
		break
	}
	return nil, fmt.Errorf("%w: no process of %s listens on TCP port %d (%d processes looked at); start the server in the job first, listening on 127.0.0.1 or 0.0.0.0", ErrPortRefused, name, port, len(pids))
}

// listenerIn finds, in a /proc/net/tcp table, a socket of inodes (nil:
// any) listening on port, and says the address it listens on.
func listenerIn(table string, port int, inodes map[string]bool) (net.IP, bool) {
	f, err := os.Open(table)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // the titles
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fs := strings.Fields(sc.Text())
		if len(fs) < 10 || fs[3] != "0A" || (inodes != nil && !inodes[fs[9]]) {
			continue
		}
		host, p, ok := strings.Cut(fs[1], ":")
		if pn, err := strconv.ParseUint(p, 16, 16); !ok || err != nil || int(pn) != port {
			continue
		}
		raw, err := hex.DecodeString(host)
		if err != nil || (len(raw) != 4 && len(raw) != 16) {
			continue
		}
		// The kernel writes each 32-bit word in host order (little-endian here).
		for i := 0; i+4 <= len(raw); i += 4 {
			raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
		}
		return net.IP(raw), true
	}
	return nil, false
}
