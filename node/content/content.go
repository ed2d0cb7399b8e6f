package content

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/boxo/bitswap"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	"github.com/ipfs/boxo/blockservice"
	chunker "github.com/ipfs/boxo/chunker"
	"github.com/ipfs/boxo/exchange"
	"github.com/ipfs/boxo/files"
	"github.com/ipfs/boxo/ipld/merkledag"
	unixfile "github.com/ipfs/boxo/ipld/unixfs/file"
	"github.com/ipfs/boxo/ipld/unixfs/importer/balanced"
	"github.com/ipfs/boxo/ipld/unixfs/importer/helpers"
	uio "github.com/ipfs/boxo/ipld/unixfs/io"
	"github.com/ipfs/boxo/verifcid"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	mh "github.com/multiformats/go-multihash"
)

// Defaults and bounds.
const (
	DefaultMaxBytes = 20 << 30 // bytes of the store: the cache of a provider, the inputs of a submitter
	ChunkSize       = 1 << 20  // bytes of a file's leaf block
	// MaxBlock is the largest block a fetch takes (our own are ChunkSize,
	// or a few KiB for a DAG node).
	MaxBlock = 2 << 20
	// MaxLinks is the most links a DAG node fetched may have.
	MaxLinks = 1 << 16
	// provideTimeout bounds one announcement in the DHT.
	provideTimeout = time.Minute
	// maxWantlist is the wants a peer may queue here, and maxPeerBytes
	// the bytes of blocks queued for one peer at once: a peer asking for
	// blocks we have is served, within these.
	maxWantlist  = 1024
	maxPeerBytes = 4 << 20
)

// Routing announces content and finds who has it: the swarm's DHT
// (provider records, like content routing). Both may block on the
// network; ctx bounds them.
type Routing interface {
	Provide(ctx context.Context, c cid.Cid, announce bool) error
	FindProvidersAsync(ctx context.Context, c cid.Cid, count int) <-chan peer.AddrInfo
}

// Config of a Service. Dir is required; the zero value of the rest works.
type Config struct {
	Dir      string       // the store's folder (in the data dir)
	MaxBytes int64        // the store's cap in bytes; 0: DefaultMaxBytes
	Prefix   protocol.ID  // protocol prefix, e.g. "/gpumesh/<swarm>": the exchange is "<prefix>/ipfs/bitswap/1.2.0"
	Routing  Routing      // nil: blocks come from connected peers only, nothing is announced
	Log      *slog.Logger // nil: discard

	// NoExchange runs no bitswap: blocks come only from the store and
	// from bulk streams (FetchFrom), and Fetch fails with ErrNoExchange.
	// Bitswap keeps a queue and a goroutine for every connected peer:
	// for simulated peers that move no content (node/meshtest's scale
	// harness), not for a real peer.
	NoExchange bool
}

// ErrNoExchange: the service runs without bitswap (Config.NoExchange).
var ErrNoExchange = errors.New("content: no block exchange on this peer")

// Service is the content layer of one peer: its store, and the block
// exchange (bitswap) over its libp2p host. New starts the exchange; Close
// stops it.
type Service struct {
	store   *Store
	bs      *bitswap.Bitswap
	serv    blockservice.BlockService // the exchange behind the store
	local   ipld.DAGService           // the store only
	dag     ipld.DAGService           // the exchange behind the store
	routing Routing
	grants  *grants // who may fetch what from here
	host    host.Host
	// bulkProto is the bulk stream's protocol (bulk.go).
	bulkProto protocol.ID
	forgers   *forgers // peers that answer with wrong bytes are cut off
	log       *slog.Logger

	ctx    context.Context // ends with Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // announcements

	fetchedBytes  atomic.Int64
	fetchedBlocks atomic.Int64
	// bytes and blocks served on bulk streams
	bulkServedBytes  atomic.Int64
	bulkServedBlocks atomic.Int64
	bulkFetchedBytes atomic.Int64
	bulkMu           sync.Mutex         // guards bulkRecv
	bulkRecv         map[peer.ID]uint64 // bytes received on bulk streams, by peer
	meterMu          sync.Mutex         // guards meters
	meters           map[peer.ID][]*Meter
	closeOnce        sync.Once
}

// Stats is what a Service moved since it started.
type Stats struct {
	FetchedBytes  int64 // bytes of blocks fetched from peers by Fetch
	FetchedBlocks int64
	BulkBytes     int64 // of FetchedBytes, those that came on bulk streams (FetchFrom)
	ServedBytes   int64 // bytes of blocks sent to peers that asked
	ServedBlocks  int64
	StoredBytes   int64 // bytes held in the store now
}

