package receipt_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec/receipt"
)

// rcptKey is a fresh ed25519 key.
func rcptKey(tb testing.TB) ed25519.PrivateKey {
	tb.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

// rcptStart is the start of the receipts' work: a fixed, whole-millisecond
// time.
var rcptStart = time.UnixMilli(1_700_000_000_000)

// rcptReceipt is a valid receipt of provider's work for consumer: 2 GPUs for
// 90 minutes at 2.10 USDC per GPU-hour.
func rcptReceipt(provider, consumer ed25519.PrivateKey) receipt.Receipt {
	r := receipt.Receipt{
		Version:    receipt.Version,
		Job:        "0123456789abcdef0123456789abcdef",
		Attempt:    1,
		Rank:       2,
		Provider:   receipt.Address(provider),
		Consumer:   receipt.Address(consumer),
		Class:      "H100-80GB",
		Unit:       "USDC",
		ExitCode:   0,
		ResultHash: receipt.ResultHash(0, nil),
		Util:       87,
	}
	r.Meter(2, rcptStart, rcptStart.Add(90*time.Minute), 2_100_000)
	return r
}

// rcptSigned is rcptReceipt signed by the provider and countersigned by the
// consumer.
func rcptSigned(tb testing.TB, provider, consumer ed25519.PrivateKey) receipt.Signed {
	tb.Helper()
	s, err := receipt.Sign(rcptReceipt(provider, consumer), provider)
	if err != nil {
		tb.Fatalf("sign: %v", err)
	}
	if err := s.Countersign(consumer); err != nil {
		tb.Fatalf("countersign: %v", err)
	}
	return s
}

// wantBad fails unless err wraps ErrBad and its message has every
// one of the words.
func wantBad(tb testing.TB, err error, words ...string) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("no error, want one saying %q", words)
	}
	if !errors.Is(err, receipt.ErrBad) {
		tb.Fatalf("error %q does not wrap ErrBad", err)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			tb.Fatalf("error %q does not say %q", err, w)
		}
	}
}

// amountOracle is ⌈price × ms / 3,600,000⌉, saturated at the largest uint64,
// computed with big integers.
func amountOracle(price, ms uint64) uint64 {
	p := new(big.Int).Mul(new(big.Int).SetUint64(price), new(big.Int).SetUint64(ms))
	d := big.NewInt(3_600_000)
	q, rem := new(big.Int).QuoRem(p, d, new(big.Int))
	if rem.Sign() > 0 {
		q.Add(q, big.NewInt(1))
	}
	if !q.IsUint64() {
		return math.MaxUint64
	}
	return q.Uint64()
}

func TestAmountIsRoundedUpAndSaturates(t *testing.T) {
	const max = math.MaxUint64
	for _, c := range []struct {
		price, ms, want uint64
	}{
		{2_100_000, 3_600_000, 2_100_000},  // one GPU-hour
		{2_100_000, 1, 1},                  // a fraction of a smallest unit is one
		{2_100_000, 10_800_000, 6_300_000}, // three GPU-hours
		{1, 3_599_999, 1},
		{1, 3_600_000, 1},
		{1, 3_600_001, 2},
		{3_600_000, 7, 7},
		{2_500_000, 1_800_000, 1_250_000},
		{2_500_001, 1_800_000, 1_250_001}, // 1,250,000.5 rounds up
		{0, 0, 0},
		{0, 1, 0},
		{0, max, 0},
		{max, 0, 0},
		{max, 3_600_000, max},   // exactly the largest amount
		{max, 3_600_001, max},   // beyond: saturates
		{3_600_000, max, max},   // exactly the largest amount
		{max, max, max},         // saturates
		{1 << 63, 1 << 63, max}, // saturates
		{1 << 40, 1 << 40, 1<<80/3_600_000 + 1},
	} {
		if got := receipt.Amount(c.price, c.ms); got != c.want {
			t.Errorf("Amount(%d, %d) = %d, want %d", c.price, c.ms, got, c.want)
		}
		if o := amountOracle(c.price, c.ms); o != c.want {
			t.Errorf("test table: Amount(%d, %d) should be %d, not %d", c.price, c.ms, o, c.want)
		}
	}
	// Around the saturation point and at random, against big integers.
	rng := rand.New(rand.NewSource(1))
	edges := []uint64{0, 1, 2, 3_599_999, 3_600_000, 3_600_001, 1 << 32, 1<<32 - 1, 1 << 63, max - 1, max}
	for _, p := range edges {
		for _, m := range edges {
			if got, want := receipt.Amount(p, m), amountOracle(p, m); got != want {
				t.Errorf("Amount(%d, %d) = %d, want %d", p, m, got, want)
			}
		}
	}
	for i := 0; i < 10_000; i++ {
		p, m := rng.Uint64()>>rng.Intn(64), rng.Uint64()>>rng.Intn(64)
		if got, want := receipt.Amount(p, m), amountOracle(p, m); got != want {
			t.Fatalf("Amount(%d, %d) = %d, want %d", p, m, got, want)
		}
	}
}

