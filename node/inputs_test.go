package node_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// inputTree is a folder of a script and 3 MiB of data, and the data's
// hash.
func inputTree(t *testing.T) (dir, sum string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "train")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3<<20+5)
	_, _ = rand.NewChaCha8([32]byte{7}).Read(data)
	h := sha256.Sum256(data)
	for name, b := range map[string][]byte{"train.sh": []byte("echo training\n"), "data.bin": data} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir, hex.EncodeToString(h[:])
}

// inputsSpec is a process job that reads its inputs into its outputs and
// tries to write to one.
func inputsSpec(t *testing.T, ins string) jobspec.Spec {
	return scriptSpec(t, 1, 1, `set -e
sh inputs/train/train.sh > "$GPUMESH_OUTPUTS/seen.txt"
sha256sum inputs/train/data.bin | cut -d' ' -f1 >> "$GPUMESH_OUTPUTS/seen.txt"
cat inputs/data.txt >> "$GPUMESH_OUTPUTS/seen.txt"
if echo x > inputs/train/data.bin 2>/dev/null; then echo writable; else echo read-only; fi >> "$GPUMESH_OUTPUTS/seen.txt"`, "inputs:\n"+ins)
}

func TestJobInputsReachTheMemberOnceReadOnly(t *testing.T) {
	m := meshtest.Start(t, 3, h100s(31, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	provider, submitter := m.Nodes[0], m.Nodes[2]
	dir, dataSum := inputTree(t)
	body := []byte("from a url\n")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) }))
	defer srv.Close()
	bodySum := sha256.Sum256(body)
	ins := fmt.Sprintf("  - {src: %s, dst: /inputs/train}\n  - {url: %s/data.txt, sha256: %x, dst: /inputs/data.txt}\n", dir, srv.URL, bodySum)

	j := runToEnd(t, ctx, submitter, inputsSpec(t, ins))
	if j.State != node.JobDone {
		t.Fatalf("job %s (%s), want done; log:\n%s", j.State, j.Reason, jobLog(t, submitter, j.ID))
	}
	if in := j.Spec.Inputs[0]; in.Src != "" || in.CID == "" {
		t.Fatalf("input sent as %+v, want its CID and not the local path", in)
	}
	seen, err := os.ReadFile(filepath.Join(submitter.StateDir(), "jobs", j.ID, "outputs", "rank-0", "seen.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "training\n" + dataSum + "\nfrom a url\nread-only\n"; string(seen) != want {
		t.Fatalf("the job saw:\n%s\nwant:\n%s", seen, want)
	}
	first := provider.Content().Stats().FetchedBytes
	if first < 3<<20 {
		t.Fatalf("provider fetched %d bytes, want the 3 MiB input", first)
	}

	// The same inputs again: nothing moves.
	j2 := runToEnd(t, ctx, submitter, inputsSpec(t, ins))
	if j2.State != node.JobDone {
		t.Fatalf("second job %s (%s), want done", j2.State, j2.Reason)
	}
	if again := provider.Content().Stats().FetchedBytes; again != first {
		t.Fatalf("second job fetched %d more bytes, want 0", again-first)
	}

	// A peer of the swarm not in the job asks the submitter and the
	// provider (which has the input cached) for it over the real
	// exchange: neither serves it, the jobs over or not (content's
	// TestBlocksGoOnlyToPeersGranted shows a peer granted it would get it).
	stranger := m.Nodes[1]
	root, err := jobspec.ParseCID(j.Spec.Inputs[0].CID)
	if err != nil {
		t.Fatal(err)
	}
	for _, nd := range []*node.Node{submitter, provider} {
		if err := stranger.Host().Connect(ctx, peer.AddrInfo{ID: nd.Host().ID(), Addrs: nd.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	served := submitter.Content().Stats().ServedBlocks
	short, stop := context.WithTimeout(ctx, 3*time.Second)
	_, _, err = stranger.Content().Fetch(short, root, 0)
	stop()
	if err == nil {
		t.Fatal("a peer not in the job fetched its input")
	}
	if got := submitter.Content().Stats().ServedBlocks; got != served {
		t.Fatalf("the submitter served %d blocks to a peer not in the job", got-served)
	}
	if got := provider.Content().Stats().ServedBlocks; got != 0 {
		t.Fatalf("the provider served %d blocks of its cache", got)
	}
}

func TestBadJobInputsFailClearly(t *testing.T) {
	m := meshtest.Start(t, 3, h100s(32, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	submitter := m.Nodes[2]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("changed")) }))
	defer srv.Close()

	// A missing path: refused at submit, before any GPU is asked for.
	_, err := submitter.SubmitJob(ctx, inputsSpec(t, "  - {src: /no/such/folder, dst: /inputs/train}\n"))
	if !errors.Is(err, node.ErrBadInput) || !strings.Contains(err.Error(), "/no/such/folder") {
		t.Fatalf("missing path: %v, want ErrBadInput naming the path", err)
	}
	// A URL without its hash: the spec is refused.
	_, err = submitter.SubmitJob(ctx, inputsSpec(t, "  - {url: "+srv.URL+", dst: /inputs/d}\n"))
	if !errors.Is(err, jobspec.ErrBad) || !strings.Contains(err.Error(), "sha256: required with url") {
		t.Fatalf("url without sha256: %v", err)
	}
	// Over the size limit.
	dir, _ := inputTree(t)
	m2 := meshtest.Start(t, 1, meshtest.Options{Seed: 33, Private: true, Config: func(_ int, c *node.Config) { c.MaxInputSize = 1 << 20 }})
	_, err = m2.Nodes[0].SubmitJob(ctx, inputsSpec(t, "  - {src: "+dir+", dst: /inputs/train}\n"))
	if !errors.Is(err, node.ErrBadInput) || !strings.Contains(err.Error(), "--max-input-size") {
		t.Fatalf("input over the limit: %v, want ErrBadInput naming --max-input-size", err)
	}
	// A hash that does not match what the URL serves: the member fails
	// with why, and the job with it.
	j := runToEnd(t, ctx, submitter, inputsSpec(t, fmt.Sprintf("  - {url: %s, sha256: %064x, dst: /inputs/d}\n", srv.URL, 1)))
	if j.State != node.JobFailed || !strings.Contains(j.Reason+jobLog(t, submitter, j.ID), "the job spec says") {
		t.Fatalf("hash mismatch: job %s (%s), want failed saying the hash differs", j.State, j.Reason)
	}
}
