// Package localnet runs a local Solana JSON-RPC endpoint for gpumesh's tests
// and demo, where no public cluster can be reached.
//
// The endpoint is server.mjs beside this file: a small Node.js server backed
// by LiteSVM, the real Solana runtime (System, SPL Token and Memo programs,
// signature checks, fees), with a slot clock, recent blockhashes and the
// signature statuses a validator would report (processed, then confirmed a
// slot later, then finalized). It speaks the JSON-RPC methods the chain
// package uses through solana-go, the SPL token calls a plain client makes
// (getTokenAccountsByOwner, getTokenAccountBalance), and mints test tokens
// (CreateMint, MintTo). Its npm packages are installed with
// `npm ci` in this folder (`make localnet`); Node.js 20.18 or newer runs it.
//
// Start launches the server as a child process with a pipe as its stdin, so
// it exits when Close stops it or when this process dies. This package talks
// to the server with plain JSON-RPC over net/http (it does not import
// solana-go, which only the chain package uses).
package localnet

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options configure Start.
type Options struct {
	// Dir is the folder holding server.mjs and its node_modules. "" means
	// $GPUMESH_LOCALNET_DIR if set, else the folder of this source file.
	Dir string
	// Port to listen on (127.0.0.1); 0 means any free port.
	Port int
	// SlotTime is how often the slot advances; 0 means the server's default
	// (400 ms, as on mainnet).
	SlotTime time.Duration
	// Log receives the server's stderr and any stdout after its first line
	// (one write at a time); nil discards them.
	Log io.Writer
}

// Localnet is a running server.
type Localnet struct {
	url    string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *tail
	done   chan struct{} // closed once the process has exited and been reaped
	err    error         // how it exited; read after done is closed

	closeOnce sync.Once
	closeErr  error
}

// How long Start waits for the server's first line, and Close for it to exit
// after SIGTERM before killing it.
const (
	startTimeout = 20 * time.Second
	stopTimeout  = 5 * time.Second
	bannerPrefix = "gpumesh-localnet listening on "
)

// Start runs the server on a free loopback port and returns once it answers
// getHealth. ctx bounds the start-up only; the server runs until Close.
func Start(ctx context.Context, opts Options) (*Localnet, error) {
	dir, err := findDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, errors.New("localnet: node is not installed: install Node.js 20 (apt-get install nodejs npm; where Debian's is older than 20.18, then npm install -g node@20)")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "litesvm", "package.json")); err != nil {
		return nil, fmt.Errorf("localnet: %s has no node_modules/litesvm: run `npm ci` in %s (or `make localnet`)", dir, dir)
	}

	args := []string{"server.mjs", "--host", "127.0.0.1", "--port", strconv.Itoa(opts.Port)}
	if opts.SlotTime > 0 {
		args = append(args, "--slot-ms", strconv.FormatInt(max(1, opts.SlotTime.Milliseconds()), 10))
	}
	var logw io.Writer = io.Discard
	if opts.Log != nil {
		logw = &lockedWriter{w: opts.Log} // stdout and stderr are copied by two goroutines
	}
	cmd := exec.Command(node, args...)
	cmd.Dir = dir
	l := &Localnet{cmd: cmd, stderr: &tail{max: 8 << 10}, done: make(chan struct{})}
	cmd.Stderr = io.MultiWriter(l.stderr, logw)
	// stdout through our own pipe, so that reading it never races Wait.
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("localnet: %w", err)
	}
	cmd.Stdout = outW
	if l.stdin, err = cmd.StdinPipe(); err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("localnet: %w", err)
	}
	if err := cmd.Start(); err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("localnet: start node: %w", err)
	}
	outW.Close()
	go func() {
		l.err = cmd.Wait()
		close(l.done)
	}()

	banner := make(chan string, 1)
	go func() {
		defer outR.Close()
		r := bufio.NewReader(outR)
		line, err := r.ReadString('\n')
		if err == nil {
			banner <- strings.TrimSpace(line)
		}
		close(banner)
		_, _ = io.Copy(logw, r)
	}()

	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case line, ok := <-banner:
		url, found := strings.CutPrefix(line, bannerPrefix)
		if !ok {
			l.Close() // stdout closed: it is exiting or has exited
			return nil, l.crashed("it exited while starting")
		}
		if !found {
			l.Close()
			return nil, l.crashed(fmt.Sprintf("it printed %q instead of its address", line))
		}
		l.url = url
	case <-l.done:
		return nil, l.crashed("it exited while starting")
	case <-ctx.Done():
		l.Close()
		return nil, fmt.Errorf("localnet: start: %w", ctx.Err())
	case <-timer.C:
		l.Close()
		return nil, l.crashed(fmt.Sprintf("no address after %v", startTimeout))
	}

	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var health string
	if err := l.call(hctx, "getHealth", nil, &health); err != nil || health != "ok" {
		l.Close()
		return nil, l.crashed(fmt.Sprintf("getHealth answered %q, %v", health, err))
	}
	return l, nil
}

