package chain

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	solana "github.com/gagliardetto/solana-go"
	"github.com/gagliardetto/solana-go/programs/token"
	"github.com/gagliardetto/solana-go/rpc"
)

// Currency is what a payment moves: SOL, or an SPL token named by its mint.
// The two differ only in the transfer instruction and the account that
// receives it (the payee's address, or its associated token account of the
// mint); Pay, Check and Balance are the same for both. The zero value is
// not a currency: use SOL or Token.
type Currency struct {
	Symbol   string // what messages call it: "SOL", "USDC"
	Mint     string // the SPL token's mint (base58, an SPL Token program mint); "" for SOL
	Decimals uint8  // of amounts: 9 for SOL; a token's mint's own (TransferChecked checks them)
}

// SOL is Solana's own currency, in lamports.
var SOL = Currency{Symbol: "SOL", Decimals: 9}

// tokenAccountSize is the size of an SPL token account, whose rent the
// payer of a payment that creates one pays.
const tokenAccountSize = 165

// Token is an SPL token of the SPL Token program: symbol for messages, its
// mint's address and its decimals.
func Token(symbol, mint string, decimals uint8) (Currency, error) {
	if _, err := parseAddress("token mint", mint); err != nil {
		return Currency{}, err
	}
	if symbol == "" {
		symbol = "token"
	}
	return Currency{Symbol: symbol, Mint: mint, Decimals: decimals}, nil
}

// IsSOL reports whether c is SOL.
func (c Currency) IsSOL() bool { return c.Mint == "" }

func (c Currency) String() string {
	if c.IsSOL() {
		return "SOL"
	}
	return fmt.Sprintf("%s (mint %s)", c.Symbol, c.Mint)
}

// units names c's smallest unit in messages.
func (c Currency) units() string {
	if c.IsSOL() {
		return "lamports"
	}
	return "base units of " + c.Symbol
}

// Format shows an amount of c's smallest unit in whole units: 1500000 of a
// 6-decimal token is "1.5".
func (c Currency) Format(amount uint64) string {
	s := fmt.Sprintf("%0*d", int(c.Decimals)+1, amount)
	whole, frac := s[:len(s)-int(c.Decimals)], strings.TrimRight(s[len(s)-int(c.Decimals):], "0")
	if frac == "" {
		return whole
	}
	return whole + "." + frac
}

func (c Currency) mint() (solana.PublicKey, error) {
	if c.IsSOL() {
		return solana.PublicKey{}, errors.New("SOL has no mint")
	}
	return parseAddress("token mint", c.Mint)
}

// Account is the account a payment in c to owner credits: owner itself in
// SOL, its associated token account of the mint in a token.
func (c Currency) Account(owner string) (string, error) {
	pk, err := parseAddress("owner", owner)
	if err != nil || c.IsSOL() {
		return owner, err
	}
	mint, err := c.mint()
	if err != nil {
		return "", err
	}
	ata, _, err := solana.FindAssociatedTokenAddress(pk, mint)
	if err != nil {
		return "", err
	}
	return ata.String(), nil
}

// moved says what a payment moves, for messages.
func (p Payment) moved() string {
	if p.Mint == "" {
		return fmt.Sprintf("%d lamports", p.Amount)
	}
	return fmt.Sprintf("%d base units of token %s", p.Amount, p.Mint)
}

