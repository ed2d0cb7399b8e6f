package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node/content"
	"github.com/gpumesh/gpumesh/node/jobqueue"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
)

// Version is the gpumesh version a peer announces; the build sets it.
var Version = "dev"

// Timing of the bootstrap loop.
const (
	dialTimeout       = 10 * time.Second // one bootstrap dial
	rebootstrapPeriod = 30 * time.Second // how often lost bootstrap peers are redialed
)

// Config of a Node. The zero value runs a public-swarm peer with no data dir
// (a fresh key each start, no local API), listening on every interface.
type Config struct {
	// Clock is the peer's one clock: the time of price ticks and the board,
	// of negotiation, of job records and of run attempts. nil: time.Now.
	// Timers and deadlines on streams stay on the wall clock.
	Clock func() time.Time

	DataDir   string    // data dir; "" runs without one: no lock, no local API, key from Identity or fresh
	Identity  *Identity // overrides the data dir's key
	Listen    []string  // listen multiaddrs; empty means all interfaces on Port
	Port      int       // port of the default listen addresses; 0 means DefaultPort
	Bootstrap []string  // multiaddrs with /p2p/ID of peers to join
	Swarm     Swarm     // zero value: the public swarm
	DHTMode   dht.Mode  // the WAN half's ("" means auto; the LAN half serves unless client); a private swarm's one DHT ("" means server)
	NoMDNS    bool      // turn off LAN discovery by mDNS
	NoNAT     bool      // turn off AutoNAT, hole punching, the relay client and (unless RelayService is on) the relay service
	APIListen string    // optional host:port for the local API over TCP (token guarded)
	Metrics   string    // optional host:port serving Prometheus /metrics
	Explorer  string    // optional host:port serving the read-only web explorer (keep it on loopback); "" off
	Logger    *slog.Logger
	Version   string // announced in identify; "" means Version

	// PrivateMDNS turns LAN discovery by mDNS on in a private swarm, where
	// it is off by default: it would announce the swarm's ID and every
	// address of this peer to the whole LAN. NoMDNS wins over it.
	PrivateMDNS bool
	// ExplorerHosts are names the explorer answers to besides localhost,
	// this machine's host name and the address a request came in on: the
	// names of this machine on the LAN, or of the user's own proxy.
	ExplorerHosts []string

	// GPU directory.
	GPUs      string   // GPU source: "auto" (""), "nvml", "none", "mock:dgxa100", "mock:dgxh100"
	Region    string   // region/zone label in offers, e.g. "eu-west/ams1"
	Executors []string // executors offered: "docker", "process" (private swarms only: see JobUser); empty means "docker"
	// The process executor. Its work runs in folders of JobDir (outside the
	// data dir; "": /var/lib/gpumesh-jobs/<peer ID> for root, the user's
	// cache dir's gpumesh-jobs/<peer ID> otherwise, a temporary folder for
	// a node without a data dir). A node run as root runs it as JobUser
	// ("": exec.DefaultJobUser, made if missing); a node run as another
	// user runs it as itself, so it can read the data dir: such a node
	// offers the process executor only with JobsAsNodeUser set.
	JobDir         string
	JobUser        string
	JobsAsNodeUser bool
	OfferTTL       time.Duration // validity of a published offer; 0 means DefaultOfferTTL

	// Spot prices.
	Price      string             // pricing policy: "fixed:2.10" or "auto:floor=1.50,target=0.7"; "" quotes nothing
	PriceUnit  string             // unit of prices, "TOKEN:DECIMALS"; "" means "USDC:6" (prices are integers of the smallest unit per GPU-hour)
	PriceBoard gossip.BoardConfig // how the price board weighs quotes; the zero value takes the defaults
	// PriceResend paces the re-sends of an unchanged ask (a swarm-wide
	// budget shared by the board's live quotes); the zero value takes the
	// defaults.
	PriceResend gossip.Resend

	// Anchoring receipts on Solana.
	SolanaRPC   string        // JSON-RPC URL; "" anchors nothing
	AnchorBatch int           // receipts per batch; 0: chain.DefaultBatchSize
	AnchorAge   time.Duration // longest wait of a receipt for its batch; 0: chain.DefaultBatchAge
	// Settlement (price unit SOL:9, or TokenMint set, and SolanaRPC set): a
	// provider bills every SettleInterval (0: DefaultSettleInterval).
	SettleInterval time.Duration
	// TokenMint (base58) settles jobs in that SPL token, whose decimals are
	// the price unit's (USDC:6 and USDC's mint); "" settles only in SOL.
	TokenMint string

	// Jobs.
	Heartbeat time.Duration // how often a job's member says it is alive; 0 means DefaultHeartbeat (lost after 3 missed)
	// What this peer keeps of a job it submitted, over all its attempts
	// (submitter_quota.go); a provider that sends more fails the job.
	JobLogBytes    int64 // bytes of its log; 0 means DefaultJobLogBytes (1 GiB)
	JobOutputBytes int64 // bytes of its outputs, a file counted at its announced size; 0 means DefaultJobOutputBytes (20 GiB)
	JobOutputFiles int   // output files and folders; 0 means DefaultJobOutputFiles (10,000)
	// ScoreWeight is how much a provider's score (node/reputation) weighs
	// against its price when this peer chooses among bids: 0, the default,
	// only breaks ties between equal prices; w in (0, 1] ranks a bid by
	// price × (1 + w × (1 − score)) (gossip.Ranking).
	ScoreWeight float64
	// Jobs with a queue (submitter_queue.go): at most MaxQueued of them
	// wait for a cluster (or negotiate) at once; a submission past it is
	// refused. 0 means jobqueue.DefaultMaxJobs (64).
	MaxQueued int
	// QueueTiming tunes when queued jobs try again (its MaxJobs is
	// MaxQueued's); the zero value takes jobqueue's defaults.
	QueueTiming jobqueue.Config

	// What a container job may take of this machine. A member gets the
	// share of its GPUs among those offered (2 of 8: a quarter) of the
	// memory, cores and disk below.
	JobMemory int64   // bytes of memory for jobs in all; 0: 7/8 of the Docker engine's machine
	JobCPUs   float64 // cores for jobs in all; 0: every core of the engine's machine (a member gets at least one, or JobCPUs if less)
	JobDisk   int64   // bytes jobs may write in all (writable layers and outputs); 0: DefaultJobDisk; negative: no cap
	JobLog    int64   // bytes of output read back from one member, its log files capped alike; 0: exec.DefaultLogBytes
	// NoHostNetwork refuses a member of several whose start frame gives
	// it no job network (a submitter of an older version, or a private
	// swarm's job with a provider that cannot make job networks): its
	// members would meet over this provider's host network. A provider
	// that cannot make job networks then bids only on jobs it takes whole.
	NoHostNetwork bool
	PullTimeout   time.Duration // longest image pull; 0: exec.DefaultPullTimeout; the submitter's start deadline bounds it too
	PullMax       int64         // largest image pulled, bytes (compressed layers); 0: exec.DefaultPullMaxBytes; negative: no cap
	DockerHost    string        // the Docker engine's address; "": DOCKER_HOST, else the local socket
	ImageCache    int64         // bytes of images pulled for jobs kept, least recently used removed first; 0: exec.DefaultImageCache; negative: no cap
	// JobEgress lets one-member container jobs (and members of container
	// jobs whose spec asks for egress) reach the internet through
	// a bridge network of their own whose firewall rules (installed at the
	// first container job, removed when the node stops) keep them off this
	// host, its LAN, link-local and metadata addresses. Off: no network at
	// all but their own loopback. Needs root and iptables.
	JobEgress bool

	// Content: job inputs (inputs.go). ContentCache caps the blocks kept
	// in the data dir's content store, least recently used removed first
	// (0: content.DefaultMaxBytes, 20 GiB); MaxInputSize caps the inputs
	// of one job, added by a submitter or fetched by a provider (0:
	// DefaultMaxInputSize, 10 GiB).
	ContentCache int64
	MaxInputSize int64
	// ReplicaSpace is the bytes of other submitters' checkpoints this
	// peer keeps as their replica (checkpoint.replicas), half of it at
	// most for one submitter, in the content store (0: none).
	ReplicaSpace int64

	// Relays (relay.go). A peer behind NAT finds relays among the peers it
	// is connected to, advertises addresses through them, and punches
	// holes to the peers that reach it that way.
	RelayService         string        // serve as a relay for others: "auto" (""): once AutoNAT finds this peer public; "on"; "off"
	RelayMaxReservations int           // peers that may hold a reservation at once; 0: DefaultRelayReservations
	RelayData            int64         // bytes relayed each way per relayed connection; 0: DefaultRelayData
	RelayDuration        time.Duration // longest relayed connection; 0: DefaultRelayDuration

	// Host, when set, is used instead of building a libp2p host (meshtest
	// runs nodes on a simulated network this way). The Node closes it.
	Host host.Host
	// NoBlockExchange runs the content store without bitswap (bulk
	// streams only; content.Config.NoExchange), which keeps a queue and a
	// goroutine for every connected peer: for simulated peers that move
	// no content (meshtest's scale harness). No flag sets it.
	NoBlockExchange bool
	// OldAwardRules negotiates this peer's jobs by the award rules before
	// standing-by members (gossip.NegotiationConfig.OldAwardRules): for
	// the scale harness's comparison. No flag sets it.
	OldAwardRules bool
	// TakenTickDelay is how long after GPUs are taken this provider
	// gossips its asks again with them gone (GPUs freed: at once); 0: 2 s.
	// For tests. No flag sets it.
	TakenTickDelay time.Duration
	// ReleaseBackoff is how long after a failed send an ended job's
	// release is sent again (twice as long after each next failure);
	// 0: 2 s. For tests. No flag sets it.
	ReleaseBackoff time.Duration
	// IdentifyFirst: this peer's negotiation messages wait for identify
	// on a connection just dialed before they go (the host's NewStream),
	// as before internal/lazystream: for the scale harness's comparison
	// (-scale.identifyfirst, with DirectoryLookup's). No flag sets it.
	IdentifyFirst bool
	// OldFallback: this peer's direct requests fall back to the topic
	// FallbackWait after they were asked for, not after they left
	// (gossip.NegotiationConfig.SendReports off): for the scale harness's
	// comparison. No flag sets it.
	OldFallback bool
	// IgnoreAskAddrs: this peer does not dial the addresses a provider's
	// price tick lists (gossip.Tick.Addrs) when it names the provider in a
	// search for a count or a direct request for bids, but walks the DHT
	// to its peer ID as before: for the scale harness's comparison
	// (-scale.noaskaddrs). No flag sets it.
	IgnoreAskAddrs bool
	// ScoreView keeps GossipSub's peer scores for Gossip().Score
	// (gossip.Config.ScoreView): for tests that watch a peer's score fall.
	// No flag sets it.
	ScoreView bool
	// DirectoryLookup turns off cuts of a directory lookup's round trips
	// (dht.LookupOptions; zero: all of them made), for the scale
	// harness's baselines. No flag sets it.
	DirectoryLookup dht.LookupOptions
}

