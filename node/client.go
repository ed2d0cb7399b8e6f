package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node/jobspec"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// ErrNoNode is returned by client calls when no node answers for a data dir.
var ErrNoNode = errors.New("no running node")

// maxAPIResponse bounds what the client reads from the local API, in bytes.
const maxAPIResponse = 16 << 20

// Client talks to a running node's local API, one method a route of
// apiRoutes; the CLI uses nothing else.
type Client struct {
	dataDir   string
	base      string
	token     string
	http      *http.Client
	streaming *http.Client                            // no overall timeout: logs that follow a job, files
	dial      func(context.Context) (net.Conn, error) // a connection of its own: sessions (client_session.go)
}

// NewClient finds the local API of the node running on dataDir from its api
// file. It does not dial; the first call does.
func NewClient(dataDir string) (*Client, error) {
	d := &DataDir{Path: dataDir}
	data, err := os.ReadFile(d.APIFile())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, noNode(dataDir, "no api file")
	}
	if err != nil {
		return nil, fmt.Errorf("local API: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	if !sc.Scan() {
		return nil, noNode(dataDir, "empty api file")
	}
	addr, err := ma.NewMultiaddr(strings.TrimSpace(sc.Text()))
	if err != nil {
		return nil, fmt.Errorf("api file %s: %v; delete it and restart the node", d.APIFile(), err)
	}
	c := &Client{dataDir: dataDir, base: "http://gpumesh"}
	tr := &http.Transport{}
	if sock, err := addr.ValueForProtocol(ma.P_UNIX); err == nil {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", sock)
		}
		c.dial = func(ctx context.Context) (net.Conn, error) { return tr.DialContext(ctx, "", "") }
	} else {
		na, err := manet.ToNetAddr(addr)
		if err != nil {
			return nil, fmt.Errorf("api file %s: %v", d.APIFile(), err)
		}
		c.base = "http://" + na.String()
		c.dial = func(ctx context.Context) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "tcp", na.String())
		}
		tok, err := os.ReadFile(d.APIToken())
		if err != nil {
			return nil, fmt.Errorf("local API token: %w", err)
		}
		c.token = strings.TrimSpace(string(tok))
	}
	// Longer than any call's own budget (a search has 30 s), so the node's
	// answer, partial or not, arrives before the client gives up.
	c.http = &http.Client{Transport: tr, Timeout: maxFindTime + 15*time.Second}
	c.streaming = &http.Client{Transport: tr}
	return c, nil
}

func noNode(dataDir, why string) error {
	return fmt.Errorf("%w for data dir %s (%s): is `gpumesh node` running? start it with `gpumesh node --data %s`",
		ErrNoNode, dataDir, why, dataDir)
}

// Errors of the local API, by the HTTP status the node answered: test with
// errors.Is. The error itself is an *APIError with the node's message whole.
var (
	ErrBadRequest   = errors.New("local API: bad request")                     // 400: the call's arguments; the message says which
	ErrUnauthorized = errors.New("local API: missing or wrong token")          // 401: over TCP, the data dir's api.token
	ErrNotFound     = errors.New("local API: not found")                       // 404: no such job, output or proof
	ErrConflict     = errors.New("local API: not in that state yet")           // 409: e.g. a proof of a receipt not anchored yet
	ErrUnavailable  = errors.New("local API: the node cannot answer that now") // 503: e.g. a directory search that failed
	errByStatus     = map[int]error{
		http.StatusBadRequest:         ErrBadRequest,
		http.StatusUnauthorized:       ErrUnauthorized,
		http.StatusNotFound:           ErrNotFound,
		http.StatusConflict:           ErrConflict,
		http.StatusServiceUnavailable: ErrUnavailable,
	}
)

// APIError is a call the node refused or failed. errors.Is matches it to
// the Err* of its status.
type APIError struct {
	Status  int    // HTTP status, e.g. 404
	Code    string // the answer's code, e.g. "not_found" ("" when the answer had none)
	Message string // the node's message, whole
}

func (e *APIError) Error() string { return e.Message }

// Is reports whether target is the Err* of e's status.
func (e *APIError) Is(target error) bool {
	err, ok := errByStatus[e.Status]
	return ok && err == target
}