func TestReceiptMeter(t *testing.T) {
	var r receipt.Receipt
	r.Meter(2, rcptStart, rcptStart.Add(90*time.Minute), 2_100_000)
	if r.GPUs != 2 || r.Price != 2_100_000 || r.Start != rcptStart.UnixMilli() || r.End != rcptStart.Add(90*time.Minute).UnixMilli() {
		t.Fatalf("meter: %+v", r)
	}
	if r.GPUMillis != 2*90*60*1000 || r.Amount != 6_300_000 {
		t.Fatalf("2 GPUs for 90 min at 2.10: %d GPU-ms, amount %d; want 10800000, 6300000", r.GPUMillis, r.Amount)
	}
	if r.GPUSeconds() != 10_800 {
		t.Fatalf("GPU-seconds %v, want 10800", r.GPUSeconds())
	}

	// A few milliseconds cost a smallest unit, not nothing.
	r.Meter(1, rcptStart, rcptStart.Add(3*time.Millisecond), 2_100_000)
	if r.GPUMillis != 3 || r.Amount != 2 {
		t.Fatalf("3 ms at 2.10: %d GPU-ms, amount %d; want 3, 2", r.GPUMillis, r.Amount)
	}

	// An end before the start is no time at all.
	r.Meter(8, rcptStart, rcptStart.Add(-time.Hour), 2_100_000)
	if r.Start != r.End || r.End != rcptStart.UnixMilli() || r.GPUMillis != 0 || r.Amount != 0 {
		t.Fatalf("end before start: %+v", r)
	}

	// A metered receipt passes its own consistency check.
	p, c := rcptKey(t), rcptKey(t)
	r = rcptReceipt(p, c)
	r.Meter(7, rcptStart, rcptStart.Add(12345*time.Millisecond+999*time.Microsecond), 1_234_567)
	if r.GPUMillis != 7*12345 {
		t.Fatalf("sub-millisecond times: %d GPU-ms, want %d", r.GPUMillis, 7*12345)
	}
	if err := r.Check(); err != nil {
		t.Fatalf("metered receipt: %v", err)
	}
}

func TestReceiptSignNeedsTheProvidersKey(t *testing.T) {
	p, c := rcptKey(t), rcptKey(t)
	r := rcptReceipt(p, c)

	s, err := receipt.Sign(r, p)
	if err != nil {
		t.Fatalf("sign with the provider's key: %v", err)
	}
	if !reflect.DeepEqual(s.Receipt, r) || len(s.ProviderSig) != ed25519.SignatureSize || s.ConsumerSig != nil {
		t.Fatalf("signed: %+v", s)
	}
	if !ed25519.Verify(p.Public().(ed25519.PublicKey), r.SigningBytes(), s.ProviderSig) {
		t.Fatal("provider signature is not ed25519 over SigningBytes")
	}
	if !bytes.HasPrefix(r.SigningBytes(), []byte("gpumesh-receipt/1\n{")) {
		t.Fatalf("signing bytes %q lack the domain tag", r.SigningBytes())
	}
	if err := s.VerifyProvider(); err != nil {
		t.Fatalf("verify provider: %v", err)
	}

	for _, key := range []ed25519.PrivateKey{c, rcptKey(t)} { // the consumer, a stranger
		_, err := receipt.Sign(r, key)
		wantBad(t, err, "signing key "+receipt.Address(key), "is not the provider "+r.Provider)
	}

	// A receipt that does not check is not signed.
	broken := r
	broken.Amount++
	_, err = receipt.Sign(broken, p)
	wantBad(t, err, "amount")
}

