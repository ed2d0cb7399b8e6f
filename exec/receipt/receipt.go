// Package receipt is the signed account of one member's work on a job
// (who, for whom, how many GPUs for how long, at what price, paid how, with
// which result), the provider's and the consumer's signatures over it, and
// the output-file hashes its result names. It links no GPU or container
// code, so anyone can verify a receipt.
package receipt

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/bits"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mr-tron/base58"
)

// A receipt is a provider's signed account of one member's work on a job:
// who did what for whom, for how long, at what price, with which result.
// The consumer (the job's submitter) checks it against what it saw and
// countersigns. Both signatures are plain ed25519 over SigningBytes, by the
// keys whose Solana addresses (base58 public keys, the peers' own keys) the
// receipt names, so anyone can check a receipt with no mesh at all.

// Version is the version of the receipt format.
const Version = 1

// receiptDomain separates receipt signatures from every other signature of
// the same key.
const receiptDomain = "gpumesh-receipt/1\n"

// Bounds of a receipt's fields.
const (
	maxReceiptText = 256
	maxReceiptGPUs = 4096
	MaxSize        = 128 << 10 // bytes of an encoded signed receipt (a long job lists its payments)
	maxPayments    = 1000      // payment signatures in one receipt
	// maxReceiptMillis bounds a receipt's duration (a year; leases are at
	// most 30 days), so GPUs × duration cannot overflow.
	maxReceiptMillis = 366 * 24 * 3600 * 1000
)

// ErrBad marks a receipt that is malformed, inconsistent or wrongly
// signed.
var ErrBad = errors.New("bad receipt")

// Receipt is the work of one member of a job, metered by its provider.
type Receipt struct {
	Version    int    `json:"v"`
	Job        string `json:"job"`
	Attempt    int    `json:"attempt"`    // the job's run, from 0 (a retry runs again)
	Rank       int    `json:"rank"`       // the member, from 0
	Provider   string `json:"provider"`   // Solana address of the provider's key
	Consumer   string `json:"consumer"`   // Solana address of the submitter's key
	Class      string `json:"class"`      // GPU class, e.g. "H100-80GB"
	GPUs       uint32 `json:"gpus"`       // GPUs leased
	GPUMillis  uint64 `json:"gpuMillis"`  // GPU-milliseconds: GPUs × (end − start)
	Price      uint64 `json:"price"`      // per GPU-hour, in Unit's smallest unit
	Unit       string `json:"unit"`       // e.g. "USDC" (6 decimals), "SOL" (9)
	Amount     uint64 `json:"amount"`     // ⌈price × GPU-ms / 3,600,000⌉, in Unit's smallest unit
	ExitCode   int    `json:"exitCode"`   // the work's exit status
	ResultHash string `json:"resultHash"` // hex SHA-256 of the exit code and the outputs (see ResultHash)
	Start      int64  `json:"start"`      // unix ms
	End        int64  `json:"end"`        // unix ms
	Util       int    `json:"util"`       // mean NVML utilization of the leased GPUs in percent; -1: not sampled

	// Settlement, where the swarm's unit is paid on chain as the job runs.
	PausedMillis uint64   `json:"pausedMillis,omitempty"` // time the work was paused (a late payment): not billed
	Paid         uint64   `json:"paid,omitempty"`         // confirmed payments, in Unit's smallest unit
	Payments     []string `json:"payments,omitempty"`     // their transaction signatures

	// CheckpointBytes is the bytes of the job's checkpoints (member 0's)
	// that the provider sent the consumer while the member ran, on streams
	// the consumer read to their end: a count the consumer checks against
	// its own before it countersigns (it refuses a larger one). Bytes a
	// checkpoint replica received are not in it: they move between the
	// consumer and the replica, not this provider. Zero is left out of the
	// JSON, so a receipt without checkpoint bytes signs the same bytes as
	// before the field was added.
	CheckpointBytes uint64 `json:"checkpointBytes,omitempty"`
}

// MaxCheckpointBytes bounds a receipt's CheckpointBytes (a petabyte).
const MaxCheckpointBytes = 1 << 50