// apiStatusError reads a failed answer: the node's JSON error, or (from a
// proxy, or a node too old for the route) the bare status.
func apiStatusError(resp *http.Response, answer []byte) error {
	e := &APIError{Status: resp.StatusCode}
	var body apiError
	if json.Unmarshal(answer, &body) == nil && body.Error != "" {
		e.Code, e.Message = body.Code, body.Error
		return e
	}
	e.Message = fmt.Sprintf("local API: %s %s: %s", resp.Request.Method, resp.Request.URL.Path, resp.Status)
	if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
		e.Message += " (is the node older than this gpumesh? `gpumesh status` shows its version)"
	}
	return e
}

// apiPath is a route (a route constant) with its {wildcards} filled by args,
// in order: the one place path segments are escaped. A {name...} wildcard
// takes a slash-separated path, escaped segment by segment.
func apiPath(route string, args ...string) (string, error) {
	segs := strings.Split(route, "/")
	for i, seg := range segs {
		if !strings.HasPrefix(seg, "{") {
			continue
		}
		name := strings.Trim(seg, "{}.")
		if len(args) == 0 {
			return "", fmt.Errorf("local API: route %s: no value for {%s}", route, name)
		}
		arg := args[0]
		args = args[1:]
		if arg == "" {
			return "", fmt.Errorf("%w: no %s given", ErrBadRequest, name)
		}
		if strings.HasSuffix(seg, "...}") {
			parts := strings.Split(arg, "/")
			for j, p := range parts {
				parts[j] = url.PathEscape(p)
			}
			segs[i] = strings.Join(parts, "/")
		} else {
			segs[i] = url.PathEscape(arg)
		}
	}
	if len(args) > 0 {
		return "", fmt.Errorf("local API: route %s: %d values too many", route, len(args))
	}
	return APIVersion + strings.Join(segs, "/"), nil
}

func (c *Client) do(ctx context.Context, hc *http.Client, method, path string, query url.Values, body io.Reader) (*http.Response, error) {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			return nil, noNode(c.dataDir, op.Err.Error())
		}
		return nil, fmt.Errorf("local API: %w", err)
	}
	return resp, nil
}

// call does one request and decodes the JSON answer into out; in, if not
// nil, is sent as JSON.
func (c *Client) call(ctx context.Context, method, path string, query url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	resp, err := c.do(ctx, c.http, method, path, query, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAPIResponse))
	if err != nil {
		return fmt.Errorf("local API: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return apiStatusError(resp, answer)
	}
	if err := json.Unmarshal(answer, out); err != nil {
		return fmt.Errorf("local API: bad answer to %s %s: %w", method, path, err)
	}
	return nil
}

// get calls GET route, its wildcards filled with args.
func (c *Client) get(ctx context.Context, query url.Values, out any, route string, args ...string) error {
	path, err := apiPath(route, args...)
	if err != nil {
		return err
	}
	return c.call(ctx, http.MethodGet, path, query, nil, out)
}

// post calls POST route, its wildcards filled with args, with in as JSON
// (nil: no body).
func (c *Client) post(ctx context.Context, in, out any, route string, args ...string) error {
	path, err := apiPath(route, args...)
	if err != nil {
		return err
	}
	return c.call(ctx, http.MethodPost, path, nil, in, out)
}

// stream calls GET route and returns the body as it arrives, for as long
// as ctx lasts: a log that follows a job, an output file.
func (c *Client) stream(ctx context.Context, query url.Values, route string, args ...string) (io.ReadCloser, error) {
	path, err := apiPath(route, args...)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(ctx, c.streaming, http.MethodGet, path, query, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		answer, _ := io.ReadAll(io.LimitReader(resp.Body, maxAPIResponse))
		return nil, apiStatusError(resp, answer)
	}
	return resp.Body, nil
}

// ID asks the node who it is (GET /v0/id).
func (c *Client) ID(ctx context.Context) (IDInfo, error) {
	var v IDInfo
	return v, c.get(ctx, nil, &v, routeID)
}

// Peers lists the node's connected peers (GET /v0/peers).
func (c *Client) Peers(ctx context.Context) ([]PeerInfo, error) {
	var v []PeerInfo
	return v, c.get(ctx, nil, &v, routePeers)
}