func TestReceiptCountersignNeedsAValidProviderSignatureAndTheConsumersKey(t *testing.T) {
	p, c := rcptKey(t), rcptKey(t)
	fresh := func() receipt.Signed {
		s, err := receipt.Sign(rcptReceipt(p, c), p)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	s := fresh()
	if err := s.Countersign(p); err == nil {
		t.Fatal("countersigned with the provider's key")
	} else {
		wantBad(t, err, "is not the consumer "+s.Receipt.Consumer)
	}
	if s.ConsumerSig != nil {
		t.Fatal("a refused countersignature left a signature")
	}

	s = fresh()
	s.ProviderSig[0] ^= 1
	wantBad(t, s.Countersign(c), "provider signature does not match")
	if s.ConsumerSig != nil {
		t.Fatal("countersigned a receipt with a bad provider signature")
	}

	s = fresh()
	s.ProviderSig = nil
	wantBad(t, s.Countersign(c), "provider signature does not match")

	s = fresh()
	s.Receipt.ExitCode = 1 // changed after the provider signed
	wantBad(t, s.Countersign(c), "provider signature does not match")

	s = fresh()
	if err := s.Countersign(c); err != nil {
		t.Fatalf("countersign: %v", err)
	}
	if !ed25519.Verify(c.Public().(ed25519.PublicKey), s.Receipt.SigningBytes(), s.ConsumerSig) {
		t.Fatal("consumer signature is not ed25519 over SigningBytes")
	}
	if err := s.Verify(); err != nil {
		t.Fatalf("verify a co-signed receipt: %v", err)
	}
}

func TestReceiptVerifyCatchesEveryChange(t *testing.T) {
	p, c := rcptKey(t), rcptKey(t)
	good := rcptSigned(t, p, c)
	if err := good.Verify(); err != nil {
		t.Fatalf("co-signed receipt: %v", err)
	}

	otherHash := receipt.ResultHash(1, nil)
	for _, tc := range []struct {
		name   string
		change func(*receipt.Signed)
		words  []string
	}{
		{"amount", func(s *receipt.Signed) { s.Receipt.Amount-- }, []string{"amount 6299999", "is 6300000"}},
		{"gpuMillis alone", func(s *receipt.Signed) { s.Receipt.GPUMillis *= 2 }, []string{"GPU-ms"}},
		{"gpuMillis and amount, consistently", func(s *receipt.Signed) {
			r := &s.Receipt
			r.Meter(r.GPUs, time.UnixMilli(r.Start), time.UnixMilli(r.End).Add(time.Hour), r.Price)
			if err := r.Check(); err != nil {
				t.Fatalf("the consistent tamper does not check: %v", err)
			}
		}, []string{"provider signature does not match " + good.Receipt.Provider}},
		{"price and amount, consistently", func(s *receipt.Signed) {
			s.Receipt.Price /= 2
			s.Receipt.Amount = receipt.Amount(s.Receipt.Price, s.Receipt.GPUMillis)
		}, []string{"provider signature does not match"}},
		{"resultHash", func(s *receipt.Signed) { s.Receipt.ResultHash = otherHash }, []string{"provider signature does not match"}},
		{"consumer", func(s *receipt.Signed) { s.Receipt.Consumer = receipt.Address(rcptKey(t)) }, []string{"provider signature does not match"}},
		{"provider", func(s *receipt.Signed) { s.Receipt.Provider = receipt.Address(rcptKey(t)) }, []string{"provider signature does not match"}},
		{"exit code", func(s *receipt.Signed) { s.Receipt.ExitCode = 137 }, []string{"provider signature does not match"}},
		{"job", func(s *receipt.Signed) { s.Receipt.Job = "ffffffffffffffffffffffffffffffff" }, []string{"provider signature does not match"}},
		{"rank", func(s *receipt.Signed) { s.Receipt.Rank = 0 }, []string{"provider signature does not match"}},
		{"attempt", func(s *receipt.Signed) { s.Receipt.Attempt = 0 }, []string{"provider signature does not match"}},
		{"class", func(s *receipt.Signed) { s.Receipt.Class = "A100-40GB" }, []string{"provider signature does not match"}},
		{"unit", func(s *receipt.Signed) { s.Receipt.Unit = "SOL" }, []string{"provider signature does not match"}},
		{"util", func(s *receipt.Signed) { s.Receipt.Util = 100 }, []string{"provider signature does not match"}},
		{"swapped signatures", func(s *receipt.Signed) {
			s.ProviderSig, s.ConsumerSig = s.ConsumerSig, s.ProviderSig
		}, []string{"provider signature does not match"}},
		{"consumer's signature as both", func(s *receipt.Signed) {
			s.ProviderSig = append([]byte(nil), s.ConsumerSig...)
		}, []string{"provider signature does not match"}},
		{"provider's signature as both", func(s *receipt.Signed) {
			s.ConsumerSig = append([]byte(nil), s.ProviderSig...)
		}, []string{"consumer signature does not match " + good.Receipt.Consumer}},
		{"no consumer signature", func(s *receipt.Signed) { s.ConsumerSig = nil }, []string{"not countersigned by the consumer " + good.Receipt.Consumer}},
		{"empty consumer signature", func(s *receipt.Signed) { s.ConsumerSig = []byte{} }, []string{"not countersigned"}},
		{"short consumer signature", func(s *receipt.Signed) { s.ConsumerSig = s.ConsumerSig[:63] }, []string{"consumer signature does not match"}},
		{"flipped consumer signature", func(s *receipt.Signed) { s.ConsumerSig[10] ^= 0x80 }, []string{"consumer signature does not match"}},
		{"consumer signature by a stranger", func(s *receipt.Signed) {
			s.ConsumerSig = ed25519.Sign(rcptKey(t), s.Receipt.SigningBytes())
		}, []string{"consumer signature does not match"}},
		{"no provider signature", func(s *receipt.Signed) { s.ProviderSig = nil }, []string{"provider signature does not match"}},
		{"long provider signature", func(s *receipt.Signed) { s.ProviderSig = append(s.ProviderSig, 0) }, []string{"provider signature does not match"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := rcptSigned(t, p, c)
			tc.change(&s)
			wantBad(t, s.Verify(), tc.words...)
		})
	}
}

func TestReceiptCheck(t *testing.T) {
	p, c := rcptKey(t), rcptKey(t)
	if err := rcptReceipt(p, c).Check(); err != nil {
		t.Fatalf("good receipt: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*receipt.Receipt)
		words  []string
	}{
		{"version", func(r *receipt.Receipt) { r.Version = 2 }, []string{"version 2, want 1"}},
		{"no job", func(r *receipt.Receipt) { r.Job = "" }, []string{"job ID"}},
		{"long job", func(r *receipt.Receipt) { r.Job = strings.Repeat("a", 257) }, []string{"job ID"}},
		{"negative rank", func(r *receipt.Receipt) { r.Rank = -1 }, []string{"rank -1"}},
		{"negative attempt", func(r *receipt.Receipt) { r.Attempt = -1 }, []string{"attempt -1"}},
		{"no class", func(r *receipt.Receipt) { r.Class = "" }, []string{"class"}},
		{"no GPUs", func(r *receipt.Receipt) { r.GPUs = 0; r.GPUMillis = 0; r.Amount = 0 }, []string{"0 GPUs"}},
		{"too many GPUs", func(r *receipt.Receipt) { r.Meter(4097, rcptStart, rcptStart.Add(time.Second), r.Price) }, []string{"4097 GPUs"}},
		{"end before start", func(r *receipt.Receipt) { r.End = r.Start - 1 }, []string{"before start"}},
		{"no start", func(r *receipt.Receipt) { r.Start, r.End, r.GPUMillis, r.Amount = 0, 0, 0, 0 }, []string{"start 0"}},
		{"GPU-ms inconsistent", func(r *receipt.Receipt) { r.GPUMillis++ }, []string{"10800001 GPU-ms", "2 GPUs for 5400000 ms is 10800000"}},
		{"amount inconsistent", func(r *receipt.Receipt) { r.Amount++ }, []string{"amount 6300001", "at 2100000 per GPU-hour is 6300000"}},
		{"amount rounded down", func(r *receipt.Receipt) {
			r.Meter(1, rcptStart, rcptStart.Add(time.Millisecond), 2_100_000)
			r.Amount = 0
		}, []string{"amount 0", "is 1"}},
		{"hash short", func(r *receipt.Receipt) { r.ResultHash = r.ResultHash[:63] }, []string{"result hash", "64 lowercase hex"}},
		{"hash upper case", func(r *receipt.Receipt) { r.ResultHash = strings.ToUpper(r.ResultHash) }, []string{"result hash"}},
		{"hash not hex", func(r *receipt.Receipt) { r.ResultHash = strings.Repeat("g", 64) }, []string{"result hash"}},
		{"hash empty", func(r *receipt.Receipt) { r.ResultHash = "" }, []string{"result hash"}},
		{"util", func(r *receipt.Receipt) { r.Util = 101 }, []string{"utilization 101%"}},
		{"util below -1", func(r *receipt.Receipt) { r.Util = -2 }, []string{"utilization -2%"}},
		{"no provider", func(r *receipt.Receipt) { r.Provider = "" }, []string{"provider"}},
		{"provider not base58", func(r *receipt.Receipt) { r.Provider = "0OIl" + r.Provider[4:] }, []string{"provider", "not a base58 ed25519 public key"}},
		{"provider too short", func(r *receipt.Receipt) { r.Provider = r.Provider[:20] }, []string{"provider", "not a base58 ed25519 public key"}},
		{"provider too long", func(r *receipt.Receipt) { r.Provider = strings.Repeat("1", 65) }, []string{"provider"}},
		{"no consumer", func(r *receipt.Receipt) { r.Consumer = "" }, []string{"consumer"}},
		{"consumer not base58", func(r *receipt.Receipt) { r.Consumer = "not an address" }, []string{"consumer", "not a base58"}},
		{"consumer a peer ID", func(r *receipt.Receipt) { r.Consumer = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN" }, []string{"consumer"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rcptReceipt(p, c)
			tc.change(&r)
			wantBad(t, r.Check(), tc.words...)
		})
	}

	// The bounds themselves are fine.
	r := rcptReceipt(p, c)
	r.Util, r.Rank, r.Attempt, r.Unit = -1, 4095, 1000, ""
	r.Meter(4096, rcptStart, rcptStart, 0)
	if err := r.Check(); err != nil {
		t.Fatalf("receipt at its bounds: %v", err)
	}
}

func TestParseSignedReceiptRoundTrip(t *testing.T) {
	p, c := rcptKey(t), rcptKey(t)
	s := rcptSigned(t, p, c)
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > receipt.MaxSize {
		t.Fatalf("a receipt is %d bytes, more than MaxSize", len(data))
	}
	got, err := receipt.Parse(data)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Fatalf("parsed\n%+v\nwant\n%+v", got, s)
	}
	if err := got.Verify(); err != nil {
		t.Fatalf("verify parsed: %v", err)
	}

	// Not yet countersigned: parses, the provider's signature holds.
	one, err := receipt.Sign(rcptReceipt(p, c), p)
	if err != nil {
		t.Fatal(err)
	}
	data1, _ := json.Marshal(one)
	if bytes.Contains(data1, []byte("consumerSig")) {
		t.Fatalf("no consumer signature, but %s", data1)
	}
	got1, err := receipt.Parse(data1)
	if err != nil || got1.VerifyProvider() != nil {
		t.Fatalf("provider-signed receipt: %v", err)
	}

	// Parsing checks the fields, not the signatures.
	forged := s
	forged.ConsumerSig = bytes.Repeat([]byte{1}, 64)
	fdata, _ := json.Marshal(forged)
	if _, err := receipt.Parse(fdata); err != nil {
		t.Fatalf("parse of a wrongly signed receipt: %v", err)
	}
}

func TestParseSignedReceiptRejects(t *testing.T) {
	p, c := rcptKey(t), rcptKey(t)
	data, err := json.Marshal(rcptSigned(t, p, c))
	if err != nil {
		t.Fatal(err)
	}
	good := string(data)

	bigger := func(n int) []byte {
		// Valid JSON, padded with spaces past the bound.
		return append(bytes.Repeat([]byte(" "), n-len(data)), data...)
	}
	if _, err := receipt.Parse(bigger(receipt.MaxSize)); err != nil {
		t.Fatalf("receipt of exactly MaxSize bytes: %v", err)
	}
	// edit is the good receipt with old replaced by new.
	edit := func(old, new string) []byte {
		t.Helper()
		if !strings.Contains(good, old) {
			t.Fatalf("the receipt has no %s: %s", old, good)
		}
		return []byte(strings.Replace(good, old, new, 1))
	}

	for _, tc := range []struct {
		name  string
		data  []byte
		words []string
	}{
		{"unknown field", edit(`{"receipt":`, `{"extra":1,"receipt":`), []string{`unknown field "extra"`}},
		{"unknown receipt field", edit(`"v":1,`, `"v":1,"tip":5,`), []string{`unknown field "tip"`}},
		{"oversize", bigger(receipt.MaxSize + 1), []string{fmt.Sprintf("%d bytes, at most %d", receipt.MaxSize+1, receipt.MaxSize)}},
		{"oversize garbage", bytes.Repeat([]byte("x"), 1<<20), []string{fmt.Sprintf("at most %d", receipt.MaxSize)}},
		{"empty", nil, []string{"EOF"}},
		{"not JSON", []byte("receipt"), []string{"invalid character"}},
		{"truncated", data[:len(data)/2], []string{"EOF"}},
		{"wrong type", edit(`"gpus":2`, `"gpus":"2"`), []string{"gpus"}},
		{"negative GPUs", edit(`"gpus":2`, `"gpus":-2`), []string{"gpus"}},
		{"inconsistent", edit(`"amount":6300000`, `"amount":1`), []string{"amount 1"}},
		{"not a receipt", []byte(`{}`), []string{"version 0"}},
		{"signature not base64", edit(`"providerSig":"`, `"providerSig":"!`), []string{"illegal base64"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := receipt.Parse(tc.data)
			wantBad(t, err, tc.words...)
		})
	}
}

func FuzzParseSignedReceipt(f *testing.F) {
	p, c := rcptKey(f), rcptKey(f)
	s := rcptSigned(f, p, c)
	data, err := json.Marshal(s)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	one, _ := receipt.Sign(rcptReceipt(p, c), p)
	data1, _ := json.Marshal(one)
	f.Add(data1)
	f.Add([]byte(strings.Replace(string(data), `"consumerSig":"`, `"consumerSig":"", "x":"`, 1)))
	f.Add([]byte(`{"receipt":{"v":1},"providerSig":null,"consumerSig":""}`))
	walked, _ := receipt.Sign(rcptReceipt(p, c), p)
	_ = walked.MarkUnsigned(p, "the consumer left before countersigning", rcptStart)
	data2, _ := json.Marshal(walked)
	f.Add(data2)
	f.Add([]byte(`{}`))
	f.Add([]byte(``))
	f.Add([]byte(`null`))

	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := receipt.Parse(data)
		if err != nil {
			if !errors.Is(err, receipt.ErrBad) {
				t.Fatalf("error %q does not wrap ErrBad", err)
			}
			return
		}
		if err := got.Receipt.Check(); err != nil {
			t.Fatalf("accepted a receipt that does not check: %v", err)
		}
		again, err := json.Marshal(got)
		if err != nil {
			t.Fatalf("marshal accepted receipt: %v", err)
		}
		back, err := receipt.Parse(again)
		if err != nil {
			t.Fatalf("accepted %q, but not its re-encoding %q: %v", data, again, err)
		}
		if !sameSignedReceipt(got, back) {
			t.Fatalf("round trip changed the receipt:\n%+v\n%+v", got, back)
		}
		if !bytes.Equal(got.Receipt.SigningBytes(), back.Receipt.SigningBytes()) {
			t.Fatal("round trip changed the signing bytes")
		}
		if (got.Verify() == nil) != (back.Verify() == nil) || (got.VerifyRecord() == nil) != (back.VerifyRecord() == nil) {
			t.Fatal("round trip changed whether the receipt verifies")
		}
	})
}

