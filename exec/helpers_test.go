package exec_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/internal/testdocker"
)

// TestImage is the image the docker tests run (see internal/testdocker).
const TestImage = testdocker.Image

func testImage(tb testing.TB) string { return testdocker.EnsureImage(tb) }

func dockerClient(tb testing.TB) *client.Client { return testdocker.Client(tb) }

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