// Status asks the node how it is doing (GET /v0/status).
func (c *Client) Status(ctx context.Context) (Status, error) {
	var v Status
	return v, c.get(ctx, nil, &v, routeStatus)
}

// LocalGPUs asks for the node's own GPUs and the offer it publishes (GET
// /v0/gpus/local).
func (c *Client) LocalGPUs(ctx context.Context) (LocalGPUs, error) {
	var v LocalGPUs
	return v, c.get(ctx, nil, &v, routeGPUsLocal)
}

// FindQuery asks the swarm's directory for GPUs (GET /v0/gpus/find). Zero
// fields ask nothing.
type FindQuery struct {
	Model     string  // GPU model (H100) or class (H100-80GB)
	Region    string  // region label prefix, e.g. "eu"
	MinVRAMGB int     // memory per GPU, GB
	Count     int     // GPUs needed
	MaxPrice  string  // highest ask per GPU-hour, in tokens of the node's price unit, e.g. "2.50"
	MinScore  float64 // lowest provider score (node/reputation), 0..1; 0: any
}

func (q FindQuery) values() url.Values {
	v := url.Values{}
	set := func(k, val string) {
		if val != "" && val != "0" {
			v.Set(k, val)
		}
	}
	set("model", q.Model)
	set("region", q.Region)
	set("min-vram", strconv.Itoa(q.MinVRAMGB))
	set("count", strconv.Itoa(q.Count))
	set("max-price", q.MaxPrice)
	if q.MinScore != 0 {
		v.Set("min-score", strconv.FormatFloat(q.MinScore, 'g', -1, 64))
	}
	return v
}

// Check checks q as the node will, before a call: MaxPrice as a price of 9
// decimals (the node checks it again in its own price unit).
func (q FindQuery) Check() error {
	_, err := ParseGPUQuery(q.values().Get, gossip.Unit{Token: "X", Decimals: 9})
	_, err2 := parseMinScore(q.values().Get("min-score"))
	return errors.Join(err, err2)
}

// FindGPUs searches the swarm's directory, cheapest first (up to 30 s).
func (c *Client) FindGPUs(ctx context.Context, q FindQuery) (GPUsFound, error) {
	var v GPUsFound
	return v, c.get(ctx, q.values(), &v, routeGPUsFind)
}

// Provider asks the node for a provider's score and the evidence behind
// it; with refresh the node fetches and checks the provider's receipts
// first (GET /v0/providers/{peer}).
func (c *Client) Provider(ctx context.Context, peer string, refresh bool) (ProviderReport, error) {
	var v ProviderReport
	var q url.Values
	if refresh {
		q = url.Values{"refresh": {"1"}}
	}
	return v, c.get(ctx, q, &v, routeProvider, peer)
}

// Prices asks the node for its price board: one class, or all when class
// is "" (GET /v0/prices).
func (c *Client) Prices(ctx context.Context, class string) (Prices, error) {
	var v Prices
	var q url.Values
	if class != "" {
		q = url.Values{"class": {class}}
	}
	return v, c.get(ctx, q, &v, routePrices)
}

// SubmitJob submits a job; the node negotiates its cluster (POST /v0/jobs).
func (c *Client) SubmitJob(ctx context.Context, spec jobspec.Spec) (Job, error) {
	var v Job
	return v, c.post(ctx, spec, &v, routeJobs)
}

// AddInput has the node add the file or folder at path (absolute, on the
// node's machine) to its content store (POST /v0/content); progress, if
// set, is told each report of the bytes read. The last report carries
// the CID.
func (c *Client) AddInput(ctx context.Context, path string, progress func(InputProgress)) (InputProgress, error) {
	apiPathOf, err := apiPath(routeContent)
	if err != nil {
		return InputProgress{}, err
	}
	body, err := json.Marshal(AddRequest{Path: path})
	if err != nil {
		return InputProgress{}, err
	}
	resp, err := c.do(ctx, c.streaming, http.MethodPost, apiPathOf, nil, bytes.NewReader(body))
	if err != nil {
		return InputProgress{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		answer, _ := io.ReadAll(io.LimitReader(resp.Body, maxAPIResponse))
		return InputProgress{}, apiStatusError(resp, answer)
	}
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxAPIResponse))
	for {
		var p InputProgress
		if err := dec.Decode(&p); err != nil {
			return InputProgress{}, fmt.Errorf("local API: adding %s: the node's answer ended early: %w", path, err)
		}
		switch {
		case p.Error != "":
			return p, errors.New(p.Error)
		case p.CID != "":
			if progress != nil {
				progress(p)
			}
			return p, nil
		case progress != nil:
			progress(p)
		}
	}
}

