package node

import (
	"bytes"
	"context"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node/reputation"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The explorer is a read-only web page every peer can serve (Config.Explorer,
// `gpumesh node --explorer 127.0.0.1:8080`): this peer, its peers, the GPU
// directory by class, the price board with a chart over time, the jobs this
// peer submitted and the receipts it keeps, with their anchoring on Solana.
// It is its own HTTP server with GET endpoints only and no token: it shows
// nothing secret (never the API token, keys, data-dir paths, the Solana RPC
// URL, or a job's command and environment). It is meant for loopback or the
// user's own proxy. Whatever it is bound to, it answers only requests whose
// Host names it (hostAllowed), so a web page elsewhere cannot read it
// through a name of its own resolved to this machine (DNS rebinding).
//
//	GET /                  the page (index.html, app.js, style.css, favicon.svg: embedded)
//	GET /explorer/state    one JSON snapshot (ExplorerState)
//	GET /explorer/events   Server-Sent Events: "history" (the price chart's points) and
//	                       "snapshot" on connect; "snapshot" whenever something changed
//	                       (at once for jobs, else at most once a second); "price" with
//	                       each new point of the chart (every 5 s)

//go:embed explorer
var explorerFiles embed.FS

// Explorer timing and bounds.
const (
	explorerPush        = time.Second            // other than job changes, snapshots go out at most this often
	explorerJobGap      = 100 * time.Millisecond // a burst of job changes is one snapshot
	explorerDirEvery    = 10 * time.Second       // the directory is searched at most this often
	explorerDirTimeout  = 10 * time.Second       // one directory search
	explorerDirFirst    = 3 * time.Second        // /explorer/state waits this long for the first search
	explorerDemand      = time.Minute            // the directory is searched while a page is open or someone looked this recently
	explorerSampleEvery = 5 * time.Second        // a point of the price chart
	explorerHistory     = 360                    // points kept (30 minutes)
	explorerMaxJobs     = 100                    // newest jobs in a snapshot
	explorerMaxReceipts = 200                    // newest receipts in a snapshot
	explorerMaxStreams  = 64                     // event streams at once
	explorerPing        = 15 * time.Second       // a comment on an idle stream, so proxies keep it
	explorerWriteWait   = 10 * time.Second       // a stream's client must take each event within this
	explorerShutdown    = 2 * time.Second        // Close waits this long for requests in flight
)

// ExplorerState is the explorer's snapshot: GET /explorer/state and the
// "snapshot" events.
type ExplorerState struct {
	Peer      ExplorerPeer      `json:"peer"`
	Peers     []PeerInfo        `json:"peers"`
	Directory ExplorerDirectory `json:"directory"`
	Prices    Prices            `json:"prices"`
	// History is the price chart's points, oldest first: in
	// GET /explorer/state only (the event stream sends it apart).
	History       []PricePoint       `json:"history,omitempty"`
	Jobs          []ExplorerJob      `json:"jobs"`
	JobsTotal     int                `json:"jobsTotal"` // Jobs holds the newest explorerMaxJobs
	Receipts      []ExplorerReceipt  `json:"receipts"`  // newest first
	ReceiptsTotal int                `json:"receiptsTotal"`
	Anchoring     *ExplorerAnchoring `json:"anchoring,omitempty"` // absent when this peer anchors nothing (no --solana-rpc)
	// Providers are the providers of the directory's last search and
	// those this peer has evidence of, best score first, with the
	// evidence (node/reputation); at most explorerMaxProviders.
	Providers []ExplorerProvider `json:"providers"`
}

// ExplorerProvider is one provider's score and the evidence behind it.
type ExplorerProvider struct {
	Peer    string           `json:"peer"`
	Offers  bool             `json:"offers"` // in the directory's last search
	Score   reputation.Score `json:"score"`
	Fetched time.Time        `json:"fetched,omitzero"` // when its anchored receipts were last fetched
}

// explorerMaxProviders bounds the providers the explorer lists.
const explorerMaxProviders = 100

// ExplorerPeer is this peer.
type ExplorerPeer struct {
	PeerID        string          `json:"peerID"`
	SolanaAddress string          `json:"solanaAddress"`
	Swarm         string          `json:"swarm"`
	Private       bool            `json:"private"`
	Version       string          `json:"version"`
	Started       time.Time       `json:"started"`
	UptimeSec     float64         `json:"uptimeSec"`
	Addrs         []string        `json:"addrs"`
	Region        string          `json:"region,omitempty"`
	Executors     []string        `json:"executors,omitempty"` // when it offers GPUs
	GPUs          []ExplorerLocal `json:"gpus"`                // this peer's own, by class
}

// ExplorerLocal is one class of this peer's own GPUs.
type ExplorerLocal struct {
	Class string `json:"class"`
	GPUs  int    `json:"gpus"`
	Free  *int   `json:"free,omitempty"` // not held by a job; absent before negotiation has counted
	Ask   uint64 `json:"ask,omitempty"`  // per GPU-hour in the smallest unit
}

// ExplorerDirectory is the GPU directory summarised by class, from a
// search of the whole directory made at most every 10 s.
type ExplorerDirectory struct {
	Classes   []ExplorerClass `json:"classes"`
	Providers int             `json:"providers"` // with a live offer
	GPUs      int             `json:"gpus"`      // offered now
	Searched  time.Time       `json:"searched,omitzero"`
	ElapsedMS float64         `json:"elapsedMs,omitempty"`
	Partial   bool            `json:"partial,omitempty"`
	Error     string          `json:"error,omitempty"`

	providerIDs []peer.ID // of the search, for the providers' scores
}

// ExplorerClass is one GPU class of the directory.
type ExplorerClass struct {
	Class     string `json:"class"`
	Model     string `json:"model"`
	VRAMGB    uint32 `json:"vramGB"`
	Providers int    `json:"providers"`
	Total     int    `json:"total"`          // GPUs of the class on those providers
	Available int    `json:"available"`      // offered as available
	Free      *int   `json:"free,omitempty"` // known only for this peer's own GPUs: those no job holds
	Cheapest  uint64 `json:"cheapest,omitempty"`
	Unit      string `json:"unit,omitempty"` // of Cheapest
}

// PricePoint is one point of the price chart: a class's prices at a time,
// in tokens (not the smallest unit) per GPU-hour; 0 means none.
type PricePoint struct {
	T      int64   `json:"t"` // unix ms
	Class  string  `json:"class"`
	Median float64 `json:"median"` // the board's index (providers past probation)
	Best   float64 `json:"best"`   // the board's lowest counted ask
	Lowest float64 `json:"lowest"` // the lowest ask heard: board, directory or this peer's own
}

// ExplorerJob is one of this peer's jobs without what may be secret (its
// command and environment).
type ExplorerJob struct {
	ID       string           `json:"id"`
	Name     string           `json:"name"`
	Image    string           `json:"image,omitempty"` // "" runs a process
	Launcher string           `json:"launcher,omitempty"`
	GPUs     int              `json:"gpus"` // asked for
	Model    string           `json:"model,omitempty"`
	State    string           `json:"state"`
	Reason   string           `json:"reason,omitempty"`
	Attempt  int              `json:"attempt,omitempty"`
	Members  []ExplorerMember `json:"members"`
	Cost     uint64           `json:"cost,omitempty"` // per hour
	Unit     string           `json:"unit"`
	Created  time.Time        `json:"created"`
	Updated  time.Time        `json:"updated"`
	Started  time.Time        `json:"started,omitzero"`
	Ended    time.Time        `json:"ended,omitzero"`
	ExitCode *int             `json:"exitCode,omitempty"`
	// While queued: how long it may wait (the spec's queue), until when,
	// and its tries since it was queued; Reason says why it waits.
	Queue       string    `json:"queue,omitempty"`
	QueuedUntil time.Time `json:"queuedUntil,omitzero"`
	Tries       int       `json:"tries,omitempty"`
	Position    int       `json:"position,omitempty"` // in this peer's queue: 1 is tried first
	// Forwards are the job's open port-forwards (`gpumesh job
	// port-forward` running on this peer).
	Forwards []ForwardInfo `json:"forwards,omitempty"`
}

// ExplorerMember is one member of a job's cluster and its run.
type ExplorerMember struct {
	Rank     int       `json:"rank"`
	Provider string    `json:"provider"`
	Class    string    `json:"class"`
	GPUs     uint32    `json:"gpus"`
	Price    uint64    `json:"price,omitempty"`
	Zone     string    `json:"zone,omitempty"`
	State    string    `json:"state"` // leased until the run starts, then the run's state
	ExitCode *int      `json:"exitCode,omitempty"`
	Started  time.Time `json:"started,omitzero"`
	Ended    time.Time `json:"ended,omitzero"`
	Outputs  int       `json:"outputs,omitempty"`
	Receipt  string    `json:"receipt,omitempty"`
	Error    string    `json:"error,omitempty"`
}

// ExplorerReceipt is one receipt this peer keeps, with its anchoring.
type ExplorerReceipt struct {
	Key         string  `json:"key"`
	Job         string  `json:"job"`
	Attempt     int     `json:"attempt"`
	Rank        int     `json:"rank"`
	Provider    string  `json:"provider"`
	Consumer    string  `json:"consumer"`
	Class       string  `json:"class"`
	GPUs        uint32  `json:"gpus"`
	GPUSeconds  float64 `json:"gpuSeconds"`
	Price       uint64  `json:"price"`
	Amount      uint64  `json:"amount"`
	Unit        string  `json:"unit"`
	ExitCode    int     `json:"exitCode"`
	Start       int64   `json:"start"` // unix ms
	End         int64   `json:"end"`
	ProviderSig string  `json:"providerSig"`           // hex
	ConsumerSig string  `json:"consumerSig,omitempty"` // hex; absent until countersigned
	Verified    bool    `json:"verified"`              // both signatures check
	Paid        uint64  `json:"paid,omitempty"`
	// CheckpointBytes: the job's checkpoint bytes its provider sent the
	// consumer (member 0's), as signed by both.
	CheckpointBytes uint64 `json:"checkpointBytes,omitempty"`
	// Anchoring, where this peer anchors the receipt (its provider, with
	// --solana-rpc): pending, batched or anchored, and the memo
	// transaction once anchored.
	Anchor string `json:"anchor,omitempty"`
	Tx     string `json:"tx,omitempty"`
	Slot   uint64 `json:"slot,omitempty"`
}

// ExplorerAnchoring is the anchorer's state.
type ExplorerAnchoring struct {
	Pending  int    `json:"pending"`
	Batches  int    `json:"batches"`
	Anchored int    `json:"anchored"`
	Txs      int    `json:"txs"`
	Fees     uint64 `json:"fees"` // lamports
	Error    string `json:"error,omitempty"`
}

// explorer serves the page and keeps what it shows between requests: the
// directory summary, the price history, the latest snapshot.
type explorer struct {
	n     *Node
	srv   *http.Server
	addr  string
	hosts map[string]bool // names it answers to besides addresses (lower case): the machine's, Config.ExplorerHosts
	done  chan struct{}   // closed by close: event streams end

	refreshMu sync.Mutex // one snapshot built at a time

	mu        sync.Mutex // guards the fields below
	changed   chan struct{}
	snap      []byte // the latest snapshot, without history
	key       []byte // snap without its moving parts (uptime, latencies): what counts as a change
	snapSeq   uint64
	history   [][]PricePoint // the last explorerHistory samples, oldest first: a point per class each
	sampleSeq uint64         // samples taken, ever
	streams   int
	demand    time.Time // last time someone looked
	dir       ExplorerDirectory
	dirDone   chan struct{}             // closed once the first search has ended
	txs       map[string]anchoredTx     // receipt key -> its memo transaction, once anchored
	checked   map[string]checkedReceipt // receipt key -> whether its signatures check

	wantDir chan struct{} // wake the directory loop
	poke    chan struct{} // wake the snapshot loop
}

type anchoredTx struct {
	sig  string
	slot uint64
}

type checkedReceipt struct {
	sig string // the consumer's signature checked
	ok  bool
}

// startExplorer listens on Config.Explorer and serves the explorer until
// Close.
func startExplorer(ctx context.Context, n *Node) (*explorer, error) {
	addr := n.cfg.Explorer
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, explorerListenError(addr, err)
	}
	ta := l.Addr().(*net.TCPAddr)
	if !ta.IP.IsLoopback() {
		n.log.Warn("the explorer listens beyond this machine: anyone who reaches it sees this peer's peers, jobs and receipts; prefer 127.0.0.1, or put it behind your own proxy", "addr", ta)
	}
	reach := *ta // where a browser on this machine reaches it
	if reach.IP.IsUnspecified() {
		reach.IP = net.IPv4(127, 0, 0, 1)
	}
	e := &explorer{
		n: n, addr: reach.String(), done: make(chan struct{}),
		changed: make(chan struct{}), dirDone: make(chan struct{}),
		txs: map[string]anchoredTx{}, checked: map[string]checkedReceipt{},
		wantDir: make(chan struct{}, 1), poke: make(chan struct{}, 1),
	}
	e.hosts = explorerHosts(n.cfg.ExplorerHosts)
	e.srv = &http.Server{
		Handler:           e.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	n.wg.Add(3)
	go func() {
		defer n.wg.Done()
		if err := e.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Warn("explorer stopped", "err", err)
		}
	}()
	go e.snapshotLoop(ctx)
	go e.directoryLoop(ctx)
	n.log.Info("explorer", "url", "http://"+e.addr+"/")
	return e, nil
}

