// Package testwait waits, in tests, for a condition that no event announces.
//
// It checks the condition at once, then after 1 ms, 2 ms, 4 ms, ... up to
// every MaxInterval, and fails the test naming what it waited for and, when
// the condition says so, what it saw last. Where the code under test offers
// an event (a channel closed on a change), wait on that instead; where a test
// would sleep, wait for the thing the sleep was hoping for.
//
// Inside a testing/synctest bubble the waits run on the bubble's clock.
package testwait

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Intervals between checks: the first wait, doubled after each check up to
// the last.
const (
	FirstInterval = time.Millisecond
	MaxInterval   = 50 * time.Millisecond
)

// Cond is a condition to wait for: a func() bool, or a func() (bool, string)
// that also says what it saw when it does not hold (shown on failure, so make
// it cheap: a count, a state, an error).
type Cond interface {
	func() bool | func() (bool, string)
}

// For fails t unless cond holds within timeout (and while the test runs).
func For[C Cond](t testing.TB, timeout time.Duration, what string, cond C) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	if err := Poll(ctx, seen(cond)); err != nil {
		t.Fatalf("gave up after %v waiting for %s: %v", timeout, what, err)
	}
}

// Until fails t unless cond holds before ctx ends: for tests that give a
// series of steps one deadline.
func Until[C Cond](t testing.TB, ctx context.Context, what string, cond C) {
	t.Helper()
	start := time.Now()
	if err := Poll(ctx, seen(cond)); err != nil {
		t.Fatalf("gave up after %v waiting for %s: %v", time.Since(start).Round(time.Millisecond), what, err)
	}
}

// Poll calls cond until it holds or ctx ends; then it returns ctx's error
// with what cond saw last. It is the loop under For and Until, for code
// that reports an error rather than failing a test (a test kit).
func Poll(ctx context.Context, cond func() (ok bool, seen string)) error {
	wait := FirstInterval
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		ok, seen := cond()
		if ok {
			return nil
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			if seen == "" {
				return context.Cause(ctx)
			}
			return fmt.Errorf("%w; last seen: %s", context.Cause(ctx), seen)
		case <-timer.C:
		}
		wait = min(2*wait, MaxInterval)
	}
}

func seen[C Cond](cond C) func() (bool, string) {
	switch c := any(cond).(type) {
	case func() (bool, string):
		return c
	case func() bool:
		return func() (bool, string) { return c(), "" }
	}
	panic("unreachable: Cond has two shapes")
}