// Root is a DAG added to the store: its CID, the bytes of its files and
// how many files it has.
type Root struct {
	CID   cid.Cid
	Bytes int64
	Files int
}

// allow: SHA-256 only. Every CID of a DAG we fetch is checked against it,
// and every block received is hashed against its CID by the exchange.
var allow = verifcid.NewAllowlist(map[uint64]bool{mh.SHA2_256: true})

// New opens the store and starts the block exchange on h.
func New(h host.Host, cfg Config) (*Service, error) {
	if cfg.Dir == "" {
		return nil, errors.New("content: no store folder")
	}
	max := cfg.MaxBytes
	if max == 0 {
		max = DefaultMaxBytes
	}
	store, err := OpenStore(cfg.Dir, max)
	if err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var netOpts []bsnet.NetOpt
	if cfg.Prefix != "" {
		netOpts = append(netOpts, bsnet.Prefix(cfg.Prefix))
	}
	var finder interface {
		FindProvidersAsync(context.Context, cid.Cid, int) <-chan peer.AddrInfo
	}
	if cfg.Routing != nil {
		finder = cfg.Routing
	}
	g := newGrants()
	fg := newForgers(h, log)
	var bs *bitswap.Bitswap
	var exch exchange.Interface // nil: the store only
	if !cfg.NoExchange {
		bs = bitswap.New(ctx, bsnet.NewFromIpfsHost(h, netOpts...), finder, store,
			// A block goes only to a peer granted it (Grant); any other is
			// told we have none.
			bitswap.WithPeerBlockRequestFilter(g.allowed),
			bitswap.WithTracer(fg),
			bitswap.MaxQueuedWantlistEntriesPerPeer(maxWantlist),
			bitswap.MaxOutstandingBytesPerPeer(maxPeerBytes),
			bitswap.MaxCidSize(128),
			bitswap.ProviderSearchDelay(time.Second),
			// A peer mostly idles: a few workers, not the defaults' hundred
			// and more goroutines a node.
			bitswap.EngineBlockstoreWorkerCount(8),
			bitswap.EngineTaskWorkerCount(4),
			bitswap.TaskWorkerCount(4),
			// A fetch counts its own blocks: no store lookup a block received
			// to count duplicates.
			bitswap.WithoutDuplicatedBlockStats(),
		)
		exch = bs
	}
	serv := blockservice.New(store, exch, blockservice.WithAllowlist(allow))
	s := &Service{
		store:   store,
		bs:      bs,
		serv:    serv,
		dag:     merkledag.NewDAGService(serv),
		local:   merkledag.NewDAGService(blockservice.New(store, nil, blockservice.WithAllowlist(allow))),
		routing: cfg.Routing,
		grants:  g,
		forgers: fg,
		log:     log,
		ctx:     ctx,
		cancel:  cancel,

		host:      h,
		bulkProto: BulkProtocol(cfg.Prefix),
	}
	h.SetStreamHandler(s.bulkProto, newBulkServer(s).handle)
	return s, nil
}

// Close stops the exchange. Safe to call twice.
func (s *Service) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.host.RemoveStreamHandler(s.bulkProto)
		s.cancel()
		s.wg.Wait()
		if s.bs != nil {
			err = s.bs.Close()
		}
	})
	return err
}

// notify tells the exchange's sessions and peers waiting on b that it is
// here (nothing without an exchange).
func (s *Service) notify(ctx context.Context, b blocks.Block) {
	if s.bs != nil {
		_ = s.bs.NotifyNewBlocks(ctx, b)
	}
}

// Store is the service's blockstore.
func (s *Service) Store() *Store { return s.store }

// Stats says what the service moved.
func (s *Service) Stats() Stats {
	st := Stats{FetchedBytes: s.fetchedBytes.Load(), FetchedBlocks: s.fetchedBlocks.Load(), BulkBytes: s.bulkFetchedBytes.Load(), StoredBytes: s.store.Used()}
	if s.bs != nil {
		if bst, err := s.bs.Stat(); err == nil {
			st.ServedBytes, st.ServedBlocks = int64(bst.DataSent), int64(bst.BlocksSent)
		}
	}
	st.ServedBytes += s.bulkServedBytes.Load()
	st.ServedBlocks += s.bulkServedBlocks.Load()
	return st
}

