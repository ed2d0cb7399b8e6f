package chain

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	solana "github.com/gagliardetto/solana-go"
	"github.com/gagliardetto/solana-go/rpc"
	"github.com/gagliardetto/solana-go/rpc/jsonrpc"
)

// Settlement: a payment is one Solana transaction holding one transfer
// from the payer to the payee and one memo naming what it pays for
// (PaymentMemo). Pay sends one and waits for it; CheckPayment lets anyone
// confirm one from its signature with a single RPC call.
//
// A Currency says what moves. SOL moves by a System transfer to the payee's
// address; an SPL token (USDC) by a TransferChecked from the payer's
// associated token account to the payee's, which the payment creates when
// it is missing (idempotently, the payer paying its rent). Everything else —
// refs and memos, the checks before sending, sending until confirmed or
// expired, and the one-transfer-one-memo rule of a payment — is shared.

// PaymentFee is the fee, in lamports, of a payment's transaction: one
// signature at 5,000 lamports and no priority fee.
const PaymentFee uint64 = 5000

// Timing of Pay.
const (
	payPollEvery   = 200 * time.Millisecond // between getSignatureStatuses calls
	payResendEvery = 2 * time.Second        // between sends of the same transaction while the chain has not seen it
	maxRefLen      = 200                    // bytes of a payment's ref
)

// ErrUnderfunded is the error of a payment whose payer cannot cover the
// amount and the fee (and, paying in a token, the rent of the payee's new
// token account); nothing was sent.
var ErrUnderfunded = errors.New("not enough funds")

// ErrBadPayment marks a payment that CheckPayment does not accept (as
// opposed to an RPC that could not be asked).
var ErrBadPayment = errors.New("payment does not hold")

// Payment is a payment on chain.
type Payment struct {
	Signature string `json:"signature"`      // of its transaction, base58
	Slot      uint64 `json:"slot"`           // the slot it landed in
	From      string `json:"from"`           // the payer, base58
	To        string `json:"to"`             // the payee, base58 (its wallet, not its token account)
	Mint      string `json:"mint,omitempty"` // the SPL token moved; "" for SOL
	Amount    uint64 `json:"amount"`         // moved from From to To: lamports, or the token's smallest unit
	Ref       string `json:"ref"`            // what it pays for (its memo is PaymentMemo(Ref))
	Fee       uint64 `json:"fee"`            // lamports the transaction cost its payer, besides a SOL Amount
	Rent      uint64 `json:"rent,omitempty"` // lamports the payer put into the payee's new token account
}

// PaymentMemo is the memo a payment carries: "gpumesh:pay:<ref>" (ref like
// <job>-<attempt>-<rank>-<interval>).
func PaymentMemo(ref string) string {
	return "gpumesh:pay:" + ref
}

