// Package chain is gpumesh's only link to Solana (solana-go):
//
//   - anchoring (anchor.go, merkle.go): co-signed receipts go into a
//     durable outbox, are batched into Merkle trees, and each batch's root
//     is written in a memo transaction, exactly once across crashes; a
//     receipt's proof is its Merkle path and the transaction;
//   - verification (verify.go): a proof is checked against any RPC node
//     with one call, no mesh and no data dir needed;
//   - settlement (settle.go, currency.go): payments in SOL or an SPL
//     token (a Currency: System transfer, or TransferChecked into the
//     payee's associated token account, made when missing) with the job,
//     member and interval in the memo, balances, and the on-chain check
//     that a bill was paid.
//
// chain/localnet is a Solana JSON-RPC over LiteSVM for tests and the demo,
// with a test token faucet.
package chain
