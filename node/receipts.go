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
// the receipts are also kept in memory, so listing them costs no disk.

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
	if old, ok := n.receipts[key]; ok && len(sr.ConsumerSig) == 0 && len(old.ConsumerSig) > 0 {
		return nil
	}
	data, err := json.MarshalIndent(sr, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, key+".json"), append(data, '\n'), 0o600); err != nil {
		return err
	}
	n.receipts[key] = sr
	n.anchorReceipt(sr)
	return nil
}

// loadReceiptsLocked reads the receipts folder once; from then on the
// receipts are kept in memory as they are saved.
func (n *Node) loadReceiptsLocked(dir string) error {
	if n.receipts != nil {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	n.receipts = map[string]receipt.Signed{}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		sr, err := readReceipt(filepath.Join(dir, e.Name()))
		if err != nil {
			n.log.Warn("receipt unreadable", "file", e.Name(), "err", err)
			continue
		}
		n.receipts[sr.Receipt.Key()] = sr
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
	dir, err := n.receiptsDir()
	if err != nil {
		return nil, err
	}
	n.receiptsMu.Lock()
	defer n.receiptsMu.Unlock()
	if err := n.loadReceiptsLocked(dir); err != nil {
		return nil, err
	}
	out := []receipt.Signed{}
	for _, sr := range n.receipts {
		if job == "" || sr.Receipt.Job == job {
			out = append(out, sr)
		}
	}
	sort.Slice(out, func(i, k int) bool {
		a, b := out[i].Receipt, out[k].Receipt
		if a.Start != b.Start {
			return a.Start < b.Start
		}
		return a.Rank < b.Rank
	})
	return out, nil
}