// checkRef says what is wrong with a payment ref, if anything.
func checkRef(ref string) error {
	switch {
	case ref == "":
		return errors.New("payment: empty ref: give what the payment is for, e.g. <job>-<attempt>-<rank>-<interval>")
	case len(ref) > maxRefLen:
		return fmt.Errorf("payment: ref of %d bytes: at most %d", len(ref), maxRefLen)
	case !utf8.ValidString(ref):
		return fmt.Errorf("payment: ref %q is not UTF-8 (the memo program takes only UTF-8)", ref)
	case strings.IndexFunc(ref, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return fmt.Errorf("payment: ref %q holds spaces or control characters: use letters, digits and - . _ :", ref)
	}
	return nil
}

// parseAddress reads a base58 address, saying which one was wrong.
func parseAddress(what, address string) (solana.PublicKey, error) {
	pk, err := solana.PublicKeyFromBase58(address)
	if err != nil {
		return solana.PublicKey{}, fmt.Errorf("%s %q is not a Solana address (32 bytes in base58): %v", what, address, err)
	}
	return pk, nil
}

// Balance is an address's lamports.
func Balance(ctx context.Context, rpcURL, address string) (uint64, error) {
	return SOL.Balance(ctx, rpcURL, address)
}

// Balance is what an address holds of c: its lamports, or for a token the
// amount in its associated token account (0 while there is none).
func (c Currency) Balance(ctx context.Context, rpcURL, address string) (uint64, error) {
	pk, err := parseAddress("balance: address", address)
	if err != nil {
		return 0, err
	}
	if rpcURL == "" {
		return 0, errors.New("balance: no Solana RPC URL (--solana-rpc)")
	}
	client := rpc.New(rpcURL)
	if c.IsSOL() {
		res, err := client.GetBalance(ctx, pk, rpc.CommitmentConfirmed)
		if err != nil {
			return 0, fmt.Errorf("balance of %s: asking %s: %w", address, rpcURL, err)
		}
		return res.Value, nil
	}
	mint, err := c.mint()
	if err != nil {
		return 0, err
	}
	n, err := tokenBalance(ctx, client, pk, mint)
	if err != nil {
		return 0, fmt.Errorf("%s balance of %s: asking %s: %w", c.Symbol, address, rpcURL, err)
	}
	return n, nil
}

// Pay moves lamports from key's address to `to`: SOL.Pay.
func Pay(ctx context.Context, rpcURL string, key ed25519.PrivateKey, to string, lamports uint64, ref string) (Payment, error) {
	return SOL.Pay(ctx, rpcURL, key, to, lamports, ref)
}

// Pay moves amount of c from key's address to `to` in one transaction
// holding one transfer and a memo instruction (memo = PaymentMemo(ref)),
// waits until it is confirmed and returns it (its signature, base58, and
// slot). In a token, the transfer goes from the payer's associated token
// account to the payee's, created first when missing (an idempotent create
// in the same transaction; the payer pays its rent).
//
// Before sending, Pay refuses (ErrUnderfunded) when the payer cannot cover
// the amount, the PaymentFee and any rent. A transaction the chain refuses
// or that fails on chain returns an error with the chain's error.
//
// While waiting, Pay polls getSignatureStatuses every 200 ms and sends the
// same transaction again every 2 s while the chain has not seen it. It builds
// a new one (with a fresh blockhash) only once the old one's blockhash has
// expired with the old one unseen, so two of its transactions can never both
// land. A failure counts once it is confirmed, as a success does. The wait
// is bounded by ctx only.
//
// Pay does not look for an earlier payment with the same ref (two calls with
// the same arguments on the same blockhash make the same transaction, which
// lands once; otherwise they are two payments). When it fails
// after sending, the Payment it returns holds the signature of the
// transaction that may still land: check it with CheckPayment before paying
// again.
func (c Currency) Pay(ctx context.Context, rpcURL string, key ed25519.PrivateKey, to string, amount uint64, ref string) (Payment, error) {
	if len(key) != ed25519.PrivateKeySize {
		return Payment{}, errors.New("payment: no key to pay with (want an ed25519 private key)")
	}
	if rpcURL == "" {
		return Payment{}, errors.New("payment: no Solana RPC URL (--solana-rpc)")
	}
	payee, err := parseAddress("payment: payee", to)
	if err != nil {
		return Payment{}, err
	}
	if err := checkRef(ref); err != nil {
		return Payment{}, err
	}
	payer := solana.PrivateKey(key)
	from := payer.PublicKey()
	p := Payment{From: from.String(), To: payee.String(), Mint: c.Mint, Amount: amount, Ref: ref, Fee: PaymentFee}
	switch {
	case amount == 0:
		return p, fmt.Errorf("payment %s: 0 %s: pay at least 1", ref, c.units())
	case from.Equals(payee):
		return p, fmt.Errorf("payment %s: payer and payee are both %s: pay another address", ref, p.From)
	case c.IsSOL() && amount > ^uint64(0)-PaymentFee:
		return p, fmt.Errorf("payment %s: %d lamports is more than any account can hold", ref, amount)
	}
	client := rpc.New(rpcURL)
	var transfer []solana.Instruction
	if c.IsSOL() {
		bal, err := client.GetBalance(ctx, from, rpc.CommitmentConfirmed)
		if err != nil {
			return p, fmt.Errorf("payment %s: balance of the payer %s: asking %s: %w", ref, p.From, rpcURL, err)
		}
		if need := amount + PaymentFee; bal.Value < need {
			return p, fmt.Errorf("payment %s: %w: address %s holds %d lamports (%s SOL); paying %d plus the %d-lamport fee needs %d, %d more; fund it (transfer SOL to it, or airdrop on devnet/localnet) and pay again",
				ref, ErrUnderfunded, p.From, bal.Value, sol(bal.Value), amount, PaymentFee, need, need-bal.Value)
		}
		transfer = []solana.Instruction{solana.NewInstruction(solana.SystemProgramID,
			solana.AccountMetaSlice{solana.Meta(from).WRITE().SIGNER(), solana.Meta(payee).WRITE()}, transferData(amount))}
	} else {
		if transfer, p.Rent, err = c.tokenTransfer(ctx, client, from, payee, amount, ref); err != nil {
			return p, err
		}
	}
	memo := solana.NewInstruction(solana.MemoProgramID, solana.AccountMetaSlice{solana.Meta(from).SIGNER()}, []byte(PaymentMemo(ref)))

	for {
		// Build and sign a transaction on a fresh blockhash.
		p.Signature = ""
		recent, err := client.GetLatestBlockhash(ctx, rpc.CommitmentConfirmed)
		if err != nil {
			return p, fmt.Errorf("payment %s: latest blockhash from %s: %w (nothing was paid)", ref, rpcURL, err)
		}
		tx, err := solana.NewTransaction(append(transfer[:len(transfer):len(transfer)], memo), recent.Value.Blockhash, solana.TransactionPayer(from))
		if err != nil {
			return p, fmt.Errorf("payment %s: building its transaction: %w", ref, err)
		}
		if _, err := tx.Sign(func(k solana.PublicKey) *solana.PrivateKey {
			if k.Equals(from) {
				return &payer
			}
			return nil
		}); err != nil {
			return p, fmt.Errorf("payment %s: signing its transaction: %w", ref, err)
		}
		sig := tx.Signatures[0]
		p.Signature = sig.String()
		lastValid := recent.Value.LastValidBlockHeight

		expired, err := sendAndConfirm(ctx, client, tx, lastValid, &p)
		if err != nil || !expired {
			return p, err
		}
		// Expired unseen: it can never land, so another may be sent.
	}
}

// sendAndConfirm sends tx and waits until it is confirmed (p gets its slot),
// fails, or can no longer land: expired is true when its blockhash expired
// with it unseen, or when the RPC node refused it at once for an unknown
// blockhash (a refused transaction is not forwarded).
func sendAndConfirm(ctx context.Context, client *rpc.Client, tx *solana.Transaction, lastValid uint64, p *Payment) (expired bool, err error) {
	sig := tx.Signatures[0]
	var lastErr error // the last RPC problem while waiting
	// send sends tx; first says whether it was never sent before, so that a
	// refusal means it cannot land.
	send := func(first bool) (retry bool, refused error) {
		_, err := client.SendTransactionWithOpts(ctx, tx, rpc.TransactionOpts{PreflightCommitment: rpc.CommitmentConfirmed})
		if err == nil {
			return false, nil
		}
		msg, chainErr, preflight := preflightError(err)
		switch {
		case !preflight:
			// Unknown whether it got there: keep looking for it, send again.
			lastErr = fmt.Errorf("sending it: %w", err)
			return false, nil
		case chainErr == "AlreadyProcessed" || strings.Contains(msg, "already been processed"):
			return false, nil
		case !first:
			// An earlier send may have got through: only the chain can tell.
			lastErr = fmt.Errorf("sending it again: %s%s", msg, errSuffix(chainErr))
			return false, nil
		case chainErr == "BlockhashNotFound":
			// The RPC node does not know the blockhash it just gave (a node
			// behind a load balancer lagging): build again.
			lastErr = fmt.Errorf("sending it: %s", msg)
			return true, nil
		}
		return false, fmt.Errorf("payment %s: the chain refused it, nothing was paid: %s%s%s", p.Ref, msg, errSuffix(chainErr), hint(chainErr, p))
	}
	retry, err := send(true)
	if err != nil || retry {
		p.Signature = "" // refused before it was forwarded: it cannot land
		if err == nil {
			err = sleepCtx(ctx, payPollEvery)
		}
		if err != nil {
			return false, err
		}
		return true, nil
	}
	sentAt := time.Now()
	timer := time.NewTimer(payPollEvery)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			why := ""
			if lastErr != nil {
				why = fmt.Sprintf(" (last problem: %v)", lastErr)
			}
			return false, fmt.Errorf("payment %s: transaction %s sent but not confirmed: %w%s; it may still land: check it with CheckPayment before paying again", p.Ref, p.Signature, ctx.Err(), why)
		case <-timer.C:
		}
		timer.Reset(payPollEvery)

		// The height first: if it is past lastValid and the status asked
		// after it is still unknown, the transaction can never land.
		height, herr := client.GetBlockHeight(ctx, rpc.CommitmentConfirmed)
		st, err := client.GetSignatureStatuses(ctx, true, sig)
		if err != nil && !errors.Is(err, rpc.ErrNotFound) {
			lastErr = fmt.Errorf("its status: %w", err)
			continue
		}
		var s *rpc.SignatureStatusesResult
		if st != nil && len(st.Value) > 0 {
			s = st.Value[0]
		}
		switch {
		case s == nil:
			if herr != nil {
				lastErr = fmt.Errorf("block height: %w", herr)
			} else if height > lastValid {
				return true, nil
			}
			if time.Since(sentAt) >= payResendEvery {
				_, _ = send(false)
				sentAt = time.Now()
			}
		case s.ConfirmationStatus != rpc.ConfirmationStatusConfirmed && s.ConfirmationStatus != rpc.ConfirmationStatusFinalized:
			// Processed: wait for confirmation, success or failure (a
			// processed block may yet be dropped).
		case s.Err != nil:
			p.Slot = s.Slot
			return false, fmt.Errorf("payment %s: transaction %s failed on chain in slot %d: %s; its fee was charged, the %s were not paid",
				p.Ref, p.Signature, s.Slot, errJSON(s.Err), p.moved())
		default:
			p.Slot = s.Slot
			return false, nil
		}
	}
}

