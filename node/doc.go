// Package node wires a gpumesh peer together: its identity (one ed25519 key,
// stored as a Solana CLI keypair, that is both the libp2p peer ID and the
// Solana address), its data dir, the libp2p host, the GPU directory (dht),
// the gossip router (gossip), the local API the CLI talks to, and metrics.
//
// Lifecycle: New checks a Config and starts nothing; Start brings the peer up
// (and stops what it started if a step fails); Run serves until its context
// ends; Close is safe to call twice. A running node owns its data dir through
// a lock file, and writes an api file there that tells client commands where
// its local API listens (a unix socket, mode 0600, and optionally a TCP
// address guarded by a bearer token).
package node
