package localnet

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/mr-tron/base58"
)

// start runs a server with fast slots for one test. Without node or
// node_modules the test is skipped on a developer's machine and fails in CI
// (CI installs both).
func start(t *testing.T) *Localnet {
	t.Helper()
	dir, err := findDir("")
	if err != nil {
		t.Fatal(err)
	}
	_, nodeErr := exec.LookPath("node")
	_, modErr := os.Stat(filepath.Join(dir, "node_modules", "litesvm"))
	if nodeErr != nil || modErr != nil {
		msg := "the Solana localnet needs Node.js and `npm ci` in " + dir + " (make localnet)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	began := time.Now()
	l, err := Start(ctx, Options{SlotTime: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("localnet at %s, started in %v", l.URL(), time.Since(began).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func newAddress(t *testing.T) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base58.Encode(b)
}

// post sends a raw body and returns the HTTP status and body.
func post(t *testing.T, l *Localnet, body []byte) (int, []byte) {
	t.Helper()
	resp, err := http.Post(l.URL(), "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out
}

func TestHealthAndVersion(t *testing.T) {
	l := start(t)
	var health string
	if err := l.call(ctx(t), "getHealth", nil, &health); err != nil || health != "ok" {
		t.Fatalf("getHealth = %q, %v", health, err)
	}
	var v map[string]any
	if err := l.call(ctx(t), "getVersion", nil, &v); err != nil {
		t.Fatal(err)
	}
	if s, _ := v["solana-core"].(string); !strings.Contains(s, "litesvm") {
		t.Errorf("solana-core = %v", v["solana-core"])
	}
	if _, ok := v["feature-set"].(float64); !ok {
		t.Errorf("feature-set = %v", v["feature-set"])
	}
}

type blockhashResult struct {
	Context struct{ Slot uint64 } `json:"context"`
	Value   struct {
		Blockhash            string `json:"blockhash"`
		LastValidBlockHeight uint64 `json:"lastValidBlockHeight"`
	} `json:"value"`
}

func TestSlotsAndBlockhashes(t *testing.T) {
	l := start(t)
	var first, slot, height uint64
	var bh1, bh2 blockhashResult
	if err := l.call(ctx(t), "getSlot", []any{map[string]any{"commitment": "finalized"}}, &first); err != nil {
		t.Fatal(err)
	}
	if err := l.call(ctx(t), "getLatestBlockhash", []any{map[string]any{"commitment": "confirmed"}}, &bh1); err != nil {
		t.Fatal(err)
	}
	if bh1.Value.LastValidBlockHeight != bh1.Context.Slot+150 {
		t.Errorf("lastValidBlockHeight %d at slot %d, want slot+150", bh1.Value.LastValidBlockHeight, bh1.Context.Slot)
	}
	// Slots of 50 ms move on by themselves: two of them within seconds.
	testwait.For(t, 10*time.Second, "two more slots", func() (bool, string) {
		if err := l.call(ctx(t), "getSlot", nil, &slot); err != nil {
			return false, err.Error()
		}
		return slot >= first+2, fmt.Sprintf("slot %d, from slot %d", slot, first)
	})
	if err := l.call(ctx(t), "getBlockHeight", nil, &height); err != nil {
		t.Fatal(err)
	}
	if height < first+2 {
		t.Errorf("at slot %d: block height %d, from slot %d", slot, height, first)
	}
	if err := l.call(ctx(t), "getLatestBlockhash", nil, &bh2); err != nil {
		t.Fatal(err)
	}
	if bh2.Value.Blockhash == bh1.Value.Blockhash || bh2.Value.LastValidBlockHeight <= bh1.Value.LastValidBlockHeight {
		t.Errorf("blockhash did not move on with the slots: %+v then %+v", bh1.Value, bh2.Value)
	}
	// An older blockhash is still valid; a made-up one is not.
	for hash, want := range map[string]bool{bh1.Value.Blockhash: true, newAddress(t): false} {
		var valid struct{ Value bool }
		if err := l.call(ctx(t), "isBlockhashValid", []any{hash}, &valid); err != nil {
			t.Fatal(err)
		}
		if valid.Value != want {
			t.Errorf("isBlockhashValid(%s) = %v, want %v", hash, valid.Value, want)
		}
	}
}

func TestAirdropAndBalance(t *testing.T) {
	l := start(t)
	addr := newAddress(t)
	var bal struct {
		Context struct{ Slot uint64 } `json:"context"`
		Value   uint64                `json:"value"`
	}
	if err := l.call(ctx(t), "getBalance", []any{addr}, &bal); err != nil || bal.Value != 0 {
		t.Fatalf("balance of a new address = %d, %v", bal.Value, err)
	}
	if err := l.Airdrop(ctx(t), addr, 1_500_000_000); err != nil {
		t.Fatal(err)
	}
	if err := l.call(ctx(t), "getBalance", []any{addr, map[string]any{"commitment": "confirmed"}}, &bal); err != nil {
		t.Fatal(err)
	}
	if bal.Value != 1_500_000_000 || bal.Context.Slot == 0 {
		t.Errorf("balance after airdrop = %+v", bal)
	}
	var acct struct {
		Value *struct {
			Lamports uint64   `json:"lamports"`
			Owner    string   `json:"owner"`
			Data     []string `json:"data"`
		} `json:"value"`
	}
	if err := l.call(ctx(t), "getAccountInfo", []any{addr, map[string]any{"encoding": "base64"}}, &acct); err != nil {
		t.Fatal(err)
	}
	if acct.Value == nil || acct.Value.Lamports != 1_500_000_000 || acct.Value.Owner != "11111111111111111111111111111111" || len(acct.Value.Data) != 2 || acct.Value.Data[1] != "base64" {
		t.Errorf("getAccountInfo = %+v", acct.Value)
	}
	if err := l.call(ctx(t), "getAccountInfo", []any{newAddress(t)}, &acct); err != nil || acct.Value != nil {
		t.Errorf("getAccountInfo of a missing account = %+v, %v", acct.Value, err)
	}
	if err := l.Airdrop(ctx(t), "not-an-address", 1); err == nil {
		t.Error("airdrop to a bad address succeeded")
	}
}

func TestUnknownMethod(t *testing.T) {
	l := start(t)
	err := l.call(ctx(t), "getNothingAtAll", nil, nil)
	var rerr *RPCError
	if !errors.As(err, &rerr) || rerr.Code != -32601 || !strings.Contains(rerr.Message, "getNothingAtAll") {
		t.Fatalf("unknown method: %v", err)
	}
}

func TestBatch(t *testing.T) {
	l := start(t)
	status, body := post(t, l, []byte(`[
		{"jsonrpc":"2.0","id":1,"method":"getHealth"},
		{"jsonrpc":"2.0","id":"two","method":"getSlot"},
		{"jsonrpc":"2.0","id":3,"method":"noSuchMethod"},
		{"jsonrpc":"2.0","id":4,"method":"getMinimumBalanceForRentExemption","params":[0]}]`))
	if status != http.StatusOK {
		t.Fatalf("HTTP %d: %s", status, body)
	}
	var replies []struct {
		ID     any             `json:"id"`
		Result json.RawMessage `json:"result"`
		Error  *RPCError       `json:"error"`
	}
	if err := json.Unmarshal(body, &replies); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if len(replies) != 4 {
		t.Fatalf("%d replies: %s", len(replies), body)
	}
	if replies[0].ID != float64(1) || string(replies[0].Result) != `"ok"` {
		t.Errorf("reply 0: %s", body)
	}
	if replies[1].ID != "two" || replies[1].Error != nil {
		t.Errorf("reply 1: %s", body)
	}
	if replies[2].Error == nil || replies[2].Error.Code != -32601 {
		t.Errorf("reply 2: %s", body)
	}
	if string(replies[3].Result) != "890880" {
		t.Errorf("rent-exempt minimum for 0 bytes: %s", replies[3].Result)
	}
	status, body = post(t, l, []byte(`{"jsonrpc":"2.0","id":1,"method":`))
	if !strings.Contains(string(body), "-32700") {
		t.Errorf("bad JSON: HTTP %d %s", status, body)
	}
}

func TestOversizeBodyRefused(t *testing.T) {
	l := start(t)
	big := append([]byte(`{"jsonrpc":"2.0","id":1,"method":"getHealth","params":["`), bytes.Repeat([]byte("x"), 2<<20)...)
	big = append(big, `"]}`...)
	status, body := post(t, l, big)
	if status != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), "-32600") {
		t.Fatalf("2 MiB body: HTTP %d %s", status, body)
	}
	// The server still answers afterwards.
	var health string
	if err := l.call(ctx(t), "getHealth", nil, &health); err != nil || health != "ok" {
		t.Fatalf("getHealth after a refused body = %q, %v", health, err)
	}
}

func gone(pid int) bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) }

func TestCloseLeavesNoProcess(t *testing.T) {
	l := start(t)
	pid := l.cmd.Process.Pid
	if gone(pid) {
		t.Fatal("server process not running")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if !gone(pid) {
		t.Errorf("process %d still exists after Close", pid)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := l.call(c, "getHealth", nil, nil); err == nil {
		t.Error("server still answers after Close")
	}
}

// When the Go process that started it goes away, its end of the stdin pipe
// closes and the server exits on its own.
func TestStdinCloseStopsServer(t *testing.T) {
	l := start(t)
	pid := l.cmd.Process.Pid
	if err := l.stdin.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.done:
	case <-time.After(10 * time.Second):
		t.Fatal("server still running 10 s after its stdin closed")
	}
	if l.err != nil {
		t.Errorf("server exit: %v", l.err)
	}
	if !gone(pid) {
		t.Errorf("process %d still exists", pid)
	}
}

func TestStartErrors(t *testing.T) {
	empty := t.TempDir()
	if _, err := Start(context.Background(), Options{Dir: empty}); err == nil || !strings.Contains(err.Error(), "server.mjs") {
		t.Errorf("folder without server.mjs: %v", err)
	}
	if err := os.WriteFile(filepath.Join(empty, "server.mjs"), []byte("process.exit(3)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("node"); err == nil {
		_, err := Start(context.Background(), Options{Dir: empty})
		if err == nil || !strings.Contains(err.Error(), "npm ci") {
			t.Errorf("folder without node_modules: %v", err)
		}
		t.Log(err)
		// A server that dies at once: the error carries its stderr.
		if err := os.MkdirAll(filepath.Join(empty, "node_modules", "litesvm"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(empty, "node_modules", "litesvm", "package.json"), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(empty, "server.mjs"), []byte("console.error('boom: no chain today'); process.exit(3)\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = Start(context.Background(), Options{Dir: empty})
		if err == nil || !strings.Contains(err.Error(), "boom: no chain today") {
			t.Errorf("crashing server: %v", err)
		}
		t.Log(err)
	}
	t.Setenv("PATH", t.TempDir())
	_, err := Start(context.Background(), Options{Dir: empty})
	if err == nil || !strings.Contains(err.Error(), "install Node.js") {
		t.Errorf("without node: %v", err)
	}
	t.Log(err)
}

type uiAmount struct {
	Amount         string  `json:"amount"`
	Decimals       int     `json:"decimals"`
	UIAmount       float64 `json:"uiAmount"`
	UIAmountString string  `json:"uiAmountString"`
}

// A test mint, tokens minted to an owner, and the token calls a plain
// client makes to see them.
func TestTokenMintAndTheTokenCalls(t *testing.T) {
	l := start(t)
	mint, err := l.CreateMint(ctx(t), 6)
	if err != nil {
		t.Fatal(err)
	}
	owner, stranger := newAddress(t), newAddress(t)
	if err := l.MintTo(ctx(t), mint, owner, 1_000_500_000); err != nil {
		t.Fatal(err)
	}
	if err := l.MintTo(ctx(t), mint, owner, 250_000); err != nil { // into the same account, made once
		t.Fatal(err)
	}
	var supply struct{ Value uiAmount }
	if err := l.call(ctx(t), "getTokenSupply", []any{mint}, &supply); err != nil {
		t.Fatal(err)
	}
	if want := (uiAmount{"1000750000", 6, 1000.75, "1000.75"}); supply.Value != want {
		t.Errorf("getTokenSupply = %+v, want %+v", supply.Value, want)
	}

	type parsedAccount struct {
		Pubkey  string `json:"pubkey"`
		Account struct {
			Owner string `json:"owner"`
			Data  struct {
				Program string `json:"program"`
				Parsed  struct {
					Type string `json:"type"`
					Info struct {
						Mint        string   `json:"mint"`
						Owner       string   `json:"owner"`
						State       string   `json:"state"`
						TokenAmount uiAmount `json:"tokenAmount"`
					} `json:"info"`
				} `json:"parsed"`
			} `json:"data"`
		} `json:"account"`
	}
	var byOwner struct{ Value []parsedAccount }
	if err := l.call(ctx(t), "getTokenAccountsByOwner", []any{owner, map[string]any{"mint": mint}, map[string]any{"encoding": "jsonParsed"}}, &byOwner); err != nil {
		t.Fatal(err)
	}
	if len(byOwner.Value) != 1 {
		t.Fatalf("getTokenAccountsByOwner = %+v, want one account", byOwner.Value)
	}
	acc := byOwner.Value[0]
	info := acc.Account.Data.Parsed.Info
	if acc.Account.Owner != "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA" || acc.Account.Data.Program != "spl-token" || acc.Account.Data.Parsed.Type != "account" ||
		info.Mint != mint || info.Owner != owner || info.State != "initialized" || info.TokenAmount.Amount != "1000750000" {
		t.Errorf("the owner's token account = %+v", acc)
	}
	// By program, base64: the same account, its amount at bytes 64..72.
	var raw struct {
		Value []struct {
			Pubkey  string `json:"pubkey"`
			Account struct {
				Data []string `json:"data"`
			} `json:"account"`
		}
	}
	if err := l.call(ctx(t), "getTokenAccountsByOwner", []any{owner, map[string]any{"programId": "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"}, map[string]any{"encoding": "base64"}}, &raw); err != nil {
		t.Fatal(err)
	}
	if len(raw.Value) != 1 || raw.Value[0].Pubkey != acc.Pubkey || len(raw.Value[0].Account.Data) != 2 || raw.Value[0].Account.Data[1] != "base64" {
		t.Errorf("by program: %+v", raw.Value)
	}
	var bal struct{ Value uiAmount }
	if err := l.call(ctx(t), "getTokenAccountBalance", []any{acc.Pubkey}, &bal); err != nil {
		t.Fatal(err)
	}
	if bal.Value.Amount != "1000750000" || bal.Value.Decimals != 6 || bal.Value.UIAmountString != "1000.75" {
		t.Errorf("getTokenAccountBalance = %+v", bal.Value)
	}
	if err := l.call(ctx(t), "getTokenAccountsByOwner", []any{stranger, map[string]any{"mint": mint}}, &byOwner); err != nil || len(byOwner.Value) != 0 {
		t.Errorf("a stranger's token accounts: %+v, %v", byOwner.Value, err)
	}

	// What is not a token account or a mint is refused, saying so.
	for _, tc := range []struct {
		method string
		params []any
		says   string
	}{
		{"getTokenAccountBalance", []any{owner}, "could not find account"},
		{"getTokenAccountBalance", []any{mint}, "not a Token account"},
		{"getTokenSupply", []any{acc.Pubkey}, "not a Token mint"},
		{"getTokenAccountsByOwner", []any{owner, map[string]any{"mint": stranger}}, "could not find mint"},
		{"getTokenAccountsByOwner", []any{owner, map[string]any{}}, "expected a filter"},
		{"getTokenAccountsByOwner", []any{"nope", map[string]any{"mint": mint}}, "invalid owner"},
		{"gpumesh_mintTo", []any{acc.Pubkey, owner, "5"}, "is not an SPL token mint"},
		{"gpumesh_mintTo", []any{mint, owner, "0"}, "positive 64-bit integer"},
	} {
		err := l.call(ctx(t), tc.method, tc.params, nil)
		var rerr *RPCError
		if !errors.As(err, &rerr) || rerr.Code != -32602 || !strings.Contains(rerr.Message, tc.says) {
			t.Errorf("%s %v: %v, want -32602 saying %q", tc.method, tc.params, err, tc.says)
		}
	}
}