// sleepCtx waits d, or less if ctx ends (its error).
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// preflightError reads an RPC node's refusal of a transaction: its message
// and the transaction error in its data (a string like "BlockhashNotFound"
// or an object). ok is false for any other error (the network, HTTP).
func preflightError(err error) (msg string, chainErr any, ok bool) {
	var re *jsonrpc.RPCError
	if !errors.As(err, &re) {
		return "", nil, false
	}
	if data, isMap := re.Data.(map[string]any); isMap {
		chainErr = data["err"]
	}
	return re.Message, chainErr, true
}

// errSuffix shows a transaction error after a message, when there is one.
func errSuffix(chainErr any) string {
	if chainErr == nil {
		return ""
	}
	return " (" + errJSON(chainErr) + ")"
}

// errJSON shows a transaction error as the chain gave it.
func errJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// hint says what to do about a payment the chain refused, where it is clear.
func hint(chainErr any, p *Payment) string {
	m, _ := chainErr.(map[string]any)
	if p.Mint != "" {
		return tokenHint(m)
	}
	rent, ok := m["InsufficientFundsForRent"].(map[string]any)
	if !ok {
		return ""
	}
	// A payment's accounts: 0 the payer, 1 the payee, then the programs.
	switch fmt.Sprint(rent["account_index"]) {
	case "0":
		return fmt.Sprintf("; the payer %s would be left with less than the rent-exempt minimum (890,880 lamports for a plain account): leave it at least that much", p.From)
	case "1":
		return fmt.Sprintf("; the payee %s would hold less than the rent-exempt minimum (890,880 lamports for a plain account): a first payment to an empty address must be at least that much, or fund the address first", p.To)
	}
	return ""
}

