package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/gpumesh/gpumesh/internal/pipe"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/sessionwire"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// jobExecCmd is `gpumesh job exec`: a command inside a running member.
func jobExecCmd(g *globals) *cobra.Command {
	var rank int
	var stdin, tty bool
	c := &cobra.Command{
		Use:   "exec ID [--rank N] [-i] [-t] -- COMMAND [ARG...]",
		Short: "Run a command inside a running job's member (its container or process environment)",
		Long: `Run a command inside a member of a running job that this peer submitted:
in its container (docker exec), or beside its process as the job's user, in
its folder, with its variables. Only the job's submitter may do this; the
member's provider refuses any other peer. The command's exit code is this
command's. -i sends this terminal's input, -t runs it under a terminal
(a shell: -it).`,
		Args: cobra.MinimumNArgs(2),
		Example: `  gpumesh job exec JOB -- cat /etc/hostname
  gpumesh job exec JOB --rank 1 -it -- sh`,
		RunE: func(c *cobra.Command, args []string) error {
			o := sessionwire.Open{Rank: rank, Command: args[1:], TTY: tty, Stdin: stdin}
			x := sessionwire.ExecIO{Stdout: g.stdout, Stderr: g.stderr}
			if stdin {
				x.Stdin = c.InOrStdin()
			}
			if tty {
				fd := int(os.Stdin.Fd())
				if !term.IsTerminal(fd) {
					return usageError{errors.New("-t needs a terminal on stdin: run it from one, or leave -t out")}
				}
				if cols, rows, err := term.GetSize(fd); err == nil {
					o.Rows, o.Cols = min(rows, sessionwire.MaxWinSide), min(cols, sessionwire.MaxWinSide)
				}
				state, err := term.MakeRaw(fd)
				if err != nil {
					return fmt.Errorf("terminal: %w", err)
				}
				defer func() { _ = term.Restore(fd, state) }()
				winch := make(chan os.Signal, 1)
				signal.Notify(winch, syscall.SIGWINCH)
				defer signal.Stop(winch)
				resize := make(chan [2]int, 1)
				x.Resize = resize
				go func() {
					for range winch {
						if cols, rows, err := term.GetSize(fd); err == nil {
							select {
							case resize <- [2]int{rows, cols}:
							default:
							}
						}
					}
				}()
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				code, err := cl.Exec(ctx, args[0], o, x)
				if err != nil {
					return err
				}
				if code != 0 {
					return jobExit{code: code}
				}
				return nil
			})
		},
	}
	c.Flags().IntVar(&rank, "rank", 0, "which member of the job (0 to members-1)")
	c.Flags().BoolVarP(&stdin, "stdin", "i", false, "send this terminal's input to the command")
	c.Flags().BoolVarP(&tty, "tty", "t", false, "run the command under a terminal (with -i: an interactive shell)")
	return c
}

// jobPortForwardCmd is `gpumesh job port-forward`.
func jobPortForwardCmd(g *globals) *cobra.Command {
	var rank int
	var address string
	c := &cobra.Command{
		Use:   "port-forward ID [--rank N] LOCAL:REMOTE",
		Short: "Forward a local TCP port to a port inside a running job's member (Jupyter, TensorBoard, a server)",
		Long: `Listen on a local TCP port (on 127.0.0.1 unless --address says otherwise) and
forward each connection to a port inside a member of a running job this peer
submitted, over the member's provider. A container job is reached at that
port on its own loopback; a process job only at a port one of its own
processes listens on. It runs until the job ends or it is stopped (Ctrl-C).
LOCAL 0 picks a free port; REMOTE alone forwards the same port.`,
		Args:    cobra.ExactArgs(2),
		Example: `  gpumesh job port-forward JOB 8888:8888    # then open http://127.0.0.1:8888`,
		RunE: func(c *cobra.Command, args []string) error {
			local, remote, err := parsePorts(args[1])
			if err != nil {
				return usageError{err}
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				job, err := cl.Job(ctx, args[0])
				if err != nil {
					return err
				}
				if job.State != node.JobRunning {
					return fmt.Errorf("job %s is %s; port-forward needs a running job", job.ID, job.State)
				}
				l, err := net.Listen("tcp", net.JoinHostPort(address, strconv.Itoa(local)))
				if err != nil {
					return fmt.Errorf("listening on %s port %d: %w; pick another LOCAL port (0 picks a free one)", address, local, err)
				}
				ctx, cancel := context.WithCancel(ctx)
				defer cancel()
				stop := context.AfterFunc(ctx, func() { l.Close() })
				defer stop()
				ended := make(chan struct{})
				go func() { // the job's log ends with the job
					defer close(ended)
					logs, err := cl.JobLogs(ctx, job.ID, true)
					if err != nil {
						fmt.Fprintf(g.stderr, "gpumesh: cannot follow job %s, so forwarding stops: %v\n", job.ID, err)
					} else {
						_, _ = io.Copy(io.Discard, logs)
						logs.Close()
					}
					cancel()
				}()
				// The node shows the forward (the explorer) while it is held.
				key, held, err := cl.HoldForward(ctx, job.ID, node.ForwardRequest{Rank: rank, Port: remote, Local: l.Addr().String()})
				if err != nil {
					fmt.Fprintf(g.stderr, "gpumesh: the node will not show this forward: %v\n", err)
				} else {
					defer held.Close()
				}
				fmt.Fprintf(g.stdout, "forwarding %s to port %d of member %d of job %s (stop with Ctrl-C)\n", l.Addr(), remote, rank, job.ID)
				var wg sync.WaitGroup
				defer wg.Wait()
				for {
					conn, err := l.Accept()
					if err != nil {
						break
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						defer conn.Close()
						fc, err := cl.ForwardConn(ctx, job.ID, key, rank, remote)
						if err != nil {
							fmt.Fprintf(g.stderr, "gpumesh: a connection to port %d: %v\n", remote, err)
							return
						}
						defer fc.Close()
						if tc, ok := conn.(*net.TCPConn); ok && node.TakesConn(fc) {
							// The node copies it: one hop less.
							if err := node.PassConn(ctx, fc, tc); err != nil {
								fmt.Fprintf(g.stderr, "gpumesh: a connection to port %d: %v\n", remote, err)
							}
							return
						}
						stop := context.AfterFunc(ctx, func() { conn.Close(); fc.Close() })
						defer stop()
						pipe.Join(conn, conn, fc, fc)
					}()
				}
				cancel()
				<-ended
				if j, err := cl.Job(context.WithoutCancel(ctx), job.ID); err == nil && j.State.Ended() {
					fmt.Fprintf(g.stdout, "job %s %s: forwarding stopped\n", j.ID, j.State)
				}
				return nil
			})
		},
	}
	c.Flags().IntVar(&rank, "rank", 0, "which member of the job (0 to members-1)")
	c.Flags().StringVar(&address, "address", "127.0.0.1", "the local address to listen on")
	return c
}

// parsePorts reads LOCAL:REMOTE, or REMOTE for the same port on both ends.
func parsePorts(s string) (local, remote int, err error) {
	l, r, two := strings.Cut(s, ":")
	if !two {
		r = l
	}
	bad := fmt.Errorf("ports %q: want LOCAL:REMOTE, e.g. 8888:8888 (LOCAL 0 picks a free port), or one port for both", s)
	local, err1 := strconv.Atoi(l)
	remote, err2 := strconv.Atoi(r)
	if err1 != nil || err2 != nil || local < 0 || local > 65535 || remote < 1 || remote > 65535 {
		return 0, 0, bad
	}
	return local, remote, nil
}
