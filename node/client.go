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
	"strings"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// ErrNoNode is returned by client calls when no node answers for a data dir.
var ErrNoNode = errors.New("no running node")

// maxAPIResponse bounds what the client reads from the local API, in bytes.
const maxAPIResponse = 16 << 20

// Client talks to a running node's local API; the CLI uses nothing else.
type Client struct {
	dataDir string
	base    string
	token   string
	http    *http.Client
	stream  *http.Client // no overall timeout: logs that follow a job, files
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
	} else {
		na, err := manet.ToNetAddr(addr)
		if err != nil {
			return nil, fmt.Errorf("api file %s: %v", d.APIFile(), err)
		}
		c.base = "http://" + na.String()
		tok, err := os.ReadFile(d.APIToken())
		if err != nil {
			return nil, fmt.Errorf("local API token: %w", err)
		}
		c.token = strings.TrimSpace(string(tok))
	}
	// Longer than any call's own budget (a search has 30 s), so the node's
	// answer, partial or not, arrives before the client gives up.
	c.http = &http.Client{Transport: tr, Timeout: maxFindTime + 15*time.Second}
	c.stream = &http.Client{Transport: tr}
	return c, nil
}

func noNode(dataDir, why string) error {
	return fmt.Errorf("%w for data dir %s (%s): is `gpumesh node` running? start it with `gpumesh node --data %s`",
		ErrNoNode, dataDir, why, dataDir)
}

// Get calls GET /v0/<path> and decodes the JSON answer into out.
func (c *Client) Get(ctx context.Context, path string, out any) error {
	return c.call(ctx, http.MethodGet, path, nil, out)
}

// Post calls POST /v0/<path> with in as JSON (nil: no body) and decodes the
// JSON answer into out.
func (c *Client) Post(ctx context.Context, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	return c.call(ctx, http.MethodPost, path, body, out)
}

// Stream calls GET /v0/<path> and returns the body as it arrives, for as
// long as ctx lasts: a log that follows a job, an output file.
func (c *Client) Stream(ctx context.Context, path string) (io.ReadCloser, error) {
	resp, err := c.do(ctx, c.stream, http.MethodGet, path, nil)
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

func (c *Client) do(ctx context.Context, hc *http.Client, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+APIVersion+"/"+path, body)
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

func apiStatusError(resp *http.Response, answer []byte) error {
	var e apiError
	if json.Unmarshal(answer, &e) == nil && e.Error != "" {
		return fmt.Errorf("local API: %s", e.Error)
	}
	return fmt.Errorf("local API: %s", resp.Status)
}

func (c *Client) call(ctx context.Context, method, path string, body io.Reader, out any) error {
	resp, err := c.do(ctx, c.http, method, path, body)
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
		return fmt.Errorf("local API: bad answer to %s: %w", path, err)
	}
	return nil
}

// ID asks the node who it is.
func (c *Client) ID(ctx context.Context) (IDInfo, error) {
	var v IDInfo
	return v, c.Get(ctx, "id", &v)
}

// Peers lists the node's connected peers.
func (c *Client) Peers(ctx context.Context) ([]PeerInfo, error) {
	var v []PeerInfo
	return v, c.Get(ctx, "peers", &v)
}

// Status asks the node how it is doing.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var v Status
	return v, c.Get(ctx, "status", &v)
}

// Prices asks the node for its price board (one class, or all when class
// is "").
func (c *Client) Prices(ctx context.Context, class string) (Prices, error) {
	var v Prices
	path := "prices"
	if class != "" {
		path += "?class=" + url.QueryEscape(class)
	}
	return v, c.Get(ctx, path, &v)
}