// explorerListenError says what to do when the address cannot be had.
func explorerListenError(addr string, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("--explorer %s: address in use; pick another", addr)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("--explorer %s: no such address on this machine; pick another (127.0.0.1:8080 serves this machine only)", addr)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("--explorer %s: permission denied (ports below 1024 need privileges); pick another", addr)
	}
	return fmt.Errorf("--explorer %s: %w; pick another address", addr, err)
}

// checkExplorerAddr checks Config.Explorer's form (New).
func checkExplorerAddr(addr string) error {
	if addr == "" {
		return nil
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return fmt.Errorf("--explorer %q: want HOST:PORT, such as 127.0.0.1:8080", addr)
	}
	return nil
}

// close ends the event streams, then the server (waiting a little for
// requests in flight).
func (e *explorer) close() error {
	close(e.done)
	ctx, cancel := context.WithTimeout(context.Background(), explorerShutdown)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		_ = e.srv.Close()
	}
	return nil
}

// ExplorerAddr is the host:port at which the explorer answers on this
// machine (loopback when it listens on every interface); "" when it is off
// or the node has not started.
func (n *Node) ExplorerAddr() string {
	if n.explorer == nil {
		return ""
	}
	return n.explorer.addr
}

func (e *explorer) routes() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(explorerFiles, "explorer")
	files := http.FileServerFS(static)
	mux.Handle("GET /{$}", files)
	for _, f := range []string{"app.js", "style.css", "favicon.svg"} {
		mux.Handle("GET /"+f, files)
	}
	mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, r *http.Request) {
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/favicon.svg"
		files.ServeHTTP(w, r2)
	})
	mux.HandleFunc("GET /explorer/state", e.serveState)
	mux.HandleFunc("GET /explorer/events", e.serveEvents)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		if !e.hostAllowed(r.Host, localIP(r)) {
			// Another site's name that resolves to this machine (DNS
			// rebinding) gets nothing: the page answers only this
			// machine's names and the address the request came in on.
			http.Error(w, fmt.Sprintf("the explorer answers to localhost, this machine's name, the address it was reached at and the names given with --explorer-host, not %s", text.Clip(r.Host)),
				http.StatusMisdirectedRequest)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			http.Error(w, "the explorer is read-only: GET only", http.StatusMethodNotAllowed)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// serveState answers GET /explorer/state: one snapshot, with the price
// history. The first request waits a moment for the first directory
// search.
func (e *explorer) serveState(w http.ResponseWriter, r *http.Request) {
	e.look()
	t := time.NewTimer(explorerDirFirst)
	defer t.Stop()
	select {
	case <-e.dirDone:
	case <-t.C:
	case <-r.Context().Done():
		return
	}
	st := e.state()
	st.History, _ = e.historyAfter(0)
	writeJSON(w, st)
}

// serveEvents streams snapshots as Server-Sent Events until the client
// goes or the node closes.
func (e *explorer) serveEvents(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Type", "text/event-stream")
		return
	}
	rc := http.NewResponseController(w)
	e.mu.Lock()
	if e.streams >= explorerMaxStreams {
		e.mu.Unlock()
		http.Error(w, fmt.Sprintf("too many explorer pages open (%d); close some", explorerMaxStreams), http.StatusServiceUnavailable)
		return
	}
	e.streams++
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.streams--
		e.mu.Unlock()
	}()
	e.look()
	e.refresh() // the first snapshot is current

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	send := func(parts ...string) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(explorerWriteWait))
		for _, p := range parts {
			if _, err := w.Write([]byte(p)); err != nil {
				return false
			}
		}
		return rc.Flush() == nil
	}
	e.mu.Lock()
	snap, snapSeq, changed := e.snap, e.snapSeq, e.changed
	e.mu.Unlock()
	hist, sampleSeq := e.historyAfter(0)
	hdata, _ := json.Marshal(hist)
	if !send("retry: 2000\n\n", "event: history\ndata: ", string(hdata), "\n\n",
		fmt.Sprintf("event: snapshot\nid: %d\ndata: ", snapSeq), string(snap), "\n\n") {
		return
	}
	ping := time.NewTicker(explorerPing)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-e.done:
			return
		case <-ping.C:
			if !send(": ping\n\n") {
				return
			}
			continue
		case <-changed:
		}
		e.look()
		e.mu.Lock()
		next, nextSeq := e.snap, e.snapSeq
		changed = e.changed
		e.mu.Unlock()
		var parts []string
		var points []PricePoint
		points, sampleSeq = e.historyAfter(sampleSeq)
		if len(points) > 0 {
			data, _ := json.Marshal(points)
			parts = append(parts, "event: price\ndata: ", string(data), "\n\n")
		}
		if nextSeq != snapSeq {
			snapSeq = nextSeq
			parts = append(parts, fmt.Sprintf("event: snapshot\nid: %d\ndata: ", snapSeq), string(next), "\n\n")
		}
		if len(parts) > 0 && !send(parts...) {
			return
		}
	}
}

