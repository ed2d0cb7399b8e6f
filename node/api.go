package node

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/atomicfile"
	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/jobstore"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/libp2p/go-libp2p/core/peer"
)

// APIVersion prefixes every local API path.
const APIVersion = "/v0"

// maxUnixPath is the longest socket path Linux accepts (sun_path less NUL).
const maxUnixPath = 107

// IDInfo answers GET /v0/id.
type IDInfo struct {
	PeerID        string   `json:"peerID"`
	SolanaAddress string   `json:"solanaAddress"`
	Swarm         string   `json:"swarm"`
	Private       bool     `json:"private"`
	Addrs         []string `json:"addrs"` // full multiaddrs with /p2p/, to give to --bootstrap
	Version       string   `json:"version"`
}

// PeerInfo is one connected peer in GET /v0/peers.
type PeerInfo struct {
	PeerID    string   `json:"peerID"`
	Addrs     []string `json:"addrs"`     // remote addresses of the open connections
	Direction string   `json:"direction"` // inbound or outbound (of the first connection)
	Agent     string   `json:"agent,omitempty"`
	LatencyMS float64  `json:"latencyMs,omitempty"`
}

// BootstrapState is what the node knows of one bootstrap peer.
type BootstrapState struct {
	Peer        string    `json:"peer"`
	Addrs       []string  `json:"addrs"`
	Attempts    int       `json:"attempts"`
	Connected   bool      `json:"connected"`
	Error       string    `json:"error,omitempty"`
	LastAttempt time.Time `json:"lastAttempt,omitzero"`
}

// Status answers GET /v0/status.
type Status struct {
	PeerID      string           `json:"peerID"`
	Swarm       string           `json:"swarm"`
	Version     string           `json:"version"`
	UptimeSec   float64          `json:"uptimeSec"`
	Peers       int              `json:"peers"`
	DHTPeers    int              `json:"dhtPeers"`  // routing table size
	DHTServer   bool             `json:"dhtServer"` // serves directory records
	GossipPeers int              `json:"gossipPeers"`
	Bootstrap   []BootstrapState `json:"bootstrap"`
	// NAT traversal (relay.go): this peer's relaying, and how each
	// connected peer is reached.
	Relay       RelayStatus `json:"relay"`
	Connections []PeerConn  `json:"connections"`
	Reach       Reach       `json:"reach"` // AutoNAT's verdict, the directory's halves (reach.go)
}

// Info describes the peer for GET /v0/id.
func (n *Node) Info() IDInfo {
	info := IDInfo{
		PeerID:        n.id.PeerID.String(),
		SolanaAddress: n.id.SolanaAddress,
		Swarm:         n.cfg.Swarm.ID(),
		Private:       n.cfg.Swarm.Private(),
		Version:       n.cfg.version(),
	}
	for _, a := range n.host.Addrs() {
		info.Addrs = append(info.Addrs, a.String()+"/p2p/"+info.PeerID)
	}
	sort.Strings(info.Addrs)
	return info
}

// Peers lists the connected peers, sorted by peer ID.
func (n *Node) Peers() []PeerInfo {
	out := []PeerInfo{}
	for _, p := range n.host.Network().Peers() {
		conns := n.host.Network().ConnsToPeer(p)
		if len(conns) == 0 {
			continue
		}
		pi := PeerInfo{PeerID: p.String(), Direction: conns[0].Stat().Direction.String()}
		for _, c := range conns {
			pi.Addrs = append(pi.Addrs, c.RemoteMultiaddr().String())
		}
		if av, err := n.host.Peerstore().Get(p, "AgentVersion"); err == nil {
			pi.Agent, _ = av.(string)
		}
		if l := n.host.Peerstore().LatencyEWMA(p); l > 0 {
			pi.LatencyMS = float64(l.Microseconds()) / 1000
		}
		out = append(out, pi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PeerID < out[j].PeerID })
	return out
}

// Status summarizes the peer's health.
func (n *Node) Status() Status {
	n.bootMu.Lock()
	boot := append([]BootstrapState{}, n.boot...)
	n.bootMu.Unlock()
	return Status{
		PeerID:      n.id.PeerID.String(),
		Swarm:       n.cfg.Swarm.ID(),
		Version:     n.cfg.version(),
		UptimeSec:   time.Since(n.started).Seconds(),
		Peers:       len(n.host.Network().Peers()),
		DHTPeers:    n.dht.RoutingTableSize(),
		DHTServer:   n.dht.Server(),
		GossipPeers: n.gossip.Peers(),
		Bootstrap:   boot,
		Relay:       n.relayStatus(),
		Connections: n.connections(),
		Reach:       n.reach(),
	}
}

