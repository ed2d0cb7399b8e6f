package testwait

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestPollChecksAtOnceThenBacksOffToMaxInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		var at []time.Duration
		err := Poll(t.Context(), func() (bool, string) {
			at = append(at, time.Since(start))
			return len(at) == 10, ""
		})
		if err != nil {
			t.Fatal(err)
		}
		ms := time.Millisecond
		want := []time.Duration{0, 1 * ms, 3 * ms, 7 * ms, 15 * ms, 31 * ms, 63 * ms, 113 * ms, 163 * ms, 213 * ms}
		for i := range want {
			if at[i] != want[i] {
				t.Fatalf("checks at %v, want %v", at, want)
			}
		}
	})
}

func TestPollGivesUpWithWhatItSawLast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		n := 0
		err := Poll(ctx, func() (bool, string) {
			n++
			return false, strings.Repeat("x", n%3)
		})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want DeadlineExceeded", err)
		}
		// 1+2+...+32 ms, then every 50 ms: about 25 checks in a second.
		if n < 20 || n > 30 {
			t.Fatalf("%d checks in a second", n)
		}
		if last := strings.Repeat("x", n%3); last != "" && !strings.HasSuffix(err.Error(), "last seen: "+last) {
			t.Fatalf("err = %q, want it to end with the last state %q", err, last)
		}
	})
}

// recorder is a testing.TB whose Fatalf records the message and ends the
// goroutine, as the real one does.
type recorder struct {
	testing.TB
	msg string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	panic(r)
}

func fails(t *testing.T, f func(tb testing.TB)) (msg string) {
	t.Helper()
	r := &recorder{TB: t}
	defer func() {
		if p := recover(); p != nil && p != any(r) {
			panic(p)
		}
		msg = r.msg
	}()
	f(r)
	return ""
}

func TestForNamesWhatItWaitedForAndTheLastState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		msg := fails(t, func(tb testing.TB) {
			For(tb, 2*time.Second, "the job to end", func() (bool, string) { return false, "state running" })
		})
		if want := "gave up after 2s waiting for the job to end: context deadline exceeded; last seen: state running"; msg != want {
			t.Fatalf("message %q, want %q", msg, want)
		}
		msg = fails(t, func(tb testing.TB) {
			For(tb, time.Second, "a peer", func() bool { return false })
		})
		if want := "gave up after 1s waiting for a peer: context deadline exceeded"; msg != want {
			t.Fatalf("message %q, want %q", msg, want)
		}
		// A condition that comes true in time passes.
		start := time.Now()
		For(t, time.Minute, "the clock", func() bool { return time.Since(start) > 10*time.Second })
		if took := time.Since(start); took > 10*time.Second+MaxInterval {
			t.Fatalf("noticed after %v, want within %v of the change", took, MaxInterval)
		}
	})
}

func TestUntilEndsWithItsContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(3*time.Second, cancel)
		msg := fails(t, func(tb testing.TB) {
			Until(tb, ctx, "a quote", func() bool { return false })
		})
		if want := "gave up after 3s waiting for a quote: context canceled"; msg != want {
			t.Fatalf("message %q, want %q", msg, want)
		}
	})
}

func TestOutputWakesItsWaiterAndShowsWhatItHasOnFailure(t *testing.T) {
	var out Output
	go func() {
		for range 3 {
			fmt.Fprint(&out, "ready> ")
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out.WaitFor(t, ctx, "ready> ", 3)

	short, cancelShort := context.WithCancel(context.Background())
	cancelShort()
	msg := fails(t, func(tb testing.TB) { out.WaitFor(tb, short, "done", 1) })
	if !strings.Contains(msg, `"done"`) || !strings.Contains(msg, "ready> ready> ready> ") {
		t.Fatalf("failure message %q: want what was awaited and what was written", msg)
	}
}