// look records that someone looks at the explorer, and asks for a
// directory search if the last one is old.
func (e *explorer) look() {
	e.mu.Lock()
	e.demand = time.Now()
	stale := time.Since(e.dir.Searched) >= explorerDirEvery
	e.mu.Unlock()
	if stale {
		select {
		case e.wantDir <- struct{}{}:
		default:
		}
	}
}

// watched reports whether an event stream is open.
func (e *explorer) watched() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.streams > 0
}

// snapshotLoop builds and publishes snapshots for the event streams: at
// once when a job changes (a burst counts once), else at most once a
// second; and samples the prices for the chart every 5 s.
func (e *explorer) snapshotLoop(ctx context.Context) {
	defer e.n.wg.Done()
	tick := time.NewTicker(explorerPush)
	defer tick.Stop()
	sample := time.NewTicker(explorerSampleEvery)
	defer sample.Stop()
	e.sample()
	moved := e.n.jobMoved()
	var pending <-chan time.Time
	var last time.Time
	for {
		wait := moved
		if pending != nil {
			wait = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-wait:
			if gap := explorerJobGap - time.Since(last); gap > 0 {
				pending = time.After(gap)
				continue
			}
		case <-pending:
		case <-e.poke:
		case <-tick.C:
		case <-sample.C:
			e.sample()
			continue
		}
		pending = nil
		moved = e.n.jobMoved() // before the jobs are read: no change is missed
		if e.watched() {
			e.refresh()
			last = time.Now()
		}
	}
}