// apiServer serves the local API on the data dir's unix socket and, if asked,
// on a TCP address guarded by a bearer token.
type apiServer struct {
	srv   *http.Server
	files []string // written at start, removed at close
	done  chan struct{}
}

func startAPI(ctx context.Context, n *Node) (*apiServer, error) {
	d := n.dir
	sock, err := filepath.Abs(d.APISocket())
	if err != nil {
		return nil, fmt.Errorf("local API: %w", err)
	}
	if len(sock) > maxUnixPath {
		return nil, fmt.Errorf("local API socket %s is %d bytes, longer than the %d a unix socket allows; use a shorter --data path", sock, len(sock), maxUnixPath)
	}
	// The lock says no other node runs here, so a socket left by a crash is stale.
	if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("local API: %w", err)
	}
	ul, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("local API: %w", err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		ul.Close()
		return nil, fmt.Errorf("local API: %w", err)
	}
	s := &apiServer{done: make(chan struct{})}
	lines := []string{"/unix" + sock}
	var tl net.Listener
	var token string
	if n.cfg.APIListen != "" {
		if token, err = loadOrCreateToken(d.APIToken()); err != nil {
			ul.Close()
			return nil, err
		}
		if tl, err = net.Listen("tcp", n.cfg.APIListen); err != nil {
			ul.Close()
			return nil, fmt.Errorf("local API on %s: %w; pick another address with --api", n.cfg.APIListen, err)
		}
		ta := tl.Addr().(*net.TCPAddr)
		if !ta.IP.IsLoopback() {
			n.log.Warn("the local API listens beyond this machine over plain HTTP: its token can be read on the way; prefer 127.0.0.1 and an SSH tunnel", "addr", ta)
		}
		ip := "ip4"
		if ta.IP.To4() == nil {
			ip = "ip6"
		}
		lines = append(lines, fmt.Sprintf("/%s/%s/tcp/%d", ip, ta.IP, ta.Port))
	}
	mux := apiMux(n)
	// Requests live within the node: Close cancels the ones in flight.
	base := func(net.Listener) context.Context { return ctx }
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, BaseContext: base}
	serve := func(l net.Listener, h http.Handler) {
		srv := s.srv
		if h != nil {
			srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, BaseContext: base}
			go func() { <-s.done; srv.Close() }()
		}
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Warn("local API stopped", "err", err)
		}
	}
	n.wg.Add(1)
	go func() { defer n.wg.Done(); serve(ul, nil) }()
	if tl != nil {
		n.wg.Add(1)
		go func() { defer n.wg.Done(); serve(tl, requireToken(token, mux)) }()
	}
	if err := writeFileAtomic(d.APIFile(), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		s.close()
		return nil, err
	}
	s.files = []string{d.APIFile(), sock}
	return s, nil
}

func (s *apiServer) close() error {
	close(s.done)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		// A handler that ignores its cancelled context: cut it off. Not an
		// error of the node's shutdown.
		_ = s.srv.Close()
	}
	for _, f := range s.files {
		os.Remove(f)
	}
	return nil
}

func requireToken(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			writeError(w, http.StatusUnauthorized, "missing or wrong token: send 'Authorization: Bearer <token>' with the token from the data dir's api.token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func loadOrCreateToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(data))) >= 32 {
		return strings.TrimSpace(string(data)), nil
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(buf)
	if err := writeFileAtomic(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", err
	}
	return tok, nil
}

// writeFileAtomic writes data to a temp file beside path, syncs it and
// renames it into place, so a reader never sees half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	return atomicfile.Write(path, data, mode)
}

// The local API's routes, below APIVersion. The server's mux patterns and
// the client's paths are both made from these, so they cannot drift apart;
// apiRoutes says which method serves each.
const (
	routeID        = "/id"
	routePeers     = "/peers"
	routeStatus    = "/status"
	routeGPUsLocal = "/gpus/local"
	routeGPUsFind  = "/gpus/find" // ?model=&region=&min-vram=&count=&max-price=
	routePrices    = "/prices"    // ?class=
	routeJobs      = "/jobs"      // GET ?limit=&before=: a JobsPage; POST a jobspec.Spec: the Job
	routeJob       = "/jobs/{id}"
	routeJobCancel = "/jobs/{id}/cancel"
	routeJobLogs   = "/jobs/{id}/logs" // ?follow=1
	routeJobOutput = "/jobs/{id}/outputs/{rank}/{path...}"
	routeReceipts  = "/receipts" // ?job=
	routeProofs    = "/proofs"   // ?job=
	routeProof     = "/proofs/{key}"
	routeContent   = "/content"              // POST an AddRequest: InputProgress lines, the last with the CID or an error
	routeJobCkpt   = "/jobs/{id}/checkpoint" // POST a CheckpointRequest: the JobCheckpoint written
	routeProvider  = "/providers/{peer}"     // ?refresh=1: a ProviderReport
	routeImages    = "/images"               // POST an ImageRequest: ImageProgress lines, the last with the image added or an error
)

