package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/exec/receipt"
)

// Anchoring: a provider with --solana-rpc puts every receipt it co-signed
// with a consumer into the chain package's outbox the moment it is saved;
// the anchorer batches them and anchors each batch's Merkle root on Solana
// in one memo transaction, and every receipt gets a proof anyone can check
// (`gpumesh proof verify`). Receipts saved while no RPC was set are added
// at the next start.

// anchorState is the node's part of anchoring.
type anchorState struct {
	anchor *chain.Anchorer // nil without --solana-rpc
}

func (n *Node) startAnchor(ctx context.Context) error {
	if n.cfg.SolanaRPC == "" {
		return nil
	}
	state, err := n.stateDir()
	if err != nil {
		return err
	}
	key, err := n.ed25519Key()
	if err != nil {
		return err
	}
	a, err := chain.Open(chain.Config{
		Dir: filepath.Join(state, "anchor"), RPC: n.cfg.SolanaRPC, Key: key,
		BatchSize: n.cfg.AnchorBatch, BatchAge: n.cfg.AnchorAge, Log: n.log.With("part", "anchor"),
	})
	if err != nil {
		return err
	}
	n.anchor = a
	// Receipts co-signed before anchoring was on.
	rs, err := n.Receipts("")
	if err != nil {
		return err
	}
	var items []chain.Item
	for _, r := range rs {
		if it, ok := n.anchorItem(r); ok {
			items = append(items, it)
		}
	}
	if err := a.AddAll(items); err != nil {
		return err
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		a.Run(ctx)
	}()
	return nil
}

func (n *Node) closeAnchor() error {
	if n.anchor == nil {
		return nil
	}
	return n.anchor.Close()
}

// anchorItem is a receipt as the anchorer takes it: only the provider
// anchors, and only what both parties signed, or what the consumer did not
// countersign with the provider's signed word of why (receipt.Unsigned).
func (n *Node) anchorItem(sr receipt.Signed) (chain.Item, bool) {
	if sr.Receipt.Provider != n.id.SolanaAddress || (len(sr.ConsumerSig) == 0 && sr.Unsigned == nil) {
		return chain.Item{}, false
	}
	data, err := json.Marshal(sr)
	if err != nil {
		return chain.Item{}, false
	}
	return chain.Item{Key: sr.Receipt.Key(), LeafData: sr.LeafData(), Record: data}, true
}

// anchorReceipt hands a newly saved receipt to the anchorer.
func (n *Node) anchorReceipt(sr receipt.Signed) {
	if n.anchor == nil {
		return
	}
	if it, ok := n.anchorItem(sr); ok {
		if err := n.anchor.AddAll([]chain.Item{it}); err != nil {
			n.log.Error("receipt not queued for anchoring; it is kept and queued at the next start", "receipt", it.Key, "err", err)
		}
	}
}

// ProofInfo is where one receipt's anchoring stands.
type ProofInfo struct {
	Key    string `json:"key"` // <job>-<attempt>-<rank>
	Job    string `json:"job"`
	Status string `json:"status"` // pending, batched, anchored
}

// AnchorStatus is the anchorer's state, for the API.
type AnchorStatus struct {
	RPC    string      `json:"rpc"`
	Stats  chain.Stats `json:"stats"`
	Proofs []ProofInfo `json:"proofs"`
}

var errNoAnchoring = errors.New("this peer anchors nothing: start it with --solana-rpc URL")

// Proofs lists this peer's anchored and waiting receipts, of one job or all.
func (n *Node) Proofs(job string) (AnchorStatus, error) {
	if n.anchor == nil {
		return AnchorStatus{}, errNoAnchoring
	}
	rs, err := n.Receipts(job)
	if err != nil {
		return AnchorStatus{}, err
	}
	st := AnchorStatus{RPC: n.cfg.SolanaRPC, Stats: n.anchor.Stats(), Proofs: []ProofInfo{}}
	for _, r := range rs {
		key := r.Receipt.Key()
		if s := n.anchor.Status(key); s != "" {
			st.Proofs = append(st.Proofs, ProofInfo{Key: key, Job: r.Receipt.Job, Status: s})
		}
	}
	return st, nil
}

// Proof is the proof of one of this peer's receipts.
func (n *Node) Proof(key string) (chain.Proof, error) {
	if n.anchor == nil {
		return chain.Proof{}, errNoAnchoring
	}
	return n.anchor.Proof(key)
}

// VerifyProof checks a proof file anywhere, with no mesh and no data dir:
// both signatures of its receipt (or the provider's and its signed word
// that the consumer did not countersign: sr.Unsigned), the Merkle path, and
// (one RPC call) the memo transaction carrying the root.
func VerifyProof(ctx context.Context, rpcURL string, data []byte) (chain.Proof, receipt.Signed, chain.Anchor, error) {
	p, err := chain.ParseProof(data)
	if err != nil {
		return p, receipt.Signed{}, chain.Anchor{}, err
	}
	sr, err := receipt.Parse(p.Record)
	if err != nil {
		return p, sr, chain.Anchor{}, fmt.Errorf("%w: its receipt: %v", chain.ErrBadProof, err)
	}
	if err := sr.VerifyRecord(); err != nil {
		return p, sr, chain.Anchor{}, fmt.Errorf("%w: %v", chain.ErrBadProof, err)
	}
	if !strings.EqualFold(p.Key, sr.Receipt.Key()) {
		return p, sr, chain.Anchor{}, fmt.Errorf("%w: the proof is of %s, its receipt %s", chain.ErrBadProof, p.Key, sr.Receipt.Key())
	}
	a, err := chain.VerifyProof(ctx, rpcURL, p, sr.LeafData())
	return p, sr, a, err
}