// refresh builds a snapshot and publishes it if something changed.
func (e *explorer) refresh() {
	e.refreshMu.Lock()
	defer e.refreshMu.Unlock()
	st := e.state()
	data, err := json.Marshal(st)
	if err != nil {
		e.n.log.Warn("explorer snapshot", "err", err)
		return
	}
	// Uptime and latencies move all the time: they ride along with real
	// changes but make none.
	st.Peer.UptimeSec = 0
	st.Peers = slices.Clone(st.Peers)
	for i := range st.Peers {
		st.Peers[i].LatencyMS = 0
	}
	key, _ := json.Marshal(st)
	e.mu.Lock()
	defer e.mu.Unlock()
	if bytes.Equal(key, e.key) {
		return
	}
	e.key, e.snap = key, data
	e.snapSeq++
	e.broadcastLocked()
}

func (e *explorer) broadcastLocked() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// state builds a snapshot (without the price history).
func (e *explorer) state() ExplorerState {
	n := e.n
	info := n.Info()
	st := ExplorerState{
		Peer: ExplorerPeer{
			PeerID: info.PeerID, SolanaAddress: info.SolanaAddress, Swarm: info.Swarm, Private: info.Private,
			Version: info.Version, Started: n.started.UTC(), UptimeSec: time.Since(n.started).Round(time.Second).Seconds(),
			Addrs: info.Addrs, Region: n.cfg.Region,
		},
		Peers:    n.Peers(),
		Prices:   n.Prices(""),
		Jobs:     []ExplorerJob{},
		Receipts: []ExplorerReceipt{},
	}
	free := n.FreeGPUs()
	counts := map[string]int{}
	var classes []string
	for _, g := range n.LocalGPUs().Inventory.GPUs {
		if counts[g.Class] == 0 {
			classes = append(classes, g.Class)
		}
		counts[g.Class]++
	}
	sort.Strings(classes)
	st.Peer.GPUs = []ExplorerLocal{}
	for _, c := range classes {
		l := ExplorerLocal{Class: c, GPUs: counts[c]}
		if f, ok := free[c]; ok {
			v := int(f)
			l.Free = &v
		}
		l.Ask, _ = n.Ask(c)
		st.Peer.GPUs = append(st.Peer.GPUs, l)
	}
	if len(classes) > 0 {
		st.Peer.Executors = n.executors()
	}

	e.mu.Lock()
	st.Directory = e.dir
	st.Directory.Classes = slices.Clone(e.dir.Classes)
	e.mu.Unlock()
	if st.Directory.Classes == nil {
		st.Directory.Classes = []ExplorerClass{}
	}
	for i, c := range st.Directory.Classes {
		if f, ok := free[c.Class]; ok {
			v := int(f)
			st.Directory.Classes[i].Free = &v
		}
	}

	jobs, _, err := n.JobsPage("", explorerMaxJobs)
	if err != nil {
		n.log.Debug("explorer: jobs", "err", err)
	}
	st.JobsTotal = n.JobCount()
	for _, j := range jobs {
		n.placeInQueue(&j)
		ej := explorerJob(j)
		if j.State == JobRunning {
			ej.Forwards = n.Forwards(j.ID)
		}
		st.Jobs = append(st.Jobs, ej)
	}

	rs, total, err := n.RecentReceipts(explorerMaxReceipts)
	if err != nil {
		n.log.Debug("explorer: receipts", "err", err)
	}
	st.ReceiptsTotal = total
	for i := len(rs) - 1; i >= 0 && len(st.Receipts) < explorerMaxReceipts; i-- {
		sr := rs[i]
		r := sr.Receipt
		er := ExplorerReceipt{
			Key: r.Key(), Job: r.Job, Attempt: r.Attempt, Rank: r.Rank, Provider: r.Provider, Consumer: r.Consumer,
			Class: r.Class, GPUs: r.GPUs, GPUSeconds: r.GPUSeconds(), Price: r.Price, Amount: r.Amount, Unit: r.Unit,
			ExitCode: r.ExitCode, Start: r.Start, End: r.End, Paid: r.Paid, CheckpointBytes: r.CheckpointBytes,
			ProviderSig: hex.EncodeToString(sr.ProviderSig),
		}
		if len(sr.ConsumerSig) > 0 {
			er.ConsumerSig = hex.EncodeToString(sr.ConsumerSig)
			er.Verified = e.verified(er.Key, er.ConsumerSig, func() bool { return sr.Verify() == nil })
		}
		if n.anchor != nil {
			er.Anchor = n.anchor.Status(er.Key)
			if er.Anchor == "anchored" {
				er.Tx, er.Slot = e.anchoredTx(er.Key)
			}
		}
		st.Receipts = append(st.Receipts, er)
	}
	e.prune(st.Receipts)
	st.Providers = n.explorerProviders(st.Directory.providerIDs)
	if n.anchor != nil {
		s := n.anchor.Stats()
		st.Anchoring = &ExplorerAnchoring{Pending: s.Pending, Batches: s.Batches, Anchored: s.Anchored, Txs: s.Txs, Fees: s.Fees, Error: e.redact(s.Error)}
	}
	return st
}