// mdns says whether the peer discovers its swarm on the LAN by mDNS: on
// in the public swarm unless NoMDNS, off in a private one unless
// PrivateMDNS.
func (c *Config) mdns() bool {
	if c.NoMDNS {
		return false
	}
	return !c.Swarm.Private() || c.PrivateMDNS
}

func (c *Config) version() string {
	if c.Version != "" {
		return c.Version
	}
	return Version
}

// Node is one gpumesh peer: identity, libp2p host, GPU directory (DHT),
// gossip router, local API and metrics. New starts nothing; Start brings it
// up; Run serves until the context ends; Close is safe to call twice.
type Node struct {
	cfg       Config
	log       *slog.Logger
	listen    []ma.Multiaddr
	bootstrap []peer.AddrInfo

	dir      *DataDir
	id       Identity
	host     host.Host
	dht      *dht.Directory
	content  *content.Service
	ckpts    checkpointBook // the submitter's checkpoint fetches (checkpoint.go)
	replicas replicaBook    // checkpoints kept for other submitters (checkpoint_replica.go)
	exported exportedImages // images this submitter put on the mesh (images.go)
	shared   sharedImages   // images this provider shares, by engine name (images.go)
	gossip   *gossip.Gossip
	mdns     io.Closer
	api      *apiServer
	explorer *explorer
	metrics  *http.Server
	reg      *prometheus.Registry
	started  time.Time

	refusedBy refusals // what this peer refused of other peers, by what and why (metrics.go)

	bootMu sync.Mutex // guards boot
	boot   []BootstrapState

	directoryState // directory.go
	reachState     // reach.go
	priceState     // prices.go
	negState       // negotiate.go
	jobBook        // jobs.go
	memberState    // provider_member.go
	sessionState   // provider_session.go
	forwardBook    // submitter_forward.go
	taskState      // provider_tasks.go
	runState       // submitter_run.go
	anchorState    // anchor.go
	relayState     // relay.go
	repState       // evidence.go
	queueState     // submitter_queue.go

	stopGossip context.CancelFunc

	lifeMu    sync.Mutex // guards closed and ctx
	closed    bool
	ctx       context.Context // the node's life, from Start to Close
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// New checks cfg (Config.validate) and returns a Node that has started
// nothing.
func New(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	listen := cfg.Listen
	if len(listen) == 0 {
		port := cfg.Port
		if port == 0 {
			port = DefaultPort
		}
		listen = defaultListen(port, cfg.Swarm.Private())
	}
	var err error
	if n.listen, err = parseListen(listen, cfg.Swarm.Private()); err != nil {
		return nil, err
	}
	if n.bootstrap, err = ParseBootstrap(cfg.Bootstrap); err != nil {
		return nil, err
	}
	for _, b := range n.bootstrap {
		n.boot = append(n.boot, BootstrapState{Peer: b.ID.String(), Addrs: addrStrings(b.Addrs)})
	}
	if err := n.configurePrices(); err != nil {
		return nil, err
	}
	return n, nil
}

// ConfigError is a Config field that New refuses; its message says what
// the field wants.
type ConfigError struct {
	Flag string // the `gpumesh node` flag that sets the field, without "--"; "" if none does
	Err  error
}

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// ParseSize reads a size flag's value in bytes: 64GiB, 512m, 1024.
func ParseSize(s string) (int64, error) { return exec.ParseSize(s) }

// FormatSize writes bytes as a size flag reads them: 64GiB, 512MiB.
func FormatSize(n int64) string { return exec.FormatSize(n) }

// Bounds that Config.validate checks.
const (
	MinHeartbeat      = 10 * time.Millisecond
	MinSettleInterval = time.Second
)

// validate checks each field of c on its own, so that whoever fills a
// Config (the CLI from its flags, a test, an embedding program) is refused
// the same things, with every problem at once. New parses the listen and
// bootstrap addresses after it.
func (c *Config) validate() error {
	var errs []error
	bad := func(flag, format string, args ...any) {
		errs = append(errs, &ConfigError{Flag: flag, Err: fmt.Errorf(format, args...)})
	}
	if c.Port < 0 || c.Port > 65535 {
		bad("port", "port %d: want 0..65535", c.Port)
	}
	if c.DHTMode != "" {
		if _, err := dht.ParseMode(string(c.DHTMode)); err != nil {
			bad("dht-mode", "--dht-mode: %w", err)
		}
	}
	if c.ScoreWeight < 0 || c.ScoreWeight > gossip.MaxScoreWeight || c.ScoreWeight != c.ScoreWeight {
		bad("score-weight", "--score-weight %v: want 0 (scores only break price ties) to %v (a score of 0 doubles a price)", c.ScoreWeight, gossip.MaxScoreWeight)
	}
	if err := checkExplorerAddr(c.Explorer); err != nil {
		bad("explorer", "%w", err)
	}
	for _, h := range c.ExplorerHosts {
		if !validHostName(h) {
			bad("explorer-host", "--explorer-host %s: want a host name such as gpubox.lan (no port, no scheme)", text.Clip(h))
		}
	}
	if c.APIListen != "" {
		if c.DataDir == "" {
			bad("api", "the local API needs a data dir (for its token); set --data")
		} else if err := checkHostPort(c.APIListen); err != nil {
			bad("api", "--api %q: %w", c.APIListen, err)
		}
	}
	if c.Metrics != "" {
		if err := checkHostPort(c.Metrics); err != nil {
			bad("metrics", "--metrics %q: %w", c.Metrics, err)
		}
	}
	c.validateRelay(bad)
	process := false
	for _, e := range c.Executors {
		if e != "docker" && e != "process" {
			bad("executors", "--executors %q: want docker, process or both (docker,process)", e)
		}
		process = process || e == "process"
	}
	if process {
		c.validateProcess(bad)
	} else if c.JobUser != "" || c.JobDir != "" || c.JobsAsNodeUser {
		bad("executors", "--job-user, --job-dir and --jobs-as-node-user are for the process executor; add --executors docker,process (in a private swarm) or leave them out")
	}
	if c.OfferTTL < 0 {
		bad("", "offer TTL %s: want a positive duration, or 0 for %s", c.OfferTTL, DefaultOfferTTL)
	}
	if u, err := gossip.ParseUnit(c.PriceUnit); err != nil {
		bad("price-unit", "--price-unit: %w", err)
	} else if c.Price != "" {
		if _, err := gossip.ParsePolicy(c.Price, u); err != nil {
			bad("price", "--price: %w", err)
		}
	}
	if err := c.PriceBoard.Check(); err != nil {
		bad("", "%w", err)
	}
	if err := c.PriceResend.Check(); err != nil {
		bad("", "%w", err)
	}
	if c.AnchorBatch < 0 || c.AnchorBatch > chain.MaxBatchSize {
		bad("anchor-batch", "--anchor-batch %d: want 1..%d (0: the default, %d)", c.AnchorBatch, chain.MaxBatchSize, chain.DefaultBatchSize)
	}
	if c.AnchorAge < 0 {
		bad("anchor-age", "--anchor-age %s: want a positive duration (0: the default, %s)", c.AnchorAge, chain.DefaultBatchAge)
	}
	c.validateToken(bad)
	if c.SettleInterval < 0 || (c.SettleInterval > 0 && c.SettleInterval < MinSettleInterval) {
		bad("settle-interval", "--settle-interval %s: want at least %s (0: the default, %s)", c.SettleInterval, MinSettleInterval, DefaultSettleInterval)
	}
	if c.JobMemory < 0 {
		bad("job-memory", "--job-memory %d: want a size such as 64GiB (0: 7/8 of the machine's memory)", c.JobMemory)
	}
	if c.JobCPUs < 0 {
		bad("job-cpus", "--job-cpus %g: want a number of cores such as 12 (0: every core)", c.JobCPUs)
	}
	if c.ReplicaSpace < 0 {
		bad("replica-space", "--replica-space wants a size such as 1GiB (0: keep no replicas)")
	}
	if c.ContentCache < 0 || c.MaxInputSize < 0 {
		bad("content-cache", "--content-cache and --max-input-size want sizes such as 20GiB (0: the default)")
	}
	if c.JobLog < 0 {
		bad("job-log", "--job-log %d: want a size such as 64MiB (0: %d bytes)", c.JobLog, exec.DefaultLogBytes)
	}
	if c.PullTimeout < 0 {
		bad("pull-timeout", "--pull-timeout %s: want a positive duration (0: the default, %s)", c.PullTimeout, exec.DefaultPullTimeout)
	}
	if c.JobLogBytes < 0 {
		bad("job-log-quota", "--job-log-quota %d: want a size such as 1GiB (0: the default, %s)", c.JobLogBytes, FormatSize(DefaultJobLogBytes))
	}
	if c.JobOutputBytes < 0 {
		bad("job-output-quota", "--job-output-quota %d: want a size such as 20GiB (0: the default, %s)", c.JobOutputBytes, FormatSize(DefaultJobOutputBytes))
	}
	if c.JobOutputFiles < 0 {
		bad("job-output-files", "--job-output-files %d: want a count (0: the default, %d)", c.JobOutputFiles, DefaultJobOutputFiles)
	}
	if c.MaxQueued < 0 || c.MaxQueued > maxMaxQueued {
		bad("max-queued", "--max-queued %d: want 1..%d jobs (0: the default, %d)", c.MaxQueued, maxMaxQueued, jobqueue.DefaultMaxJobs)
	}
	if c.Heartbeat < 0 || (c.Heartbeat > 0 && c.Heartbeat < MinHeartbeat) {
		bad("heartbeat", "--heartbeat %s: want at least %s (0: the default, %s)", c.Heartbeat, MinHeartbeat, DefaultHeartbeat)
	}
	return errors.Join(errs...)
}

// validateProcess checks what the process executor needs: a private swarm,
// and either root (to run the work as the job user) or the operator's word
// that the work may run as this node's own user.
func (c *Config) validateProcess(bad func(flag, format string, args ...any)) {
	if !c.Swarm.Private() {
		bad("executors", "--executors process runs other peers' commands on this machine with no container, so it is only for a private swarm, whose members trust each other; this node is in the public swarm. "+
			"Make a private swarm with `gpumesh swarm init` and start every peer with --swarm-key FILE, or offer containers only (--executors docker)")
	}
	root := os.Geteuid() == 0
	switch {
	case !root && c.JobUser != "":
		bad("job-user", "--job-user %s: running jobs as another user needs the node to run as root (it runs as uid %d)", c.JobUser, os.Geteuid())
	case !root && !c.JobsAsNodeUser:
		bad("executors", "--executors process: this node runs as uid %d, not root, so it cannot run jobs as a separate user; they would run as this node's own user and could read its data dir, key.json (its wallet) included. "+
			"Run the node as root (jobs then run as --job-user, default %s), or accept that with --jobs-as-node-user", os.Geteuid(), exec.DefaultJobUser)
	case root && c.JobsAsNodeUser:
		bad("jobs-as-node-user", "--jobs-as-node-user: this node runs as root, and jobs never run as root; they run as --job-user (default %s). Leave the flag out", exec.DefaultJobUser)
	}
	if c.JobDir != "" && !filepath.IsAbs(c.JobDir) {
		bad("job-dir", "--job-dir %q: want an absolute path, such as /var/lib/gpumesh-jobs", c.JobDir)
	}
	if c.JobDir != "" && c.DataDir != "" && within(c.DataDir, c.JobDir) {
		bad("job-dir", "--job-dir %q is inside the data dir %q, which jobs must never see; put it elsewhere, such as /var/lib/gpumesh-jobs", c.JobDir, c.DataDir)
	}
}

// within reports whether path is dir or inside it.
func within(dir, path string) bool {
	d, err1 := filepath.Abs(dir)
	p, err2 := filepath.Abs(path)
	if err1 != nil || err2 != nil {
		return false
	}
	rel, err := filepath.Rel(d, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// checkHostPort checks a TCP listen address.
func checkHostPort(addr string) error {
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return errors.New("want HOST:PORT, such as 127.0.0.1:8080")
	}
	return nil
}

// ParseBootstrap turns multiaddrs with a /p2p/ID part into peers to dial.
func ParseBootstrap(addrs []string) ([]peer.AddrInfo, error) {
	var infos []*peer.AddrInfo
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("bootstrap address %q: %v; want a multiaddr such as /ip4/192.0.2.7/tcp/%d/p2p/12D3KooW…", s, err, DefaultPort)
		}
		info, err := peer.AddrInfoFromP2pAddr(a)
		if err != nil {
			return nil, fmt.Errorf("bootstrap address %q: %v; it must end in /p2p/<peer ID> (`gpumesh id` on that peer prints it)", s, err)
		}
		infos = append(infos, info)
	}
	merged := make(map[peer.ID]*peer.AddrInfo)
	var out []peer.AddrInfo
	for _, i := range infos {
		if m, ok := merged[i.ID]; ok {
			m.Addrs = append(m.Addrs, i.Addrs...)
			continue
		}
		merged[i.ID] = i
	}
	for _, i := range infos {
		if m, ok := merged[i.ID]; ok {
			out = append(out, *m)
			delete(merged, i.ID)
		}
	}
	return out, nil
}

