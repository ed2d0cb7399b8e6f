package chain

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	solana "github.com/gagliardetto/solana-go"
	"github.com/gagliardetto/solana-go/rpc"

	"github.com/gpumesh/gpumesh/internal/atomicfile"
)

// The anchorer puts records (co-signed receipts) on Solana in batches.
//
// Its state is two kinds of files in one folder, so a kill at any point
// loses nothing and anchors nothing twice:
//
//	records.log          every record added and not yet anchored, one JSON
//	                     line each, appended and fsynced before Add returns
//	batches/<seq>.json   a closed batch (written whole: temp file, fsync,
//	                     rename): its keys and leaves, its root, and once
//	                     built its signed transaction, kept before it is sent
//	                     so that a restart looks that one up rather than
//	                     sending another; once on chain, its slot and fee
//	batches/<seq>.records  an anchored batch's records, lines as in
//	                     records.log, written whole before the batch is
//	                     marked anchored
//
// records.log stays small: once a batch is anchored the log is written
// anew (whole, as a batch file is) with only the records not yet anchored.
// An append that fails or is cut short is truncated back before Add
// returns its error. A line that does not parse (a disk's torn write) is
// skipped with a warning, and the log written anew without it; its record
// is lost to the log, so whoever adds records adds them all again at each
// start (the node does, from its receipts), and a key anchored already is
// taken once.
//
// A key belongs to one batch, and a batch to one memo transaction at a time:
// a new transaction is built only when the old one is unknown to the chain
// and its blockhash has expired, so it can never land as well. Proofs are
// made on demand from a record, its batch and the batch's transaction.

// Defaults of an Anchorer.
const (
	DefaultBatchSize = 5000             // records per batch
	DefaultBatchAge  = 30 * time.Second // the oldest record waits at most this long for its batch to close
	MaxBatchSize     = 100_000
	pollEvery        = 400 * time.Millisecond
	resendEvery      = 2 * time.Second
	maxBackoff       = 30 * time.Second
	maxRecord        = 64 << 10 // bytes of one record
)

// Batch states.
const (
	BatchBuilt    = "built"    // closed; no transaction sent yet (or the last one expired)
	BatchSent     = "sent"     // its transaction is out; waiting for the chain
	BatchAnchored = "anchored" // on chain; proofs written
)

// Config of an Anchorer.
type Config struct {
	Dir       string             // its state; made if missing
	RPC       string             // Solana JSON-RPC URL: devnet, mainnet, a validator or chain/localnet
	Key       ed25519.PrivateKey // pays the fees and signs the memos (the peer's key)
	BatchSize int                // 0: DefaultBatchSize
	BatchAge  time.Duration      // 0: DefaultBatchAge
	Log       *slog.Logger
}

// Batch is a closed batch of records.
type Batch struct {
	Seq       int       `json:"seq"`
	Keys      []string  `json:"keys"`
	Leaves    []Hash    `json:"leaves"`
	Root      Hash      `json:"root"`
	State     string    `json:"state"`
	Tx        []byte    `json:"tx,omitempty"`        // the signed transaction, binary
	Signature string    `json:"signature,omitempty"` // its first signature, base58
	LastValid uint64    `json:"lastValid,omitempty"` // block height after which its blockhash is expired
	Slot      uint64    `json:"slot,omitempty"`
	Fee       uint64    `json:"fee,omitempty"` // lamports
	Tries     int       `json:"tries,omitempty"`
	Error     string    `json:"error,omitempty"` // the last problem, while it waits
	Closed    time.Time `json:"closed"`
	Anchored  time.Time `json:"anchored,omitzero"`
}

// Proof shows that a record was anchored: its leaf, the path to the root,
// and the memo transaction that carries the root.
type Proof struct {
	Version   int             `json:"v"`
	Key       string          `json:"key"`
	Record    json.RawMessage `json:"receipt"` // the record anchored, as given to Add
	Leaf      Hash            `json:"leaf"`
	Index     int             `json:"index"`
	Count     int             `json:"count"`
	Path      []Step          `json:"path"`
	Root      Hash            `json:"root"`
	Memo      string          `json:"memo"`
	Signature string          `json:"signature"` // of the memo transaction, base58
	Slot      uint64          `json:"slot"`
	Payer     string          `json:"payer"`   // the memo's signer and fee payer
	Cluster   string          `json:"cluster"` // the RPC the anchorer used
}

