package node_test

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testdocker"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// BenchmarkImageToFirstStart: a 200 MB image that only the submitter's
// engine has, to a fresh provider (its own engine, an empty content
// cache): submit → the container started, and the image's part of it
// (fetch over the mesh, checks, load), against `docker save | docker
// load` into the same engine and a `docker run` of the same image in the
// same run (target: start within 1.5× of it). It also reports the
// image's bytes moved a second against a plain loopback TCP copy of the
// same number of bytes (the layer transfer; target ≥ 0.8). The
// submitter's add (docker save, hashing, chunking) is done before the
// clock starts, as a push would be, and reported apart.
func BenchmarkImageToFirstStart(b *testing.B) {
	tag, _ := submitterImage(b, 200<<20)
	eng := testdocker.Engine(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	docker := func(host string, args ...string) {
		b.Helper()
		cmd := exec.Command("docker", args...)
		cmd.Env = append(os.Environ(), "DOCKER_HOST="+host)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	var saveLoad, toStart, image, add, plain time.Duration
	var moved int64
	for i := 0; i < b.N; i++ {
		// The baseline: save | load, then a run.
		t0 := time.Now()
		sh := exec.Command("sh", "-c", "docker save "+tag+" | DOCKER_HOST="+eng+" docker load -q && DOCKER_HOST="+eng+" docker run --rm --network none "+tag+" true")
		sh.Env = append(os.Environ(), "DOCKER_HOST=")
		if out, err := sh.CombinedOutput(); err != nil {
			b.Fatalf("save | load: %v: %s", err, out)
		}
		saveLoad += time.Since(t0)
		docker(eng, "rmi", "-f", tag)

		// The mesh: a fresh provider on the same engine.
		m := meshtest.Start(b, 2, meshtest.Options{Seed: 170 + uint64(i), Providers: 1, Price: "fixed:2.10", Config: func(i int, c *node.Config) {
			if i == 0 {
				c.DockerHost = eng
			}
		}})
		sub := m.Nodes[1]
		t0 = time.Now()
		added, err := sub.AddImage(ctx, tag, "", nil)
		if err != nil || added.CID == "" {
			b.Fatalf("add: %+v, %v", added, err)
		}
		add += time.Since(t0)
		spec := imageSpec(b, tag, "H100", "imageCid: "+added.CID+"\n")
		spec.Command = []string{"true"}
		t0 = time.Now()
		job, err := sub.SubmitJob(ctx, spec)
		if err != nil {
			b.Fatal(err)
		}
		j := waitEnded(b, ctx, sub, job.ID)
		if j.State != node.JobDone || j.Runs[0].Image == nil || j.Runs[0].Image.Source != node.ImageFromMesh {
			b.Fatalf("job %s (%s), image %+v", j.State, j.Reason, j.Runs[0].Image)
		}
		toStart += j.Runs[0].Started.Sub(t0)
		image += time.Duration(j.Runs[0].Image.Millis) * time.Millisecond
		moved = j.Runs[0].Image.Moved
		docker(eng, "rmi", "-f", "gpumesh-image:"+strings.TrimPrefix(imageID(b, tag), "sha256:"))

		// Plain TCP: the same bytes over loopback.
		t0 = time.Now()
		plainCopy(b, moved)
		plain += time.Since(t0)
	}
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 / float64(b.N) }
	b.ReportMetric(ms(saveLoad), "save-load-run-ms")
	b.ReportMetric(ms(toStart), "submit-to-start-ms")
	b.ReportMetric(ms(image), "image-ms")
	b.ReportMetric(ms(add), "submitter-add-ms")
	b.ReportMetric(float64(toStart)/float64(saveLoad), "start/save-load")
	b.ReportMetric(float64(image)/float64(saveLoad), "image/save-load")
	b.ReportMetric(float64(plain)/float64(image), "image-vs-tcp-throughput")
	b.Logf("n=%d, %d bytes moved: save|load|run %v, submit→start %v (image %v), submitter add %v, plain TCP copy %v",
		b.N, moved, saveLoad/time.Duration(b.N), toStart/time.Duration(b.N), image/time.Duration(b.N), add/time.Duration(b.N), plain/time.Duration(b.N))
}

func imageID(b *testing.B, tag string) string {
	out, err := exec.Command("docker", "image", "inspect", "-f", "{{.ID}}", tag).Output()
	if err != nil {
		b.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// plainCopy sends n bytes over a loopback TCP connection into a file.
func plainCopy(b *testing.B, n int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1<<20)
		for left := n; left > 0; left -= int64(len(buf)) {
			if _, err := c.Write(buf[:min(int64(len(buf)), left)]); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	f, err := os.Create(b.TempDir() + "/copy")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if got, err := io.Copy(f, c); err != nil || got != n {
		b.Fatalf("copied %d of %d: %v", got, n, err)
	}
}
