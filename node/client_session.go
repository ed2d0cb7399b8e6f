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
	return &upgradedConn{Conn: conn, r: br}, nil
}

// upgradedConn reads what the response's reader already holds first.
type upgradedConn struct {
	net.Conn
	r *bufio.Reader
}

func (u *upgradedConn) Read(p []byte) (int, error) { return u.r.Read(p) }

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
