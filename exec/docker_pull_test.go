package exec_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/gpumesh/gpumesh/exec"
)

// localRegistry is an image registry on this host's loopback, which the
// engine reaches over plain HTTP (127.0.0.0/8 is an insecure registry to
// every engine by default). It returns the registry's host:port.
func localRegistry(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// pushBigImage makes an image of size random bytes, pushes it as ref and
// removes it from the engine, so a pull of ref downloads it.
func pushBigImage(t *testing.T, cli *client.Client, ref string, size int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	data := make([]byte, size)
	_, _ = rand.Read(data) // random: the layer does not compress
	if err := tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	rc, err := cli.ImageImport(ctx, image.ImportSource{Source: &buf, SourceName: "-"}, ref, image.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = jsonmessage.DisplayJSONMessagesStream(rc, io.Discard, 0, false, nil)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeImage(cli, ref) })
	rc, err = cli.ImagePush(ctx, ref, image.PushOptions{RegistryAuth: "e30="}) // "{}": no credentials
	if err != nil {
		t.Fatal(err)
	}
	err = jsonmessage.DisplayJSONMessagesStream(rc, io.Discard, 0, false, nil)
	rc.Close()
	if err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	removeImage(cli, ref)
	assertNoImage(t, cli, ref)
}

func removeImage(cli *client.Client, ref string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = cli.ImageRemove(ctx, ref, image.RemoveOptions{Force: true, PruneChildren: true})
}

func assertNoImage(t *testing.T, cli *client.Client, ref string) {
	t.Helper()
	_, err := cli.ImageInspect(context.Background(), ref)
	if !cerrdefs.IsNotFound(err) {
		t.Errorf("image %s is on the engine (inspect: %v); want it gone", ref, err)
	}
}

func TestAPullOverTheSizeCapIsRefusedAndLeavesNoImage(t *testing.T) {
	testImage(t)
	cli := dockerClient(t)
	ref := localRegistry(t) + "/gpumesh-big:" + strings.ToLower(taskName(t))
	pushBigImage(t, cli, ref, 8<<20)

	d, err := exec.NewDockerWith(context.Background(), exec.DockerConfig{PullMaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	task := dockerTask(t, "true")
	task.Image = ref
	_, err = d.Run(context.Background(), task)
	if !errors.Is(err, exec.ErrNoImage) || !errors.Is(err, exec.ErrImageTooBig) {
		t.Fatalf("err = %v, want ErrNoImage and ErrImageTooBig", err)
	}
	if !strings.Contains(err.Error(), "over this provider's cap of 1MiB") {
		t.Errorf("the error does not say what cap the image passed: %v", err)
	}
	assertNoImage(t, cli, ref)
	assertNoContainer(t, task.Name)

	// Under a cap it fits, the same image is pulled, runs, and the cache
	// records it as its own.
	cache := &exec.ImageCache{Path: filepath.Join(t.TempDir(), "images.json")}
	d2, err := exec.NewDockerWith(context.Background(), exec.DockerConfig{PullMaxBytes: 64 << 20, Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d2.Close() })
	task = dockerTask(t, "true")
	task.Image = ref
	task.Command = []string{"/big"} // not executable: the run fails, after the pull
	_, err = d2.Run(context.Background(), task)
	if errors.Is(err, exec.ErrNoImage) {
		t.Fatalf("pull under the cap: %v", err)
	}
	imgs := cache.Images()
	if len(imgs) != 1 || imgs[0].Ref != ref || imgs[0].Size < 8<<20 || imgs[0].Pulled.IsZero() {
		t.Errorf("cache holds %+v, want %s of at least 8 MiB, pulled", imgs, ref)
	}
}

// stalledRegistry answers the registry's version check and then nothing:
// every pull from it hangs.
func stalledRegistry(t *testing.T) string {
	t.Helper()
	quit := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
			w.WriteHeader(http.StatusOK)
			return
		}
		select {
		case <-r.Context().Done():
		case <-quit:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(quit) }) // first: lets the handlers end
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestAPullThatHangsEndsWithinItsBound(t *testing.T) {
	testImage(t)
	cli := dockerClient(t)
	host := stalledRegistry(t)
	const timeout = 2 * time.Second
	const slack = 20 * time.Second // the engine's own calls around the pull
	d, err := exec.NewDockerWith(context.Background(), exec.DockerConfig{PullTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })

	task := dockerTask(t, "true")
	task.Image = host + "/hangs:1"
	began := time.Now()
	_, err = d.Run(context.Background(), task)
	took := time.Since(began)
	if !errors.Is(err, exec.ErrNoImage) || !strings.Contains(err.Error(), "did not finish within its time limit of 2s") {
		t.Errorf("err = %v, want ErrNoImage saying the pull passed its 2s limit", err)
	}
	if took > timeout+slack {
		t.Errorf("the pull ended after %s, want within %s (and the engine's %s)", took, timeout, slack)
	}
	assertNoImage(t, cli, task.Image)

	// The job's start deadline, when sooner, ends it first.
	task = dockerTask(t, "true")
	task.Image = host + "/hangs:2"
	task.StartBy = time.Now().Add(time.Second)
	d3, err := exec.NewDockerWith(context.Background(), exec.DockerConfig{PullTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d3.Close() })
	began = time.Now()
	_, err = d3.Run(context.Background(), task)
	took = time.Since(began)
	if !errors.Is(err, exec.ErrNoImage) || !strings.Contains(err.Error(), "the job's start deadline") {
		t.Errorf("err = %v, want ErrNoImage saying the pull passed the start deadline", err)
	}
	if took > time.Second+slack {
		t.Errorf("the pull ended after %s, want within 1s of its start deadline (and the engine's %s)", took, slack)
	}

	// A name that resolves nowhere ends too, and says so.
	task = dockerTask(t, "true")
	task.Image = "gpumesh-nowhere.invalid/none:1"
	began = time.Now()
	_, err = d.Run(context.Background(), task)
	if !errors.Is(err, exec.ErrNoImage) {
		t.Errorf("err = %v, want ErrNoImage", err)
	}
	if took := time.Since(began); took > timeout+slack {
		t.Errorf("the pull of an unresolvable name ended after %s, want within %s", took, timeout+slack)
	}
}