// anchoredTx is the memo transaction of an anchored receipt; an anchored
// batch never changes, so its proof is made once.
func (e *explorer) anchoredTx(key string) (string, uint64) {
	e.mu.Lock()
	tx, ok := e.txs[key]
	e.mu.Unlock()
	if ok {
		return tx.sig, tx.slot
	}
	p, err := e.n.Proof(key)
	if err != nil {
		return "", 0
	}
	e.mu.Lock()
	e.txs[key] = anchoredTx{sig: p.Signature, slot: p.Slot}
	e.mu.Unlock()
	return p.Signature, p.Slot
}

// verified checks a co-signed receipt's signatures once: a receipt with
// its consumer's signature is never rewritten (a changed one is checked
// again).
func (e *explorer) verified(key, consumerSig string, check func() bool) bool {
	e.mu.Lock()
	v, ok := e.checked[key]
	e.mu.Unlock()
	if ok && v.sig == consumerSig {
		return v.ok
	}
	res := check()
	e.mu.Lock()
	e.checked[key] = checkedReceipt{sig: consumerSig, ok: res}
	e.mu.Unlock()
	return res
}

// prune forgets the checks and transactions of receipts no longer shown.
func (e *explorer) prune(shown []ExplorerReceipt) {
	keep := make(map[string]bool, len(shown))
	for _, r := range shown {
		keep[r.Key] = true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for k := range e.txs {
		if !keep[k] {
			delete(e.txs, k)
		}
	}
	for k := range e.checked {
		if !keep[k] {
			delete(e.checked, k)
		}
	}
}

// redact keeps the Solana RPC URL (it may carry an API key) out of what
// the explorer shows.
func (e *explorer) redact(s string) string {
	if rpc := e.n.cfg.SolanaRPC; rpc != "" {
		s = strings.ReplaceAll(s, rpc, "<rpc>")
	}
	return s
}

// explorerJob is what the explorer shows of a job: no command, no
// environment (they may hold secrets).
func explorerJob(j Job) ExplorerJob {
	ej := ExplorerJob{
		ID: j.ID, Name: j.Spec.Name, Image: j.Spec.Image, Launcher: j.Spec.Launcher, GPUs: j.Spec.Resources.GPUs,
		Model: j.Spec.Resources.GPU.Model, State: string(j.State), Reason: j.Reason, Attempt: j.Attempt, Cost: j.Cost, Unit: j.Unit,
		Created: j.Created, Updated: j.Updated, Started: j.Started, Ended: j.Ended, ExitCode: j.ExitCode,
		Members: []ExplorerMember{},
		Queue:   j.Spec.Queue, QueuedUntil: j.QueuedUntil, Tries: j.Tries, Position: j.QueuePosition,
	}
	for i, m := range j.Members {
		em := ExplorerMember{Rank: i, Provider: m.Provider.String(), Class: m.Class, GPUs: m.GPUs, Price: m.Price, Zone: m.Zone, State: "leased"}
		if i < len(j.Runs) && j.Runs[i].Provider == m.Provider {
			explorerRun(&em, j.Runs[i])
		}
		ej.Members = append(ej.Members, em)
	}
	if len(j.Members) == 0 { // runs kept without their members
		for _, r := range j.Runs {
			em := ExplorerMember{Rank: r.Rank, Provider: r.Provider.String(), Class: r.Class, GPUs: r.GPUs}
			explorerRun(&em, r)
			ej.Members = append(ej.Members, em)
		}
	}
	return ej
}

func explorerRun(em *ExplorerMember, r MemberRun) {
	em.State, em.Started, em.Ended = r.State, r.Started, r.Ended
	em.Outputs, em.Receipt, em.Error = len(r.Outputs), r.Receipt, r.Error
	if r.State == MemberExited {
		code := r.ExitCode
		em.ExitCode = &code
	}
}

// directoryLoop searches the whole directory, at most every 10 s and only
// while someone looks, and summarises it by class.
func (e *explorer) directoryLoop(ctx context.Context) {
	defer e.n.wg.Done()
	tick := time.NewTicker(explorerDirEvery)
	defer tick.Stop()
	first := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.wantDir:
		case <-tick.C:
		}
		e.mu.Lock()
		due := time.Since(e.dir.Searched) >= explorerDirEvery && (e.streams > 0 || time.Since(e.demand) < explorerDemand)
		e.mu.Unlock()
		if !due {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, explorerDirTimeout)
		unit := e.n.PriceUnit().String()
		res, err := e.n.FindGPUs(sctx, dht.Query{Unit: unit})
		cancel()
		if ctx.Err() != nil {
			return
		}
		d := summarizeDirectory(res, unit)
		d.providerIDs = providerIDs(res)
		d.Searched = time.Now().UTC()
		if err != nil {
			d.Error = err.Error()
		}
		e.mu.Lock()
		if err != nil && len(e.dir.Classes) > 0 {
			d.Classes, d.Providers, d.GPUs, d.providerIDs = e.dir.Classes, e.dir.Providers, e.dir.GPUs, e.dir.providerIDs // keep the last good answer
		}
		e.dir = d
		e.mu.Unlock()
		if first {
			close(e.dirDone)
			first = false
		}
		select {
		case e.poke <- struct{}{}:
		default:
		}
	}
}