// Signed is a receipt with its provider's signature and, once the
// consumer has checked it, the consumer's; or, where the consumer refused,
// left or did not answer, the provider's signed word that it did not
// (Unsigned), so the record shows who walked away.
type Signed struct {
	Receipt     Receipt   `json:"receipt"`
	ProviderSig []byte    `json:"providerSig"`           // ed25519 over SigningBytes
	ConsumerSig []byte    `json:"consumerSig,omitempty"` // ed25519 over SigningBytes
	Unsigned    *Unsigned `json:"unsigned,omitempty"`    // never with ConsumerSig
}

// Unsigned is a provider's signed statement that the consumer did not
// countersign a receipt: it refused (Reason says what it said), left
// before signing, or did not answer in time. It is the provider's word, no
// more: a consumer holding the receipt with its own signature shows
// otherwise.
type Unsigned struct {
	Reason string `json:"reason"` // what happened, as the provider saw it
	At     int64  `json:"at"`     // unix ms
	Sig    []byte `json:"sig"`    // the provider's ed25519 over UnsignedBytes
}

// unsignedDomain separates a provider's statement of a refusal from its
// receipt signatures.
const unsignedDomain = "gpumesh-receipt-unsigned/1\n"

// MaxUnsignedReason bounds the reason of an Unsigned, in bytes.
const MaxUnsignedReason = 1024

// UnsignedBytes is what a provider signs to say its receipt was not
// countersigned: a domain tag, the time, the reason, then the receipt's
// signing bytes.
func (r Receipt) UnsignedBytes(reason string, at int64) []byte {
	out := fmt.Appendf([]byte(unsignedDomain), "%d\n%d\n%s\n", at, len(reason), reason)
	return append(out, r.SigningBytes()...)
}

// MarkUnsigned records, with the provider's key, that the consumer did not
// countersign: the receipt can then be kept and anchored as the provider's
// word alone, with the reason.
func (s *Signed) MarkUnsigned(key ed25519.PrivateKey, reason string, at time.Time) error {
	if len(s.ConsumerSig) > 0 {
		return fmt.Errorf("%w: the consumer countersigned it", ErrBad)
	}
	if err := s.VerifyProvider(); err != nil {
		return err
	}
	if Address(key) != s.Receipt.Provider {
		return fmt.Errorf("%w: signing key %s is not the provider %s", ErrBad, Address(key), s.Receipt.Provider)
	}
	reason = strings.ToValidUTF8(reason, "?")
	if len(reason) > MaxUnsignedReason {
		reason = reason[:MaxUnsignedReason]
		reason = strings.ToValidUTF8(reason, "")
	}
	ms := at.UnixMilli()
	s.Unsigned = &Unsigned{Reason: reason, At: ms, Sig: ed25519.Sign(key, s.Receipt.UnsignedBytes(reason, ms))}
	return nil
}

// GPUSeconds is the receipt's metered GPU time.
func (r Receipt) GPUSeconds() float64 { return float64(r.GPUMillis) / 1000 }

// Meter fills in the metered fields from the GPUs, the start and end of the
// work and the price: GPU-milliseconds and the amount.
func (r *Receipt) Meter(gpus uint32, start, end time.Time, price uint64) {
	r.MeterPaused(gpus, start, end, 0, price)
}

// MeterPaused is Meter for work that was paused for a while: that time is
// not billed.
func (r *Receipt) MeterPaused(gpus uint32, start, end time.Time, paused time.Duration, price uint64) {
	if end.Before(start) {
		end = start
	}
	r.GPUs, r.Price = gpus, price
	r.Start, r.End = start.UnixMilli(), end.UnixMilli()
	r.PausedMillis = min(uint64(max(paused.Milliseconds(), 0)), uint64(r.End-r.Start))
	r.GPUMillis = uint64(gpus) * (uint64(r.End-r.Start) - r.PausedMillis)
	r.Amount = Amount(price, r.GPUMillis)
}

// Amount is what GPU-milliseconds cost at a price per GPU-hour, rounded up
// to the unit's smallest unit; it saturates rather than overflow.
func Amount(pricePerHour, gpuMillis uint64) uint64 {
	const msPerHour = 3_600_000
	hi, lo := bits.Mul64(pricePerHour, gpuMillis)
	if hi >= msPerHour {
		return ^uint64(0)
	}
	q, rem := bits.Div64(hi, lo, msPerHour)
	if rem > 0 && q < ^uint64(0) {
		q++
	}
	return q
}

