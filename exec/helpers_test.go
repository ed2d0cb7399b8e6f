package exec_test

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"

	"github.com/gpumesh/gpumesh/exec"
)

// TestImage is the image the docker tests run: a static busybox and links
// to the applets they use. testImage makes it when it is missing, so no
// registry is needed.
const TestImage = "gpumesh-test:busybox"

// hostBusybox is the static busybox the test image is made of (Debian
// package busybox-static).
const hostBusybox = "/bin/busybox"

// testApplets are the links in the test image's /bin.
var testApplets = []string{"sh", "echo", "cat", "env", "sleep", "ls", "mkdir", "sha256sum", "printf", "true", "false", "kill", "wc", "head", "yes"}

var (
	imageMu    sync.Mutex
	imageReady bool
)

// testImage makes sure the Docker engine answers and TestImage is there,
// and returns the image's name. With no engine it skips the test, or fails it
// when $CI is set: CI must run the docker tests.
func testImage(tb testing.TB) string {
	tb.Helper()
	cli := dockerClient(tb)
	imageMu.Lock()
	defer imageMu.Unlock()
	if imageReady {
		return TestImage
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := cli.ImageInspect(ctx, TestImage)
	if cerrdefs.IsNotFound(err) {
		err = importTestImage(ctx, cli)
	}
	if err != nil {
		tb.Fatalf("test image %s: %v", TestImage, err)
	}
	imageReady = true
	return TestImage
}

// dockerClient is a client of the engine the tests use, closed when the
// test ends; see testImage for what happens when there is none.
func dockerClient(tb testing.TB) *client.Client {
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

// importTestImage makes TestImage from the host's static busybox, as
// `docker import` of a tar made here.
func importTestImage(ctx context.Context, cli *client.Client) error {
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
	for _, a := range testApplets {
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777, ModTime: now}); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	rc, err := cli.ImageImport(ctx, image.ImportSource{Source: &buf, SourceName: "-"}, TestImage, image.ImportOptions{})
	if err != nil {
		return fmt.Errorf("docker import: %w", err)
	}
	defer rc.Close()
	if err := jsonmessage.DisplayJSONMessagesStream(rc, io.Discard, 0, false, nil); err != nil {
		return fmt.Errorf("docker import: %w", err)
	}
	_, err = cli.ImageInspect(ctx, TestImage)
	return err
}

var taskSeq atomic.Int64

// taskName is a container name of this test process's, unique.
func taskName(tb testing.TB) string {
	name := strings.NewReplacer("/", "-", " ", "-").Replace(tb.Name())
	name = strings.Map(func(r rune) rune {
		if r == '-' || r == '_' || r == '.' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			return r
		}
		return '-'
	}, name)
	return fmt.Sprintf("gpumesh-test-%d-%d-%s", os.Getpid(), taskSeq.Add(1), strings.ToLower(name))
}

// syncBuf is a writer safe for concurrent use that says when its first
// bytes came.
type syncBuf struct {
	mu    sync.Mutex
	b     bytes.Buffer
	once  sync.Once
	first chan struct{}
}

func newSyncBuf() *syncBuf { return &syncBuf{first: make(chan struct{})} }

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.b.Write(p)
	if n > 0 {
		s.once.Do(func() { close(s.first) })
	}
	return n, err
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runResult is what a Run in a goroutine gave.
type runResult struct {
	res exec.Result
	err error
}

// goRun runs e.Run in a goroutine; its answer comes on the channel.
func goRun(ctx context.Context, e exec.Executor, task exec.Task) <-chan runResult {
	ch := make(chan runResult, 1)
	go func() {
		res, err := e.Run(ctx, task)
		ch <- runResult{res, err}
	}()
	return ch
}

// await waits for ch until d passes.
func await[T any](tb testing.TB, ch <-chan T, d time.Duration, what string) T {
	tb.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		tb.Fatalf("%s did not happen within %v", what, d)
		panic("unreachable")
	}
}
