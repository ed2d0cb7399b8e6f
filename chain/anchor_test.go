package chain_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mr-tron/base58"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/chain/localnet"
	"github.com/gpumesh/gpumesh/internal/testlocalnet"
	"github.com/gpumesh/gpumesh/internal/testwait"
)

// startLocalnet runs the LiteSVM-backed Solana RPC for a test.
func startLocalnet(t testing.TB) *localnet.Localnet {
	t.Helper()
	return testlocalnet.Start(t, localnet.Options{})
}

// fundedKey is a fresh key with 1 SOL on the localnet.
func fundedKey(t testing.TB, ln *localnet.Localnet) ed25519.PrivateKey {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ln.Airdrop(ctx, base58.Encode(key.Public().(ed25519.PublicKey)), 1_000_000_000); err != nil {
		t.Fatal(err)
	}
	return key
}

func items(from, n int) []chain.Item {
	out := make([]chain.Item, n)
	for i := range out {
		k := from + i
		rec, _ := json.Marshal(map[string]any{"receipt": k})
		out[i] = chain.Item{Key: fmt.Sprintf("job%05d-0-0", k), LeafData: []byte(fmt.Sprintf("receipt %d", k)), Record: rec}
	}
	return out
}

// run runs an anchorer until the test ends (or stop is called).
func run(t testing.TB, a *chain.Anchorer) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

func waitStats(t testing.TB, a *chain.Anchorer, what string, d time.Duration, cond func(chain.Stats) bool) chain.Stats {
	t.Helper()
	var st chain.Stats
	testwait.For(t, d, what, func() (bool, string) {
		st = a.Stats()
		return cond(st), fmt.Sprintf("%+v", st)
	})
	return st
}