// sameSignedReceipt is equality, with a nil and an empty signature the same
// (an empty consumerSig is omitted when written).
func sameSignedReceipt(a, b receipt.Signed) bool {
	return bytes.Equal(a.Receipt.SigningBytes(), b.Receipt.SigningBytes()) && bytes.Equal(a.ProviderSig, b.ProviderSig) && bytes.Equal(a.ConsumerSig, b.ConsumerSig)
}

func TestHashOutputs(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"a.txt":             "hello\n",
		"empty":             "",
		"sub/b.bin":         "\x00\x01\x02",
		"sub/deeper/c.json": `{"loss":0.1}`,
		"sub.txt":           "sorts before sub/ as a string",
		"sub-a/x":           "sorts before sub.txt",
		"z":                 strings.Repeat("z", 100_000),
	}
	for name, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "emptydir"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Links are skipped: to a file, to a folder, to outside, dangling.
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("not an output"), 0o644); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"link-to-a":   "a.txt",
		"sub/linkdir": "deeper",
		"outside":     outside,
		"dangling":    "nothing-here",
	} {
		if err := os.Symlink(target, filepath.Join(dir, filepath.FromSlash(link))); err != nil {
			t.Fatal(err)
		}
	}

	got, err := receipt.HashOutputs(dir)
	if err != nil {
		t.Fatalf("hash outputs: %v", err)
	}
	var want []receipt.OutputFile
	for _, name := range []string{"a.txt", "empty", "sub-a/x", "sub.txt", "sub/b.bin", "sub/deeper/c.json", "z"} {
		sum := sha256.Sum256([]byte(files[name]))
		want = append(want, receipt.OutputFile{Path: name, Size: int64(len(files[name])), SHA256: hex.EncodeToString(sum[:])})
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("outputs\n%+v\nwant\n%+v", got, want)
	}
	if got[1].SHA256 != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Fatalf("sha256 of an empty file: %s", got[1].SHA256)
	}

	// An empty folder has no outputs; a missing one is an error.
	if got, err := receipt.HashOutputs(t.TempDir()); err != nil || len(got) != 0 {
		t.Fatalf("empty folder: %v, %v", got, err)
	}
	if _, err := receipt.HashOutputs(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "outputs") {
		t.Fatalf("missing folder: %v", err)
	}
}