// ProofVersion is the version of the proof format.
const ProofVersion = 1

// Stats says where the anchorer stands.
type Stats struct {
	Pending  int    `json:"pending"`  // records in no batch yet
	Batches  int    `json:"batches"`  // batches not yet anchored
	Anchored int    `json:"anchored"` // records with a proof
	Fees     uint64 `json:"fees"`     // lamports paid, all batches
	Txs      int    `json:"txs"`      // memo transactions anchored
	Error    string `json:"error,omitempty"`
}

// Anchorer batches records and anchors each batch's root on Solana.
type Anchorer struct {
	cfg    Config
	client *rpc.Client
	payer  solana.PrivateKey
	log    *slog.Logger
	wake   chan struct{}

	mu       sync.Mutex
	logFile  recordFile
	logSize  int64               // bytes of whole lines in the log
	torn     bool                // a failed append could not be truncated back: do so before the next
	records  map[string]recordAt // every key in the log: where its record is
	pending  []pendingRecord     // in no batch yet, in order of arrival
	batchOf  map[string]*Batch   // key → its batch
	batches  []*Batch            // not yet anchored, oldest first
	sentAt   map[int]time.Time   // when a batch's transaction was last sent
	nextSeq  int
	anchored int
	fees     uint64
	txs      int
	lastErr  string
}

type recordAt struct{ off, n int64 }

// recordFile is the record log as the anchorer uses it (an *os.File).
type recordFile interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	Sync() error
	Close() error
}

// openRecordFile opens the record log; tests put a failing disk in.
var openRecordFile = func(path string) (recordFile, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
}

type pendingRecord struct {
	Key    string          `json:"key"`
	Leaf   Hash            `json:"leaf"`
	Record json.RawMessage `json:"record"`
	Added  time.Time       `json:"added"`
}

var keyPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Open loads an anchorer's state from its folder.
func Open(cfg Config) (*Anchorer, error) {
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.BatchSize > MaxBatchSize {
		return nil, fmt.Errorf("anchor batch size %d: at most %d", cfg.BatchSize, MaxBatchSize)
	}
	if cfg.BatchAge <= 0 {
		cfg.BatchAge = DefaultBatchAge
	}
	if len(cfg.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("anchor: no key to sign with")
	}
	if cfg.RPC == "" {
		return nil, errors.New("anchor: no Solana RPC URL (--solana-rpc)")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	a := &Anchorer{
		cfg: cfg, client: rpc.New(cfg.RPC), payer: solana.PrivateKey(cfg.Key), log: cfg.Log,
		wake: make(chan struct{}, 1), records: map[string]recordAt{}, batchOf: map[string]*Batch{}, sentAt: map[int]time.Time{},
	}
	if err := os.MkdirAll(a.path("batches"), 0o700); err != nil {
		return nil, fmt.Errorf("anchor: %w", err)
	}
	if err := a.load(); err != nil {
		return nil, err
	}
	return a, nil
}

// Close closes the record log.
func (a *Anchorer) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.logFile == nil {
		return nil
	}
	err := a.logFile.Close()
	a.logFile = nil
	return err
}

