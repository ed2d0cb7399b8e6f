// Package testdocker gives tests a Docker engine and the image they run:
// a static busybox imported from the host (no registry is needed). With no
// engine a test is skipped, or failed when $CI is set: CI must run the
// docker tests (.ci/run starts dockerd).
package testdocker

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
)

// Image is the image the docker tests run: a static busybox and links
// to the applets they use. testImage makes it when it is missing, so no
// registry is needed.
const Image = "gpumesh-test:busybox"

// hostBusybox is the static busybox the test image is made of (Debian
// package busybox-static).
const hostBusybox = "/bin/busybox"

// applets are the links in the test image's /bin.
var applets = []string{"sh", "echo", "cat", "env", "sleep", "ls", "mkdir", "sha256sum", "printf", "true", "false", "kill", "wc", "head", "yes"}

var (
	imageMu    sync.Mutex
	imageReady bool
)

// EnsureImage makes sure the Docker engine answers and Image is there,
// and returns the image's name. With no engine it skips the test, or fails it
// when $CI is set: CI must run the docker tests.
func EnsureImage(tb testing.TB) string {
	tb.Helper()
	cli := Client(tb)
	imageMu.Lock()
	defer imageMu.Unlock()
	if imageReady {
		return Image
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := cli.ImageInspect(ctx, Image)
	if cerrdefs.IsNotFound(err) {
		err = importImage(ctx, cli)
	}
	if err != nil {
		tb.Fatalf("test image %s: %v", Image, err)
	}
	imageReady = true
	return Image
}

// Client is a client of the engine the tests use, closed when the
// test ends; see EnsureImage for what happens when there is none.
func Client(tb testing.TB) *client.Client {
	tb.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		tb.Fatalf("docker client: %v", err)
	}
	tb.Cleanup(func() { _ = cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		msg := fmt.Sprintf("no Docker engine at %s (%v): install docker.io and start dockerd, or set DOCKER_HOST", cli.DaemonHost(), err)
		if os.Getenv("CI") != "" {
			tb.Fatalf("%s; CI must run the docker tests (.ci/run starts dockerd)", msg)
		}
		tb.Skip("skipping the docker tests: " + msg)
	}
	return cli
}

// importImage makes Image from the host's static busybox, as
// `docker import` of a tar made here.
func importImage(ctx context.Context, cli *client.Client) error {
	bb, err := os.ReadFile(hostBusybox)
	if err != nil {
		return fmt.Errorf("the test image is made of a static busybox at %s: %w; install it with apt-get install busybox-static", hostBusybox, err)
	}
	f, err := elf.NewFile(bytes.NewReader(bb))
	if err != nil {
		return fmt.Errorf("%s is not an ELF binary: %w; install busybox-static", hostBusybox, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked and would not run in an empty image; install the static one: apt-get install busybox-static", hostBusybox)
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	hdrs := []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now},
		{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777, ModTime: now},
		{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb)), ModTime: now},
	}
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(bb); err != nil {
				return err
			}
		}
	}
	for _, a := range applets {
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777, ModTime: now}); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	rc, err := cli.ImageImport(ctx, image.ImportSource{Source: &buf, SourceName: "-"}, Image, image.ImportOptions{})
	if err != nil {
		return fmt.Errorf("docker import: %w", err)
	}
	defer rc.Close()
	if err := jsonmessage.DisplayJSONMessagesStream(rc, io.Discard, 0, false, nil); err != nil {
		return fmt.Errorf("docker import: %w", err)
	}
	_, err = cli.ImageInspect(ctx, Image)
	return err
}