// tokenTransfer checks that from can pay amount of c to payee (the tokens
// in its associated token account; lamports for the fee, and the rent of
// payee's token account when it has none yet) and returns the
// instructions of the transfer: an idempotent create of payee's associated
// token account, paid by from, then a TransferChecked between the two
// accounts. rent is what the create will cost, 0 when the account exists.
func (c Currency) tokenTransfer(ctx context.Context, client *rpc.Client, from, payee solana.PublicKey, amount uint64, ref string) (ixs []solana.Instruction, rent uint64, err error) {
	mint, err := c.mint()
	if err != nil {
		return nil, 0, fmt.Errorf("payment %s: %w", ref, err)
	}
	src, _, err := solana.FindAssociatedTokenAddress(from, mint)
	if err != nil {
		return nil, 0, fmt.Errorf("payment %s: the payer's token account: %w", ref, err)
	}
	dst, _, err := solana.FindAssociatedTokenAddress(payee, mint)
	if err != nil {
		return nil, 0, fmt.Errorf("payment %s: the payee's token account: %w", ref, err)
	}
	// One call for what the checks need: the payer's token account, the
	// payee's, and the payer's own (its lamports).
	accts, err := client.GetMultipleAccountsWithOpts(ctx, []solana.PublicKey{src, dst, from},
		&rpc.GetMultipleAccountsOpts{Commitment: rpc.CommitmentConfirmed, Encoding: solana.EncodingBase64})
	if err != nil {
		return nil, 0, fmt.Errorf("payment %s: the accounts of payer %s and payee %s: %w", ref, from, payee, err)
	}
	if len(accts.Value) != 3 {
		return nil, 0, fmt.Errorf("payment %s: asked for 3 accounts, the RPC answered %d", ref, len(accts.Value))
	}
	var have uint64
	if a := accts.Value[0]; a != nil && a.Data != nil {
		if data := a.Data.GetBinary(); len(data) >= tokenAccountSize {
			have = binary.LittleEndian.Uint64(data[64:72])
		}
	}
	if have < amount {
		return nil, 0, fmt.Errorf("payment %s: %w: address %s holds %s %s (mint %s, in its token account %s); paying %s needs %s more; fund it (send %s to it) and pay again",
			ref, ErrUnderfunded, from, c.Format(have), c.Symbol, c.Mint, src, c.Format(amount), c.Format(amount-have), c.Symbol)
	}
	if accts.Value[1] == nil {
		if rent, err = client.GetMinimumBalanceForRentExemption(ctx, tokenAccountSize, rpc.CommitmentConfirmed); err != nil {
			return nil, 0, fmt.Errorf("payment %s: the rent of a token account: %w", ref, err)
		}
	}
	var lamports uint64
	if a := accts.Value[2]; a != nil {
		lamports = a.Lamports
	}
	if need := PaymentFee + rent; lamports < need {
		why := fmt.Sprintf("the %d-lamport fee", PaymentFee)
		if rent > 0 {
			why += fmt.Sprintf(" and the %d-lamport rent of the payee's new token account %s", rent, dst)
		}
		return nil, 0, fmt.Errorf("payment %s: %w: address %s holds %d lamports; %s need %d, %d more; fund it with SOL and pay again",
			ref, ErrUnderfunded, from, lamports, why, need, need-lamports)
	}
	create := solana.NewInstruction(solana.SPLAssociatedTokenAccountProgramID, solana.AccountMetaSlice{
		solana.Meta(from).WRITE().SIGNER(), solana.Meta(dst).WRITE(), solana.Meta(payee), solana.Meta(mint),
		solana.Meta(solana.SystemProgramID), solana.Meta(solana.TokenProgramID),
	}, []byte{1}) // CreateIdempotent: succeeds, doing nothing, when the account exists
	transfer, err := token.NewTransferCheckedInstruction(amount, c.Decimals, src, mint, dst, from, nil).ValidateAndBuild()
	if err != nil {
		return nil, 0, fmt.Errorf("payment %s: the token transfer: %w", ref, err)
	}
	return []solana.Instruction{create, transfer}, rent, nil
}

// tokenBalance is what owner's associated token account of mint holds, 0
// while there is none; asked with getTokenAccountsByOwner.
func tokenBalance(ctx context.Context, client *rpc.Client, owner, mint solana.PublicKey) (uint64, error) {
	ata, _, err := solana.FindAssociatedTokenAddress(owner, mint)
	if err != nil {
		return 0, err
	}
	res, err := client.GetTokenAccountsByOwner(ctx, owner, &rpc.GetTokenAccountsConfig{Mint: &mint},
		&rpc.GetTokenAccountsOpts{Commitment: rpc.CommitmentConfirmed, Encoding: solana.EncodingBase64})
	if err != nil {
		return 0, err
	}
	for _, a := range res.Value {
		if a == nil || !a.Pubkey.Equals(ata) || a.Account.Data == nil {
			continue
		}
		data := a.Account.Data.GetBinary()
		if len(data) < tokenAccountSize {
			return 0, fmt.Errorf("token account %s holds %d bytes, not a token account's %d", ata, len(data), tokenAccountSize)
		}
		return binary.LittleEndian.Uint64(data[64:72]), nil
	}
	return 0, nil
}

// transfer is one transfer instruction as read from a transaction.
type transfer struct {
	sol       bool
	authority solana.PublicKey  // who moves it: the SOL sender, the token account's owner or delegate
	to        solana.PublicKey  // the account credited
	mint      *solana.PublicKey // a TransferChecked's mint; nil for SOL and a plain token Transfer
	amount    uint64
}

func (t transfer) String() string {
	switch {
	case t.sol:
		return fmt.Sprintf("%d lamports from %s to %s", t.amount, t.authority, t.to)
	case t.mint != nil:
		return fmt.Sprintf("%d base units of mint %s from %s to token account %s", t.amount, t.mint, t.authority, t.to)
	}
	return fmt.Sprintf("%d base units of a token from %s to token account %s", t.amount, t.authority, t.to)
}

