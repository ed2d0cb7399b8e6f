package node_test

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// checkpoint.replicas: 2 in a mesh of two providers, a replica with room
// (node 2), one with too little (node 3) and the submitter (node 4): the
// checkpoint is kept by node 2 alone (node 3 and the other provider
// refuse: over budget, --replica-space 0). The submitter's store is then
// wiped; a stranger (node 3) cannot fetch the copy from node 2; member
// 0's provider is cut off, and the retry on the other provider still
// starts from the checkpoint, fetched back from node 2.
func TestARetryRestoresTheCheckpointFromAReplica(t *testing.T) {
	o := h100s(71, 2)
	o.Config = func(i int, c *node.Config) {
		switch i {
		case 2:
			c.ReplicaSpace = 64 << 20
		case 3:
			c.ReplicaSpace = 1 << 10
		}
	}
	m := meshtest.Start(t, 5, o)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	sub, keeper, small := m.Nodes[4], m.Nodes[2], m.Nodes[3]
	for _, i := range []int{2, 3} {
		if err := m.Connect(ctx, 4, i); err != nil {
			t.Fatal(err)
		}
	}
	script := `if [ "$GPUMESH_RESUMED" = 1 ]; then
  echo "resumed from step $(cat "$GPUMESH_CHECKPOINT/step")"
  cp "$GPUMESH_CHECKPOINT/step" "$GPUMESH_OUTPUTS/resumed-step"
  exit 0
fi
head -c 65536 /dev/urandom > "$GPUMESH_CHECKPOINT/weights"
echo 7 > "$GPUMESH_CHECKPOINT/step.tmp" && mv "$GPUMESH_CHECKPOINT/step.tmp" "$GPUMESH_CHECKPOINT/step"
echo started
exec sleep 3600`
	job, err := sub.SubmitJob(ctx, scriptSpec(t, 8, 8, script, "retries: 1\ncheckpoint: {path: /checkpoints, every: 1s, replicas: 2}"))
	if err != nil {
		t.Fatal(err)
	}
	var ck node.JobCheckpoint
	testwait.Until(t, ctx, "the checkpoint kept by a replica", func() (bool, string) {
		c, ok := sub.JobCheckpoint(job.ID)
		ck = c
		return ok && c.Files == 2 && len(c.Replicas) > 0, "none yet"
	})
	if want := []string{keeper.Host().ID().String()}; !slices.Equal(ck.Replicas, want) {
		t.Fatalf("replicas %v, want node 2 alone %v (node 3 is over its budget, the providers keep none)", ck.Replicas, want)
	}
	root, err := jobspec.ParseCID(ck.CID)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := keeper.ReplicaHeld(sub.Host().ID(), job.ID); !ok || got != root {
		t.Fatalf("node 2 keeps %v (%v), want %s", got, ok, root)
	}
	if _, ok := small.ReplicaHeld(sub.Host().ID(), job.ID); ok {
		t.Fatal("node 3 keeps a checkpoint over its --replica-space")
	}

	// The submitter's copy is gone.
	if err := sub.DropCheckpointCopy(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	if has, _ := sub.Content().Store().Has(ctx, root); has {
		t.Fatal("the submitter still has the checkpoint")
	}
	// A stranger asks node 2 for it: nothing comes.
	sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
	_, release, err := small.Content().Fetch(sctx, root, 0)
	scancel()
	if err == nil {
		release()
		t.Fatal("a stranger fetched the replica")
	}

	j, _ := sub.Job(job.ID)
	var victim int
	for i := range m.Nodes {
		if m.Nodes[i].Host().ID() == j.Members[0].Provider {
			victim = i
		}
	}
	if err := m.Isolate(victim); err != nil {
		t.Fatal(err)
	}
	j = waitEnded(t, ctx, sub, job.ID)
	log := jobLog(t, sub, job.ID)
	if j.State != node.JobDone || j.Attempt != 1 || j.Members[0].Provider == m.Nodes[victim].Host().ID() {
		t.Fatalf("job %s attempt %d (%s), want done on another provider; log:\n%s", j.State, j.Attempt, j.Reason, log)
	}
	if !strings.Contains(log, "[0] resumed from step 7") {
		t.Fatalf("log does not show the resume:\n%s", log)
	}
	got, err := os.ReadFile(filepath.Join(sub.StateDir(), "jobs", j.ID, "outputs", "rank-0", "resumed-step"))
	if err != nil || string(got) != "7\n" {
		t.Fatalf("resumed step %q, %v; want 7", got, err)
	}
	// The submitter has it again: from node 2, the one peer left that held it.
	if has, _ := sub.Content().Store().Has(ctx, root); !has {
		t.Fatal("the submitter did not fetch the checkpoint back")
	}
}

// askReplica speaks the replica protocol from h to p: one request, one answer.
func askReplica(t *testing.T, ctx context.Context, h host.Host, p peer.ID, req jobwire.ReplicaRequest) jobwire.ReplicaAnswer {
	t.Helper()
	s, err := h.NewStream(ctx, p, jobwire.ReplicaProtocol)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := jobwire.WriteReplica(s, req); err != nil {
		t.Fatal(err)
	}
	a, err := jobwire.ReadReplicaAnswer(bufio.NewReader(s))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// A replica, asked over the real protocol, keeps what fits its budget and
// was named truly, replaces a job's copy with its newer one, refuses a
// checkpoint over its budget, one larger than its request said, and a
// flood of requests, and serves its copy to the submitter alone.
func TestAReplicaKeepsOnlyWhatFitsAndServesOnlyItsSubmitter(t *testing.T) {
	o := h100s(72, 0)
	o.Config = func(i int, c *node.Config) {
		if i == 0 {
			c.ReplicaSpace = 1 << 20 // half of it, 512 KiB, for one submitter
		}
	}
	m := meshtest.Start(t, 3, o)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, sub, stranger := m.Nodes[0], m.Nodes[1], m.Nodes[2]
	if err := m.Connect(ctx, 1, 0); err != nil {
		t.Fatal(err)
	}
	if err := m.Connect(ctx, 2, 0); err != nil {
		t.Fatal(err)
	}
	add := func(size int, seed byte) (cid.Cid, int64) {
		dir := t.TempDir()
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(i*7) ^ seed
		}
		if err := os.WriteFile(filepath.Join(dir, "weights"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		root, err := sub.Content().Add(ctx, dir, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		st, release, err := sub.Content().Fetch(ctx, root.CID, 0) // local: its block bytes
		if err != nil {
			t.Fatal(err)
		}
		release()
		if err := sub.Content().Grant(ctx, root.CID, rep.Host().ID()); err != nil {
			t.Fatal(err)
		}
		return root.CID, st.Bytes
	}
	const jobA = "0123456789abcdef0123456789abcdef"
	until := time.Now().Add(time.Hour).Unix()
	req := func(c cid.Cid, bytes int64) jobwire.ReplicaRequest {
		return jobwire.ReplicaRequest{Job: jobA, CID: c.String(), Bytes: bytes, Until: until}
	}

	first, firstBytes := add(100<<10, 1)
	if a := askReplica(t, ctx, sub.Host(), rep.Host().ID(), req(first, firstBytes)); !a.OK {
		t.Fatalf("refused a checkpoint within budget: %s", a.Reason)
	}
	if got, ok := rep.ReplicaHeld(sub.Host().ID(), jobA); !ok || got != first {
		t.Fatalf("keeps %v (%v), want %s", got, ok, first)
	}
	// Over the half a submitter may use.
	big, bigBytes := add(600<<10, 2)
	if a := askReplica(t, ctx, sub.Host(), rep.Host().ID(), req(big, bigBytes)); a.OK || !strings.Contains(a.Reason, "over what this peer keeps for one submitter") {
		t.Fatalf("a checkpoint over budget: ok %v, %q", a.OK, a.Reason)
	}
	// Larger than the request said: the fetch stops at the bytes named.
	liar, _ := add(200<<10, 3)
	if a := askReplica(t, ctx, sub.Host(), rep.Host().ID(), req(liar, 10<<10)); a.OK || !strings.Contains(a.Reason, "more than") {
		t.Fatalf("a checkpoint larger than named: ok %v, %q", a.OK, a.Reason)
	}
	if got, _ := rep.ReplicaHeld(sub.Host().ID(), jobA); got != first {
		t.Fatalf("keeps %s after refusals, want the first %s", got, first)
	}
	// A newer one of the job replaces it.
	second, secondBytes := add(120<<10, 4)
	if a := askReplica(t, ctx, sub.Host(), rep.Host().ID(), req(second, secondBytes)); !a.OK {
		t.Fatalf("refused the newer checkpoint: %s", a.Reason)
	}
	if got, _ := rep.ReplicaHeld(sub.Host().ID(), jobA); got != second {
		t.Fatalf("keeps %s, want the newer %s", got, second)
	}
	// A flood is refused: at most a burst, then one a second.
	refused := false
	for range 8 {
		if a := askReplica(t, ctx, stranger.Host(), rep.Host().ID(), jobwire.ReplicaRequest{Job: jobA, CID: first.String(), Bytes: 1, Until: until}); strings.Contains(a.Reason, "too many replica requests") {
			refused = true
			break
		}
	}
	if !refused {
		t.Fatal("8 requests at once were all heard")
	}
	// The stranger cannot fetch the copy; the submitter, its store wiped, can.
	sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
	_, release, err := stranger.Content().Fetch(sctx, second, 0)
	scancel()
	if err == nil {
		release()
		t.Fatal("a stranger fetched the replica")
	}
	if err := sub.DropCheckpointCopy(ctx, jobA); err != nil {
		t.Fatal(err)
	}
	st, release, err := sub.Content().Fetch(ctx, second, 0)
	if err != nil {
		t.Fatalf("the submitter could not fetch its replica back: %v", err)
	}
	release()
	if st.FetchedBytes != secondBytes {
		t.Fatalf("fetched back %d bytes, want %d", st.FetchedBytes, secondBytes)
	}
}

// A replica restarted keeps what it kept: replicas.json names it, and the
// submitter, its own copy gone, fetches it back from the restarted peer.
func TestARestartedReplicaKeepsItsCopies(t *testing.T) {
	start := func(dir string, space int64) *node.Node {
		n, err := node.New(node.Config{DataDir: dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, NoMDNS: true, NoNAT: true, GPUs: "none", ReplicaSpace: space})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return n
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	repDir := t.TempDir()
	rep := start(repDir, 1<<20)
	sub := start(t.TempDir(), 0)
	defer sub.Close()
	connect := func() {
		if err := sub.Connect(ctx, peer.AddrInfo{ID: rep.Host().ID(), Addrs: rep.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	connect()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "step"), []byte("41\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := sub.Content().Add(ctx, dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, release, err := sub.Content().Fetch(ctx, root.CID, 0)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if err := sub.Content().Grant(ctx, root.CID, rep.Host().ID()); err != nil {
		t.Fatal(err)
	}
	const jobA = "00112233445566778899aabbccddeeff"
	if a := askReplica(t, ctx, sub.Host(), rep.Host().ID(), jobwire.ReplicaRequest{Job: jobA, CID: root.CID.String(), Bytes: st.Bytes, Until: time.Now().Add(time.Hour).Unix()}); !a.OK {
		t.Fatalf("refused: %s", a.Reason)
	}
	if err := rep.Close(); err != nil {
		t.Fatal(err)
	}
	rep = start(repDir, 1<<20)
	defer rep.Close()
	connect()
	testwait.Until(t, ctx, "the restarted replica keeping its copy", func() (bool, string) {
		got, ok := rep.ReplicaHeld(sub.Host().ID(), jobA)
		return ok && got == root.CID, "not yet"
	})
	if err := sub.DropCheckpointCopy(ctx, jobA); err != nil {
		t.Fatal(err)
	}
	back, release, err := sub.Content().Fetch(ctx, root.CID, 0)
	if err != nil {
		t.Fatalf("not fetched back from the restarted replica: %v", err)
	}
	release()
	if back.FetchedBytes != st.Bytes {
		t.Fatalf("fetched back %d bytes, want %d", back.FetchedBytes, st.Bytes)
	}
}