// GetCheckpoint has the node write job id's latest checkpoint into dir
// (absolute, on the node's machine; it must not exist or be empty) (POST
// /v0/jobs/{id}/checkpoint).
func (c *Client) GetCheckpoint(ctx context.Context, id, dir string) (JobCheckpoint, error) {
	var v JobCheckpoint
	return v, c.post(ctx, CheckpointRequest{Dir: dir}, &v, routeJobCkpt, id)
}

// JobsQuery asks for a page of jobs (GET /v0/jobs).
type JobsQuery struct {
	Limit  int    // jobs a page, 1..MaxJobsPage; 0 means DefaultJobsPage
	Before string // the Next of the page before; "" for the newest jobs
}

// Jobs lists a page of the jobs submitted from the node, newest first.
func (c *Client) Jobs(ctx context.Context, q JobsQuery) (JobsPage, error) {
	v := url.Values{}
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Before != "" {
		v.Set("before", q.Before)
	}
	var page JobsPage
	return page, c.get(ctx, v, &page, routeJobs)
}

// Job asks for one job (GET /v0/jobs/{id}); ErrNotFound if the node has no
// such job.
func (c *Client) Job(ctx context.Context, id string) (Job, error) {
	var v Job
	return v, c.get(ctx, nil, &v, routeJob, id)
}

// CancelJob cancels a job: every member's GPUs are released (POST
// /v0/jobs/{id}/cancel).
func (c *Client) CancelJob(ctx context.Context, id string) (Job, error) {
	var v Job
	return v, c.post(ctx, nil, &v, routeJobCancel, id)
}

// JobLogs streams a job's logs, each line prefixed by its member's rank
// (GET /v0/jobs/{id}/logs); with follow, until the job ends or ctx does.
// The caller closes the reader.
func (c *Client) JobLogs(ctx context.Context, id string, follow bool) (io.ReadCloser, error) {
	var q url.Values
	if follow {
		q = url.Values{"follow": {"1"}}
	}
	return c.stream(ctx, q, routeJobLogs, id)
}

// JobOutput streams one output file of a job's member (GET
// /v0/jobs/{id}/outputs/{rank}/{path...}); path is slash-separated, as in
// the job's MemberRun.Outputs. The caller closes the reader.
func (c *Client) JobOutput(ctx context.Context, id string, rank int, path string) (io.ReadCloser, error) {
	return c.stream(ctx, nil, routeJobOutput, id, strconv.Itoa(rank), path)
}

// Receipts lists the signed receipts the node keeps, of one job or all
// when job is "" (GET /v0/receipts).
func (c *Client) Receipts(ctx context.Context, job string) ([]receipt.Signed, error) {
	var q url.Values
	if job != "" {
		q = url.Values{"job": {job}}
	}
	var v []receipt.Signed
	return v, c.get(ctx, q, &v, routeReceipts)
}

// Proofs says where the anchoring of the node's receipts stands, of one
// job or all when job is "" (GET /v0/proofs); ErrNotFound when the node
// anchors nothing.
func (c *Client) Proofs(ctx context.Context, job string) (AnchorStatus, error) {
	var q url.Values
	if job != "" {
		q = url.Values{"job": {job}}
	}
	var v AnchorStatus
	return v, c.get(ctx, q, &v, routeProofs)
}

// Proof is the proof of one anchored receipt, by its key (GET
// /v0/proofs/{key}); ErrConflict while it waits for its batch.
func (c *Client) Proof(ctx context.Context, key string) (chain.Proof, error) {
	var v chain.Proof
	return v, c.get(ctx, nil, &v, routeProof, key)
}