// load reads the batches and the record log.
func (a *Anchorer) load() error {
	entries, err := os.ReadDir(a.path("batches"))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b := &Batch{}
		if err := readJSON(filepath.Join(a.path("batches"), e.Name()), b); err != nil {
			return fmt.Errorf("anchor batch %s: %w; move it away to go on without it", e.Name(), err)
		}
		a.nextSeq = max(a.nextSeq, b.Seq+1)
		for _, k := range b.Keys {
			a.batchOf[k] = b
		}
		if b.State == BatchAnchored {
			a.fees += b.Fee
			a.txs++
			a.anchored += len(b.Keys)
			continue
		}
		a.batches = append(a.batches, b)
	}
	sort.Slice(a.batches, func(i, k int) bool { return a.batches[i].Seq < a.batches[k].Seq })

	f, err := openRecordFile(a.path("records.log"))
	if err != nil {
		return fmt.Errorf("anchor: %w", err)
	}
	data, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<62))
	if err != nil {
		f.Close()
		return err
	}
	var off int64
	var bad, old int
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 { // a line cut short by a crash: its Add never returned
			break
		}
		var p pendingRecord
		if err := json.Unmarshal(data[:i], &p); err != nil || !keyPattern.MatchString(p.Key) {
			bad++
			a.log.Warn("anchor: records.log: a line that does not parse is skipped; its record is anchored when it is added again",
				"byte", off, "bytes", i, "err", err)
		} else if _, dup := a.records[p.Key]; !dup {
			a.records[p.Key] = recordAt{off: off, n: int64(i)}
			switch b := a.batchOf[p.Key]; {
			case b == nil:
				p.Record = nil // read again when its batch is anchored or its proof is asked for
				a.pending = append(a.pending, p)
			case b.State == BatchAnchored:
				old++
			}
		}
		off += int64(i) + 1
		data = data[i+1:]
	}
	if err := f.Truncate(off); err != nil {
		f.Close()
		return err
	}
	a.logFile, a.logSize = f, off
	if bad > 0 || old > 0 {
		return a.compactLocked()
	}
	return nil
}

// recordsPath is the file of an anchored batch's records.
func (a *Anchorer) recordsPath(seq int) string {
	return a.path("batches", fmt.Sprintf("%08d.records", seq))
}

// compactLocked writes the record log anew with only the records of no
// anchored batch, first writing the records file of any anchored batch
// that lacks one (a batch anchored before records files were kept).
func (a *Anchorer) compactLocked() error {
	type line struct {
		key string
		at  recordAt
	}
	var keep []line
	old := map[*Batch]bool{}
	for k, at := range a.records {
		if b := a.batchOf[k]; b != nil && b.State == BatchAnchored {
			old[b] = true
			continue
		}
		keep = append(keep, line{k, at})
	}
	for b := range old {
		if _, err := os.Stat(a.recordsPath(b.Seq)); errors.Is(err, fs.ErrNotExist) {
			if err := a.writeRecordsLocked(b); err != nil {
				return err
			}
		} else if err != nil {
			return fmt.Errorf("anchor: %w", err)
		}
	}
	sort.Slice(keep, func(i, k int) bool { return keep[i].at.off < keep[k].at.off })
	var buf bytes.Buffer
	at := make(map[string]recordAt, len(keep))
	for _, l := range keep {
		rec := make([]byte, l.at.n)
		if _, err := a.logFile.ReadAt(rec, l.at.off); err != nil {
			return fmt.Errorf("anchor: records.log: %w", err)
		}
		at[l.key] = recordAt{off: int64(buf.Len()), n: l.at.n}
		buf.Write(rec)
		buf.WriteByte('\n')
	}
	if err := atomicfile.Write(a.path("records.log"), buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("anchor: records.log: %w", err)
	}
	f, err := openRecordFile(a.path("records.log"))
	if err != nil {
		return fmt.Errorf("anchor: %w", err)
	}
	_ = a.logFile.Close()
	a.logFile, a.logSize, a.records, a.torn = f, int64(buf.Len()), at, false
	return nil
}

// writeRecordsLocked writes an anchored batch's records file from the
// log. A key whose record is not in the log (its line was torn and it was
// not added again) has none: it gets no proof.
func (a *Anchorer) writeRecordsLocked(b *Batch) error {
	var buf bytes.Buffer
	for _, k := range b.Keys {
		at, ok := a.records[k]
		if !ok {
			a.log.Warn("anchor: a record of an anchored batch is missing from records.log; it has no proof", "batch", b.Seq, "key", k)
			continue
		}
		rec := make([]byte, at.n)
		if _, err := a.logFile.ReadAt(rec, at.off); err != nil {
			return fmt.Errorf("anchor: records.log: %w", err)
		}
		buf.Write(rec)
		buf.WriteByte('\n')
	}
	if err := atomicfile.Write(a.recordsPath(b.Seq), buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("anchor: records of batch %d: %w", b.Seq, err)
	}
	return nil
}

