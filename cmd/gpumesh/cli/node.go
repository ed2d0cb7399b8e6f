package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/node"
	"github.com/spf13/cobra"
)

func nodeCmd(g *globals) *cobra.Command {
	var (
		listen, bootstrap []string
		swarmKey          string
		port              int
		mdns, nat         bool
		dhtMode           string
		api, metrics      string
		explorer          string
		gpus, region      string
		price, priceUnit  string
		executors         []string
		jobUser, jobDir   string
		jobsAsNodeUser    bool
		heartbeat         time.Duration
		solanaRPC         string
		anchorBatch       int
		anchorAge         time.Duration
		settleInterval    time.Duration
		tokenMint         string
		jobMemory         = sizeValue{}
		jobDisk           = sizeValue{}
		jobLog            = sizeValue{}
		pullMax           = sizeValue{}
		imageCache        = sizeValue{}
		dockerHost        string
		contentCache      = sizeValue{}
		maxInputSize      = sizeValue{}
		replicaSpace      = sizeValue{n: node.DefaultReplicaSpace}
		jobCPUs           float64
		pullTimeout       time.Duration
		noHostNetwork     bool
		jobEgress         bool
		jobLogQuota       = sizeValue{node.DefaultJobLogBytes}
		relay             relayFlags
		jobOutputQuota    = sizeValue{node.DefaultJobOutputBytes}
		jobOutputFiles    int
		scoreWeight       float64
		maxQueued         int
		explorerHosts     []string
	)
	c := &cobra.Command{
		Use:   "node",
		Short: "Run a gpumesh peer until interrupted",
		Long: `Run a gpumesh peer until SIGINT or SIGTERM, then shut down cleanly.

With --swarm-key (or a swarm.key in the data dir) the peer joins that private
swarm and connects to no one without the same key. Without, it joins the
public swarm.`,
		Example: `  gpumesh node
  gpumesh node --swarm-key swarm.key --bootstrap /ip4/192.0.2.7/tcp/4021/p2p/12D3KooW...`,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return usageError{err}
			}
			for name, v := range map[string]sizeValue{"job-log-quota": jobLogQuota, "job-output-quota": jobOutputQuota} {
				if v.n < 0 {
					return usageError{fmt.Errorf("--%s none: what a provider may put on this peer's disk needs a cap; give a size such as 64GiB", name)}
				}
			}
			dir := &node.DataDir{Path: g.dataDir}
			if err := dir.Init(); err != nil {
				return err
			}
			fc, err := dir.LoadConfig()
			if err != nil {
				return err
			}
			cfg := node.Config{
				DataDir:        g.dataDir,
				Listen:         fc.Listen,
				Port:           fc.Port,
				Bootstrap:      append(fc.Bootstrap, bootstrap...),
				NoMDNS:         !mdns,
				NoNAT:          !nat,
				APIListen:      api,
				Metrics:        metrics,
				Explorer:       explorer,
				ExplorerHosts:  explorerHosts,
				Logger:         log,
				GPUs:           gpus,
				Region:         region,
				Price:          price,
				PriceUnit:      priceUnit,
				Executors:      executors,
				JobUser:        jobUser,
				JobDir:         jobDir,
				JobsAsNodeUser: jobsAsNodeUser,
				Heartbeat:      heartbeat,
				SolanaRPC:      solanaRPC,
				AnchorBatch:    anchorBatch,
				AnchorAge:      anchorAge,
				SettleInterval: settleInterval,
				TokenMint:      tokenMint,
				JobMemory:      jobMemory.n,
				JobCPUs:        jobCPUs,
				JobDisk:        jobDisk.n,
				JobLog:         jobLog.n,
				NoHostNetwork:  noHostNetwork,
				JobEgress:      jobEgress,
				PullTimeout:    pullTimeout,
				PullMax:        pullMax.n,
				ImageCache:     imageCache.n,
				DockerHost:     dockerHost,
				ContentCache:   contentCache.n,
				MaxInputSize:   maxInputSize.n,
				ReplicaSpace:   max(replicaSpace.n, 0),
				JobLogBytes:    jobLogQuota.n,
				JobOutputBytes: jobOutputQuota.n,
				JobOutputFiles: jobOutputFiles,
				MaxQueued:      maxQueued,
			}
			cfg.ScoreWeight = scoreWeight
			// mDNS would tell the whole LAN a private swarm's ID and
			// this peer's addresses: there it runs only when asked for.
			cfg.PrivateMDNS = mdns && c.Flags().Changed("mdns")
			relay.apply(&cfg)
			if c.Flags().Changed("listen") {
				cfg.Listen = listen
			}
			if c.Flags().Changed("port") {
				cfg.Port = port
			}
			cfg.DHTMode = dht.Mode(dhtMode)
			keyPath := swarmKey
			if keyPath == "" {
				keyPath = fc.SwarmKey
			}
			if keyPath == "" {
				// Like an IPFS repo: a swarm.key in the data dir makes the swarm private.
				if _, err := os.Stat(filepath.Join(g.dataDir, "swarm.key")); err == nil {
					keyPath = filepath.Join(g.dataDir, "swarm.key")
				} else if !errors.Is(err, fs.ErrNotExist) {
					return err
				}
			}
			if keyPath != "" {
				if cfg.Swarm, err = node.ReadSwarmKey(keyPath); err != nil {
					return err
				}
			}
			n, err := node.New(cfg)
			if err != nil {
				return newError(c, err)
			}
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := n.Start(ctx); err != nil {
				return err
			}
			info := n.Info()
			fmt.Fprintf(g.stdout, "gpumesh peer %s running in swarm %s\n", info.PeerID, info.Swarm)
			for _, a := range info.Addrs {
				fmt.Fprintf(g.stdout, "  listening on %s\n", a)
			}
			if a := n.ExplorerAddr(); a != "" {
				fmt.Fprintf(g.stdout, "  explorer on http://%s/\n", a)
			}
			fmt.Fprintln(g.stdout, "Stop it with Ctrl-C.")
			return n.Run(ctx)
		},
	}
	f := c.Flags()
	f.StringArrayVar(&listen, "listen", nil, "multiaddr to listen on (repeatable; default every interface on the config's port)")
	f.IntVar(&port, "port", node.DefaultPort, "port of the default listen addresses")
	f.StringArrayVar(&bootstrap, "bootstrap", nil, "multiaddr with /p2p/ID of a peer to join (repeatable)")
	f.StringVar(&swarmKey, "swarm-key", "", "swarm.key file of a private swarm (default: swarm.key in the data dir, if any)")
	f.BoolVar(&mdns, "mdns", true, "discover peers of the swarm on the LAN by mDNS; in a private swarm only when given (it announces the swarm's ID and every address of this peer to the LAN)")
	f.BoolVar(&nat, "nat", true, "NAT traversal: AutoNAT, hole punching, relay client (and the relay service unless --relay-service on)")
	relay.register(f)
	f.StringVar(&dhtMode, "dht-mode", "", "auto, server or client (default: server in a private swarm, auto in the public one)")
	f.StringVar(&api, "api", "", "also serve the local API on this TCP host:port, guarded by the token in the data dir's api.token")
	f.StringVar(&metrics, "metrics", "", "serve Prometheus metrics on this host:port at /metrics")
	f.StringVar(&explorer, "explorer", os.Getenv("GPUMESH_EXPLORER"), "serve the read-only web explorer (this peer, its peers, GPUs, prices, jobs, receipts; live) on this host:port, e.g. 127.0.0.1:8080; keep it on loopback or behind your own proxy (env GPUMESH_EXPLORER)")
	f.StringArrayVar(&explorerHosts, "explorer-host", nil, "a name the explorer answers to besides localhost, this machine's host name and the address it is reached at: this machine's name on the LAN, or your proxy's (repeatable); other names are refused, so no other site can read it through DNS rebinding")
	f.StringVar(&gpus, "gpus", envOr("GPUMESH_GPUS", "auto"), "GPUs to offer: auto (NVML if there is a driver), nvml, none, or go-nvml's mock:dgxa100 / mock:dgxh100 (env GPUMESH_GPUS)")
	f.StringSliceVar(&executors, "executors", envList("GPUMESH_EXECUTORS", []string{"docker"}), "how this provider runs jobs: docker (containers), process (bare commands as an unprivileged user: private swarms only), or docker,process (env GPUMESH_EXECUTORS)")
	f.StringVar(&jobUser, "job-user", "", "with --executors process on a root node: the unprivileged user jobs run as (default "+exec.DefaultJobUser+", made if missing)")
	f.StringVar(&jobDir, "job-dir", "", "with --executors process: where jobs get their work folders, outside the data dir (default "+node.DefaultJobDir+"/<peer ID> for root, else ~/.cache/gpumesh-jobs/<peer ID>)")
	f.BoolVar(&jobsAsNodeUser, "jobs-as-node-user", false, "with --executors process on a node not run as root: accept that jobs run as this node's own user and can read its data dir")
	f.DurationVar(&heartbeat, "heartbeat", node.DefaultHeartbeat, "how often this peer's job members say they are alive; a member silent for 3 heartbeats is lost")
	f.StringVar(&solanaRPC, "solana-rpc", os.Getenv("GPUMESH_SOLANA_RPC"), "Solana JSON-RPC URL: anchor the receipts this provider co-signed there (devnet, mainnet, a validator or chain/localnet; env GPUMESH_SOLANA_RPC)")
	f.IntVar(&anchorBatch, "anchor-batch", chain.DefaultBatchSize, "receipts per anchoring batch (one memo transaction each)")
	f.DurationVar(&anchorAge, "anchor-age", chain.DefaultBatchAge, "longest a receipt waits for its batch to close")
	f.DurationVar(&settleInterval, "settle-interval", node.DefaultSettleInterval, "with --solana-rpc and --price-unit SOL:9 or --token-mint: how often a provider bills a running job (paid at once, or the work pauses, then stops)")
	f.StringVar(&tokenMint, "token-mint", os.Getenv("GPUMESH_TOKEN_MINT"), "with --solana-rpc: pay and be paid as jobs run in this SPL token (its mint address; the price unit names it and its decimals, e.g. USDC:6 and USDC's mint; env GPUMESH_TOKEN_MINT)")
	f.Var(&jobLogQuota, "job-log-quota", "most of a job's log this peer keeps when it submitted the job (512MiB, 1GiB, ...); a provider that sends more fails the job")
	f.Var(&jobOutputQuota, "job-output-quota", "most bytes of a job's outputs this peer keeps when it submitted the job (a file counts at its announced size from its first frame); a provider that sends more fails the job")
	f.Float64Var(&scoreWeight, "score-weight", 0, "how much a provider's score weighs against its price when this peer chooses bids: 0 only breaks price ties; up to 1 ranks a bid by price × (1 + w × (1 − score))")
	f.IntVar(&jobOutputFiles, "job-output-files", node.DefaultJobOutputFiles, "most output files and folders of a job this peer keeps when it submitted the job; a provider that sends more fails the job")
	f.IntVar(&maxQueued, "max-queued", node.DefaultMaxQueued, "most jobs with a queue (queue: in the spec, or --queue) this peer keeps waiting for a cluster at once; a submission past it is refused")
	f.StringVar(&region, "region", os.Getenv("GPUMESH_REGION"), "region/zone label of this peer's offers, e.g. eu-west/ams1 (env GPUMESH_REGION)")
	f.StringVar(&price, "price", os.Getenv("GPUMESH_PRICE"), "asking price per GPU-hour of this peer's GPUs: fixed:2.10, or auto:floor=1.50,target=0.7[,max=4.00] to follow the market and the GPUs' utilization (env GPUMESH_PRICE; default: no price)")
	f.StringVar(&priceUnit, "price-unit", envOr("GPUMESH_PRICE_UNIT", "USDC:6"), "token of prices and its decimals, TOKEN:DECIMALS; every peer of a swarm must use the same (env GPUMESH_PRICE_UNIT)")
	f.Var(&jobMemory, "job-memory", "memory container jobs may use in all, e.g. 200GiB; each member gets its GPUs' share of it (default 7/8 of the machine's)")
	f.Float64Var(&jobCPUs, "job-cpus", 0, "CPU cores container jobs may use in all; each member gets its GPUs' share, at least one core (default every core)")
	f.Var(&jobDisk, "job-disk", "disk container jobs may write in all (writable layers and outputs), e.g. 500GiB, or none; each member gets its GPUs' share (default 100GiB)")
	f.Var(&jobLog, "job-log", "output read back from one member, its log files capped alike, e.g. 64MiB (default 64MiB)")
	f.BoolVar(&noHostNetwork, "no-host-network", false, "refuse a member of several that comes with no job network of its own (from a submitter of an older version, or in a private swarm a job with a provider that cannot make job networks), whose members would meet over the host network")
	f.BoolVar(&jobEgress, "job-egress", false, "let one-member container jobs, and members of container jobs whose spec says network: {egress: true}, reach the internet (never this host, its LAN, link-local or metadata addresses: a bridge network of their own and iptables rules this node installs and removes; needs root); default: no network but their own loopback")
	f.DurationVar(&pullTimeout, "pull-timeout", 0, "longest image pull of a job (default 4m, under the submitter's 5-minute start deadline)")
	f.Var(&pullMax, "pull-max", "largest image a job may pull (its compressed layers), e.g. 30GiB, or none (default 30GiB)")
	f.Var(&imageCache, "image-cache", "images pulled for jobs kept, least recently used removed first (never the operator's own), e.g. 100GiB, or none for no cap (default 100GiB)")
	f.StringVar(&dockerHost, "docker-host", os.Getenv("DOCKER_HOST"), "the Docker engine that runs container jobs and holds the images this peer sends, e.g. unix:///run/docker.sock or tcp://127.0.0.1:2375 (env DOCKER_HOST; default the local socket)")
	f.Var(&contentCache, "content-cache", "job inputs kept in the data dir's content store (added here, or fetched for jobs run here), least recently used removed first, e.g. 50GiB (default 20GiB)")
	f.Var(&replicaSpace, "replica-space", "most bytes of other submitters' checkpoints this peer keeps as their replica (checkpoint.replicas), half of it for one submitter; none keeps none")
	f.Var(&maxInputSize, "max-input-size", "most bytes of inputs of one job, sent by this peer or fetched to run one, e.g. 2GiB (default 10GiB)")
	return c
}