func TestTenThousandReceiptsAnchoredAndVerified(t *testing.T) {
	ln := startLocalnet(t)
	key := fundedKey(t, ln)
	a, err := chain.Open(chain.Config{Dir: t.TempDir(), RPC: ln.URL(), Key: key, BatchSize: 5000, BatchAge: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	all := items(0, 10_000)
	if err := a.AddAll(all); err != nil {
		t.Fatal(err)
	}
	if err := a.AddAll(all[:10]); err != nil { // again: nothing new
		t.Fatal(err)
	}
	run(t, a)
	st := waitStats(t, a, "10,000 receipts anchored", 90*time.Second, func(s chain.Stats) bool { return s.Anchored == 10_000 })
	if st.Txs != 2 || st.Pending != 0 || st.Batches != 0 {
		t.Fatalf("stats %+v, want 2 transactions and nothing waiting", st)
	}
	if perReceipt := float64(st.Fees) / 10_000; perReceipt > 1 {
		t.Fatalf("%.2f lamports of fees per receipt at a batch of 5,000, want at most 1", perReceipt)
	}
	t.Logf("fees: %d lamports for 10,000 receipts in %d transactions", st.Fees, st.Txs)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, i := range []int{0, 1, 2499, 4999, 5000, 7777, 9999} {
		p, err := a.Proof(all[i].Key)
		if err != nil {
			t.Fatal(err)
		}
		// Through a file, as a user gets it.
		data, _ := json.MarshalIndent(p, "", "  ")
		p, err = chain.ParseProof(data)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := chain.VerifyProof(ctx, ln.URL(), p, all[i].LeafData); err != nil {
			t.Fatalf("proof of %s: %v", all[i].Key, err)
		}
	}

	// Tampering fails, with the reason.
	p, _ := a.Proof(all[42].Key)
	other, _ := a.Proof(all[9000].Key)
	for _, tc := range []struct {
		name   string
		change func(p *chain.Proof) []byte
		want   string
	}{
		{"receipt", func(p *chain.Proof) []byte { return []byte("receipt 43") }, "the receipt was changed"},
		{"path", func(p *chain.Proof) []byte { p.Path[3].Right = !p.Path[3].Right; return all[42].LeafData }, "the path was changed"},
		{"root", func(p *chain.Proof) []byte { p.Root = other.Root; p.Memo = other.Memo; return all[42].LeafData }, "does not lead"},
		{"transaction", func(p *chain.Proof) []byte {
			p.Signature = other.Signature
			return all[42].LeafData
		}, "carries no memo"},
		{"unknown transaction", func(p *chain.Proof) []byte {
			p.Signature = base58.Encode(bytes.Repeat([]byte{7}, 64))
			return all[42].LeafData
		}, "is not on the chain"},
		{"payer", func(p *chain.Proof) []byte { p.Payer = other.Key; return all[42].LeafData }, "was not paid for and signed by"},
	} {
		q := p
		q.Path = append([]chain.Step(nil), p.Path...)
		leaf := tc.change(&q)
		_, err := chain.VerifyProof(ctx, ln.URL(), q, leaf)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s tampered: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
}

// flakyRPC stands between an anchorer and the localnet: down, it answers
// 503; sendsBeforeDown > 0 takes it down after that many sendTransaction
// calls have gone through.
type flakyRPC struct {
	srv             *httptest.Server
	down            atomic.Bool
	sends           atomic.Int64
	sendsBeforeDown int64
}

func newFlakyRPC(t testing.TB, target string) *flakyRPC {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	f := &flakyRPC{}
	proxy := httputil.NewSingleHostReverseProxy(u)
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		proxy.ServeHTTP(w, r)
		if bytes.Contains(body, []byte(`"sendTransaction"`)) && f.sends.Add(1) == f.sendsBeforeDown {
			f.down.Store(true)
		}
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func TestRPCDownThenUpAnchorsEverythingLater(t *testing.T) {
	ln := startLocalnet(t)
	key := fundedKey(t, ln)
	rpc := newFlakyRPC(t, ln.URL())
	rpc.down.Store(true)
	a, err := chain.Open(chain.Config{Dir: t.TempDir(), RPC: rpc.srv.URL, Key: key, BatchSize: 100, BatchAge: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.AddAll(items(0, 250)); err != nil {
		t.Fatal(err)
	}
	run(t, a)
	st := waitStats(t, a, "waiting with the RPC's error", 30*time.Second, func(s chain.Stats) bool { return s.Error != "" && s.Batches == 3 })
	t.Logf("while down: %s", st.Error)
	rpc.down.Store(false)
	st = waitStats(t, a, "all anchored once the RPC is back", 90*time.Second, func(s chain.Stats) bool { return s.Anchored == 250 })
	if st.Txs != 3 {
		t.Fatalf("%d transactions for 3 batches", st.Txs)
	}
}

func TestKilledAfterSendingAnchorsOnceAfterRestart(t *testing.T) {
	ln := startLocalnet(t)
	key := fundedKey(t, ln)
	dir := t.TempDir()
	rpc := newFlakyRPC(t, ln.URL())
	rpc.sendsBeforeDown = 1 // the transaction goes out, then nothing more is heard
	a, err := chain.Open(chain.Config{Dir: dir, RPC: rpc.srv.URL, Key: key, BatchSize: 50, BatchAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	recs := items(0, 50)
	if err := a.AddAll(recs); err != nil {
		t.Fatal(err)
	}
	stop := run(t, a)
	waitStats(t, a, "the batch's transaction sent", 30*time.Second, func(chain.Stats) bool { return rpc.down.Load() })
	stop() // "killed": its state is what it wrote before each step
	a.Close()

	// Restarted, on a working RPC: the transaction sent is found on chain,
	// and no second one is sent.
	rpc.down.Store(false)
	before := rpc.sends.Load()
	b, err := chain.Open(chain.Config{Dir: dir, RPC: rpc.srv.URL, Key: key, BatchSize: 50, BatchAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.AddAll(recs); err != nil { // re-added after the restart: still once
		t.Fatal(err)
	}
	run(t, b)
	st := waitStats(t, b, "anchored after the restart", 60*time.Second, func(s chain.Stats) bool { return s.Anchored == 50 })
	if st.Txs != 1 || st.Pending != 0 {
		t.Fatalf("stats %+v: want one transaction", st)
	}
	if sent := rpc.sends.Load() - before; sent > 1 {
		t.Fatalf("%d transactions sent after the restart, want the old one at most resent", sent)
	}
	p, err := b.Proof(recs[7].Key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := chain.VerifyProof(ctx, ln.URL(), p, recs[7].LeafData); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkAnchor anchors batches on the localnet and reports lamports per
// receipt at several batch sizes, and the time to verify one proof.
func BenchmarkAnchor(b *testing.B) {
	ln := startLocalnet(b)
	key := fundedKey(b, ln)
	for _, size := range []int{100, 1000, 5000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			a, err := chain.Open(chain.Config{Dir: b.TempDir(), RPC: ln.URL(), Key: key, BatchSize: size, BatchAge: time.Hour})
			if err != nil {
				b.Fatal(err)
			}
			defer a.Close()
			run(b, a)
			recs := items(0, size*b.N)
			b.ResetTimer()
			if err := a.AddAll(recs); err != nil {
				b.Fatal(err)
			}
			st := waitStats(b, a, "anchored", 5*time.Minute, func(s chain.Stats) bool { return s.Anchored == len(recs) })
			b.StopTimer()
			b.ReportMetric(float64(st.Fees)/float64(len(recs)), "lamports/receipt")
			b.ReportMetric(float64(len(recs))/b.Elapsed().Seconds(), "receipts/s")
			p, err := a.Proof(recs[0].Key)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			t0 := time.Now()
			const verifies = 20
			for range verifies {
				if _, err := chain.VerifyProof(ctx, ln.URL(), p, recs[0].LeafData); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(t0).Microseconds())/verifies/1000, "verify-ms")
		})
	}
}
