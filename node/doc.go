// Package node wires a gpumesh peer together and runs both sides of a job:
// the submitter's (a user asked this peer to run a job) and the provider's
// (another peer's job runs on this peer's GPUs).
//
// # Where things are
//
// The peer itself:
//
//	node.go           Config, New, Start, Run, Close; bootstrap and mDNS
//	identity.go       the one ed25519 key: libp2p peer ID and Solana address
//	datadir.go        the data dir: key, config, lock, api file
//	swarm.go          private swarms: the pre-shared key and the swarm ID
//	host.go           the libp2p host's options
//	relay.go          NAT traversal: relay service, AutoRelay's source of
//	                  relays, hole punches; how each peer is reached
//	directory.go      this peer's GPUs, its offer in the DHT (its LAN and WAN
//	                  halves, or a private swarm's one), directory lookups
//	reach.go          AutoNAT's verdict and the DHT halves, for status
//	prices.go         asks and the spot-price board (gossip)
//	pricesync.go      a joining peer fetches its neighbours' boards
//	api.go            the local API: every route, in one table
//	client.go         the typed client of the local API (the CLI's)
//	explorer.go       the read-only web page of the swarm
//	metrics.go        Prometheus metrics; what this peer refused of other
//	                  peers, by what and why (never by peer)
//
// A job, in the order it moves:
//
//	negotiate.go         the negotiation loop, both sides: requests for bids
//	                     (sent to the providers named, or on the topic; taken
//	                     from either), bids, awards, answers, confirms,
//	                     releases (decided by gossip.Negotiation and
//	                     gossip.Reservations); each step logged at LevelTrace.
//	                     One loop owns it all; its inputs, first to last:
//	                     local events (submit, cancel, candidates, starts),
//	                     other peers' messages from a gossip.FairQueue (32 a
//	                     peer being read or waiting, 1024 in all, one peer at
//	                     a time; a peer's past its bound dropped unread and
//	                     counted), then requests
//	                     for bids (gossip.RequestQueues)
//	jobs.go              the job record: JobState and the only code that
//	                     changes it; records in the job store (jobstore)
//	submitter.go         submit, cancel, negotiation outcomes (recorded off
//	                     the loop: their writes are synced), retry; whom a
//	                     request goes to (price board, directory)
//	submitter_run.go     running a formed job: streams to the members, frames
//	                     in, the run attempt's decisions out (attempt)
//	submitter_pay.go     paying bills the attempt allowed, in SOL or a token
//	                     (chain.Currency); funds checked first
//	submitter_logs.go    the job's log: kept, followed, served
//	submitter_quota.go   what a job's providers may put on this peer's disk
//	submitter_queue.go   queued jobs (spec queue:): fed the price board's
//	                     ticks, they negotiate again when jobqueue says
//	provider_gpus.go     reservations and which GPUs a member holds
//	provider_member.go   serving a member: checks, executor, its share of
//	                     the machine, logs, outputs, the signed receipt
//	provider_tasks.go    members recorded on disk while they run; what a
//	                     crash left, ended at the next start; the process
//	                     executor's user and folders
//	inputs.go            a job's inputs: src added at submit (its CID sent),
//	                     CIDs and URLs fetched, checked and placed read-only
//	                     by a provider before the work starts
//	images.go            a job's image on the mesh: the submitter's engine's
//	                     image added as blobs and a manifest (imageCid),
//	                     granted to members; a provider fetches, checks and
//	                     loads it, then shares and announces its blobs
//	checkpoint.go        checkpoints: member 0's folder synced by CID, kept by
//	                     the submitter, restored on a retry (GPUMESH_RESUMED)
//	checkpoint_replica.go checkpoint.replicas: peers asked to keep a copy
//	                     (/gpumesh/replica/1.0.0, --replica-space), fetched
//	                     back on a retry when the submitter's copy is gone
//	provider_bill.go     billing a member's work as it runs; checking its
//	                     payments (the right currency, one bill a
//	                     transaction); pausing and stopping unpaid work
//	provider_jobnet.go   a member's place on its job's own network: its
//	                     interface made, joined, metered (node/jobnet);
//	                     a provider that cannot make one (not root) takes
//	                     members of several only in a private swarm, and
//	                     their job meets on the host network
//	                     (gossip.HostNetwork, provider_gpus.go)
//	provider_session.go  sessions into a running member (job exec,
//	                     port-forward): only its submitter, within bounds,
//	                     ended with the member
//	submitter_session.go opening a session into a member of this peer's
//	                     job; the local API's upgraded session call
//	client_session.go    the client's side of that call (Exec, Forward)
//	submitter_forward.go open port-forwards, counted for the explorer; a
//	                     forwarded connection passed over the unix socket
//	receipts.go          receipts kept on disk, both sides
//	anchor.go            anchoring receipts on Solana: co-signed, or marked
//	                     unsigned by the provider with why
//	wire.go              the negotiation protocol's signed envelope, for
//	                     peers that speak it without a Node
//	evidence.go          what this peer knows of providers (evidence.db):
//	                     runs of its jobs, anchored receipts fetched and
//	                     checked; scores for gpus find, provider show, the
//	                     explorer and the ranking of bids
//
// The pure pieces, in packages of their own that link no node, GPU,
// container or Solana code:
//
//	node/jobspec    the job spec: parse, validate, what it needs
//	node/jobwire    the job protocol's frames and their bounds, and the
//	                checkpoint replica protocol's
//	node/sessionwire the session protocol's frames (exec, forward) and
//	                their bounds; RunExec, the submitter's side of an exec
//	node/jobnet     a job's own network: addresses, the packet checks,
//	                TUN interfaces in members' namespaces, forwarding over
//	                /gpumesh/jobnet/1.0.0 (it links the host, not the node)
//	node/attempt    one run attempt as a state machine (Step, Tick, Ready),
//	                with golden scripts in node/attempt/testdata
//	node/jobstore   job records in a bbolt file, paged newest first
//	node/content    bytes named by their hash: a capped block store on disk,
//	                UnixFS add, bitswap fetch under the swarm's prefix
//	                (FetchFrom: bulk streams from peers known to hold
//	                the DAG first: inputs, images, checkpoints),
//	                provider records in the DHT, meters of what a peer
//	                read of roots granted it (checkpoint bytes in the
//	                receipt) (it links the host, not the node)
//	node/images     container images as content: docker save's stream
//	                to checked blobs and a Manifest, and back to what
//	                docker load reads, each digest checked
//	node/reputation a provider's score from evidence, with its formula;
//	                the evidence exchange's frames
//	node/jobqueue   when a queued job tries again (news, floor, backoff,
//	                rate), with golden scripts in node/jobqueue/testdata
//	node/meshtest   many real nodes in one test process, and hostile peers
//	                that speak the real protocols (adversary.go; a real
//	                provider whose negotiation a script plays:
//	                adversary_provider.go)
//
// # Lifecycle
//
// New checks a Config and starts nothing; Start brings the peer up (and
// stops what it started if a step fails); Run serves until its context
// ends; Close is safe to call twice. A running node owns its data dir
// through a lock file, and writes an api file there that tells client
// commands where its local API listens (a unix socket, mode 0600, and
// optionally a TCP address guarded by a bearer token).
package node
