package node_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testdocker"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// submitterImage builds an image that only the default engine (the
// submitters') has: the test image and a file of size random bytes, under
// a tag of its own. It returns the tag and the file's SHA-256.
func submitterImage(t *testing.T, size int) (tag, sum string) {
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

func imageSpec(t *testing.T, image, model, extra string) jobspec.Spec {
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
		t.Logf("log:\n%s", log)
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

	// A submitter that has none of the image names it by its CID: the
	// third provider gets it from the first.
	spec3 := imageSpec(t, tag, "A100", "imageCid: "+j1.Spec.ImageCID+"\n")
	j3, r3 := run(sub2, spec3)
	if j3.Runs[0].Provider != p1.Host().ID() {
		t.Fatalf("job 3 ran on %s, want provider 1", j3.Runs[0].Provider)
	}
	if r3.Source != node.ImageFromMesh || r3.Moved < r3.Bytes || len(r3.From) != 1 || r3.From[0] != p0.Host().ID().String() {
		t.Fatalf("job 3's image: %+v, want over the mesh, all of it from provider 0 %s", r3, p0.Host().ID())
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
