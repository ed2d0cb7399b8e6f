package node_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A 200 MiB input comes whole on the bulk stream from the submitter (the
// path a hang once kept the node off): the member reads every byte of
// it, and the provider took all of it on the bulk path, none over
// bitswap.
func TestALargeInputComesOnTheBulkStream(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 200 MiB")
	}
	m := meshtest.Start(t, 2, h100s(37, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	provider, submitter := m.Nodes[0], m.Nodes[1]
	dir := filepath.Join(t.TempDir(), "big")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 200<<20+3)
	_, _ = rand.NewChaCha8([32]byte{37}).Read(data)
	sum := sha256.Sum256(data)
	if err := os.WriteFile(filepath.Join(dir, "data.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	data = nil
	spec := scriptSpec(t, 1, 1, `sha256sum inputs/big/data.bin | cut -d' ' -f1 > "$GPUMESH_OUTPUTS/sum.txt"`,
		fmt.Sprintf("inputs:\n  - {src: %s, dst: /inputs/big}\n", dir))
	j := runToEnd(t, ctx, submitter, spec)
	if j.State != node.JobDone {
		t.Fatalf("job %s (%s), want done; log:\n%s", j.State, j.Reason, jobLog(t, submitter, j.ID))
	}
	got, err := os.ReadFile(filepath.Join(submitter.StateDir(), "jobs", j.ID, "outputs", "rank-0", "sum.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if want := hex.EncodeToString(sum[:]) + "\n"; string(got) != want {
		t.Fatalf("the member read a file of hash %q, want %q", got, want)
	}
	st := provider.Content().Stats()
	if st.BulkBytes < 200<<20 || st.BulkBytes != st.FetchedBytes {
		t.Fatalf("provider fetched %d bytes, %d of them on the bulk stream: want all 200 MiB there", st.FetchedBytes, st.BulkBytes)
	}
}