// Check says what is wrong with a receipt's fields, if anything.
func (r Receipt) Check() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBad, fmt.Sprintf(format, a...))
	}
	switch {
	case r.Version != Version:
		return bad("version %d, want %d", r.Version, Version)
	case r.Job == "" || len(r.Job) > maxReceiptText:
		return bad("job ID missing or longer than %d bytes", maxReceiptText)
	case r.Rank < 0 || r.Rank >= maxReceiptGPUs || r.Attempt < 0 || r.Attempt > 1000:
		return bad("rank %d or attempt %d out of range", r.Rank, r.Attempt)
	case r.Class == "" || len(r.Class) > maxReceiptText:
		return bad("class missing or longer than %d bytes", maxReceiptText)
	case len(r.Unit) > maxReceiptText:
		return bad("unit longer than %d bytes", maxReceiptText)
	case r.GPUs == 0 || r.GPUs > maxReceiptGPUs:
		return bad("%d GPUs, want 1..%d", r.GPUs, maxReceiptGPUs)
	case r.Start <= 0:
		return bad("start %d is not a time (unix ms)", r.Start)
	case r.End < r.Start:
		return bad("end %d before start %d", r.End, r.Start)
	case r.End-r.Start > maxReceiptMillis:
		return bad("%d ms of work, more than the longest lease", r.End-r.Start)
	case r.PausedMillis > uint64(r.End-r.Start):
		return bad("paused %d ms of %d", r.PausedMillis, r.End-r.Start)
	case r.GPUMillis != uint64(r.GPUs)*(uint64(r.End-r.Start)-r.PausedMillis):
		ran := fmt.Sprintf("%d ms", r.End-r.Start)
		if r.PausedMillis > 0 {
			ran += fmt.Sprintf(" less %d paused", r.PausedMillis)
		}
		return bad("%d GPU-ms, but %d GPUs for %s is %d", r.GPUMillis, r.GPUs, ran, uint64(r.GPUs)*(uint64(r.End-r.Start)-r.PausedMillis))
	case len(r.Payments) > maxPayments:
		return bad("%d payments, at most %d", len(r.Payments), maxPayments)
	case r.Amount != Amount(r.Price, r.GPUMillis):
		return bad("amount %d, but %d GPU-ms at %d per GPU-hour is %d", r.Amount, r.GPUMillis, r.Price, Amount(r.Price, r.GPUMillis))
	case len(r.ResultHash) != 64 || strings.Trim(r.ResultHash, "0123456789abcdef") != "":
		return bad("result hash %q is not 64 lowercase hex digits", clipText(r.ResultHash))
	case r.Util < -1 || r.Util > 100:
		return bad("utilization %d%%", r.Util)
	case r.CheckpointBytes > MaxCheckpointBytes:
		return bad("%d checkpoint bytes, at most %d", r.CheckpointBytes, uint64(MaxCheckpointBytes))
	}
	for _, p := range r.Payments {
		if p == "" || len(p) > 100 {
			return bad("payment signature %q", clipText(p))
		}
	}
	if _, err := addressKey(r.Provider); err != nil {
		return bad("provider: %v", err)
	}
	if _, err := addressKey(r.Consumer); err != nil {
		return bad("consumer: %v", err)
	}
	return nil
}

// SigningBytes is what both parties sign: a domain tag, then the receipt
// as JSON (Go's field order, no spaces).
func (r Receipt) SigningBytes() []byte {
	data, err := json.Marshal(r)
	if err != nil { // a struct of strings and integers always marshals
		panic(err)
	}
	return append([]byte(receiptDomain), data...)
}

// Sign signs a receipt as its provider. The key must be the one
// whose address is r.Provider.
func Sign(r Receipt, key ed25519.PrivateKey) (Signed, error) {
	if err := r.Check(); err != nil {
		return Signed{}, err
	}
	if Address(key) != r.Provider {
		return Signed{}, fmt.Errorf("%w: signing key %s is not the provider %s", ErrBad, Address(key), r.Provider)
	}
	return Signed{Receipt: r, ProviderSig: ed25519.Sign(key, r.SigningBytes())}, nil
}

