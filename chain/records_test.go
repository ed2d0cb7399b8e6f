package chain_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/chain"
)

// logBuffer collects an anchorer's log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// checkLines fails unless every line of the record log parses.
func checkLines(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines++
		var v struct{ Key string }
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil || v.Key == "" {
			t.Fatalf("records.log line %d does not parse (%v): %q", lines, err, sc.Text())
		}
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		t.Fatalf("records.log ends inside a line: %q", data[max(0, len(data)-40):])
	}
	return lines
}

// A line torn in the middle of records.log (a disk's torn write) does not
// stop the anchorer: it starts, says so, and when every record is added
// again, as the node does at each start, anchors each exactly once, the
// torn one too; once they are anchored the log is empty again, and a
// restart that adds them all again anchors nothing more.
func TestATornLineInTheRecordLogIsSkippedAndTheRestAnchoredOnce(t *testing.T) {
	ln := startLocalnet(t)
	key := fundedKey(t, ln)
	dir := t.TempDir()
	logPath := filepath.Join(dir, "records.log")
	cfg := chain.Config{Dir: dir, RPC: ln.URL(), Key: key, BatchSize: 100, BatchAge: 50 * time.Millisecond}
	a, err := chain.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	recs := items(0, 250)
	if err := a.AddAll(recs); err != nil {
		t.Fatal(err)
	}
	a.Close()

	// Line 120 of 250 loses its second half.
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	torn := 120
	lines[torn] = append(lines[torn][:len(lines[torn])/2:len(lines[torn])/2], '\n')
	data = bytes.Join(lines, nil)
	if err := os.WriteFile(logPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	sizeBefore := int64(len(data))

	var logs logBuffer
	cfg.Log = logs.logger()
	b, err := chain.Open(cfg)
	if err != nil {
		t.Fatalf("a torn line stops the anchorer: %v", err)
	}
	if !strings.Contains(logs.String(), "a line that does not parse is skipped") {
		t.Errorf("no warning of the torn line; log:\n%s", logs.String())
	}
	if st := b.Stats(); st.Pending != 249 {
		t.Errorf("%d records pending after the torn line, want 249", st.Pending)
	}
	if err := b.AddAll(recs); err != nil { // as the node does at each start
		t.Fatal(err)
	}
	stop := run(t, b)
	st := waitStats(t, b, "250 records anchored", 60*time.Second, func(s chain.Stats) bool { return s.Anchored >= 250 && s.Batches == 0 })
	stop()
	if st.Anchored != 250 || st.Txs != 3 || st.Pending != 0 {
		t.Errorf("stats %+v: want 250 records anchored once each, in 3 transactions", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, i := range []int{0, torn, 249} {
		p, err := b.Proof(recs[i].Key)
		if err != nil {
			t.Fatalf("proof of record %d: %v", i, err)
		}
		if _, err := chain.VerifyProof(ctx, ln.URL(), p, recs[i].LeafData); err != nil {
			t.Fatalf("proof of record %d: %v", i, err)
		}
		if !bytes.Equal(p.Record, recs[i].Record) {
			t.Errorf("record %d came back as %s, want %s", i, p.Record, recs[i].Record)
		}
	}
	info, err := os.Stat(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size() != 0 {
		t.Errorf("records.log is %d bytes (%d before) with every record anchored; want it empty", info.Size(), sizeBefore)
	}
	b.Close()

	c, err := chain.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.AddAll(recs); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Pending != 0 || st.Anchored != 250 || st.Txs != 3 {
		t.Errorf("after a restart that adds every record again: %+v, want nothing pending, 250 anchored in 3", st)
	}
	if n := checkLines(t, logPath); n != 0 {
		t.Errorf("records.log holds %d lines of anchored records after the restart", n)
	}
	if _, err := c.Proof(recs[7].Key); err != nil {
		t.Errorf("proof after the restart: %v", err)
	}
}

// An append to records.log that fails half-way (a full disk) is truncated
// back: the next one starts on a whole line, the records of the failed
// one can be added again, and a restart finds every line whole.
func TestAFailedAppendIsTruncatedBack(t *testing.T) {
	var fail atomic.Bool
	defer chain.ShortWrites(&fail)()
	dir := t.TempDir()
	var logs logBuffer
	cfg := chain.Config{Dir: dir, RPC: "http://127.0.0.1:1", Key: newKey(t), BatchSize: 1000, BatchAge: time.Hour, Log: logs.logger()}
	a, err := chain.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.AddAll(items(0, 10)); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	if err := a.AddAll(items(10, 10)); err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("a failed append: %v, want its error", err)
	}
	fail.Store(false)
	if err := a.AddAll(items(20, 10)); err != nil {
		t.Fatal(err)
	}
	if err := a.AddAll(items(10, 10)); err != nil { // the failed ones, again
		t.Fatal(err)
	}
	a.Close()
	if n := checkLines(t, filepath.Join(dir, "records.log")); n != 30 {
		t.Errorf("records.log holds %d lines, want 30", n)
	}
	b, err := chain.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if st := b.Stats(); st.Pending != 30 {
		t.Errorf("%d records pending after a restart, want 30", st.Pending)
	}
	if strings.Contains(logs.String(), "does not parse") {
		t.Errorf("the restart found a bad line:\n%s", logs.String())
	}
}

// lateRPC stands between the anchorer and the localnet and plays a chain
// whose answers race: the first status of a transaction is asked just
// before it lands (unknown), and from then on the chain has moved past
// every blockhash's last valid height. The transaction did land, so an
// anchorer that asks the status first and the height after concludes that
// it expired and anchors the batch a second time; one that asks the
// height first knows the unknown status came after a height at which the
// transaction could still land, asks again, and finds it.
type lateRPC struct {
	srv   *httptest.Server
	moved atomic.Bool
	mu    sync.Mutex
	txs   map[string]bool // transactions sent
}

func newLateRPC(t *testing.T, target string) *lateRPC {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	l := &lateRPC{txs: map[string]bool{}}
	proxy := httputil.NewSingleHostReverseProxy(u)
	l.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		var req struct {
			ID     json.RawMessage   `json:"id"`
			Method string            `json:"method"`
			Params []json.RawMessage `json:"params"`
		}
		_ = json.Unmarshal(body, &req)
		answer := func(result string) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":`+string(req.ID)+`,"result":`+result+`}`)
		}
		switch {
		case req.Method == "sendTransaction" && len(req.Params) > 0:
			l.mu.Lock()
			l.txs[string(req.Params[0])] = true
			l.mu.Unlock()
		case req.Method == "getSignatureStatuses" && l.moved.CompareAndSwap(false, true):
			answer(`{"context":{"slot":1},"value":[null]}`)
			return
		case req.Method == "getBlockHeight" && l.moved.Load():
			answer(`1000000000000`)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(l.srv.Close)
	return l
}

func TestTheAnchorerAsksTheHeightBeforeTheStatus(t *testing.T) {
	ln := startLocalnet(t)
	key := fundedKey(t, ln)
	late := newLateRPC(t, ln.URL())
	a, err := chain.Open(chain.Config{Dir: t.TempDir(), RPC: late.srv.URL, Key: key, BatchSize: 10, BatchAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.AddAll(items(0, 10)); err != nil {
		t.Fatal(err)
	}
	run(t, a)
	st := waitStats(t, a, "the batch anchored", 60*time.Second, func(s chain.Stats) bool { return s.Anchored == 10 })
	late.mu.Lock()
	sent := len(late.txs)
	late.mu.Unlock()
	if sent != 1 || st.Txs != 1 {
		t.Errorf("%d memo transactions sent for one batch (%+v); want 1: the batch was anchored twice", sent, st)
	}
	if !late.moved.Load() {
		t.Error("the status was never asked")
	}
}