// transferData is a System program Transfer: u32 LE 2, then u64 LE lamports.
func transferData(lamports uint64) []byte {
	data := make([]byte, 12)
	binary.LittleEndian.PutUint32(data[0:4], 2)
	binary.LittleEndian.PutUint64(data[4:12], lamports)
	return data
}

// sol shows lamports as SOL.
func sol(lamports uint64) string {
	return fmt.Sprintf("%d.%09d", lamports/1_000_000_000, lamports%1_000_000_000)
}

// CheckPayment checks a payment in SOL: SOL.Check.
func CheckPayment(ctx context.Context, rpcURL, signature, from, to string, lamports uint64, ref string) (Payment, error) {
	return SOL.Check(ctx, rpcURL, signature, from, to, lamports, ref)
}

// Check confirms, with one getTransaction call (commitment confirmed),
// that signature is a successful transaction that moves at least amount of
// c from `from` to `to` by exactly one transfer among its top-level
// instructions and carries exactly one memo, PaymentMemo(ref): a payment is
// one transfer for one bill, so one transaction cannot be shown as the
// payment of several bills. In SOL the transfer is a System transfer from
// `from` to `to`; in a token it is a Transfer or TransferChecked of the
// SPL Token program authorized by `from` into `to`'s associated token
// account of c's mint (a TransferChecked names its mint, which must be c's;
// a transfer of another mint is not a payment). It returns the payment as
// found (Amount: the amount moved; Fee: what the transaction cost; Rent: what
// went into `to`'s token account if the payment created it).
//
// A payment that does not hold gives an error wrapping ErrBadPayment that
// says which check failed; an RPC that cannot be asked gives another error.
func (c Currency) Check(ctx context.Context, rpcURL, signature, from, to string, amount uint64, ref string) (Payment, error) {
	p := Payment{Signature: signature, From: from, To: to, Mint: c.Mint, Ref: ref}
	s, err := c.read(ctx, rpcURL, &p)
	if err != nil {
		return p, err
	}
	memo := PaymentMemo(ref)
	hasMemo := false
	for _, m := range s.memos {
		hasMemo = hasMemo || m == memo
	}
	if err := s.moved(c, &p); err != nil {
		return p, err
	}
	switch {
	case p.Amount < amount:
		return p, fmt.Errorf("%w: too little: transaction %s moves %d of %d %s from %s to %s", ErrBadPayment, signature, p.Amount, amount, c.units(), from, to)
	case !hasMemo && len(s.memos) == 0:
		return p, fmt.Errorf("%w: no memo for ref %s: transaction %s carries no memo, want %q", ErrBadPayment, ref, signature, memo)
	case !hasMemo:
		return p, fmt.Errorf("%w: no memo for ref %s: transaction %s carries no memo %q (it pays for something else)", ErrBadPayment, ref, signature, memo)
	case len(s.memos) > 1:
		return p, fmt.Errorf("%w: transaction %s carries %d memos: a payment is one transfer with one memo for one bill", ErrBadPayment, signature, len(s.memos))
	case s.transfers > 1:
		return p, fmt.Errorf("%w: transaction %s makes %d transfers to %s: a payment is one transfer with one memo for one bill", ErrBadPayment, signature, s.transfers, to)
	}
	return p, nil
}