func TestHashOutputsRefusesTooManyFiles(t *testing.T) {
	if testing.Short() {
		t.Skip("makes 10,001 files")
	}
	dir := t.TempDir()
	for i := 0; i <= receipt.MaxOutputFiles; i++ {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%05d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_, err := receipt.HashOutputs(dir)
	if err == nil || !strings.Contains(err.Error(), "more than 10000 output files") {
		t.Fatalf("%d files: %v", receipt.MaxOutputFiles+1, err)
	}
	if err := os.Remove(filepath.Join(dir, "f00000")); err != nil {
		t.Fatal(err)
	}
	if files, err := receipt.HashOutputs(dir); err != nil || len(files) != receipt.MaxOutputFiles {
		t.Fatalf("%d files: %d, %v", receipt.MaxOutputFiles, len(files), err)
	}
}

func TestResultHash(t *testing.T) {
	files := []receipt.OutputFile{
		{Path: "a.txt", Size: 6, SHA256: strings.Repeat("1", 64)},
		{Path: "sub/b", Size: 0, SHA256: strings.Repeat("2", 64)},
		{Path: "sub.txt", Size: 9, SHA256: strings.Repeat("3", 64)},
	}
	h := receipt.ResultHash(0, files)
	if len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
		t.Fatalf("result hash %q is not 64 lowercase hex digits", h)
	}

	// The documented format: exit code, then the files sorted by path.
	want := sha256.Sum256([]byte("gpumesh-result/1\nexit 0\n" +
		strings.Repeat("1", 64) + " 6 a.txt\n" +
		strings.Repeat("3", 64) + " 9 sub.txt\n" +
		strings.Repeat("2", 64) + " 0 sub/b\n"))
	if h != hex.EncodeToString(want[:]) {
		t.Fatalf("result hash %s, want %x", h, want)
	}

	// Stable, whatever the order of the files, and leaves them in order.
	for i := 0; i < 10; i++ {
		shuffled := append([]receipt.OutputFile(nil), files...)
		rand.New(rand.NewSource(int64(i))).Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
		before := append([]receipt.OutputFile(nil), shuffled...)
		if got := receipt.ResultHash(0, shuffled); got != h {
			t.Fatalf("order %v: %s, want %s", shuffled, got, h)
		}
		if !reflect.DeepEqual(shuffled, before) {
			t.Fatal("ResultHash reordered its argument")
		}
	}
	if receipt.ResultHash(0, files) != h {
		t.Fatal("result hash is not stable")
	}

	// Everything counts: the exit code, each file's hash, size and path.
	seen := map[string]string{h: "original"}
	distinct := func(name, got string) {
		t.Helper()
		if prev, ok := seen[got]; ok {
			t.Fatalf("%s has the same result hash as %s", name, prev)
		}
		seen[got] = name
	}
	distinct("exit 1", receipt.ResultHash(1, files))
	distinct("exit -1", receipt.ResultHash(-1, files))
	distinct("exit 256", receipt.ResultHash(256, files))
	distinct("no files", receipt.ResultHash(0, nil))
	distinct("no files, exit 1", receipt.ResultHash(1, nil))
	distinct("one file fewer", receipt.ResultHash(0, files[:2]))
	for i := range files {
		for field, change := range map[string]func(*receipt.OutputFile){
			"hash": func(f *receipt.OutputFile) { f.SHA256 = strings.Repeat("f", 64) },
			"size": func(f *receipt.OutputFile) { f.Size++ },
			"path": func(f *receipt.OutputFile) { f.Path += "x" },
		} {
			changed := append([]receipt.OutputFile(nil), files...)
			change(&changed[i])
			distinct(fmt.Sprintf("file %d's %s", i, field), receipt.ResultHash(0, changed))
		}
	}
	if receipt.ResultHash(0, nil) != receipt.ResultHash(0, []receipt.OutputFile{}) {
		t.Fatal("nil and no files differ")
	}

	// The hash of what HashOutputs found is the receipt's.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "out"), []byte("42"), 0o644); err != nil {
		t.Fatal(err)
	}
	found, err := receipt.HashOutputs(dir)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("42"))
	want = sha256.Sum256([]byte(fmt.Sprintf("gpumesh-result/1\nexit 3\n%x 2 out\n", sum)))
	if got := receipt.ResultHash(3, found); got != hex.EncodeToString(want[:]) {
		t.Fatalf("result of HashOutputs: %s, want %x", got, want)
	}
}