// summarizeDirectory groups a search's offers by class.
func summarizeDirectory(res dht.FindResult, unit string) ExplorerDirectory {
	d := ExplorerDirectory{Classes: []ExplorerClass{}, Partial: res.Partial, ElapsedMS: float64(res.Elapsed.Microseconds()) / 1000}
	byClass := map[string]*ExplorerClass{}
	seen := map[string]map[string]bool{}
	providers := map[string]bool{}
	for _, m := range res.Matches {
		g, p := m.GPU, m.Offer.Provider.String()
		c := byClass[g.Class]
		if c == nil {
			c = &ExplorerClass{Class: g.Class, Model: g.Model, VRAMGB: g.VRAMGB}
			byClass[g.Class] = c
			seen[g.Class] = map[string]bool{}
		}
		if seen[g.Class][p] {
			continue
		}
		seen[g.Class][p] = true
		providers[p] = true
		c.Providers++
		c.Total += int(g.Total)
		c.Available += int(g.Available)
		d.GPUs += int(g.Available)
		if g.Price > 0 && m.Offer.Token == unit && (c.Cheapest == 0 || g.Price < c.Cheapest) {
			c.Cheapest, c.Unit = g.Price, unit
		}
	}
	d.Providers = len(providers)
	for _, c := range byClass {
		d.Classes = append(d.Classes, *c)
	}
	sort.Slice(d.Classes, func(i, j int) bool { return d.Classes[i].Class < d.Classes[j].Class })
	return d
}