// scan is what a transaction shows of a payment in a currency, as read
// by Currency.read for Check and PaidFor.
type scan struct {
	dest      solana.PublicKey // the account a payment credits: the payee, or its token account
	transfers int              // of the currency, from the payer to dest
	others    []string         // transfers between other accounts, or of another currency
	wrongMint []string         // token transfers of another mint
	memos     []string         // the data of its memo instructions
}

// read fetches transaction p.Signature (one getTransaction call) and reads
// its top-level instructions: the transfers of c from p.From to p.To (their
// sum into p.Amount), the others, and the memos. It fills p's Slot, Fee and
// Rent. A transaction that is not there, failed or cannot be read gives an
// error wrapping ErrBadPayment.
func (c Currency) read(ctx context.Context, rpcURL string, p *Payment) (scan, error) {
	signature := p.Signature
	var s scan
	sig, err := solana.SignatureFromBase58(signature)
	if err != nil {
		return s, fmt.Errorf("%w: %q is not a transaction signature (64 bytes in base58): %v", ErrBadPayment, signature, err)
	}
	payer, err := parseAddress("payer", p.From)
	if err != nil {
		return s, err
	}
	payee, err := parseAddress("payee", p.To)
	if err != nil {
		return s, err
	}
	if rpcURL == "" {
		return s, errors.New("payment check: no Solana RPC URL (--solana-rpc)")
	}
	// The account the transfer must credit: the payee, or its token account.
	s.dest = payee
	mint := solana.PublicKey{}
	if !c.IsSOL() {
		if mint, err = c.mint(); err != nil {
			return s, err
		}
		if s.dest, _, err = solana.FindAssociatedTokenAddress(payee, mint); err != nil {
			return s, fmt.Errorf("payment check: the token account of %s: %w", p.To, err)
		}
	}
	zero := uint64(0)
	res, err := rpc.New(rpcURL).GetTransaction(ctx, sig, &rpc.GetTransactionOpts{
		Encoding: solana.EncodingBase64, Commitment: rpc.CommitmentConfirmed, MaxSupportedTransactionVersion: &zero,
	})
	if errors.Is(err, rpc.ErrNotFound) || (err == nil && (res == nil || res.Transaction == nil)) {
		return s, fmt.Errorf("%w: transaction %s is not found on the chain behind %s (not confirmed yet, or a different cluster?)", ErrBadPayment, signature, rpcURL)
	}
	if err != nil {
		return s, fmt.Errorf("payment check: asking %s for transaction %s: %w", rpcURL, signature, err)
	}
	p.Slot = res.Slot
	if res.Meta != nil {
		p.Fee = res.Meta.Fee
		if res.Meta.Err != nil {
			return s, fmt.Errorf("%w: transaction %s failed on chain: %s; it paid nothing", ErrBadPayment, signature, errJSON(res.Meta.Err))
		}
	}
	tx, err := res.Transaction.GetTransaction()
	if err != nil {
		return s, fmt.Errorf("%w: transaction %s cannot be read: %v", ErrBadPayment, signature, err)
	}
	// The accounts its instructions name: the message's own, then any loaded
	// from address lookup tables (a v0 transaction).
	keys := append(solana.PublicKeySlice(nil), tx.Message.AccountKeys...)
	if res.Meta != nil {
		keys = append(keys, res.Meta.LoadedAddresses.Writable...)
		keys = append(keys, res.Meta.LoadedAddresses.ReadOnly...)
	}
	key := func(i uint16) (solana.PublicKey, bool) {
		if int(i) >= len(keys) {
			return solana.PublicKey{}, false
		}
		return keys[i], true
	}
	var sum uint64
	for _, ix := range tx.Message.Instructions {
		prog, ok := key(ix.ProgramIDIndex)
		if !ok {
			continue
		}
		if prog.Equals(solana.MemoProgramID) {
			s.memos = append(s.memos, string(ix.Data))
			continue
		}
		accounts := make([]solana.PublicKey, 0, len(ix.Accounts))
		for _, a := range ix.Accounts {
			k, ok := key(a)
			if !ok {
				break
			}
			accounts = append(accounts, k)
		}
		t, ok := readTransfer(prog, accounts, ix.Data)
		if !ok {
			continue
		}
		mine := t.sol == c.IsSOL() && t.authority.Equals(payer) && t.to.Equals(s.dest)
		switch {
		case !t.sol && !c.IsSOL() && t.mint != nil && !t.mint.Equals(mint):
			s.wrongMint = append(s.wrongMint, t.String())
			continue
		case !mine:
			s.others = append(s.others, t.String())
			continue
		}
		if sum+t.amount < sum {
			return s, fmt.Errorf("%w: transaction %s: its transfers overflow", ErrBadPayment, signature)
		}
		sum += t.amount
		s.transfers++
	}
	p.Amount = sum
	if !c.IsSOL() && res.Meta != nil {
		for i, k := range keys {
			if k.Equals(s.dest) && i < len(res.Meta.PreBalances) && i < len(res.Meta.PostBalances) && res.Meta.PreBalances[i] == 0 {
				p.Rent = res.Meta.PostBalances[i]
			}
		}
	}
	return s, nil
}

