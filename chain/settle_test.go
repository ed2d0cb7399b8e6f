package chain_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mr-tron/base58"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/chain/localnet"
	"github.com/gpumesh/gpumesh/internal/testlocalnet"
)

// addrOf is a key's base58 address.
func addrOf(key ed25519.PrivateKey) string {
	return base58.Encode(key.Public().(ed25519.PublicKey))
}

// newKey is a fresh key with nothing on chain.
func newKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// fundedKeys is n fresh keys with 1 SOL each, airdropped at once.
func fundedKeys(t testing.TB, ln *localnet.Localnet, n int) []ed25519.PrivateKey {
	t.Helper()
	keys := make([]ed25519.PrivateKey, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range keys {
		keys[i] = newKey(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			errs[i] = ln.Airdrop(ctx, addrOf(keys[i]), 1_000_000_000)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return keys
}

// startLocalnetWith is startLocalnet with options (a faster slot clock).
func startLocalnetWith(t testing.TB, opts localnet.Options) *localnet.Localnet {
	t.Helper()
	return testlocalnet.Start(t, opts)
}

func balanceOf(t testing.TB, ln *localnet.Localnet, key ed25519.PrivateKey) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := chain.Balance(ctx, ln.URL(), addrOf(key))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// payProxy stands between Pay and the localnet. It counts sendTransaction
// calls; with skipPreflight it has them skip the preflight check (so a
// transaction that fails lands, failed, as it can on a real cluster); with
// dropFirstTx it answers every send of the first transaction it sees as a
// node would and forwards none of them (a transaction lost on its way to the
// leader).
type payProxy struct {
	srv           *httptest.Server
	sends         atomic.Int64
	skipPreflight atomic.Bool
	dropFirstTx   atomic.Bool

	mu      sync.Mutex
	dropped string // signature of the transaction dropped
	drops   int
}

func newPayProxy(t testing.TB, target string) *payProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &payProxy{}
	proxy := httputil.NewSingleHostReverseProxy(u)
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req struct {
			JSONRPC string `json:"jsonrpc"`
			ID      any    `json:"id"`
			Method  string `json:"method"`
			Params  []any  `json:"params"`
		}
		if json.Unmarshal(body, &req) == nil && req.Method == "sendTransaction" && len(req.Params) > 0 {
			p.sends.Add(1)
			if p.dropFirstTx.Load() {
				raw, _ := base64.StdEncoding.DecodeString(fmt.Sprint(req.Params[0]))
				if len(raw) > 65 {
					sig := base58.Encode(raw[1:65]) // after the signature count (1)
					p.mu.Lock()
					if p.dropped == "" {
						p.dropped = sig
					}
					drop := p.dropped == sig
					if drop {
						p.drops++
					}
					p.mu.Unlock()
					if drop {
						w.Header().Set("Content-Type", "application/json")
						_ = json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": req.ID, "result": sig})
						return
					}
				}
			}
			if p.skipPreflight.Load() {
				opts := map[string]any{}
				if len(req.Params) > 1 {
					if m, ok := req.Params[1].(map[string]any); ok {
						opts = m
					}
				}
				opts["skipPreflight"] = true
				req.Params = append(req.Params[:1], opts)
				body, _ = json.Marshal(req)
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		r.Header.Del("Content-Length")
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func wantErr(t *testing.T, what string, err error, is error, says ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want one saying %q", what, says)
		return
	}
	if is != nil && !errors.Is(err, is) {
		t.Errorf("%s: %v, want an error wrapping %v", what, err, is)
	}
	for _, s := range says {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%s: %v\nwant it to say %q", what, err, s)
		}
	}
}

func TestPayMovesLamportsAndCheckPaymentAcceptsOnlyIt(t *testing.T) {
	ln := startLocalnet(t)
	keys := fundedKeys(t, ln, 3)
	a, b, c := keys[0], keys[1], keys[2]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A memo transaction that moves nothing: an anchor of c's, meanwhile.
	anc, err := chain.Open(chain.Config{Dir: t.TempDir(), RPC: ln.URL(), Key: c, BatchSize: 1, BatchAge: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer anc.Close()
	rec := items(0, 1)[0]
	if err := anc.Add(rec.Key, rec.LeafData, rec.Record); err != nil {
		t.Fatal(err)
	}
	run(t, anc)

	const amount = 123_456_789
	ref := "job42-0-1-7"
	aBefore, bBefore := balanceOf(t, ln, a), balanceOf(t, ln, b)
	t0 := time.Now()
	pay, err := chain.Pay(ctx, ln.URL(), a, addrOf(b), amount, ref)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("paid in %v: %+v", time.Since(t0).Round(time.Millisecond), pay)
	if pay.Signature == "" || pay.Slot == 0 || pay.From != addrOf(a) || pay.To != addrOf(b) || pay.Amount != amount || pay.Ref != ref {
		t.Fatalf("payment %+v", pay)
	}
	got, err := chain.CheckPayment(ctx, ln.URL(), pay.Signature, addrOf(a), addrOf(b), amount, ref)
	if err != nil {
		t.Fatal(err)
	}
	if got.Amount != amount || got.Slot != pay.Slot || got.Signature != pay.Signature || got.Fee != chain.PaymentFee {
		t.Fatalf("CheckPayment found %+v, Pay said %+v", got, pay)
	}
	aAfter, bAfter := balanceOf(t, ln, a), balanceOf(t, ln, b)
	if aBefore-aAfter != amount+got.Fee {
		t.Errorf("payer lost %d lamports, want %d + the %d fee", aBefore-aAfter, amount, got.Fee)
	}
	if bAfter-bBefore != amount {
		t.Errorf("payee gained %d lamports, want %d", bAfter-bBefore, amount)
	}
	// At least: asking for less is fine, and the sum paid comes back.
	if got, err := chain.CheckPayment(ctx, ln.URL(), pay.Signature, addrOf(a), addrOf(b), 1, ref); err != nil || got.Amount != amount {
		t.Errorf("asking for 1 lamport: %+v, %v", got, err)
	}

	// Another payment, between other keys.
	other, err := chain.Pay(ctx, ln.URL(), b, addrOf(c), 1_000_000, "job43-0-0-0")
	if err != nil {
		t.Fatal(err)
	}
	st := waitStats(t, anc, "anchored", 20*time.Second, func(s chain.Stats) bool { return s.Anchored == 1 })
	proof, err := anc.Proof(rec.Key)
	if err != nil {
		t.Fatalf("%v (stats %+v)", err, st)
	}

	A, B, C := addrOf(a), addrOf(b), addrOf(c)
	for _, tc := range []struct {
		name          string
		sig, from, to string
		lamports      uint64
		ref           string
		is            error
		says          []string
	}{
		{"wrong ref", pay.Signature, A, B, amount, "job42-0-1-8", chain.ErrBadPayment, []string{"no memo for ref job42-0-1-8", `"gpumesh:pay:job42-0-1-8"`}},
		{"wrong payee", pay.Signature, A, C, amount, ref, chain.ErrBadPayment, []string{"wrong payer or payee", fmt.Sprintf("%d lamports from %s to %s", amount, A, B)}},
		{"wrong payer", pay.Signature, C, B, amount, ref, chain.ErrBadPayment, []string{"wrong payer or payee"}},
		{"more than paid", pay.Signature, A, B, amount + 1, ref, chain.ErrBadPayment, []string{fmt.Sprintf("too little: transaction %s moves %d of %d lamports", pay.Signature, amount, amount+1)}},
		{"unknown signature", base58.Encode(bytes.Repeat([]byte{7}, 64)), A, B, amount, ref, chain.ErrBadPayment, []string{"not found on the chain behind"}},
		{"not a signature", "not-a-signature", A, B, amount, ref, chain.ErrBadPayment, []string{"is not a transaction signature"}},
		{"another payment", other.Signature, A, B, amount, ref, chain.ErrBadPayment, []string{"wrong payer or payee"}},
		{"another payment, its own keys, this ref", other.Signature, B, C, 1, ref, chain.ErrBadPayment, []string{"no memo for ref " + ref}},
		{"an anchor memo", proof.Signature, A, B, amount, ref, chain.ErrBadPayment, []string{"holds no System transfer: it is not a payment"}},
		{"bad payee address", pay.Signature, A, "nope", amount, ref, nil, []string{`payee "nope" is not a Solana address`}},
	} {
		_, err := chain.CheckPayment(ctx, ln.URL(), tc.sig, tc.from, tc.to, tc.lamports, tc.ref)
		wantErr(t, tc.name, err, tc.is, tc.says...)
		if err != nil {
			t.Logf("%s: %v", tc.name, err)
		}
	}
	// One transaction shown as the payment of several bills: one transfer
	// and a memo for each bill, or the amount in several transfers.
	many, err := chain.PayOddly(ctx, ln.URL(), a, B, []uint64{amount}, []string{"job44-0-0-1", "job44-0-0-2", "job44-0-0-3"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"job44-0-0-1", "job44-0-0-2"} {
		_, err := chain.CheckPayment(ctx, ln.URL(), many, A, B, 1, r)
		wantErr(t, "three memos, bill "+r, err, chain.ErrBadPayment, "carries 3 memos: a payment is one transfer with one memo for one bill")
	}
	split, err := chain.PayOddly(ctx, ln.URL(), a, B, []uint64{amount / 2, amount / 2}, []string{"job45-0-0-1"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = chain.CheckPayment(ctx, ln.URL(), split, A, B, amount/2, "job45-0-0-1")
	wantErr(t, "two transfers", err, chain.ErrBadPayment, "makes 2 transfers")
	// The other payment checks out on its own terms.
	if _, err := chain.CheckPayment(ctx, ln.URL(), other.Signature, B, C, 1_000_000, "job43-0-0-0"); err != nil {
		t.Fatal(err)
	}
}

func TestPayRefusesUnderfundedKeyBeforeSending(t *testing.T) {
	ln := startLocalnet(t)
	proxy := newPayProxy(t, ln.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	payee := fundedKeys(t, ln, 1)[0]

	empty := newKey(t)
	if n := balanceOf(t, ln, empty); n != 0 {
		t.Fatalf("a fresh key holds %d lamports", n)
	}
	_, err := chain.Pay(ctx, proxy.srv.URL, empty, addrOf(payee), 1000, "job1-0-0-0")
	wantErr(t, "unfunded", err, chain.ErrUnderfunded,
		fmt.Sprintf("address %s holds 0 lamports", addrOf(empty)), "paying 1000 plus the 5000-lamport fee needs 6000", "fund it")
	t.Logf("unfunded: %v", err)

	// A key with 1 SOL paying 1 SOL: the fee does not fit.
	_, err = chain.Pay(ctx, proxy.srv.URL, payee, addrOf(empty), 1_000_000_000, "job1-0-0-1")
	wantErr(t, "whole balance", err, chain.ErrUnderfunded, "holds 1000000000 lamports", "needs 1000005000, 5000 more")
	if n := proxy.sends.Load(); n != 0 {
		t.Fatalf("%d transactions sent, want none", n)
	}

	// Nonsense is refused too, before anything is asked.
	for _, tc := range []struct {
		name     string
		to       string
		lamports uint64
		ref      string
		says     string
	}{
		{"bad payee", "0OIl", 1, "r", `payee "0OIl" is not a Solana address`},
		{"no lamports", addrOf(empty), 0, "r", "0 lamports"},
		{"empty ref", addrOf(empty), 1, "", "empty ref"},
		{"ref with a space", addrOf(empty), 1, "a b", "spaces"},
		{"self", addrOf(payee), 1, "r", "payer and payee are both"},
	} {
		_, err := chain.Pay(ctx, proxy.srv.URL, payee, tc.to, tc.lamports, tc.ref)
		wantErr(t, tc.name, err, nil, tc.says)
	}
	if n := proxy.sends.Load(); n != 0 {
		t.Fatalf("%d transactions sent, want none", n)
	}
}

func TestPayRefusedOrFailedOnChainSaysWhy(t *testing.T) {
	ln := startLocalnet(t)
	proxy := newPayProxy(t, ln.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a := fundedKeys(t, ln, 1)[0]
	empty := addrOf(newKey(t))

	// 1,000 lamports to an empty address would leave it below the rent-exempt
	// minimum: the RPC's preflight refuses it, and nothing is charged.
	before := balanceOf(t, ln, a)
	p, err := chain.Pay(ctx, ln.URL(), a, empty, 1000, "job2-0-0-0")
	wantErr(t, "refused", err, nil, "the chain refused it, nothing was paid", "InsufficientFundsForRent", "rent-exempt minimum", "payee "+empty)
	t.Logf("refused: %v", err)
	if p.Signature != "" {
		t.Errorf("a refused payment has signature %s", p.Signature)
	}
	if after := balanceOf(t, ln, a); after != before {
		t.Errorf("refused payment cost %d lamports", before-after)
	}

	// Past preflight it lands and fails: the fee is charged, the error says so.
	proxy.skipPreflight.Store(true)
	p, err = chain.Pay(ctx, proxy.srv.URL, a, empty, 1000, "job2-0-0-1")
	wantErr(t, "failed", err, nil, "failed on chain", "InsufficientFundsForRent", "its fee was charged")
	t.Logf("failed: %v", err)
	if p.Signature == "" {
		t.Fatal("a failed payment returns no signature")
	}
	if after := balanceOf(t, ln, a); before-after != chain.PaymentFee {
		t.Errorf("failed payment cost %d lamports, want the %d fee", before-after, chain.PaymentFee)
	}
	_, err = chain.CheckPayment(ctx, ln.URL(), p.Signature, addrOf(a), empty, 1000, "job2-0-0-1")
	wantErr(t, "check of the failed payment", err, chain.ErrBadPayment, "failed on chain", "InsufficientFundsForRent")
}

func TestConcurrentPaysFromOneKeyAllLand(t *testing.T) {
	ln := startLocalnet(t)
	keys := fundedKeys(t, ln, 2)
	a, b := keys[0], keys[1]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	aBefore, bBefore := balanceOf(t, ln, a), balanceOf(t, ln, b)

	const n, amount = 4, 1_000_000
	pays := make([]chain.Payment, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pays[i], errs[i] = chain.Pay(ctx, ln.URL(), a, addrOf(b), amount, fmt.Sprintf("job7-0-%d-3", i))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var fees uint64
	for i, p := range pays {
		if seen[p.Signature] {
			t.Fatalf("two payments with signature %s", p.Signature)
		}
		seen[p.Signature] = true
		got, err := chain.CheckPayment(ctx, ln.URL(), p.Signature, addrOf(a), addrOf(b), amount, fmt.Sprintf("job7-0-%d-3", i))
		if err != nil {
			t.Fatal(err)
		}
		fees += got.Fee
	}
	if lost := aBefore - balanceOf(t, ln, a); lost != n*amount+fees {
		t.Errorf("payer lost %d lamports, want %d + %d in fees", lost, n*amount, fees)
	}
	if gained := balanceOf(t, ln, b) - bBefore; gained != n*amount {
		t.Errorf("payee gained %d lamports, want %d", gained, n*amount)
	}
}

// A transaction lost on its way never lands; once its blockhash expires Pay
// builds another, and the payment is made once.
func TestPayRebuildsATransactionThatExpiredUnseen(t *testing.T) {
	ln := startLocalnetWith(t, localnet.Options{SlotTime: 10 * time.Millisecond}) // 150 slots: 1.5 s
	proxy := newPayProxy(t, ln.URL())
	proxy.dropFirstTx.Store(true)
	keys := fundedKeys(t, ln, 2)
	a, b := keys[0], keys[1]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	aBefore, bBefore := balanceOf(t, ln, a), balanceOf(t, ln, b)

	t0 := time.Now()
	p, err := chain.Pay(ctx, proxy.srv.URL, a, addrOf(b), 5_000_000, "job9-1-0-0")
	if err != nil {
		t.Fatal(err)
	}
	proxy.mu.Lock()
	dropped, drops := proxy.dropped, proxy.drops
	proxy.mu.Unlock()
	t.Logf("paid in %v after %d sends of a lost transaction; %d sends in all", time.Since(t0).Round(time.Millisecond), drops, proxy.sends.Load())
	if dropped == "" || dropped == p.Signature {
		t.Fatalf("the lost transaction %q, the payment %q: want two different ones", dropped, p.Signature)
	}
	if _, err := chain.CheckPayment(ctx, ln.URL(), p.Signature, addrOf(a), addrOf(b), 5_000_000, "job9-1-0-0"); err != nil {
		t.Fatal(err)
	}
	_, err = chain.CheckPayment(ctx, ln.URL(), dropped, addrOf(a), addrOf(b), 5_000_000, "job9-1-0-0")
	wantErr(t, "the lost transaction", err, chain.ErrBadPayment, "not found")
	if lost := aBefore - balanceOf(t, ln, a); lost != 5_000_000+chain.PaymentFee {
		t.Errorf("payer lost %d lamports, want one payment: %d", lost, 5_000_000+chain.PaymentFee)
	}
	if gained := balanceOf(t, ln, b) - bBefore; gained != 5_000_000 {
		t.Errorf("payee gained %d lamports, want %d", gained, 5_000_000)
	}

	// A payment whose context ends while it waits names the transaction
	// that may still land.
	proxy.mu.Lock()
	proxy.dropped = "" // lose the next one too
	proxy.mu.Unlock()
	short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelShort()
	p, err = chain.Pay(short, proxy.srv.URL, a, addrOf(b), 5_000_000, "job9-1-0-1")
	wantErr(t, "cut short", err, context.DeadlineExceeded, "sent but not confirmed", "check it with CheckPayment before paying again")
	if p.Signature == "" || !strings.Contains(err.Error(), p.Signature) {
		t.Errorf("cut short: signature %q, error %v", p.Signature, err)
	}
}

// BenchmarkPay makes payments on the localnet (400 ms slots) one after
// another and reports the time to a confirmed payment; then several at once.
func BenchmarkPay(b *testing.B) {
	ln := startLocalnet(b)
	keys := fundedKeys(b, ln, 2)
	payer, payee := keys[0], keys[1]
	ctx := context.Background()
	b.Run("sequential", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := chain.Pay(ctx, ln.URL(), payer, addrOf(payee), 1000, fmt.Sprintf("bench-0-0-%d", i)); err != nil {
				b.Fatal(err)
			}
			i++
		}
		b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(i), "ms/payment")
		b.ReportMetric(0, "ns/op")
	})
	b.Run("check", func(b *testing.B) {
		p, err := chain.Pay(ctx, ln.URL(), payer, addrOf(payee), 1000, "bench-check")
		if err != nil {
			b.Fatal(err)
		}
		i := 0
		for b.Loop() {
			if _, err := chain.CheckPayment(ctx, ln.URL(), p.Signature, addrOf(payer), addrOf(payee), 1000, "bench-check"); err != nil {
				b.Fatal(err)
			}
			i++
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(i), "ms/check")
		b.ReportMetric(0, "ns/op")
	})
	b.Run("concurrent-16", func(b *testing.B) {
		n := 0
		for b.Loop() {
			var wg sync.WaitGroup
			errs := make([]error, 16)
			for k := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[k] = chain.Pay(ctx, ln.URL(), payer, addrOf(payee), 1000, fmt.Sprintf("bench-1-%d-%d", n, k))
				}()
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				b.Fatal(err)
			}
			n++
		}
		b.ReportMetric(float64(16*n)/b.Elapsed().Seconds(), "payments/s")
		b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(n), "ms/16-payments")
		b.ReportMetric(0, "ns/op")
	})
}