func TestHashOutputsRefusesNamesTheSubmitterCannotTake(t *testing.T) {
	for _, name := range []string{"a\nb 2 c", "back\\slash", "bad-\xff.pt"} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := receipt.HashOutputs(dir)
		if err == nil || !strings.Contains(err.Error(), "rename it") {
			t.Errorf("%q: %v, want an error saying to rename it", name, err)
		}
	}
	if err := receipt.CheckOutputPath("ckpt/step-1.pt"); err != nil {
		t.Fatal(err)
	}
}

// A receipt the consumer did not countersign is kept as the provider's
// signed word of why: it verifies as a record (not as a co-signed receipt),
// any change to the statement or the receipt breaks it, it cannot carry a
// consumer's signature too, and its anchoring leaf differs from a
// co-signed one's.
func TestReceiptMarkedUnsignedIsTheProvidersSignedWord(t *testing.T) {
	p, c := rcptKey(t), rcptKey(t)
	s, err := receipt.Sign(rcptReceipt(p, c), p)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.VerifyRecord(); err == nil {
		t.Fatal("a receipt with the provider's signature alone verifies as a record")
	}
	wantBad(t, s.MarkUnsigned(c, "left", rcptStart), "not the provider")
	if err := s.MarkUnsigned(p, "the consumer left before countersigning", rcptStart); err != nil {
		t.Fatal(err)
	}
	if err := s.VerifyRecord(); err != nil {
		t.Fatalf("marked unsigned: %v", err)
	}
	wantBad(t, s.Verify(), "not countersigned")
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	back, err := receipt.Parse(data)
	if err != nil || back.VerifyRecord() != nil {
		t.Fatalf("parsed back: %v, %v", err, back.VerifyRecord())
	}
	changed := back
	u := *back.Unsigned
	u.Reason = "the consumer refused"
	changed.Unsigned = &u
	wantBad(t, changed.VerifyRecord(), "unsigned-statement")
	changed = back
	changed.Receipt.ExitCode = 1
	wantBad(t, changed.VerifyRecord(), "provider signature")
	both := back
	both.ConsumerSig = rcptSigned(t, p, c).ConsumerSig
	bothData, _ := json.Marshal(both)
	_, err = receipt.Parse(bothData)
	wantBad(t, err, "countersigned and marked unsigned")
	cosigned := rcptSigned(t, p, c)
	wantBad(t, cosigned.MarkUnsigned(p, "x", rcptStart), "countersigned")
	if bytes.Equal(cosigned.LeafData(), back.LeafData()) {
		t.Error("a co-signed receipt and one marked unsigned have the same leaf")
	}
	if !bytes.Contains(back.LeafData(), []byte("the consumer left before countersigning")) {
		t.Error("the leaf of a receipt marked unsigned does not hold the reason")
	}
}

