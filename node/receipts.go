package node

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/gpumesh/gpumesh/exec/receipt"
)

// Receipts are kept in the data dir's receipts folder, one file a member's
// run (<job>-<attempt>-<rank>.json), by the provider that signed it and by
// the consumer that countersigned it. A provider's copy is written before
// the receipt is sent, and again once countersigned: nothing earned is lost
// to a crash or a vanished submitter. The folder is read once; after that
// an index of the receipts (a few words each, not the receipts) is kept in
// memory, so listing them reads only the files asked for.

// receiptMeta is what the index keeps of a receipt.
type receiptMeta struct {
	job      string
	start    int64 // unix ms
	rank     int
	cosigned bool
}

func (n *Node) receiptsDir() (string, error) {
	state, err := n.stateDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(state, "receipts"), nil
}

// saveReceipt writes a receipt durably (temp file, fsync, rename). A copy
// with the consumer's signature is never replaced by one without.
func (n *Node) saveReceipt(sr receipt.Signed) error {
	dir, err := n.receiptsDir()
	if err != nil {
		return err
	}
	n.receiptsMu.Lock()
	defer n.receiptsMu.Unlock()
	if err := n.loadReceiptsLocked(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	key := sr.Receipt.Key()
	if old, ok := n.receipts[key]; ok && len(sr.ConsumerSig) == 0 && old.cosigned {
		return nil
	}
	data, err := json.MarshalIndent(sr, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, key+".json"), append(data, '\n'), 0o600); err != nil {
		return err
	}
	n.receipts[key] = metaOf(sr)
	n.anchorReceipt(sr)
	return nil
}

func metaOf(sr receipt.Signed) receiptMeta {
	return receiptMeta{job: sr.Receipt.Job, start: sr.Receipt.Start, rank: sr.Receipt.Rank, cosigned: len(sr.ConsumerSig) > 0}
}

// loadReceiptsLocked reads the receipts folder once into the index.
func (n *Node) loadReceiptsLocked(dir string) error {
	if n.receipts != nil {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	n.receipts = map[string]receiptMeta{}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		sr, err := readReceipt(filepath.Join(dir, e.Name()))
		if err != nil {
			n.log.Warn("receipt unreadable", "file", e.Name(), "err", err)
			continue
		}
		n.receipts[sr.Receipt.Key()] = metaOf(sr)
	}
	return nil
}

func readReceipt(path string) (receipt.Signed, error) {
	data, err := readBounded(path, receipt.MaxSize)
	if err != nil {
		return receipt.Signed{}, err
	}
	return receipt.Parse(data)
}

// Receipts lists the receipts this peer keeps, of one job or ("") all,
// oldest first.
func (n *Node) Receipts(job string) ([]receipt.Signed, error) {
	rs, _, err := n.receiptsWhere(func(m receiptMeta) bool { return job == "" || m.job == job }, 0)
	return rs, err
}

// RecentReceipts lists the newest receipts this peer keeps (at most
// limit), oldest first, and how many it keeps in all.
func (n *Node) RecentReceipts(limit int) ([]receipt.Signed, int, error) {
	return n.receiptsWhere(func(receiptMeta) bool { return true }, limit)
}

// receiptsWhere reads the receipts whose index entry passes keep, the
// newest limit of them (0: all), oldest first, and counts those that pass.
func (n *Node) receiptsWhere(keep func(receiptMeta) bool, limit int) ([]receipt.Signed, int, error) {
	dir, err := n.receiptsDir()
	if err != nil {
		return nil, 0, err
	}
	type entry struct {
		key string
		m   receiptMeta
	}
	var picked []entry
	n.receiptsMu.Lock()
	if err := n.loadReceiptsLocked(dir); err != nil {
		n.receiptsMu.Unlock()
		return nil, 0, err
	}
	for k, m := range n.receipts {
		if keep(m) {
			picked = append(picked, entry{k, m})
		}
	}
	n.receiptsMu.Unlock()
	sort.Slice(picked, func(i, k int) bool {
		a, b := picked[i].m, picked[k].m
		if a.start != b.start {
			return a.start < b.start
		}
		if a.rank != b.rank {
			return a.rank < b.rank
		}
		return picked[i].key < picked[k].key
	})
	total := len(picked)
	if limit > 0 && len(picked) > limit {
		picked = picked[len(picked)-limit:]
	}
	out := make([]receipt.Signed, 0, len(picked))
	for _, e := range picked {
		sr, err := readReceipt(filepath.Join(dir, e.key+".json"))
		if err != nil {
			n.log.Warn("receipt unreadable", "key", e.key, "err", err)
			continue
		}
		out = append(out, sr)
	}
	return out, total, nil
}