func (a *Anchorer) path(parts ...string) string {
	return filepath.Join(append([]string{a.cfg.Dir}, parts...)...)
}

// Item is one record to anchor: its key (letters, digits, . _ -), the data
// its leaf hashes (a verifier recomputes it from the record) and the record
// itself (JSON).
type Item struct {
	Key      string
	LeafData []byte
	Record   json.RawMessage
}

// Add puts a record in the outbox; it is on disk when Add returns. Adding a
// key again does nothing.
func (a *Anchorer) Add(key string, leafData []byte, record json.RawMessage) error {
	return a.AddAll([]Item{{Key: key, LeafData: leafData, Record: record}})
}

// AddAll adds several records with one write to disk.
func (a *Anchorer) AddAll(items []Item) error {
	var buf bytes.Buffer
	var add []pendingRecord
	now := time.Now().UTC()
	for _, it := range items {
		if !keyPattern.MatchString(it.Key) {
			return fmt.Errorf("anchor: key %q: want 1..128 of A-Z a-z 0-9 . _ -", it.Key)
		}
		if len(it.Record) > maxRecord || !json.Valid(it.Record) {
			return fmt.Errorf("anchor: record of %s is not JSON of at most %d bytes", it.Key, maxRecord)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.logFile == nil {
		return errors.New("anchor: closed")
	}
	seen := map[string]bool{}
	at := map[string]recordAt{}
	for _, it := range items {
		if _, ok := a.records[it.Key]; ok || seen[it.Key] {
			continue
		}
		if b := a.batchOf[it.Key]; b != nil && b.State == BatchAnchored {
			continue // anchored: its record is in its batch's records file
		}
		seen[it.Key] = true
		var compact bytes.Buffer
		if err := json.Compact(&compact, it.Record); err != nil {
			return err
		}
		p := pendingRecord{Key: it.Key, Leaf: LeafHash(it.LeafData), Record: compact.Bytes(), Added: now}
		line, err := json.Marshal(p)
		if err != nil {
			return err
		}
		at[it.Key] = recordAt{off: a.logSize + int64(buf.Len()), n: int64(len(line))}
		buf.Write(line)
		buf.WriteByte('\n')
		p.Record = nil
		add = append(add, p)
	}
	if len(add) == 0 {
		return nil
	}
	if a.torn {
		if err := a.logFile.Truncate(a.logSize); err != nil {
			return fmt.Errorf("anchor: records.log: a failed write could not be undone: %w", err)
		}
		a.torn = false
	}
	_, err := a.logFile.WriteAt(buf.Bytes(), a.logSize)
	if err == nil {
		err = a.logFile.Sync()
	}
	if err != nil {
		// Undo what part of the lines was written, so the next append
		// starts on a whole line; try again then if it cannot be undone.
		if terr := a.logFile.Truncate(a.logSize); terr != nil {
			a.torn = true
		}
		return fmt.Errorf("anchor: records.log: %w", err)
	}
	a.logSize += int64(buf.Len())
	for k, r := range at {
		a.records[k] = r
	}
	for _, p := range add {
		if a.batchOf[p.Key] == nil { // a key of a batch whose line was lost is only kept
			a.pending = append(a.pending, p)
		}
	}
	if len(a.pending) >= a.cfg.BatchSize {
		a.signal()
	}
	return nil
}

// record reads a key's record from the log or, once its batch is
// anchored, from the batch's records file.
func (a *Anchorer) record(key string) (pendingRecord, error) {
	a.mu.Lock()
	at, ok := a.records[key]
	var buf []byte
	var err error
	if ok && a.logFile != nil {
		buf = make([]byte, at.n)
		_, err = a.logFile.ReadAt(buf, at.off)
	}
	b := a.batchOf[key]
	a.mu.Unlock()
	var p pendingRecord
	switch {
	case err != nil:
		return p, err
	case buf != nil:
		err = json.Unmarshal(buf, &p)
		return p, err
	case b == nil:
		return p, fmt.Errorf("no record %s", key)
	}
	f, err := os.Open(a.recordsPath(b.Seq))
	if err != nil {
		return p, fmt.Errorf("record %s: %w", key, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4*maxRecord)
	for sc.Scan() {
		if json.Unmarshal(sc.Bytes(), &p) == nil && p.Key == key {
			return p, nil
		}
	}
	if err := sc.Err(); err != nil {
		return p, fmt.Errorf("record %s: %w", key, err)
	}
	return pendingRecord{}, fmt.Errorf("no record %s: its line in records.log was lost before its batch was anchored", key)
}

func (a *Anchorer) signal() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Flush closes a batch of whatever is pending now, without waiting for its
// size or age.
func (a *Anchorer) Flush() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.closeBatchLocked(len(a.pending))
	a.signal()
	return err
}

// closeBatchLocked makes a batch of the first n pending records.
func (a *Anchorer) closeBatchLocked(n int) error {
	n = min(n, a.cfg.BatchSize, len(a.pending))
	if n == 0 {
		return nil
	}
	recs := a.pending[:n]
	b := &Batch{Seq: a.nextSeq, State: BatchBuilt, Closed: time.Now().UTC()}
	for _, r := range recs {
		b.Keys = append(b.Keys, r.Key)
		b.Leaves = append(b.Leaves, r.Leaf)
	}
	t, err := NewTree(b.Leaves)
	if err != nil {
		return err
	}
	b.Root = t.Root()
	if err := a.saveBatch(b); err != nil {
		return err
	}
	for _, k := range b.Keys {
		a.batchOf[k] = b
	}
	a.nextSeq++
	a.pending = append([]pendingRecord(nil), a.pending[n:]...)
	a.batches = append(a.batches, b)
	return nil
}

func (a *Anchorer) saveBatch(b *Batch) error {
	return writeJSON(a.path("batches", fmt.Sprintf("%08d.json", b.Seq)), b)
}

// Stats says where the anchorer stands.
func (a *Anchorer) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return Stats{Pending: len(a.pending), Batches: len(a.batches), Anchored: a.anchored, Fees: a.fees, Txs: a.txs, Error: a.lastErr}
}

// Run closes batches by size and age and anchors them, until ctx ends.
// RPC failures are retried with backoff; nothing waiting is dropped.
func (a *Anchorer) Run(ctx context.Context) {
	backoff := pollEvery
	for {
		wait := pollEvery
		a.mu.Lock()
		for len(a.pending) >= a.cfg.BatchSize {
			if err := a.closeBatchLocked(a.cfg.BatchSize); err != nil {
				a.log.Error("anchor: batch not closed", "err", err)
				break
			}
		}
		if len(a.pending) > 0 {
			age := time.Since(a.pending[0].Added)
			if age >= a.cfg.BatchAge {
				if err := a.closeBatchLocked(len(a.pending)); err != nil {
					a.log.Error("anchor: batch not closed", "err", err)
				}
			} else {
				wait = min(wait, a.cfg.BatchAge-age)
			}
		}
		batches := append([]*Batch(nil), a.batches...)
		a.mu.Unlock()

		var err error
		for _, b := range batches {
			if err = a.advance(ctx, b); err != nil {
				break
			}
		}
		a.mu.Lock()
		if err != nil && ctx.Err() == nil {
			a.lastErr = err.Error()
			a.log.Warn("anchoring waits", "err", err, "retry in", backoff)
			wait = backoff
			backoff = min(backoff*2, maxBackoff)
		} else {
			a.lastErr, backoff = "", pollEvery
		}
		idle := len(a.batches) == 0
		a.mu.Unlock()
		if idle && len(batches) == 0 && err == nil {
			wait = min(wait, time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-a.wake:
		case <-time.After(wait):
		}
	}
}

// Memo is the memo that anchors a root: gpumesh:1:<root hex>:<records>.
func Memo(root Hash, count int) string {
	return fmt.Sprintf("gpumesh:%d:%s:%d", ProofVersion, root, count)
}

// advance moves one batch along: build and send its transaction, or look
// for it on chain, or (once there) write its proofs.
func (a *Anchorer) advance(ctx context.Context, b *Batch) error {
	switch b.State {
	case BatchBuilt:
		return a.send(ctx, b)
	case BatchSent:
		sig, err := solana.SignatureFromBase58(b.Signature)
		if err != nil {
			return a.rebuild(b, "its signature is unreadable")
		}
		// The height first, as payments do: if it is past LastValid and
		// the status asked after it is still unknown, the transaction can
		// never land. Asked the other way round, the transaction may land
		// between the two answers, and a second one would anchor the batch
		// again.
		height, herr := a.client.GetBlockHeight(ctx, rpc.CommitmentConfirmed)
		st, err := a.client.GetSignatureStatuses(ctx, true, sig)
		if err != nil && !errors.Is(err, rpc.ErrNotFound) {
			return fmt.Errorf("status of batch %d's transaction: %w", b.Seq, err)
		}
		var s *rpc.SignatureStatusesResult
		if st != nil && len(st.Value) > 0 {
			s = st.Value[0]
		}
		switch {
		case s == nil:
			if herr != nil {
				return fmt.Errorf("block height: %w", herr)
			}
			if height > b.LastValid {
				return a.rebuild(b, "its transaction expired before it landed")
			}
			a.mu.Lock()
			last := a.sentAt[b.Seq]
			a.mu.Unlock()
			if time.Since(last) < resendEvery {
				return nil
			}
			return a.resend(ctx, b)
		case s.Err != nil:
			return a.rebuild(b, fmt.Sprintf("its transaction failed on chain: %v", s.Err))
		case s.ConfirmationStatus == rpc.ConfirmationStatusConfirmed || s.ConfirmationStatus == rpc.ConfirmationStatusFinalized:
			return a.markAnchored(ctx, b, sig)
		}
		return nil // processed: wait for confirmation
	}
	return nil
}

// send builds, keeps, then sends a batch's memo transaction.
func (a *Anchorer) send(ctx context.Context, b *Batch) error {
	recent, err := a.client.GetLatestBlockhash(ctx, rpc.CommitmentConfirmed)
	if err != nil {
		return fmt.Errorf("latest blockhash: %w", err)
	}
	text := Memo(b.Root, len(b.Keys))
	// The memo program takes the bytes as they are (no length prefix).
	ix := solana.NewInstruction(solana.MemoProgramID, solana.AccountMetaSlice{solana.Meta(a.payer.PublicKey()).SIGNER()}, []byte(text))
	tx, err := solana.NewTransaction([]solana.Instruction{ix}, recent.Value.Blockhash, solana.TransactionPayer(a.payer.PublicKey()))
	if err != nil {
		return fmt.Errorf("memo transaction: %w", err)
	}
	if _, err := tx.Sign(func(k solana.PublicKey) *solana.PrivateKey {
		if k.Equals(a.payer.PublicKey()) {
			return &a.payer
		}
		return nil
	}); err != nil {
		return fmt.Errorf("sign memo transaction: %w", err)
	}
	raw, err := tx.MarshalBinary()
	if err != nil {
		return err
	}
	a.mu.Lock()
	b.State, b.Tx, b.Signature, b.LastValid, b.Tries = BatchSent, raw, tx.Signatures[0].String(), recent.Value.LastValidBlockHeight, b.Tries+1
	err = a.saveBatch(b)
	a.mu.Unlock()
	if err != nil {
		return err
	}
	a.log.Info("anchoring a batch", "batch", b.Seq, "records", len(b.Keys), "root", b.Root.String(), "tx", b.Signature)
	return a.resend(ctx, b)
}

// resend sends a batch's kept transaction again (the chain takes a
// transaction once, however often it is sent).
func (a *Anchorer) resend(ctx context.Context, b *Batch) error {
	tx, err := solana.TransactionFromBytes(b.Tx)
	if err != nil {
		return a.rebuild(b, "its transaction is unreadable")
	}
	a.mu.Lock()
	a.sentAt[b.Seq] = time.Now()
	a.mu.Unlock()
	if _, err := a.client.SendTransactionWithOpts(ctx, tx, rpc.TransactionOpts{PreflightCommitment: rpc.CommitmentConfirmed}); err != nil {
		if strings.Contains(err.Error(), "already been processed") {
			return nil
		}
		a.setBatchError(b, err.Error())
		return fmt.Errorf("send batch %d's transaction: %w", b.Seq, err)
	}
	return nil
}

func (a *Anchorer) setBatchError(b *Batch, msg string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	b.Error = msg
	_ = a.saveBatch(b)
}

// rebuild sends the batch again in a new transaction: the old one cannot
// land any more.
func (a *Anchorer) rebuild(b *Batch, why string) error {
	a.mu.Lock()
	b.State, b.Error = BatchBuilt, why
	err := a.saveBatch(b)
	a.mu.Unlock()
	a.log.Warn("anchor: building batch's transaction again", "batch", b.Seq, "why", why)
	return err
}

// markAnchored records that a batch is on chain.
func (a *Anchorer) markAnchored(ctx context.Context, b *Batch, sig solana.Signature) error {
	zero := uint64(0)
	res, err := a.client.GetTransaction(ctx, sig, &rpc.GetTransactionOpts{Encoding: solana.EncodingBase64, Commitment: rpc.CommitmentConfirmed, MaxSupportedTransactionVersion: &zero})
	if err != nil {
		return fmt.Errorf("batch %d's transaction: %w", b.Seq, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// Its records go to a file of their own before it is marked anchored,
	// and leave the log after.
	if err := a.writeRecordsLocked(b); err != nil {
		return err
	}
	b.State, b.Slot, b.Anchored, b.Error = BatchAnchored, res.Slot, time.Now().UTC(), ""
	if res.Meta != nil {
		b.Fee = res.Meta.Fee
	}
	b.Tx = nil
	if err := a.saveBatch(b); err != nil {
		return err
	}
	if err := a.compactLocked(); err != nil {
		a.log.Warn("anchor: records.log not compacted; it is at the next anchoring", "err", err)
	}
	a.anchored += len(b.Keys)
	a.fees += b.Fee
	a.txs++
	delete(a.sentAt, b.Seq)
	for i, x := range a.batches {
		if x == b {
			a.batches = append(a.batches[:i], a.batches[i+1:]...)
			break
		}
	}
	a.log.Info("batch anchored", "batch", b.Seq, "records", len(b.Keys), "slot", b.Slot, "fee lamports", b.Fee, "tx", b.Signature)
	return nil
}

// ErrNotAnchored is the error of a proof asked for too early.
var ErrNotAnchored = errors.New("not anchored yet")

// Proof is the proof of an anchored record.
func (a *Anchorer) Proof(key string) (Proof, error) {
	a.mu.Lock()
	b := a.batchOf[key]
	var keys []string
	var leaves []Hash
	var state, sig string
	var slot uint64
	if b != nil {
		keys, leaves, state, sig, slot = b.Keys, b.Leaves, b.State, b.Signature, b.Slot
	}
	_, known := a.records[key]
	known = known || b != nil
	a.mu.Unlock()
	switch {
	case !known:
		return Proof{}, fmt.Errorf("no record %s", key)
	case b == nil || state != BatchAnchored:
		return Proof{}, fmt.Errorf("%s: %w", key, ErrNotAnchored)
	}
	idx := -1
	for i, k := range keys {
		if k == key {
			idx = i
		}
	}
	t, err := NewTree(leaves)
	if err != nil || idx < 0 {
		return Proof{}, fmt.Errorf("batch of %s is damaged", key)
	}
	rec, err := a.record(key)
	if err != nil {
		return Proof{}, err
	}
	return Proof{
		Version: ProofVersion, Key: key, Record: rec.Record, Leaf: leaves[idx], Index: idx, Count: len(keys),
		Path: t.Path(idx), Root: t.Root(), Memo: Memo(t.Root(), len(keys)), Signature: sig,
		Slot: slot, Payer: a.payer.PublicKey().String(), Cluster: a.cfg.RPC,
	}, nil
}

// Status is where one record stands: "pending" (in no batch yet),
// "batched" (its batch waits for the chain), "anchored", or "" if unknown.
func (a *Anchorer) Status(key string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.batchOf[key]
	if _, ok := a.records[key]; !ok && b == nil {
		return ""
	}
	switch {
	case b == nil:
		return "pending"
	case b.State == BatchAnchored:
		return "anchored"
	}
	return "batched"
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

// writeJSON writes a file whole (internal/atomicfile).
func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o600)
}
