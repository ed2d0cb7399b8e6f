package chain

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	solana "github.com/gagliardetto/solana-go"
	"github.com/gagliardetto/solana-go/rpc"
)

// ErrBadProof marks a proof that does not hold.
var ErrBadProof = errors.New("proof does not hold")

// Bounds of a proof read from a file.
const (
	MaxProofSize = 256 << 10
	maxPathLen   = 64
)

// ParseProof reads a proof file.
func ParseProof(data []byte) (Proof, error) {
	if len(data) > MaxProofSize {
		return Proof{}, fmt.Errorf("%w: %d bytes, at most %d", ErrBadProof, len(data), MaxProofSize)
	}
	var p Proof
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Proof{}, fmt.Errorf("%w: not a proof file: %v", ErrBadProof, err)
	}
	switch {
	case p.Version != ProofVersion:
		return Proof{}, fmt.Errorf("%w: version %d, this gpumesh reads %d", ErrBadProof, p.Version, ProofVersion)
	case len(p.Path) > maxPathLen:
		return Proof{}, fmt.Errorf("%w: a path of %d steps", ErrBadProof, len(p.Path))
	case p.Count < 1 || p.Index < 0 || p.Index >= p.Count:
		return Proof{}, fmt.Errorf("%w: leaf %d of %d", ErrBadProof, p.Index, p.Count)
	}
	return p, nil
}

// CheckPath checks what needs no chain: the record's leaf (from leafData,
// which the caller derives from p.Record), the path to the root, and the
// memo that should carry it.
func CheckPath(p Proof, leafData []byte) error {
	if LeafHash(leafData) != p.Leaf {
		return fmt.Errorf("%w: the receipt does not hash to the proof's leaf (the receipt was changed)", ErrBadProof)
	}
	if RootOf(p.Leaf, p.Path) != p.Root {
		return fmt.Errorf("%w: the Merkle path does not lead from the leaf to the root %s (the path was changed)", ErrBadProof, p.Root)
	}
	if p.Memo != Memo(p.Root, p.Count) {
		return fmt.Errorf("%w: memo %q does not name the root %s and %d records", ErrBadProof, p.Memo, p.Root, p.Count)
	}
	return nil
}

// Anchor is what the chain says of a proof's transaction.
type Anchor struct {
	Slot  uint64 `json:"slot"`
	Fee   uint64 `json:"fee"`
	Payer string `json:"payer"`
}

// VerifyProof checks a proof against a Solana RPC with one call: the path
// (CheckPath), then that the transaction exists, succeeded, was signed by
// the proof's payer and carries the memo with the root.
func VerifyProof(ctx context.Context, rpcURL string, p Proof, leafData []byte) (Anchor, error) {
	if err := CheckPath(p, leafData); err != nil {
		return Anchor{}, err
	}
	sig, err := solana.SignatureFromBase58(p.Signature)
	if err != nil {
		return Anchor{}, fmt.Errorf("%w: transaction signature %q: %v", ErrBadProof, p.Signature, err)
	}
	zero := uint64(0)
	res, err := rpc.New(rpcURL).GetTransaction(ctx, sig, &rpc.GetTransactionOpts{
		Encoding: solana.EncodingBase64, Commitment: rpc.CommitmentConfirmed, MaxSupportedTransactionVersion: &zero,
	})
	if errors.Is(err, rpc.ErrNotFound) || (err == nil && (res == nil || res.Transaction == nil)) {
		return Anchor{}, fmt.Errorf("%w: transaction %s is not on the chain behind %s (a different cluster?)", ErrBadProof, p.Signature, rpcURL)
	}
	if err != nil {
		return Anchor{}, fmt.Errorf("asking %s for transaction %s: %w", rpcURL, p.Signature, err)
	}
	if res.Meta != nil && res.Meta.Err != nil {
		return Anchor{}, fmt.Errorf("%w: transaction %s failed on chain: %v", ErrBadProof, p.Signature, res.Meta.Err)
	}
	tx, err := res.Transaction.GetTransaction()
	if err != nil {
		return Anchor{}, fmt.Errorf("%w: transaction %s: %v", ErrBadProof, p.Signature, err)
	}
	keys := tx.Message.AccountKeys
	if len(keys) == 0 || keys[0].String() != p.Payer {
		return Anchor{}, fmt.Errorf("%w: transaction %s was not paid for and signed by %s", ErrBadProof, p.Signature, p.Payer)
	}
	found := false
	for _, ix := range tx.Message.Instructions {
		if int(ix.ProgramIDIndex) < len(keys) && keys[ix.ProgramIDIndex].Equals(solana.MemoProgramID) && string(ix.Data) == p.Memo {
			found = true
		}
	}
	if !found {
		return Anchor{}, fmt.Errorf("%w: transaction %s carries no memo %q", ErrBadProof, p.Signature, p.Memo)
	}
	a := Anchor{Slot: res.Slot, Payer: p.Payer}
	if res.Meta != nil {
		a.Fee = res.Meta.Fee
	}
	if p.Slot != 0 && p.Slot != res.Slot {
		return a, fmt.Errorf("%w: the proof says slot %d, the chain %d", ErrBadProof, p.Slot, res.Slot)
	}
	return a, nil
}
