package node_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/internal/testdocker"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/images"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// submitterImage builds an image that only the default engine (the
// submitters') has: the test image and a file of size random bytes, under
// a tag of its own. It returns the tag and the file's SHA-256.
func submitterImage(t testing.TB, size int) (tag, sum string) {
	t.Helper()
	base := testdocker.EnsureImage(t)
	dir := t.TempDir()
	blob := make([]byte, size)
	_, _ = rand.Read(blob)
	if err := os.WriteFile(filepath.Join(dir, "blob"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	df := fmt.Sprintf("FROM %s\nCOPY blob /blob\n", base)
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		t.Fatal(err)
	}
	var id [6]byte
	_, _ = rand.Read(id[:])
	tag = "gpumesh-imgtest:" + hex.EncodeToString(id[:])
	cmd := exec.Command("docker", "build", "-q", "-t", tag, dir)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0", "DOCKER_HOST=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("docker", "rmi", "-f", tag).Run() })
	s := sha256.Sum256(blob)
	return tag, hex.EncodeToString(s[:])
}

func imageSpec(t testing.TB, image, model, extra string) jobspec.Spec {
	t.Helper()
	y := fmt.Sprintf("name: mesh-image\nimage: %s\ncommand: [sha256sum, /blob]\nresources:\n  gpus: 1\n  gpu: {model: %s}\nmaxPrice: 2.50\ntimeout: 5m\n%s", image, model, extra)
	spec, err := jobspec.Parse([]byte(y), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// An image only the submitter's engine has runs on a provider whose
// engine lacks it; the provider's second job of it moves nothing; a
// third provider, for a submitter that has none of it, fetches it from
// the first provider.
func TestImageOnlyOnTheSubmitterRunsOnProviders(t *testing.T) {
	tag, sum := submitterImage(t, 3<<20+12345)
	engines := []string{testdocker.Engine(t), testdocker.Engine(t)}
	m := meshtest.Start(t, 4, meshtest.Options{Seed: 161, Providers: 2, Price: "fixed:2.10", Config: func(i int, c *node.Config) {
		if i < 2 {
			c.DockerHost = engines[i]
		}
		if i == 1 {
			c.GPUs = "mock:dgxa100"
		}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p0, p1, sub, sub2 := m.Nodes[0], m.Nodes[1], m.Nodes[2], m.Nodes[3]

	run := func(nd *node.Node, spec jobspec.Spec) (node.Job, *node.ImageReport) {
		t.Helper()
		j := runToEnd(t, ctx, nd, spec)
		log := jobLog(t, nd, j.ID)
		if j.State != node.JobDone {
			t.Fatalf("job %s (%s):\n%s", j.State, j.Reason, log)
		}
		if !strings.Contains(log, sum) {
			t.Errorf("the job's log lacks the file's sum %s:\n%s", sum, log)
		}
		if len(j.Runs) != 1 || j.Runs[0].Image == nil {
			t.Fatalf("runs %+v: want one, with an image report", j.Runs)
		}
		return j, j.Runs[0].Image
	}

	j1, r1 := run(sub, imageSpec(t, tag, "H100", "imageFrom: submitter\n"))
	if j1.Runs[0].Provider != p0.Host().ID() {
		t.Fatalf("job 1 ran on %s, want provider 0", j1.Runs[0].Provider)
	}
	if r1.Source != node.ImageFromMesh || r1.Moved < r1.Bytes || r1.Bytes < 3<<20 || len(r1.From) != 1 || r1.From[0] != sub.Host().ID().String() {
		t.Fatalf("job 1's image: %+v, want over the mesh, all %d bytes from the submitter %s", r1, r1.Bytes, sub.Host().ID())
	}

	_, r2 := run(sub, imageSpec(t, tag, "H100", ""))
	if r2.Source != node.ImageFromProvider || r2.Moved != 0 {
		t.Fatalf("job 2's image: %+v, want on the provider already, 0 bytes moved", r2)
	}

	// A manifest whose layer CID is not its digest's bytes (the config's
	// blob in the top layer's place) loads nothing.
	forged := forgeManifest(t, ctx, sub, sub2, j1.Spec.ImageCID)
	jf := runToEnd(t, ctx, sub2, imageSpec(t, tag, "A100", "imageCid: "+forged+"\n"))
	if jf.State != node.JobFailed || !strings.Contains(jf.Reason, "manifest is wrong") {
		t.Fatalf("job of a forged manifest: %s (%s), want failed saying the manifest is wrong", jf.State, jf.Reason)
	}
	if ims := testdocker.Images(t, engines[1]); len(ims) != 0 {
		t.Fatalf("provider 1's engine holds %v after a refused image, want nothing", ims)
	}

	// A submitter that has none of the image names it by its CID: the
	// third provider gets it from the first.
	spec3 := imageSpec(t, tag, "A100", "imageCid: "+j1.Spec.ImageCID+"\n")
	j3, r3 := run(sub2, spec3)
	if j3.Runs[0].Provider != p1.Host().ID() {
		t.Fatalf("job 3 ran on %s, want provider 1", j3.Runs[0].Provider)
	}
	// (The refused job left the blobs it fetched in provider 1's cache:
	// only the rest moves now.)
	if r3.Source != node.ImageFromMesh || r3.Moved == 0 || len(r3.From) != 1 || r3.From[0] != p0.Host().ID().String() {
		t.Fatalf("job 3's image: %+v, want over the mesh, from provider 0 %s only", r3, p0.Host().ID())
	}
}

// forgeManifest adds to by's store a copy of the manifest root (from
// from's store) whose top layer names the config's blob.
func forgeManifest(t *testing.T, ctx context.Context, from, by *node.Node, root string) string {
	t.Helper()
	c, err := cid.Decode(root)
	if err != nil {
		t.Fatal(err)
	}
	r, err := from.Content().Open(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r)
	r.Close()
	m, err := images.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	m.Layers[len(m.Layers)-1].CID = m.Config.CID
	enc, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "manifest.json")
	if err := os.WriteFile(path, enc, 0o644); err != nil {
		t.Fatal(err)
	}
	added, err := by.Content().Add(ctx, path, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	return added.CID.String()
}

// A hostile peer that says it has every block and sends wrong bytes for
// each is refused block by block: the provider gets the image from the
// submitter all the same, and runs it.
func TestImageBlocksFromAHostilePeerAreRefused(t *testing.T) {
	tag, sum := submitterImage(t, 2<<20+999)
	eng := testdocker.Engine(t)
	m := meshtest.Start(t, 2, meshtest.Options{Seed: 163, Providers: 1, Price: "fixed:2.10", Config: func(i int, c *node.Config) {
		if i == 0 {
			c.DockerHost = eng
		}
	}})
	bad := m.AddAdversary(t, 0).ServeWrongBlocks(dht.ProtocolPrefix(""))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sub := m.Nodes[1]
	j := runToEnd(t, ctx, sub, imageSpec(t, tag, "H100", ""))
	log := jobLog(t, sub, j.ID)
	if j.State != node.JobDone || !strings.Contains(log, sum) {
		t.Fatalf("job %s (%s), want done with the file's sum %s:\n%s", j.State, j.Reason, sum, log)
	}
	r := j.Runs[0].Image
	if r == nil || r.Source != node.ImageFromMesh || len(r.From) != 1 || r.From[0] != sub.Host().ID().String() {
		t.Fatalf("image report %+v, want all of it from the submitter", r)
	}
	// The provider takes the image on a bulk stream from the submitter,
	// which holds it: then the hostile peer has no say at all. Else it
	// must have been asked over bitswap (and cut off below).
	if bulk := m.Nodes[0].Content().Stats().BulkBytes; bad.Asks.Load() == 0 && bulk < r.Bytes {
		t.Fatalf("the hostile peer was never asked, and %d of the image's %d bytes came on the bulk stream: the test tested nothing", bulk, r.Bytes)
	}
	// A peer that sent a forged block is cut off (else the session that
	// asked it waits on it for a minute or more).
	if cut := m.Nodes[0].Content().ForgersCut(); bad.Sent.Load() > 0 && cut == 0 {
		t.Fatalf("the hostile peer forged %d blocks and was never cut off", bad.Sent.Load())
	}
	t.Logf("the hostile peer was sent %d wants and forged %d blocks, cut off %d times; the fetch took %d ms", bad.Asks.Load(), bad.Sent.Load(), m.Nodes[0].Content().ForgersCut(), r.Millis)
}

// A provider whose content cache cannot hold the image says so, and its
// engine gets nothing.
func TestImageTooBigForTheProviderFailsClearly(t *testing.T) {
	tag, _ := submitterImage(t, 3<<20)
	eng := testdocker.Engine(t)
	m := meshtest.Start(t, 2, meshtest.Options{Seed: 164, Providers: 1, Price: "fixed:2.10", Config: func(i int, c *node.Config) {
		if i == 0 {
			c.DockerHost, c.ContentCache = eng, 2<<20
		}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	j := runToEnd(t, ctx, m.Nodes[1], imageSpec(t, tag, "H100", ""))
	if j.State != node.JobFailed || !strings.Contains(j.Reason, "--content-cache") {
		t.Fatalf("job %s (%s), want failed naming --content-cache", j.State, j.Reason)
	}
	if ims := testdocker.Images(t, eng); len(ims) != 0 {
		t.Fatalf("the provider's engine holds %v, want nothing", ims)
	}
}

// An image the submitter's engine lacks, where the spec says it must
// come from there, fails the submit and says what to do.
func TestImageTheSubmitterLacksIsRefusedAtSubmit(t *testing.T) {
	testdocker.EnsureImage(t)
	m := meshtest.Start(t, 2, meshtest.Options{Seed: 162, Providers: 1, Price: "fixed:2.10"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := m.Nodes[1].SubmitJob(ctx, imageSpec(t, "gpumesh-imgtest:not-here", "H100", "imageFrom: submitter\n"))
	if err == nil || !strings.Contains(err.Error(), "not in this peer's Docker engine") || !strings.Contains(err.Error(), "docker images") {
		t.Fatalf("submit: %v, want an error saying the image is not in this peer's engine", err)
	}
	if jobs := m.Nodes[1].Jobs(); len(jobs) != 0 {
		t.Fatalf("jobs %+v, want none recorded", jobs)
	}
}

// The local API puts an image of the node's engine on the mesh, once a
// content: a second add of the same image is the same CID. An image the
// engine lacks is left to a registry, or refused where the submitter
// must have it.
func TestImageAddedOverTheLocalAPI(t *testing.T) {
	tag, _ := submitterImage(t, 1<<20)
	dir, err := os.MkdirTemp("", "gm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	nd, err := node.New(node.Config{DataDir: dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, NoMDNS: true, NoNAT: true, GPUs: "none"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := nd.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer nd.Close()
	cl, err := node.NewClient(dir)
	if err != nil {
		t.Fatal(err)
	}
	var last node.ImageProgress
	added, err := cl.AddImage(ctx, tag, "", func(p node.ImageProgress) { last = p })
	if err != nil {
		t.Fatal(err)
	}
	if added.CID == "" || added.Layers != 2 || added.Bytes < 1<<20 || last.Added > last.Total {
		t.Fatalf("added %+v (last progress %+v), want a CID, 2 layers, over 1 MiB", added, last)
	}
	again, err := cl.AddImage(ctx, tag, jobspec.ImageFromSubmitter, nil)
	if err != nil || again != added {
		t.Fatalf("second add: %+v, %v; want %+v", again, err, added)
	}
	none, err := cl.AddImage(ctx, "gpumesh-imgtest:not-here", "", nil)
	if err != nil || none.CID != "" {
		t.Fatalf("an image the engine lacks: %+v, %v; want no CID, no error", none, err)
	}
	_, err = cl.AddImage(ctx, "gpumesh-imgtest:not-here", jobspec.ImageFromSubmitter, nil)
	if err == nil || !strings.Contains(err.Error(), "not in this peer's Docker engine") {
		t.Fatalf("imageFrom submitter, an image the engine lacks: %v, want refused", err)
	}
}

// A provider whose engine has the image already (its own, by ID) runs it
// as it is: nothing moves, and no name of the mesh's is added to it.
func TestImageAProviderHasAlreadyMovesNothing(t *testing.T) {
	tag, sum := submitterImage(t, 1<<20)
	m := meshtest.Start(t, 2, meshtest.Options{Seed: 165, Providers: 1, Price: "fixed:2.10"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sub := m.Nodes[1]
	j := runToEnd(t, ctx, sub, imageSpec(t, tag, "H100", ""))
	log := jobLog(t, sub, j.ID)
	if j.State != node.JobDone || !strings.Contains(log, sum) {
		t.Fatalf("job %s (%s):\n%s", j.State, j.Reason, log)
	}
	if r := j.Runs[0].Image; r == nil || r.Source != node.ImageFromProvider || r.Moved != 0 {
		t.Fatalf("image report %+v, want on the provider already, 0 bytes moved", r)
	}
	if j.Spec.ImageCID == "" {
		t.Fatal("the submitter did not put its image on the mesh")
	}
	id, err := exec.Command("docker", "image", "inspect", "-f", "{{.ID}}", tag).Output()
	if err != nil {
		t.Fatal(err)
	}
	ours := "gpumesh-image:" + strings.TrimPrefix(strings.TrimSpace(string(id)), "sha256:")
	if out, err := exec.Command("docker", "images", "-q", ours).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Fatalf("docker images %s: %q (%v), want none", ours, out, err)
	}
}

// An image the provider's image cache removes is shared no more: a peer
// of the swarm gets its manifest and its own layer from the provider
// while the engine has it, nothing after; a layer another image still
// holds stays shared.
func TestImageRemovedFromTheCacheIsSharedNoMore(t *testing.T) {
	tagA, _ := submitterImage(t, 3<<20+1)
	tagB, _ := submitterImage(t, 3<<20+2)
	insp := exec.Command("docker", "image", "inspect", "-f", "{{.Size}}", tagA)
	insp.Env = append(os.Environ(), "DOCKER_HOST=")
	out, err := insp.Output()
	if err != nil {
		t.Fatal(err)
	}
	var sizeA int64
	if _, err := fmt.Sscan(string(out), &sizeA); err != nil || sizeA <= 0 {
		t.Fatalf("image size %q: %v", out, err)
	}
	eng := testdocker.Engine(t)
	m := meshtest.Start(t, 3, meshtest.Options{Seed: 167, Providers: 1, Price: "fixed:2.10", Config: func(i int, c *node.Config) {
		if i == 0 {
			c.DockerHost = eng
			c.ImageCache = sizeA * 3 / 2 // one image, not two
		}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	prov, sub, other := m.Nodes[0], m.Nodes[1], m.Nodes[2]
	if err := other.Host().Connect(ctx, peer.AddrInfo{ID: prov.Host().ID(), Addrs: prov.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	run := func(tag string) *images.Manifest {
		t.Helper()
		j := runToEnd(t, ctx, sub, imageSpec(t, tag, "H100", "imageFrom: submitter\n"))
		if j.State != node.JobDone {
			t.Fatalf("job of %s: %s (%s)", tag, j.State, j.Reason)
		}
		root, err := jobspec.ParseCID(j.Spec.ImageCID)
		if err != nil {
			t.Fatal(err)
		}
		// Read the manifest from the submitter's store.
		r, err := sub.Content().Open(ctx, root)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		b, _ := io.ReadAll(r)
		man, err := images.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		return man
	}
	fetch := func(c cid.Cid) error {
		short, stop := context.WithTimeout(ctx, 3*time.Second)
		defer stop()
		_, release, err := other.Content().Fetch(short, c, 0)
		if err == nil {
			release()
			_ = other.Content().Store().DeleteBlock(ctx, c)
		}
		return err
	}
	blobs := func(man *images.Manifest) map[string]cid.Cid {
		out := map[string]cid.Cid{}
		for _, b := range man.Blobs() {
			c, err := images.ParseCID(b.CID)
			if err != nil {
				t.Fatal(err)
			}
			out[b.Digest] = c
		}
		return out
	}
	manA := run(tagA)
	blobsA := blobs(manA)
	own := blobsA[manA.Layers[len(manA.Layers)-1].Digest] // the layer of A's random file
	if err := fetch(own); err != nil {
		t.Fatalf("A's own layer while the engine has A: %v, want it shared", err)
	}
	manB := run(tagB)
	var common cid.Cid
	for d, c := range blobs(manB) {
		if blobsA[d] == c {
			common = c
		}
	}
	if !common.Defined() {
		t.Fatal("A and B have no layer in common: the test tests less than it says")
	}
	if ims := testdocker.Images(t, eng); strings.Contains(strings.Join(ims, " "), manA.Tag()) {
		t.Fatalf("the provider's engine still holds A (%v): its cache did not remove it", ims)
	}
	if err := fetch(own); err == nil {
		t.Fatal("A's own layer still served after the cache removed A")
	}
	if err := fetch(common); err != nil {
		t.Fatalf("the layer B holds too: %v, want it still shared", err)
	}
}