// sizeValue is a flag of a size in bytes: 512MiB, 64g, 1024, or none (-1:
// no cap); unset is 0, the default.
type sizeValue struct{ n int64 }

func (v *sizeValue) String() string {
	switch {
	case v.n < 0:
		return "none"
	case v.n == 0:
		return ""
	}
	return node.FormatSize(v.n)
}

func (v *sizeValue) Set(s string) error {
	if strings.EqualFold(s, "none") {
		v.n = -1
		return nil
	}
	n, err := node.ParseSize(s)
	if err != nil || n <= 0 {
		return fmt.Errorf("want a size such as 64GiB, 512MiB or 1024 (bytes), or none")
	}
	v.n = n
	return nil
}

func (v *sizeValue) Type() string { return "size" }

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// fileFlags are the node flags whose value may come from the data dir's
// config.json as well.
var fileFlags = map[string]bool{"listen": true, "port": true, "bootstrap": true, "swarm-key": true}

// newError is node.New's error, as a usage error (exit 2) when a flag on
// the command line (or its environment variable) is wrong; a value that
// may come from config.json fails with exit 1.
func newError(c *cobra.Command, err error) error {
	var ce *node.ConfigError
	if errors.As(err, &ce) && ce.Flag != "" && (!fileFlags[ce.Flag] || c.Flags().Changed(ce.Flag)) {
		return usageError{err}
	}
	return err
}

// client connects to the node running on the data dir.
func (g *globals) client() (*node.Client, error) {
	return node.NewClient(g.dataDir)
}

// withClient runs f against the running node.
func withClient(c *cobra.Command, g *globals, f func(ctx context.Context, cl *node.Client) error) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	return f(c.Context(), cl)
}

// envList is a comma-separated environment variable, or def.
func envList(name string, def []string) []string {
	if v := os.Getenv(name); v != "" {
		return strings.Split(v, ",")
	}
	return def
}
