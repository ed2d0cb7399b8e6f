package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/gpumesh/gpumesh/node/sessionwire"
)

// OpenSession opens a session into a member of job id through the node
// (POST /v0/jobs/{id}/session, upgraded): the connection it returns
// carries the session's frames (exec) or the forwarded connection's bytes.
func (c *Client) OpenSession(ctx context.Context, id string, o sessionwire.Open) (net.Conn, error) {
	return c.openSession(ctx, id, o, nil)
}

func (c *Client) openSession(ctx context.Context, id string, o sessionwire.Open, hdr http.Header) (net.Conn, error) {
	path, err := apiPath(routeJobSession, id)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(o)
	if err != nil {
		return nil, err
	}
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, noNode(c.dataDir, err.Error())
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(body))
	if err != nil {
		conn.Close()
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", sessionUpgrade)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("local API: %w", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("local API: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		answer, _ := io.ReadAll(io.LimitReader(resp.Body, maxAPIResponse))
		resp.Body.Close()
		conn.Close()
		return nil, apiStatusError(resp, answer)
	}
	if !stop() {
		conn.Close()
		return nil, ctx.Err()
	}
	return &upgradedConn{Conn: conn, r: br, passes: resp.Header.Get(passConnHeader) == "1"}, nil
}

// upgradedConn reads what the response's reader already holds first.
type upgradedConn struct {
	net.Conn
	r      *bufio.Reader
	passes bool // the node takes the forwarded connection itself (PassConn)
}

func (u *upgradedConn) Read(p []byte) (int, error) { return u.r.Read(p) }

// ReadAhead gives pipe.Copy the reader and the connection itself (a
// socket it can splice).
func (u *upgradedConn) ReadAhead() (*bufio.Reader, io.ReadWriter) { return u.r, u.Conn }

// CloseWrite half-closes the connection to the node.
func (u *upgradedConn) CloseWrite() error {
	if cw, ok := u.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return u.Conn.Close()
}

// Exec runs a command in a member of job id (o: its rank, command, TTY),
// with x's input and output, and returns its exit code.
func (c *Client) Exec(ctx context.Context, id string, o sessionwire.Open, x sessionwire.ExecIO) (int, error) {
	o.Kind = sessionwire.KindExec
	o.Stdin = o.Stdin || x.Stdin != nil
	conn, err := c.OpenSession(ctx, id, o)
	if err != nil {
		return -1, err
	}
	defer conn.Close()
	return sessionwire.RunExec(ctx, conn, x)
}

// Forward opens one connection to port of member rank of job id.
func (c *Client) Forward(ctx context.Context, id string, rank, port int) (net.Conn, error) {
	return c.OpenSession(ctx, id, sessionwire.Open{Kind: sessionwire.KindForward, Rank: rank, Port: port})
}

// ForwardConn opens one connection to port of member rank of job id for
// the open forward key (HoldForward; "" for none), and asks the node to
// take the forwarded connection itself: where it agrees, TakesConn says
// so and PassConn hands it over.
func (c *Client) ForwardConn(ctx context.Context, id, key string, rank, port int) (net.Conn, error) {
	hdr := http.Header{}
	hdr.Set(passConnHeader, "1")
	if key != "" {
		hdr.Set(forwardHeader, key)
	}
	return c.openSession(ctx, id, sessionwire.Open{Kind: sessionwire.KindForward, Rank: rank, Port: port}, hdr)
}

// TakesConn reports whether the node agreed to take the forwarded
// connection of session conn (ForwardConn) itself.
func TakesConn(conn net.Conn) bool {
	u, ok := conn.(*upgradedConn)
	return ok && u.passes
}

// HoldForward tells the node of a forward that listens now (POST
// /v0/jobs/{id}/forwards), for the explorer: it returns the forward's key
// for ForwardConn and a body that ends when the job stops running. The
// forward is open until the body is closed.
func (c *Client) HoldForward(ctx context.Context, id string, fr ForwardRequest) (string, io.ReadCloser, error) {
	path, err := apiPath(routeJobForward, id)
	if err != nil {
		return "", nil, err
	}
	body, err := json.Marshal(fr)
	if err != nil {
		return "", nil, err
	}
	resp, err := c.do(ctx, c.streaming, http.MethodPost, path, nil, bytes.NewReader(body))
	if err != nil {
		return "", nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		answer, _ := io.ReadAll(io.LimitReader(resp.Body, maxAPIResponse))
		return "", nil, apiStatusError(resp, answer)
	}
	return resp.Header.Get(forwardHeader), resp.Body, nil
}