// Receipts signed before CheckpointBytes existed (testdata, written and
// signed by that code) still parse and verify, and hash to the same
// anchoring leaf: a zero count is left out of the signed bytes.
func TestReceiptsOfTheFormatBeforeCheckpointBytesStillVerify(t *testing.T) {
	for _, name := range []string{"v1-countersigned", "v1-unsigned"} {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			leaf, err := os.ReadFile(filepath.Join("testdata", name+".leaf"))
			if err != nil {
				t.Fatal(err)
			}
			s, err := receipt.Parse(data)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if err := s.VerifyRecord(); err != nil {
				t.Fatalf("verify: %v", err)
			}
			if s.Receipt.CheckpointBytes != 0 {
				t.Fatalf("checkpoint bytes %d, want 0", s.Receipt.CheckpointBytes)
			}
			h := sha256.Sum256(append([]byte{0}, s.LeafData()...)) // chain.LeafHash
			if got, want := hex.EncodeToString(h[:]), strings.TrimSpace(string(leaf)); got != want {
				t.Fatalf("leaf %s, want %s as anchored", got, want)
			}
			if bytes.Contains(s.Receipt.SigningBytes(), []byte("checkpoint")) {
				t.Fatalf("signing bytes name checkpoints: %s", s.Receipt.SigningBytes())
			}
		})
	}
}

// Checkpoint bytes are signed by both parties: changing them breaks both
// signatures; a count over the bound is refused.
func TestReceiptCheckpointBytesAreSigned(t *testing.T) {
	p, c := rcptKey(t), rcptKey(t)
	r := rcptReceipt(p, c)
	r.CheckpointBytes = 10 << 20
	s, err := receipt.Sign(r, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Countersign(c); err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(s)
	if !bytes.Contains(data, []byte(`"checkpointBytes":10485760`)) {
		t.Fatalf("encoded receipt lacks its checkpoint bytes: %s", data)
	}
	got, err := receipt.Parse(data)
	if err != nil || got.Verify() != nil || got.Receipt.CheckpointBytes != 10<<20 {
		t.Fatalf("round trip: %v, %+v", err, got.Receipt)
	}
	got.Receipt.CheckpointBytes++
	wantBad(t, got.VerifyProvider(), "provider signature does not match")
	r.CheckpointBytes = receipt.MaxCheckpointBytes + 1
	_, err = receipt.Sign(r, p)
	wantBad(t, err, "checkpoint bytes")
}