// apiRoute is one call of the local API.
type apiRoute struct {
	method  string
	pattern string // a route constant
	serve   http.HandlerFunc
}

// apiRoutes is the whole local API: every call a node answers, and the
// only place one is added.
func (n *Node) apiRoutes() []apiRoute {
	get, post := http.MethodGet, http.MethodPost
	return []apiRoute{
		{get, routeID, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, n.Info()) }},
		{get, routePeers, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, n.Peers()) }},
		{get, routeStatus, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, n.Status()) }},
		{get, routeGPUsLocal, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, n.localReport()) }},
		{get, routeGPUsFind, n.serveFindGPUs},
		{get, routePrices, n.servePrices},
		{get, routeJobs, n.serveJobs},
		{post, routeJobs, n.serveSubmitJob},
		{get, routeJob, n.serveJob},
		{post, routeJobCancel, n.serveCancelJob},
		{get, routeJobLogs, n.serveJobLogs},
		{get, routeJobOutput, n.serveJobOutput},
		{post, routeJobSession, n.serveJobSession},
		{post, routeJobForward, n.serveJobForward},
		{get, routeReceipts, n.serveReceipts},
		{get, routeProofs, n.serveProofs},
		{get, routeProof, n.serveProof},
		{post, routeContent, n.serveAddInput},
		{post, routeJobCkpt, n.serveGetCheckpoint},
		{get, routeProvider, n.serveProvider},
		{post, routeImages, n.serveAddImage},
	}
}

func apiMux(n *Node) *http.ServeMux {
	mux := http.NewServeMux()
	for _, rt := range n.apiRoutes() {
		mux.HandleFunc(rt.method+" "+APIVersion+rt.pattern, rt.serve)
	}
	return mux
}

// apiError is the body of every failed API call. Code names the HTTP
// status (apiCodes) so that a reader of the JSON alone can tell them apart.
type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// apiCodes are the codes of apiError, by HTTP status.
var apiCodes = map[int]string{
	http.StatusBadRequest:          "bad_request",
	http.StatusUnauthorized:        "unauthorized",
	http.StatusNotFound:            "not_found",
	http.StatusConflict:            "conflict",
	http.StatusInternalServerError: "internal",
	http.StatusServiceUnavailable:  "unavailable",
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	code, ok := apiCodes[status]
	if !ok {
		code = strings.ReplaceAll(strings.ToLower(http.StatusText(status)), " ", "_")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(apiError{Error: msg, Code: code})
}

func (n *Node) serveFindGPUs(w http.ResponseWriter, r *http.Request) {
	q, err := ParseGPUQuery(r.URL.Query().Get, n.PriceUnit())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	minScore, err := parseMinScore(r.URL.Query().Get("min-score"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), maxFindTime)
	defer cancel()
	res, err := n.FindGPUs(ctx, q)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	found := n.scoreFound(res, q.Count, minScore)
	if res.Named && !found.Enough {
		// The board's cheapest made the count, but not once the low
		// scores were left out: search the whole index.
		if res, err = n.dht.Find(ctx, q); err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		found = n.scoreFound(res, q.Count, minScore)
	}
	writeJSON(w, found)
}

func (n *Node) serveProvider(w http.ResponseWriter, r *http.Request) {
	p, err := peer.Decode(r.PathValue("peer"))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("peer %q: want a peer ID such as 12D3KooW… (gpumesh gpus find lists them)", text.Cut(r.PathValue("peer"), 80)))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), evidenceFetchTimeout+5*time.Second)
	defer cancel()
	writeJSON(w, n.Provider(ctx, p, r.URL.Query().Get("refresh") == "1"))
}

func (n *Node) servePrices(w http.ResponseWriter, r *http.Request) {
	class := r.URL.Query().Get("class")
	if class != "" && !gossip.ValidClass(class) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("class %q: want a GPU class such as H100-80GB", class))
		return
	}
	writeJSON(w, n.Prices(class))
}