// sample adds a point per class to the price history: the board's median
// and best, and the lowest ask heard (the board's, the directory's, this
// peer's own: a provider in its first minutes is on the board but not yet
// counted).
func (e *explorer) sample() {
	p := e.n.Prices("")
	u := p.Unit()
	tokens := func(v uint64) float64 {
		f := float64(v)
		for range u.Decimals {
			f /= 10
		}
		return f
	}
	lowest := map[string]uint64{}
	low := func(class string, v uint64) {
		if v > 0 && (lowest[class] == 0 || v < lowest[class]) {
			lowest[class] = v
		}
	}
	board := map[string]gossip.Quote{}
	for _, q := range p.Classes {
		board[q.Class] = q
		low(q.Class, q.Best)
	}
	for _, a := range p.Asks {
		low(a.Class, a.Ask)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range e.dir.Classes {
		low(c.Class, c.Cheapest)
	}
	if len(lowest) == 0 {
		return
	}
	classes := make([]string, 0, len(lowest))
	for c := range lowest { // a class with a median has a lowest ask too
		classes = append(classes, c)
	}
	sort.Strings(classes)
	now := time.Now().UnixMilli()
	points := make([]PricePoint, 0, len(classes))
	for _, c := range classes {
		q := board[c]
		points = append(points, PricePoint{T: now, Class: c, Median: tokens(q.Median), Best: tokens(q.Best), Lowest: tokens(lowest[c])})
	}
	if len(e.history) == explorerHistory {
		e.history = append(e.history[:0], e.history[1:]...)
	}
	e.history = append(e.history, points)
	e.sampleSeq++
	e.broadcastLocked()
}

// historyAfter returns the points of the samples taken after the first
// `after` ever taken (0: every point kept), oldest first.
// It returns the count of samples taken too.
func (e *explorer) historyAfter(after uint64) ([]PricePoint, uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	newer := min(int(e.sampleSeq-min(after, e.sampleSeq)), len(e.history))
	out := []PricePoint{}
	for _, s := range e.history[len(e.history)-newer:] {
		out = append(out, s...)
	}
	return out, e.sampleSeq
}

// explorerHosts are the names the explorer answers to besides addresses:
// localhost, this machine's host name (and its .local name, as mDNS
// resolvers on the LAN know it), and the names given.
func explorerHosts(given []string) map[string]bool {
	hosts := map[string]bool{"localhost": true}
	if h, err := os.Hostname(); err == nil && h != "" {
		h = strings.ToLower(h)
		hosts[h] = true
		if first, _, _ := strings.Cut(h, "."); first != "" {
			hosts[first+".local"] = true
		}
	}
	for _, h := range given {
		hosts[strings.ToLower(strings.TrimSuffix(h, "."))] = true
	}
	return hosts
}

// localIP is the address of this machine that a request came in on.
func localIP(r *http.Request) net.IP {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok {
		return a.IP
	}
	return nil
}

// hostAllowed reports whether a request's Host names this explorer: a
// loopback address, the address the request came in on (a browser that
// was given an address, not a name, cannot be another site), or one of
// its names. A name resolved by someone else's DNS to this machine is not.
func (e *explorer) hostAllowed(host string, local net.IP) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback() || (local != nil && ip.Equal(local))
	}
	return host != "" && e.hosts[host]
}

// validHostName reports whether s is a DNS name: labels of letters,
// digits and hyphens, dot-separated, at most 253 bytes.
func validHostName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