// Countersign adds the consumer's signature after checking the provider's.
func (s *Signed) Countersign(key ed25519.PrivateKey) error {
	if err := s.VerifyProvider(); err != nil {
		return err
	}
	if Address(key) != s.Receipt.Consumer {
		return fmt.Errorf("%w: signing key %s is not the consumer %s", ErrBad, Address(key), s.Receipt.Consumer)
	}
	s.ConsumerSig = ed25519.Sign(key, s.Receipt.SigningBytes())
	return nil
}

// VerifyProvider checks the fields and the provider's signature.
func (s Signed) VerifyProvider() error {
	if err := s.Receipt.Check(); err != nil {
		return err
	}
	return verifySig(s.Receipt.Provider, s.Receipt.SigningBytes(), s.ProviderSig, "provider")
}

// Verify checks the fields and both signatures: a receipt both parties
// agree on.
func (s Signed) Verify() error {
	if err := s.VerifyProvider(); err != nil {
		return err
	}
	if len(s.ConsumerSig) == 0 {
		return fmt.Errorf("%w: not countersigned by the consumer %s", ErrBad, s.Receipt.Consumer)
	}
	return verifySig(s.Receipt.Consumer, s.Receipt.SigningBytes(), s.ConsumerSig, "consumer")
}

// VerifyRecord checks a receipt as a record of work: the fields, the
// provider's signature, and either the consumer's countersignature or the
// provider's signed statement that the consumer did not countersign.
func (s Signed) VerifyRecord() error {
	if s.Unsigned == nil {
		return s.Verify()
	}
	if err := s.VerifyProvider(); err != nil {
		return err
	}
	if err := s.checkUnsigned(); err != nil {
		return err
	}
	return verifySig(s.Receipt.Provider, s.Receipt.UnsignedBytes(s.Unsigned.Reason, s.Unsigned.At), s.Unsigned.Sig, "provider's unsigned-statement")
}

// checkUnsigned says what is wrong with the shape of an Unsigned.
func (s Signed) checkUnsigned() error {
	u := s.Unsigned
	switch {
	case u == nil:
		return nil
	case len(s.ConsumerSig) > 0:
		return fmt.Errorf("%w: countersigned and marked unsigned at once", ErrBad)
	case len(u.Reason) > MaxUnsignedReason || !utf8.ValidString(u.Reason):
		return fmt.Errorf("%w: the unsigned statement's reason is longer than %d bytes or not UTF-8", ErrBad, MaxUnsignedReason)
	case u.At <= 0:
		return fmt.Errorf("%w: the unsigned statement's time %d is not a time (unix ms)", ErrBad, u.At)
	}
	return nil
}

// Parse reads a signed receipt from bytes that came from the
// network or a file; it checks the fields, not the signatures.
func Parse(data []byte) (Signed, error) {
	if len(data) > MaxSize {
		return Signed{}, fmt.Errorf("%w: %d bytes, at most %d", ErrBad, len(data), MaxSize)
	}
	var s Signed
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return Signed{}, fmt.Errorf("%w: %v", ErrBad, err)
	}
	if dec.More() {
		return Signed{}, fmt.Errorf("%w: data after the receipt", ErrBad)
	}
	if err := s.Receipt.Check(); err != nil {
		return Signed{}, err
	}
	if err := s.checkUnsigned(); err != nil {
		return Signed{}, err
	}
	return s, nil
}

// Address is the Solana address of an ed25519 key: base58 of its public key.
func Address(key ed25519.PrivateKey) string {
	return base58.Encode(key.Public().(ed25519.PublicKey))
}

func addressKey(addr string) (ed25519.PublicKey, error) {
	if addr == "" || len(addr) > 64 {
		return nil, fmt.Errorf("address %q: want a base58 public key", clipText(addr))
	}
	b, err := base58.Decode(addr)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("address %q is not a base58 ed25519 public key", clipText(addr))
	}
	return ed25519.PublicKey(b), nil
}

func verifySig(addr string, msg, sig []byte, who string) error {
	pub, err := addressKey(addr)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrBad, who, err)
	}
	if len(sig) != ed25519.SignatureSize || !ed25519.Verify(pub, msg, sig) {
		return fmt.Errorf("%w: the %s signature does not match %s (the receipt was changed, or signed by another key)", ErrBad, who, addr)
	}
	return nil
}