// JobsPage answers GET /v0/jobs: a page of the jobs submitted from a peer,
// newest first.
type JobsPage struct {
	Jobs []Job  `json:"jobs"`
	Next string `json:"next"` // cursor of the page after this one (?before=Next); "" on the last page
}

// jobsPage is the page of jobs GET /v0/jobs answers: at most limit
// (1..MaxJobsPage) jobs, newest first, after the cursor before ("" for the
// newest). A cursor this peer did not hand out is an error that
// errors.Is(err, jobstore.ErrBadCursor).
func jobsPage(n *Node, before string, limit int) (JobsPage, error) {
	jobs, next, err := n.JobsPage(before, limit)
	if jobs == nil {
		jobs = []Job{}
	}
	for i := range jobs {
		n.placeInQueue(&jobs[i])
	}
	return JobsPage{Jobs: jobs, Next: next}, err
}

func (n *Node) serveJobs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := DefaultJobsPage
	if v := q.Get("limit"); v != "" {
		l, err := strconv.Atoi(v)
		if err != nil || l < 1 || l > MaxJobsPage {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %s: want 1 to %d jobs a page (default %d)", text.Clip(v), MaxJobsPage, DefaultJobsPage))
			return
		}
		limit = l
	}
	before := q.Get("before")
	page, err := jobsPage(n, before, limit)
	switch {
	case errors.Is(err, jobstore.ErrBadCursor):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("before %s: not a cursor this peer handed out; pass the \"next\" of the page before (`gpumesh job ls --before NEXT`), or none for the newest jobs", text.Clip(before)))
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
	default:
		writeJSON(w, page)
	}
}

func (n *Node) serveSubmitJob(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(io.LimitReader(r.Body, jobspec.MaxSize+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	spec, err := jobspec.Parse(data, "json")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	job, err := n.SubmitJob(r.Context(), spec)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, job)
}

// noJob is the answer about a job this peer does not have.
func noJob(w http.ResponseWriter, id string) {
	writeError(w, http.StatusNotFound, "no job "+text.Printable(id)+" on this peer (`gpumesh job ls` lists them)")
}

func (n *Node) serveJob(w http.ResponseWriter, r *http.Request) {
	j, ok := n.Job(r.PathValue("id"))
	if !ok {
		noJob(w, r.PathValue("id"))
		return
	}
	n.placeInQueue(&j)
	writeJSON(w, j)
}

func (n *Node) serveCancelJob(w http.ResponseWriter, r *http.Request) {
	j, err := n.CancelJob(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	writeJSON(w, j)
}

func (n *Node) serveJobLogs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, ok := n.Job(id); !ok {
		noJob(w, id)
		return
	}
	n.serveLog(r.Context(), w, id, r.URL.Query().Get("follow") == "1")
}

func (n *Node) serveJobOutput(w http.ResponseWriter, r *http.Request) {
	id, path := r.PathValue("id"), r.PathValue("path")
	j, ok := n.Job(id)
	rank, err := strconv.Atoi(r.PathValue("rank"))
	if !ok || err != nil || rank < 0 || rank >= len(j.Runs) || !jobwire.ValidOutputPath(path) {
		writeError(w, http.StatusNotFound, "no such output; `gpumesh job status ID` lists a job's outputs")
		return
	}
	found := false
	for _, o := range j.Runs[rank].Outputs {
		found = found || o.Path == path
	}
	dir, err := n.jobDir(id)
	if !found || err != nil {
		writeError(w, http.StatusNotFound, "no output "+path+" of member "+r.PathValue("rank"))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeFile(w, r, filepath.Join(dir, "outputs", "rank-"+strconv.Itoa(rank), filepath.FromSlash(path)))
}

func (n *Node) serveReceipts(w http.ResponseWriter, r *http.Request) {
	rs, err := n.Receipts(r.URL.Query().Get("job"))
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, rs)
}

func (n *Node) serveProofs(w http.ResponseWriter, r *http.Request) {
	st, err := n.Proofs(r.URL.Query().Get("job"))
	if err != nil {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	writeJSON(w, st)
}

func (n *Node) serveProof(w http.ResponseWriter, r *http.Request) {
	p, err := n.Proof(r.PathValue("key"))
	if err != nil {
		code := http.StatusNotFound
		if errors.Is(err, chain.ErrNotAnchored) {
			code = http.StatusConflict
		}
		writeError(w, code, err.Error())
		return
	}
	writeJSON(w, p)
}
