// Package content moves bytes named by their hash between peers: job
// inputs and checkpoints now, container image layers next. It is the
// one content-addressed transfer of the mesh, built on the IPFS stack's
// parts on our own libp2p host:
//
//   - bytes are cut into SHA-256 blocks (1 MiB leaves) and linked into a
//     UnixFS DAG, so a file or a folder is named by one CID (CIDv1) and
//     two adds of the same bytes make the same blocks;
//   - blocks are kept in a Store on disk in the data dir, capped in bytes,
//     least recently used first out, pinned while a job uses them;
//   - blocks move over bitswap under the swarm's own protocol prefix
//     ("/gpumesh/<swarm>/ipfs/bitswap/1.2.0"), so only members of a
//     private swarm (which its pre-shared key already guarantees) and
//     only peers of our swarm speak it; a Fetch is one bitswap session,
//     which asks every peer that has a block at once and splits the
//     wants among them; it keeps fetchWindow blocks asked for (a node's
//     links are asked for as it arrives, not after a batch), and writes
//     storeWriters blocks to the store at once;
//   - who has a root is announced in the swarm's DHT as a provider record
//     (Announce) and found there when no connected peer has it;
//   - FetchFrom, given peers known to hold the DAG (a job's submitter),
//     first takes it on bulk streams ("<prefix>/blocks/1.0.0", bulk.go)
//     from each in turn, then from peers whose provider records name the
//     root: blocks asked by CID in batches, several ahead, on up to
//     bulkLanes streams a peer, each with a writer of requests and a
//     reader of answers of its own, answered in order, length-prefixed;
//     whatever is missing after that comes over bitswap as Fetch does.
//
// Who is served: a block goes only to a peer granted a root whose DAG
// holds it (Grant, until Revoke; bitswap's peer block request filter):
// any other peer asking for a CID, even one it learned or guessed, is told
// we have none. Grant lists the root's blocks once, from the store, and
// the list goes with the root's last grant, so the index holds only what
// running jobs granted. The node grants a job's inputs (and a retry's
// checkpoint) to its members' providers and member 0's checkpoints to the
// submitter, before they are told the CIDs (a peer told DONT_HAVE keeps
// its want outstanding, and does not ask again at once). A provider
// grants nothing of its cache of inputs. Share opens a root to every peer
// of the swarm: a provider shares the blobs of the container images it
// ran (node/images.go says why). A private swarm keeps the rule.
//
// Bounds against strangers: a peer granted blocks is served within
// bitswap's per-peer queue (1,024 wants, 4 MiB of blocks at once), and
// on at most bulkPerPeer bulk streams (bulkStreams of all peers, opened
// at bulkOpens a second), each block under the same check;
// a peer cannot make us store anything: blocks come in only as answers to
// our own wants (the exchange drops blocks no session asked for), every
// block received is hashed against the CID asked for (a peer that sends
// a block no Fetch asked for, which is what wrong bytes for a wanted
// block become, is disconnected: else the session that asked it waits on
// it for a minute or more), and a Fetch takes
// only SHA-256 CIDs of dag-pb or raw blocks, at most MaxBlock bytes a
// block, MaxLinks links a node, and a limit in bytes a DAG (a bulk
// frame over MaxBlock, or a block whose bytes are not its CID's, cuts
// the peer off as well). Which roots
// a peer fetches is the caller's decision: a provider fetches only the
// inputs a job it accepted names.
package content
