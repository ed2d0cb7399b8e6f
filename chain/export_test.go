package chain

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/gagliardetto/solana-go"
	"github.com/gagliardetto/solana-go/rpc"
)

// PayOddly sends what a hostile payer might: one transaction of the given
// transfers from key to `to`, each of lamports, and one memo for each ref.
// It returns the transaction's signature once confirmed.
func PayOddly(ctx context.Context, rpcURL string, key ed25519.PrivateKey, to string, transfers []uint64, refs []string) (string, error) {
	return PayOddlyIn(ctx, rpcURL, SOL, key, to, transfers, refs)
}

// PayOddlyIn is PayOddly in a currency: in a token, each transfer is an
// idempotent create of the payee's token account and a TransferChecked.
func PayOddlyIn(ctx context.Context, rpcURL string, c Currency, key ed25519.PrivateKey, to string, transfers []uint64, refs []string) (string, error) {
	payer := solana.PrivateKey(key)
	from := payer.PublicKey()
	payee, err := parseAddress("payee", to)
	if err != nil {
		return "", err
	}
	client := rpc.New(rpcURL)
	var ixs []solana.Instruction
	for _, l := range transfers {
		if !c.IsSOL() {
			t, _, err := c.tokenTransfer(ctx, client, from, payee, l, "oddly")
			if err != nil {
				return "", err
			}
			ixs = append(ixs, t...)
			continue
		}
		ixs = append(ixs, solana.NewInstruction(solana.SystemProgramID,
			solana.AccountMetaSlice{solana.Meta(from).WRITE().SIGNER(), solana.Meta(payee).WRITE()}, transferData(l)))
	}
	for _, r := range refs {
		ixs = append(ixs, solana.NewInstruction(solana.MemoProgramID, solana.AccountMetaSlice{solana.Meta(from).SIGNER()}, []byte(PaymentMemo(r))))
	}
	recent, err := client.GetLatestBlockhash(ctx, rpc.CommitmentConfirmed)
	if err != nil {
		return "", err
	}
	tx, err := solana.NewTransaction(ixs, recent.Value.Blockhash, solana.TransactionPayer(from))
	if err != nil {
		return "", err
	}
	if _, err := tx.Sign(func(k solana.PublicKey) *solana.PrivateKey {
		if k.Equals(from) {
			return &payer
		}
		return nil
	}); err != nil {
		return "", err
	}
	p := Payment{Signature: tx.Signatures[0].String()}
	expired, err := sendAndConfirm(ctx, client, tx, recent.Value.LastValidBlockHeight, &p)
	if err == nil && expired {
		err = fmt.Errorf("expired unseen")
	}
	return p.Signature, err
}

// ShortWrites makes the record log's appends fail, while fail is set,
// after writing half of what they were given: a disk that filled up in
// the middle of a line. It returns what puts the real disk back.
func ShortWrites(fail *atomic.Bool) (restore func()) {
	real := openRecordFile
	openRecordFile = func(path string) (recordFile, error) {
		f, err := real(path)
		if err != nil {
			return nil, err
		}
		return shortFile{f, fail}, nil
	}
	return func() { openRecordFile = real }
}

type shortFile struct {
	recordFile
	fail *atomic.Bool
}

func (f shortFile) WriteAt(p []byte, off int64) (int, error) {
	if !f.fail.Load() {
		return f.recordFile.WriteAt(p, off)
	}
	n, _ := f.recordFile.WriteAt(p[:len(p)/2], off)
	return n, errors.New("no space left on device")
}

// Slot is the chain's current slot.
func Slot(ctx context.Context, rpcURL string) (uint64, error) {
	return rpc.New(rpcURL).GetSlot(ctx, rpc.CommitmentProcessed)
}