// moved says why a transaction read into p moves nothing of c from p.From
// to p.To (an error wrapping ErrBadPayment), or nil when it moves some.
func (s scan) moved(c Currency, p *Payment) error {
	signature, from, to := p.Signature, p.From, p.To
	switch {
	case p.Amount > 0:
		return nil
	case len(s.wrongMint) > 0:
		return fmt.Errorf("%w: wrong mint: transaction %s moves %s; a payment in %s moves mint %s", ErrBadPayment, signature, strings.Join(s.wrongMint, "; "), c.Symbol, c.Mint)
	case len(s.others) == 0 && c.IsSOL():
		return fmt.Errorf("%w: transaction %s holds no System transfer: it is not a payment (wrong signature?)", ErrBadPayment, signature)
	case len(s.others) == 0:
		return fmt.Errorf("%w: transaction %s holds no SPL token transfer: it is not a payment in %s (wrong signature?)", ErrBadPayment, signature, c.Symbol)
	case c.IsSOL():
		return fmt.Errorf("%w: wrong payer or payee: transaction %s moves nothing from %s to %s (it moves %s)", ErrBadPayment, signature, from, to, strings.Join(s.others, "; "))
	}
	return fmt.Errorf("%w: wrong payer or payee: transaction %s moves no %s from %s to %s's token account %s (it moves %s)", ErrBadPayment, signature, c.Symbol, from, to, s.dest, strings.Join(s.others, "; "))
}

// parseTransfer reads a System program Transfer's lamports: data is u32 LE 2
// then u64 LE lamports (the runtime ignores bytes after them).
func parseTransfer(data []byte) (uint64, bool) {
	if len(data) < 12 || binary.LittleEndian.Uint32(data[0:4]) != 2 {
		return 0, false
	}
	return binary.LittleEndian.Uint64(data[4:12]), true
}