// readTransfer reads a System transfer, or an SPL Token Transfer or
// TransferChecked, from a top-level instruction; ok is false for any other.
func readTransfer(prog solana.PublicKey, accounts []solana.PublicKey, data []byte) (t transfer, ok bool) {
	switch {
	case prog.Equals(solana.SystemProgramID):
		n, ok := parseTransfer(data)
		if !ok || len(accounts) < 2 {
			return t, false
		}
		return transfer{sol: true, authority: accounts[0], to: accounts[1], amount: n}, true
	case prog.Equals(solana.TokenProgramID) && len(data) >= 9:
		n := binary.LittleEndian.Uint64(data[1:9])
		switch data[0] {
		case token.Instruction_Transfer: // source, destination, authority
			if len(accounts) < 3 {
				return t, false
			}
			return transfer{authority: accounts[2], to: accounts[1], amount: n}, true
		case token.Instruction_TransferChecked: // source, mint, destination, authority
			if len(accounts) < 4 || len(data) < 10 {
				return t, false
			}
			mint := accounts[1]
			return transfer{authority: accounts[3], to: accounts[2], mint: &mint, amount: n}, true
		}
	}
	return t, false
}

// tokenHint says what to do about a token payment the chain refused, where
// the SPL Token program's error is clear.
func tokenHint(chainErr map[string]any) string {
	ie, _ := chainErr["InstructionError"].([]any)
	if len(ie) != 2 {
		return ""
	}
	custom, _ := ie[1].(map[string]any)
	switch fmt.Sprint(custom["Custom"]) {
	case "1":
		return "; the payer's token account holds too little: fund it"
	case "18":
		return "; the mint's decimals are not the price unit's: give --price-unit the token's own decimals (USDC has 6)"
	}
	return ""
}

// token2022 is the Token-2022 program, whose mints gpumesh does not pay in.
var token2022 = solana.MustPublicKeyFromBase58("TokenzQdBNbLqP5VQQBbQTNvh9A2nQ3xyzmWCWcq4eq")

// mintSize is an SPL Token mint account's size; its decimals are byte 44.
const mintSize = 82

// ErrMintMismatch says that a token's mint on chain is not what the
// currency says (its decimals, its program, or no mint at all): payments in
// it would all fail, so a peer refuses to start with it.
var ErrMintMismatch = errors.New("token mint does not match")

// CheckMint asks rpcURL for c's mint and compares it with c: it must be an
// initialized mint of the SPL Token program with c's decimals. A mismatch
// wraps ErrMintMismatch and says how to fix it; other errors are the RPC's.
// SOL has nothing to check.
func (c Currency) CheckMint(ctx context.Context, rpcURL string) error {
	if c.IsSOL() {
		return nil
	}
	mint, err := c.mint()
	if err != nil {
		return err
	}
	res, err := rpc.New(rpcURL).GetAccountInfoWithOpts(ctx, mint, &rpc.GetAccountInfoOpts{
		Commitment: rpc.CommitmentConfirmed, Encoding: solana.EncodingBase64,
	})
	if errors.Is(err, rpc.ErrNotFound) || err == nil && (res == nil || res.Value == nil) {
		return fmt.Errorf("%w: no account at %s on %s: check --token-mint (the mint's address) and that --solana-rpc is the cluster it lives on", ErrMintMismatch, c.Mint, rpcURL)
	}
	if err != nil {
		return fmt.Errorf("token mint %s: asking %s: %w", c.Mint, rpcURL, err)
	}
	owner := res.Value.Owner
	switch {
	case owner.Equals(token2022):
		return fmt.Errorf("%w: %s is a Token-2022 mint; gpumesh pays only in SPL Token program mints (e.g. USDC's)", ErrMintMismatch, c.Mint)
	case !owner.Equals(token.ProgramID):
		return fmt.Errorf("%w: %s is not a token mint (its account belongs to %s): check --token-mint", ErrMintMismatch, c.Mint, owner)
	}
	data := res.Value.Data.GetBinary()
	if len(data) != mintSize || data[45] != 1 {
		return fmt.Errorf("%w: %s is an SPL Token account but not an initialized mint (a token account's address?): give --token-mint the mint's address", ErrMintMismatch, c.Mint)
	}
	if d := data[44]; d != c.Decimals {
		return fmt.Errorf("%w: mint %s has %d decimals, and the price unit says %d: start with --price-unit %s:%d", ErrMintMismatch, c.Mint, d, c.Decimals, c.Symbol, d)
	}
	return nil
}