func clipText(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// OutputFile is one file a task left in its outputs folder.
type OutputFile struct {
	Path   string `json:"path"` // slash-separated, relative to the outputs folder
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"` // hex
}

// Bounds of a task's outputs.
const (
	MaxOutputFiles = 10_000
	MaxOutputBytes = 4 << 30
)

// HashOutputs lists the regular files under dir with their sizes and
// SHA-256, sorted by path. Links and other special files are skipped; more
// than MaxOutputFiles files or MaxOutputBytes bytes is an error.
func HashOutputs(dir string) ([]OutputFile, error) {
	var files []OutputFile
	var total int64
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("outputs: %w", err)
	}
	defer root.Close()
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if len(files) == MaxOutputFiles {
			return fmt.Errorf("more than %d output files; pack them into an archive", MaxOutputFiles)
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		if err := CheckOutputPath(filepath.ToSlash(rel)); err != nil {
			return err
		}
		f, err := root.Open(rel) // beneath dir only: a symlink swapped in is refused
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		n, err := io.Copy(h, f)
		if err != nil {
			return err
		}
		total += n
		if total > MaxOutputBytes {
			return fmt.Errorf("outputs exceed %d GiB", MaxOutputBytes>>30)
		}
		files = append(files, OutputFile{Path: filepath.ToSlash(rel), Size: n, SHA256: hex.EncodeToString(h.Sum(nil))})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("outputs: %w", err)
	}
	sort.Slice(files, func(i, k int) bool { return files[i].Path < files[k].Path })
	return files, nil
}

// MaxOutputPath bounds the length of an output's path, in bytes.
const MaxOutputPath = 1024

// CheckOutputPath says what is wrong with an output's path, if anything: it
// must be relative, slash-separated, inside the outputs folder, valid UTF-8
// without control characters or backslashes, at most MaxOutputPath bytes.
// The same rule holds on the provider (HashOutputs) and the submitter.
func CheckOutputPath(p string) error {
	bad := func(why string) error { return fmt.Errorf("output file %q: %s; rename it", clipText(p), why) }
	switch {
	case p == "":
		return bad("empty path")
	case len(p) > MaxOutputPath:
		return bad(fmt.Sprintf("path longer than %d bytes", MaxOutputPath))
	case !utf8.ValidString(p):
		return bad("name is not UTF-8")
	case strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' }):
		return bad("name has a control character or a backslash")
	}
	for _, part := range strings.Split(p, "/") {
		if part == "" || part == "." || part == ".." {
			return bad("path must be relative and stay inside the outputs folder")
		}
	}
	return nil
}

// ResultHash is the hex SHA-256 of a task's result: its exit code, then a
// line "sha256 size path" for each output file, sorted by path.
func ResultHash(exitCode int, files []OutputFile) string {
	sorted := append([]OutputFile(nil), files...)
	sort.Slice(sorted, func(i, k int) bool { return sorted[i].Path < sorted[k].Path })
	h := sha256.New()
	fmt.Fprintf(h, "gpumesh-result/1\nexit %d\n", exitCode)
	for _, f := range sorted {
		fmt.Fprintf(h, "%s %d %s\n", f.SHA256, f.Size, f.Path)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// LeafData is what a receipt's leaf in an anchoring batch hashes: the
// signed bytes, then the provider's and the consumer's signatures; for a
// receipt the consumer did not countersign, the provider's signature, then
// its signed statement of why (UnsignedBytes and its signature).
func (s Signed) LeafData() []byte {
	out := s.Receipt.SigningBytes()
	out = append(out, s.ProviderSig...)
	if s.Unsigned != nil && len(s.ConsumerSig) == 0 {
		out = append(out, s.Receipt.UnsignedBytes(s.Unsigned.Reason, s.Unsigned.At)...)
		return append(out, s.Unsigned.Sig...)
	}
	return append(out, s.ConsumerSig...)
}

// Key names a receipt: <job>-<attempt>-<rank>.
func (r Receipt) Key() string { return fmt.Sprintf("%s-%d-%d", r.Job, r.Attempt, r.Rank) }
