// Package chain anchors completed-work proofs on Solana (solana-go): Merkle
// batches of receipts, anchoring, verification and settlement. It is filled
// in by the chain issue.
package chain