// Start brings the peer up: takes the data dir, loads the key, starts the
// libp2p host, DHT, gossip, local API, metrics and explorer, and begins to
// bootstrap.
// On error everything started so far is stopped again.
func (n *Node) Start(ctx context.Context) (err error) {
	n.lifeMu.Lock()
	switch {
	case n.closed:
		n.lifeMu.Unlock()
		return errors.New("node: closed; make a new one with New")
	case n.cancel != nil:
		n.lifeMu.Unlock()
		return errors.New("node: already started")
	}
	n.started = time.Now()
	ctx, n.cancel = context.WithCancel(context.WithoutCancel(ctx))
	n.ctx = ctx
	n.lifeMu.Unlock()
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if err := n.checkMint(ctx); err != nil {
		return err
	}
	if err := n.openDataDir(); err != nil {
		return err
	}
	// Work a crash left ends before this peer offers its GPUs again.
	if err := n.startTasks(ctx); err != nil {
		return err
	}
	if n.cfg.Metrics != "" {
		n.reg = newRegistry()
	}
	if n.cfg.Host != nil {
		n.host = n.cfg.Host
	} else {
		var reg prometheus.Registerer
		if n.reg != nil {
			reg = n.reg
		}
		if n.host, err = newHost(&n.cfg, n.id, n.listen, reg, n.natOptions(&n.cfg)); err != nil {
			return err
		}
		if err := n.startRelay(n.host); err != nil {
			return err
		}
	}
	mode := n.cfg.DHTMode
	if mode == "" {
		mode = dht.ModeAuto
		if n.cfg.Swarm.Private() || n.cfg.Host != nil {
			mode = dht.ModeServer
		}
	}
	if n.dht, err = dht.New(ctx, n.host, dht.Config{Swarm: n.cfg.Swarm.ID(), Mode: mode, Private: n.cfg.Swarm.Private(), Lookup: n.cfg.DirectoryLookup}); err != nil {
		return err
	}
	if err := n.startReach(ctx); err != nil {
		return err
	}
	if err := n.startContent(); err != nil {
		return err
	}
	n.loadReplicas()
	// GossipSub lives until Close has left its topics, not until ctx ends.
	gctx, stopGossip := context.WithCancel(context.WithoutCancel(ctx))
	n.stopGossip = stopGossip
	if n.gossip, err = gossip.New(gctx, n.host, gossip.Config{Swarm: n.cfg.Swarm.ID(), ScoreView: n.cfg.ScoreView}); err != nil {
		return err
	}
	// Capabilities, each in its own file: the GPU directory, then prices
	// (which reads the directory's inventory and moves its asks).
	if err := n.startDirectory(ctx); err != nil {
		return err
	}
	if err := n.startPrices(ctx); err != nil {
		return err
	}
	if err := n.startAnchor(ctx); err != nil {
		return err
	}
	if err := n.startReputation(ctx); err != nil {
		return err
	}
	if err := n.startJobs(ctx); err != nil {
		return err
	}
	if n.cfg.mdns() && n.cfg.Host == nil {
		svc := mdns.NewMdnsService(n.host, "gpumesh-"+n.cfg.Swarm.ID(), mdnsNotifee{n: n, ctx: ctx})
		if err := svc.Start(); err != nil {
			n.log.Warn("mDNS discovery off", "err", err)
		} else {
			n.mdns = svc
		}
	}
	if n.reg != nil {
		if err := n.startMetrics(); err != nil {
			return err
		}
	}
	if n.dir != nil {
		if n.api, err = startAPI(ctx, n); err != nil {
			return err
		}
	}
	if n.cfg.Explorer != "" {
		if n.explorer, err = startExplorer(ctx, n); err != nil {
			return err
		}
	}
	n.wg.Add(1)
	go n.bootstrapLoop(ctx)
	n.log.Info("node ready",
		"peer", n.id.PeerID, "solana", n.id.SolanaAddress, "swarm", n.cfg.Swarm.ID(),
		"listen", addrStrings(n.host.Addrs()), "dht", mode, "startup", time.Since(n.started).Round(time.Millisecond))
	return nil
}