// Sync makes the blocks this peer holds durable (Store.Sync): call it
// before a record that must survive a crash names a DAG just fetched.
func (s *Service) Sync() error { return s.store.Sync() }

// Announce tells the swarm (provider records in its DHT) that this peer
// has root, in the background; a failure is logged, not returned.
func (s *Service) Announce(root cid.Cid) {
	if s.routing == nil {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(s.ctx, provideTimeout)
		defer cancel()
		if err := s.routing.Provide(ctx, root, true); err != nil && s.ctx.Err() == nil {
			s.log.Debug("content not announced", "cid", root, "err", err)
		}
	}()
}

// Progress is told the bytes done of a total as an add goes on.
type Progress func(done, total int64)

// Add adds the file or folder at path to the store, as a UnixFS DAG of
// SHA-256 blocks (CIDv1, raw leaves of ChunkSize), and returns its root.
// A path over max bytes (0: the store's cap) is refused before anything
// is added; so is anything but regular files and folders (a symlink, a
// device). progress, if set, is told the bytes read as they go.
func (s *Service) Add(ctx context.Context, path string, max int64, progress Progress) (Root, error) {
	if max <= 0 || max > s.store.max {
		max = s.store.max
	}
	total, nfiles, err := measure(path)
	if err != nil {
		return Root{}, err
	}
	if total > max {
		return Root{}, fmt.Errorf("%w: %s is %d bytes, more than %d", ErrTooBig, path, total, max)
	}
	a := &adder{ctx: ctx, dag: s.local, total: total, progress: progress}
	nd, err := a.add(path)
	if err != nil {
		return Root{}, err
	}
	if progress != nil {
		progress(total, total)
	}
	return Root{CID: nd.Cid(), Bytes: total, Files: nfiles}, nil
}

// measure walks path: its bytes and files; an error for what Add cannot
// take.
func measure(path string) (total int64, nfiles int, err error) {
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("content: %w", err)
		}
		switch t := d.Type(); {
		case t.IsDir():
		case t.IsRegular():
			info, err := d.Info()
			if err != nil {
				return fmt.Errorf("content: %w", err)
			}
			total += info.Size()
			nfiles++
		default:
			return fmt.Errorf("content: %s is a %s: an input holds only files and folders (copy what it points to instead)", p, kind(t))
		}
		return nil
	})
	return total, nfiles, err
}

func kind(t fs.FileMode) string {
	switch {
	case t&fs.ModeSymlink != 0:
		return "symbolic link"
	case t&fs.ModeDevice != 0:
		return "device"
	case t&fs.ModeNamedPipe != 0:
		return "named pipe"
	case t&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}

type adder struct {
	ctx      context.Context
	dag      ipld.DAGService
	total    int64
	done     int64
	progress Progress
}

func (a *adder) add(path string) (ipld.Node, error) {
	info, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("content: %w", err)
	}
	if !info.IsDir() {
		return a.addFile(path)
	}
	dir, err := uio.NewDirectory(a.dag)
	if err != nil {
		return nil, fmt.Errorf("content: %w", err)
	}
	dir.SetCidBuilder(cidBuilder)
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, fmt.Errorf("content: %w", err)
	}
	for _, e := range entries {
		child, err := a.add(filepath.Join(path, e.Name()))
		if err != nil {
			return nil, err
		}
		if err := dir.AddChild(a.ctx, e.Name(), child); err != nil {
			return nil, fmt.Errorf("content: %s: %w", path, err)
		}
	}
	nd, err := dir.GetNode()
	if err != nil {
		return nil, fmt.Errorf("content: %s: %w", path, err)
	}
	if err := a.dag.Add(a.ctx, nd); err != nil {
		return nil, fmt.Errorf("content: %s: %w", path, err)
	}
	return nd, nil
}

var cidBuilder = merkledag.V1CidPrefix() // CIDv1, SHA-256

func (a *adder) addFile(path string) (ipld.Node, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("content: %w", err)
	}
	defer f.Close()
	params := helpers.DagBuilderParams{
		Dagserv:    a.dag,
		RawLeaves:  true,
		Maxlinks:   helpers.DefaultLinksPerBlock,
		CidBuilder: cidBuilder,
	}
	db, err := params.New(chunker.NewSizeSplitter(&counting{r: f, a: a}, ChunkSize))
	if err != nil {
		return nil, fmt.Errorf("content: %s: %w", path, err)
	}
	nd, err := balanced.Layout(db)
	if err != nil {
		return nil, fmt.Errorf("content: %s: %w", path, err)
	}
	return nd, nil
}

