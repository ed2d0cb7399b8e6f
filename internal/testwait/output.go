package testwait

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
)

// Output is written output (a terminal's screen, a process's stdout) that a
// test waits on: every write wakes the waiters, so no polling is needed. The
// zero value is ready to use.
type Output struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced at each write
}

// changedLocked is the channel the next write closes; o.mu is held.
func (o *Output) changedLocked() chan struct{} {
	if o.changed == nil {
		o.changed = make(chan struct{})
	}
	return o.changed
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	close(o.changedLocked())
	o.changed = make(chan struct{})
	return len(p), nil
}

// String is everything written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// WaitFor fails t unless s has been written count times before ctx ends,
// showing what was written.
func (o *Output) WaitFor(t testing.TB, ctx context.Context, s string, count int) {
	t.Helper()
	for {
		o.mu.Lock()
		n, ch := strings.Count(o.buf.String(), s), o.changedLocked()
		o.mu.Unlock()
		if n >= count {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("waited for %q in the output; it shows:\n%q", s, o.String())
		}
	}
}