func (n *Node) openDataDir() error {
	if n.cfg.DataDir == "" {
		switch {
		case n.cfg.Identity != nil:
			n.id = *n.cfg.Identity
		default:
			id, err := NewIdentity()
			if err != nil {
				return err
			}
			n.id = id
		}
		return nil
	}
	d := &DataDir{Path: n.cfg.DataDir}
	if err := d.Init(); err != nil {
		return err
	}
	if err := d.Lock(); err != nil {
		return err
	}
	n.dir = d
	if n.cfg.Identity != nil {
		n.id = *n.cfg.Identity
		return nil
	}
	id, err := ReadKeyFile(d.Key())
	if err != nil {
		return err
	}
	n.id = id
	return nil
}

// Run starts the node if it is not started, serves until ctx ends, then
// shuts down cleanly.
func (n *Node) Run(ctx context.Context) error {
	n.lifeMu.Lock()
	started := n.cancel != nil
	n.lifeMu.Unlock()
	if !started {
		if err := n.Start(ctx); err != nil {
			return err
		}
	}
	<-ctx.Done()
	n.log.Info("shutting down", "peer", n.id.PeerID)
	return n.Close()
}

// Close stops everything Start started, in reverse order. Safe to call twice.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.withdrawAsks() // while the host is up: the last ticks
		n.lifeMu.Lock()
		n.closed = true
		cancel := n.cancel
		n.lifeMu.Unlock()
		var errs []error
		if cancel != nil {
			cancel()
		}
		if n.explorer != nil {
			errs = append(errs, n.explorer.close())
		}
		if n.api != nil {
			errs = append(errs, n.api.close())
		}
		if n.metrics != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			errs = append(errs, n.metrics.Shutdown(ctx))
			cancel()
		}
		if n.mdns != nil {
			errs = append(errs, n.mdns.Close())
		}
		n.wg.Wait()
		errs = append(errs, n.closeJobs(), n.closePrices(), n.closeAnchor(), n.closeReputation())
		n.closeMembers()
		n.closeTasks()
		if n.stopGossip != nil {
			n.stopGossip()
		}
		errs = append(errs, n.closeDirectory())
		if n.content != nil {
			errs = append(errs, n.content.Close())
		}
		if n.dht != nil {
			errs = append(errs, n.dht.Close())
		}
		errs = append(errs, n.closeRelay())
		if n.host != nil {
			errs = append(errs, n.host.Close())
		}
		if n.dir != nil {
			n.dir.Unlock()
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

// now is the time on the peer's one clock (Config.Clock).
func (n *Node) now() time.Time {
	if n.cfg.Clock != nil {
		return n.cfg.Clock()
	}
	return time.Now()
}

// lifeContext is the node's context for work started by a peer (a stream
// handler), counted in the node's wait group; nil once the node is closing.
// The caller calls done when the work has ended.
func (n *Node) lifeContext() (ctx context.Context, done func()) {
	n.lifeMu.Lock()
	defer n.lifeMu.Unlock()
	if n.closed || n.ctx == nil {
		return nil, nil
	}
	n.wg.Add(1)
	return n.ctx, n.wg.Done
}

// Host is the peer's libp2p host (nil before Start).
func (n *Node) Host() host.Host { return n.host }

// Identity is the peer's key, peer ID and Solana address.
func (n *Node) Identity() Identity { return n.id }

// Directory is the peer's GPU directory (DHT).
func (n *Node) Directory() *dht.Directory { return n.dht }

// Gossip is the peer's GossipSub router.
func (n *Node) Gossip() *gossip.Gossip { return n.gossip }

// Connect dials a peer and records its addresses.
func (n *Node) Connect(ctx context.Context, info peer.AddrInfo) error {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	return n.host.Connect(ctx, info)
}

// bootstrapLoop dials the bootstrap peers, seeds the DHT, and redials lost
// bootstrap peers every rebootstrapPeriod until the node closes.
func (n *Node) bootstrapLoop(ctx context.Context) {
	defer n.wg.Done()
	t := time.NewTicker(rebootstrapPeriod)
	defer t.Stop()
	for first := true; ; first = false {
		if n.dialBootstrap(ctx, first) && n.dht != nil {
			if err := n.dht.Bootstrap(ctx); err != nil && ctx.Err() == nil {
				n.log.Warn("dht bootstrap", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// dialBootstrap dials every bootstrap peer not connected (all of them on the
// first round) in parallel and records the outcome; it reports whether any
// dial succeeded.
func (n *Node) dialBootstrap(ctx context.Context, first bool) bool {
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := false
	for i, info := range n.bootstrap {
		if !first && n.host.Network().Connectedness(info.ID) == network.Connected {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := n.Connect(ctx, info)
			n.bootMu.Lock()
			st := &n.boot[i]
			st.Attempts++
			st.LastAttempt = time.Now().UTC()
			st.Connected = err == nil
			st.Error = ""
			if err != nil {
				st.Error = dialHint(err)
			}
			n.bootMu.Unlock()
			if err != nil {
				if ctx.Err() == nil {
					n.log.Warn("bootstrap peer unreachable", "peer", info.ID, "err", st.Error, "retry", rebootstrapPeriod)
				}
				return
			}
			n.log.Info("bootstrap peer connected", "peer", info.ID)
			mu.Lock()
			ok = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	return ok
}

// dialHint adds what a user can do to the dial errors that have a likely
// cause: a handshake that fails is most often two different swarms.
func dialHint(err error) string {
	// libp2p lists one failed address a line; keep the status on one line.
	msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n  * ", "; ")), " ")
	switch {
	case strings.Contains(msg, "failed to negotiate security protocol"),
		strings.Contains(msg, "context deadline exceeded"),
		strings.Contains(msg, "i/o timeout"):
		return msg + " (is that peer in another swarm? both need the same --swarm-key, or none)"
	case strings.Contains(msg, "connection refused"):
		return msg + " (is a gpumesh node running at that address?)"
	}
	return msg
}

// mdnsNotifee connects to the peers of this swarm found on the LAN.
type mdnsNotifee struct {
	n   *Node
	ctx context.Context
}

func (m mdnsNotifee) HandlePeerFound(info peer.AddrInfo) {
	if info.ID == m.n.id.PeerID || m.ctx.Err() != nil {
		return
	}
	m.n.wg.Add(1)
	go func() {
		defer m.n.wg.Done()
		if err := m.n.Connect(m.ctx, info); err != nil {
			m.n.log.Debug("mDNS peer unreachable", "peer", info.ID, "err", err)
			return
		}
		m.n.log.Info("mDNS peer connected", "peer", info.ID)
	}()
}

func addrStrings(addrs []ma.Multiaddr) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	sort.Strings(out)
	return out
}