// counting reports the bytes read to the adder's progress, and stops a
// cancelled add.
type counting struct {
	r io.Reader
	a *adder
}

func (c *counting) Read(p []byte) (int, error) {
	if err := c.a.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.a.done += int64(n)
	if c.a.progress != nil && n > 0 {
		c.a.progress(min(c.a.done, c.a.total), c.a.total)
	}
	return n, err
}

func checkCID(c cid.Cid) error {
	if err := verifcid.ValidateCid(allow, c); err != nil {
		return fmt.Errorf("content: CID %s: %w", c, err)
	}
	if t := c.Type(); t != cid.DagProtobuf && t != cid.Raw {
		return fmt.Errorf("content: CID %s: codec %#x, want dag-pb or raw", c, t)
	}
	return nil
}

func linksOf(b blocks.Block) ([]cid.Cid, error) {
	if b.Cid().Type() == cid.Raw {
		return nil, nil
	}
	nd, err := merkledag.DecodeProtobuf(b.RawData())
	if err != nil {
		return nil, fmt.Errorf("block %s: %w", b.Cid(), err)
	}
	ls := nd.Links()
	if len(ls) > MaxLinks {
		return nil, fmt.Errorf("block %s has %d links, at most %d", b.Cid(), len(ls), MaxLinks)
	}
	out := make([]cid.Cid, len(ls))
	for i, l := range ls {
		out[i] = l.Cid
	}
	return out, nil
}

// WriteTo writes the DAG under root, which must be local (Fetch it
// first), at dst: a file, or a folder of files and folders. Files are
// made read-only (0444) and folders too (0555) once written. Anything but
// files and folders (a symlink in a stranger's DAG) is refused, and so is
// an entry name that is not one plain name. dst must not exist; on an
// error, what was written is removed.
func (s *Service) WriteTo(ctx context.Context, root cid.Cid, dst string) error {
	return s.write(ctx, root, dst, true)
}

// Restore writes the DAG under root at dst as WriteTo does, but writable
// (0644 files, 0755 folders): a checkpoint a job goes on from.
func (s *Service) Restore(ctx context.Context, root cid.Cid, dst string) error {
	return s.write(ctx, root, dst, false)
}

func (s *Service) write(ctx context.Context, root cid.Cid, dst string, readOnly bool) (err error) {
	nd, err := s.local.Get(ctx, root)
	if err != nil {
		return fmt.Errorf("content: %s: %w", root, err)
	}
	fn, err := unixfile.NewUnixfsFile(ctx, s.local, nd)
	if err != nil {
		return fmt.Errorf("content: %s: %w", root, err)
	}
	defer func() {
		if err != nil {
			_ = makeWritable(dst)
			_ = os.RemoveAll(dst)
		}
	}()
	return writeNode(fn, dst, readOnly)
}

func writeNode(nd files.Node, path string, readOnly bool) error {
	fileMode, dirMode := os.FileMode(0o644), os.FileMode(0o755)
	if readOnly {
		fileMode, dirMode = 0o444, 0o555
	}
	defer nd.Close()
	switch nd := nd.(type) {
	case files.File:
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
		if err != nil {
			return fmt.Errorf("content: %w", err)
		}
		_, err = io.Copy(f, nd)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("content: write %s: %w", path, err)
		}
		return nil
	case files.Directory:
		if err := os.Mkdir(path, 0o755); err != nil {
			return fmt.Errorf("content: %w", err)
		}
		it := nd.Entries()
		for it.Next() {
			name := it.Name()
			if name == "" || name == "." || name == ".." || filepath.Base(name) != name || filepath.IsAbs(name) {
				return fmt.Errorf("content: %s: entry name %q is not a plain name", path, name)
			}
			if err := writeNode(it.Node(), filepath.Join(path, name), readOnly); err != nil {
				return err
			}
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("content: %s: %w", path, err)
		}
		return os.Chmod(path, dirMode)
	default:
		return fmt.Errorf("content: %s: a %T; inputs hold only files and folders", path, nd)
	}
}

// makeWritable lets RemoveAll take a read-only tree.
func makeWritable(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o755)
		}
		return nil
	})
}

// RemoveTree removes a tree WriteTo wrote (its folders are read-only).
func RemoveTree(root string) error {
	_ = makeWritable(root)
	return os.RemoveAll(root)
}