// findDir picks the server's folder: the option, then the environment, then
// the folder this file was compiled from, then chain/localnet beside the
// running binary's folder (bin/gpumesh in a checkout) or below the working
// directory.
func findDir(dir string) (string, error) {
	if dir == "" {
		dir = os.Getenv("GPUMESH_LOCALNET_DIR")
	}
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "server.mjs")); err != nil {
			return "", fmt.Errorf("localnet: no server.mjs in %s: point --localnet-dir (or GPUMESH_LOCALNET_DIR) at the chain/localnet folder of a gpumesh checkout", dir)
		}
		return dir, nil
	}
	var candidates []string
	if _, file, _, ok := runtime.Caller(0); ok {
		candidates = append(candidates, filepath.Dir(file))
	}
	if exe, err := os.Executable(); err == nil {
		candidates = append(candidates, filepath.Join(filepath.Dir(exe), "..", "chain", "localnet"))
	}
	candidates = append(candidates, filepath.Join("chain", "localnet"))
	for _, c := range candidates {
		if _, err := os.Stat(filepath.Join(c, "server.mjs")); err == nil {
			return filepath.Abs(c)
		}
	}
	return "", fmt.Errorf("localnet: no server.mjs found (looked in %s): point --localnet-dir (or GPUMESH_LOCALNET_DIR) at the chain/localnet folder of a gpumesh checkout", strings.Join(candidates, ", "))
}

func (l *Localnet) crashed(what string) error {
	msg := fmt.Sprintf("localnet: the server did not start (%s)", what)
	select {
	case <-l.done:
		if l.err != nil {
			msg += fmt.Sprintf(": %v", l.err)
		}
	default:
	}
	if t := strings.TrimSpace(l.stderr.String()); t != "" {
		msg += "; its stderr:\n" + t
	}
	return errors.New(msg)
}

// URL is the server's JSON-RPC address, http://127.0.0.1:PORT.
func (l *Localnet) URL() string { return l.url }

// Close stops the server: SIGTERM, then a kill if it has not exited within
// a few seconds. It may be called more than once.
func (l *Localnet) Close() error {
	l.closeOnce.Do(func() {
		select {
		case <-l.done:
		default:
			_ = l.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-l.done:
			case <-time.After(stopTimeout):
				_ = l.cmd.Process.Kill()
				<-l.done
				l.closeErr = fmt.Errorf("localnet: the server ignored SIGTERM for %v and was killed", stopTimeout)
				return
			}
		}
		var exit *exec.ExitError
		if l.err != nil && !(errors.As(l.err, &exit) && !exit.Exited()) {
			// It exited on its own with an error (a signal we sent is no error).
			l.closeErr = fmt.Errorf("localnet: the server exited: %v; its stderr:\n%s", l.err, strings.TrimSpace(l.stderr.String()))
		}
	})
	return l.closeErr
}

// Airdrop credits lamports to a base58 address and waits until the airdrop's
// transaction is confirmed.
func (l *Localnet) Airdrop(ctx context.Context, address string, lamports uint64) error {
	var sig string
	if err := l.call(ctx, "requestAirdrop", []any{address, lamports}, &sig); err != nil {
		return fmt.Errorf("localnet: airdrop to %s: %w", address, err)
	}
	return l.confirm(ctx, sig, "airdrop")
}

// CreateMint makes a new SPL token mint with the given decimals, whose mint
// authority is the server's faucet, and returns its address (base58) once
// confirmed.
func (l *Localnet) CreateMint(ctx context.Context, decimals uint8) (string, error) {
	var out struct {
		Mint      string `json:"mint"`
		Signature string `json:"signature"`
	}
	if err := l.call(ctx, "gpumesh_createMint", []any{decimals}, &out); err != nil {
		return "", fmt.Errorf("localnet: create a mint: %w", err)
	}
	return out.Mint, l.confirm(ctx, out.Signature, "mint creation")
}

// MintTo credits amount (the token's smallest unit) of a mint made by
// CreateMint to owner's associated token account, made first if missing,
// and waits until it is confirmed.
func (l *Localnet) MintTo(ctx context.Context, mint, owner string, amount uint64) error {
	var sig string
	if err := l.call(ctx, "gpumesh_mintTo", []any{mint, owner, strconv.FormatUint(amount, 10)}, &sig); err != nil {
		return fmt.Errorf("localnet: mint %d of %s to %s: %w", amount, mint, owner, err)
	}
	return l.confirm(ctx, sig, "mint")
}

// confirm waits until a transaction is confirmed, and fails if it failed.
func (l *Localnet) confirm(ctx context.Context, sig, what string) error {
	for {
		var out struct {
			Value []*struct {
				Err                any    `json:"err"`
				ConfirmationStatus string `json:"confirmationStatus"`
			} `json:"value"`
		}
		if err := l.call(ctx, "getSignatureStatuses", []any{[]string{sig}}, &out); err != nil {
			return fmt.Errorf("localnet: %s %s: %w", what, sig, err)
		}
		if len(out.Value) == 1 && out.Value[0] != nil {
			st := out.Value[0]
			if st.Err != nil {
				return fmt.Errorf("localnet: %s %s failed: %v", what, sig, st.Err)
			}
			if st.ConfirmationStatus == "confirmed" || st.ConfirmationStatus == "finalized" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("localnet: %s %s not confirmed: %w", what, sig, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// RPCError is a JSON-RPC error answer.
type RPCError struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func (e *RPCError) Error() string { return fmt.Sprintf("rpc error %d: %s", e.Code, e.Message) }

// call makes one JSON-RPC call and decodes its result into out.
func (l *Localnet) call(ctx context.Context, method string, params []any, out any) error {
	req := map[string]any{"jsonrpc": "2.0", "id": 1, "method": method}
	if params != nil {
		req["params"] = params
	}
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, l.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var res struct {
		Result json.RawMessage `json:"result"`
		Error  *RPCError       `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&res); err != nil {
		return fmt.Errorf("%s: HTTP %s: %w", method, resp.Status, err)
	}
	if res.Error != nil {
		return res.Error
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(res.Result, out)
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
