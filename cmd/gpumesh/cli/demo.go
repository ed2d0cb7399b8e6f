package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gpumesh/gpumesh/chain/localnet"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/spf13/cobra"
)

// The demo: a whole swarm on this machine, a job through it end to end,
// then the swarm left running to explore until Ctrl-C.

// demoPeer is one `gpumesh node` process of the demo.
type demoPeer struct {
	name string
	data string
	cmd  *exec.Cmd
	done chan struct{}
	cl   *node.Client
	id   node.IDInfo
}

// Deadlines of the demo's steps; a healthy run needs a fraction of each.
const (
	demoPeerStart = 30 * time.Second
	demoMesh      = 60 * time.Second
	demoJob       = 3 * time.Minute
	demoAnchor    = 90 * time.Second
	demoStop      = 15 * time.Second
)

func demoCmd(g *globals) *cobra.Command {
	var (
		explorer string
		exit     bool
		keep     bool
		dir      string
	)
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run a whole swarm on this machine and a job through it, end to end, then leave it running",
		Long: `Start a local Solana (LiteSVM), three providers with mock GPUs of two classes at
different prices and a peer without GPUs, each its own gpumesh process on
127.0.0.1; wait for them to mesh; submit a two-member torchrun-style job from
the peer without GPUs; stream its logs; show the cluster and its price, the
co-signed receipts, the payments (in a test USDC, SPL token transfers), the
anchoring transaction and a proof
verified as anyone would. Then the swarm keeps running for you to explore
(the explorer page, the CLI with --data) until Ctrl-C, which stops every
process the demo started and removes its files.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			d := &demo{g: g, out: g.stdout, explorer: explorer, lnDir: dir}
			defer d.cleanup(keep)
			if err := d.run(ctx); err != nil {
				if ctx.Err() != nil {
					return nil // interrupted
				}
				return err
			}
			if exit {
				return nil
			}
			fmt.Fprintf(d.out, "\nThe swarm keeps running. Try:\n")
			if explorer != "" {
				fmt.Fprintf(d.out, "  open http://%s                      # the explorer\n", explorer)
			}
			fmt.Fprintf(d.out, "  gpumesh --data %s gpus find --model H100\n", d.peers[3].data)
			fmt.Fprintf(d.out, "  gpumesh --data %s prices\n", d.peers[3].data)
			fmt.Fprintf(d.out, "  gpumesh --data %s job submit YOUR-JOB.yaml -f   (prices in USDC; see the README)\n", d.peers[3].data)
			fmt.Fprintf(d.out, "Ctrl-C stops every process the demo started.\n")
			<-ctx.Done()
			fmt.Fprintln(d.out, "\nstopping the swarm...")
			return nil
		},
	}
	c.Flags().StringVar(&explorer, "explorer", "127.0.0.1:8080", "where the submitter serves the explorer page (\"\": none)")
	c.Flags().BoolVar(&exit, "exit", false, "stop once the walk-through is done instead of leaving the swarm running")
	c.Flags().BoolVar(&keep, "keep", false, "keep the peers' data dirs (their logs are in peer.log) when the demo ends")
	c.Flags().StringVar(&dir, "localnet-dir", os.Getenv("GPUMESH_LOCALNET_DIR"), "the chain/localnet folder (default: found beside the binary)")
	return c
}

type demo struct {
	g        *globals
	out      io.Writer
	explorer string
	lnDir    string
	base     string
	ln       *localnet.Localnet
	mint     string      // the test USDC the swarm settles in
	peers    []*demoPeer // the four peers, once they answer
	procs    []*demoPeer // every process started
	step     int
}

const demoSteps = 8

func (d *demo) say(format string, a ...any) {
	d.step++
	fmt.Fprintf(d.out, "\n[%d/%d] %s\n", d.step, demoSteps, fmt.Sprintf(format, a...))
}

func (d *demo) run(ctx context.Context) error {
	var err error
	if d.base, err = os.MkdirTemp("", "gpumesh-demo-"); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "gpumesh demo: everything lives in %s and goes when the demo ends\n", d.base)

	d.say("starting a local Solana (LiteSVM: the real System, SPL Token and Memo programs)")
	sctx, cancel := context.WithTimeout(ctx, demoPeerStart)
	d.ln, err = localnet.Start(sctx, localnet.Options{Dir: d.lnDir})
	cancel()
	if err != nil {
		return fmt.Errorf("the demo needs the local Solana: %w", err)
	}
	fmt.Fprintf(d.out, "      RPC at %s\n", d.ln.URL())
	// The swarm settles in a test USDC: a mint of the localnet's own, 6
	// decimals like USDC's, given to every peer with --token-mint.
	mctx, mcancel := context.WithTimeout(ctx, demoPeerStart)
	d.mint, err = d.ln.CreateMint(mctx, 6)
	mcancel()
	if err != nil {
		return fmt.Errorf("the demo's test USDC: %w", err)
	}
	fmt.Fprintf(d.out, "      a test USDC (6 decimals): mint %s\n", d.mint)

	d.say("starting three providers and a peer without GPUs, each its own process, in a private swarm of their own")
	// The providers run the job as bare processes, which only a private
	// swarm may do; as root they run it as an unprivileged job user, in
	// folders it can reach (the demo's folder lets others pass, not list).
	key, err := node.NewSwarmKey()
	if err != nil {
		return err
	}
	keyPath := filepath.Join(d.base, "swarm.key")
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		return err
	}
	if err := os.Chmod(d.base, 0o711); err != nil {
		return err
	}
	common := []string{"--listen", "/ip4/127.0.0.1/tcp/0", "--mdns=false", "--nat=false", "--dht-mode", "server",
		"--swarm-key", keyPath,
		"--price-unit", "USDC:6", "--token-mint", d.mint, "--solana-rpc", d.ln.URL(), "--executors", "process",
		"--anchor-age", "2s", "--settle-interval", "3s"}
	if os.Geteuid() != 0 {
		common = append(common, "--jobs-as-node-user") // the demo's own jobs, on the demo's own peers
	}
	specs := []struct{ name, gpus, price, region string }{
		{"provider-ams", "mock:dgxh100", "fixed:0.90", "eu-west/ams1"},
		{"provider-nyc", "mock:dgxh100", "fixed:1.10", "us-east/nyc2"},
		{"provider-a100", "mock:dgxa100", "fixed:0.45", "eu-west/ams1"},
		{"submitter", "none", "", ""},
	}
	for i, s := range specs {
		args := append([]string{}, common...)
		args = append(args, "--gpus", s.gpus)
		if s.price != "" {
			args = append(args, "--price", s.price, "--region", s.region, "--job-dir", filepath.Join(d.base, "jobs-"+s.name))
		}
		if i > 0 {
			args = append(args, "--bootstrap", d.peers[0].id.Addrs[0])
		}
		if s.name == "submitter" && d.explorer != "" {
			args = append(args, "--explorer", d.explorer)
		}
		p, err := d.startPeer(ctx, s.name, args)
		if err != nil {
			return err
		}
		d.peers = append(d.peers, p)
		what := "no GPUs"
		if s.price != "" {
			what = fmt.Sprintf("8x %s at %s USDC/GPU-h in %s", strings.TrimPrefix(s.gpus, "mock:"), strings.TrimPrefix(s.price, "fixed:"), s.region)
		}
		fmt.Fprintf(d.out, "      %-14s %s  (%s)\n", s.name, p.id.PeerID, what)
	}
	fctx, cancel := context.WithTimeout(ctx, demoPeerStart)
	defer cancel()
	for _, p := range d.peers {
		if err := d.ln.Airdrop(fctx, p.id.SolanaAddress, 10_000_000_000); err != nil {
			return fmt.Errorf("funding %s: %w", p.name, err)
		}
	}
	if err := d.ln.MintTo(fctx, d.mint, d.peers[3].id.SolanaAddress, 1000_000_000); err != nil {
		return fmt.Errorf("funding the submitter with USDC: %w", err)
	}
	fmt.Fprintf(d.out, "      each peer's Solana address (its libp2p key) funded with 10 SOL for fees, the submitter with 1000 USDC\n")

	d.say("waiting for the swarm to mesh and every provider's GPUs to show in the directory")
	sub := d.peers[3]
	var found node.GPUsFound
	if err := d.until(ctx, demoMesh, "the directory to list all three providers", func(ctx context.Context) (bool, error) {
		var err error
		found, err = sub.cl.FindGPUs(ctx, node.FindQuery{})
		return err == nil && found.Providers == 3, err
	}); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "      found %d GPUs from %d providers in %s\n", found.GPUs, found.Providers, found.Elapsed.Round(time.Millisecond))

	d.say("submitting a job from the peer without GPUs: 16 H100s, two members, torchrun")
	spec := jobspec.Spec{
		Name:      "demo-train",
		Command:   []string{"sh", "-c", `echo "rank $NODE_RANK of $NNODES: $NPROC_PER_NODE GPUs ($CUDA_VISIBLE_DEVICES), master $MASTER_ADDR:$MASTER_PORT"; for i in 1 2 3 4; do echo "rank $NODE_RANK step $i"; sleep 1; done; echo "weights of rank $NODE_RANK" > "$GPUMESH_OUTPUTS/model.txt"`},
		Resources: jobspec.Resources{GPUs: 16, PerNode: 8, GPU: jobspec.GPU{Model: "H100"}},
		Launcher:  "torchrun",
		MaxPrice:  "1.50",
		Timeout:   "10m",
	}
	job, err := sub.cl.SubmitJob(ctx, spec)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "      job %s; its logs:\n", job.ID)
	if err := d.follow(ctx, sub.cl, job.ID); err != nil {
		return err
	}
	if err := d.until(ctx, demoJob, "the job to end", func(ctx context.Context) (bool, error) {
		var err error
		job, err = sub.cl.Job(ctx, job.ID)
		return err == nil && (job.State == node.JobDone || job.State == node.JobFailed || job.State == node.JobCancelled), err
	}); err != nil {
		return err
	}

	d.say("the cluster the negotiation formed, and how it ended")
	printJob(d.g, job, 0)
	if job.State != node.JobDone {
		return fmt.Errorf("the demo job %s: %s", job.State, job.Reason)
	}

	d.say("the receipts: metered by each provider, paid as it ran, countersigned by the submitter")
	rs, err := sub.cl.Receipts(ctx, job.ID)
	if err != nil {
		return err
	}
	printReceipts(d.g, rs)
	usdc := gossip.Unit{Token: "USDC", Decimals: 6}
	for _, r := range rs {
		fmt.Fprintf(d.out, "      member %d: paid %s USDC in %d token transfers as it ran\n", r.Receipt.Rank, usdc.Format(r.Receipt.Paid), len(r.Receipt.Payments))
	}

	d.say("anchoring on Solana: each provider batches its receipts and puts the Merkle root in a memo")
	var member *demoPeer
	for _, p := range d.peers {
		if p.id.PeerID == job.Members[0].Provider.String() {
			member = p
		}
	}
	if member == nil {
		return errors.New("member 0's provider is not a peer of the demo")
	}
	var st node.AnchorStatus
	if err := d.until(ctx, demoAnchor, "member 0's receipt anchored", func(ctx context.Context) (bool, error) {
		var err error
		st, err = member.cl.Proofs(ctx, job.ID)
		return err == nil && len(st.Proofs) == 1 && st.Proofs[0].Status == "anchored", err
	}); err != nil {
		return err
	}
	proof, err := member.cl.Proof(ctx, st.Proofs[0].Key)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "      memo %q\n      in transaction %s, slot %d\n", proof.Memo, proof.Signature, proof.Slot)

	d.say("verifying the proof as anyone would: no mesh, no data dir, one RPC call")
	data, err := json.MarshalIndent(proof, "", "  ")
	if err != nil {
		return err
	}
	file := filepath.Join(d.base, st.Proofs[0].Key+".proof.json")
	if err := os.WriteFile(file, append(data, '\n'), 0o644); err != nil {
		return err
	}
	vctx, vcancel := context.WithTimeout(ctx, 30*time.Second)
	defer vcancel()
	p, rec, a, err := node.VerifyProof(vctx, d.ln.URL(), data)
	if err != nil {
		return fmt.Errorf("the demo's proof did not verify: %w", err)
	}
	fmt.Fprintf(d.out, "      $ gpumesh proof verify %s --solana-rpc %s\n", file, d.ln.URL())
	fmt.Fprintf(d.out, "      OK: receipt of job %s member %d signed by provider %s and consumer %s;\n", rec.Receipt.Job, rec.Receipt.Rank, rec.Receipt.Provider, rec.Receipt.Consumer)
	fmt.Fprintf(d.out, "          leaf %d of %d under root %s, on chain in slot %d (fee %d lamports)\n", p.Index, p.Count, p.Root, a.Slot, a.Fee)
	return nil
}

// startPeer runs one `gpumesh node` and waits until its API answers.
func (d *demo) startPeer(ctx context.Context, name string, args []string) (*demoPeer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	data := filepath.Join(d.base, name)
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(data, "peer.log"))
	if err != nil {
		return nil, err
	}
	p := &demoPeer{name: name, data: data, done: make(chan struct{})}
	p.cmd = exec.Command(exe, append([]string{"--data", data, "--log-level", "info", "node"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C in the terminal reaches the demo, which stops them in order
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() { _ = p.cmd.Wait(); logf.Close(); close(p.done) }()
	d.started(p)
	err = d.until(ctx, demoPeerStart, name+" to answer", func(ctx context.Context) (bool, error) {
		select {
		case <-p.done:
			return false, fmt.Errorf("%s exited; its log is %s", name, filepath.Join(data, "peer.log"))
		default:
		}
		if p.cl == nil {
			cl, err := node.NewClient(data)
			if err != nil {
				return false, nil
			}
			p.cl = cl
		}
		id, err := p.cl.ID(ctx)
		p.id = id
		return err == nil, nil
	})
	return p, err
}

// started remembers every process, for cleanup, even before it answers.
func (d *demo) started(p *demoPeer) { d.procs = append(d.procs, p) }

// until polls cond every 100 ms until it holds, fails, or timeout passes.
func (d *demo) until(ctx context.Context, timeout time.Duration, what string, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		ok, err := cond(cctx)
		ccancel()
		if ok {
			return nil
		}
		if err != nil {
			last = err
			if strings.Contains(err.Error(), "exited; its log is") {
				return err
			}
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("waited %s for %s: %w", timeout, what, last)
			}
			return fmt.Errorf("waited %s for %s", timeout, what)
		case <-tick.C:
		}
	}
}

// follow streams a job's logs, indented, until it ends.
func (d *demo) follow(ctx context.Context, cl *node.Client, id string) error {
	ctx, cancel := context.WithTimeout(ctx, demoJob)
	defer cancel()
	body, err := cl.JobLogs(ctx, id, true)
	if err != nil {
		return err
	}
	defer body.Close()
	_, err = io.Copy(&indent{w: d.out, prefix: "        ", start: true}, body)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("the job ran longer than %s", demoJob)
	}
	return nil
}

// cleanup stops every process the demo started, the localnet, and removes
// its files unless keep.
func (d *demo) cleanup(keep bool) {
	for i := len(d.procs) - 1; i >= 0; i-- {
		_ = d.procs[i].cmd.Process.Signal(os.Interrupt)
	}
	for _, p := range d.procs {
		select {
		case <-p.done:
		case <-time.After(demoStop):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
	d.procs = nil
	if d.ln != nil {
		_ = d.ln.Close()
	}
	if d.base != "" {
		if keep {
			fmt.Fprintf(d.out, "the peers' data dirs are kept in %s\n", d.base)
		} else {
			_ = os.RemoveAll(d.base)
		}
	}
}

// indent prefixes every line written through it.
type indent struct {
	w      io.Writer
	prefix string
	start  bool
}

func (i *indent) Write(p []byte) (int, error) {
	var b strings.Builder
	for _, c := range string(p) {
		if i.start {
			b.WriteString(i.prefix)
			i.start = false
		}
		b.WriteRune(c)
		if c == '\n' {
			i.start = true
		}
	}
	if _, err := io.WriteString(i.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}
