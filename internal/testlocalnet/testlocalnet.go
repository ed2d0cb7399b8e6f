// Package testlocalnet gives tests a running chain/localnet (a Solana
// JSON-RPC over LiteSVM), stopped when the test ends. Where it cannot start
// (no Node.js, no npm packages) a test is skipped, or failed when $CI is
// set: CI must run the chain tests (.ci/run installs what they need).
package testlocalnet

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/chain/localnet"
)

// Start runs a localnet for the test.
func Start(tb testing.TB, opts localnet.Options) *localnet.Localnet {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ln, err := localnet.Start(ctx, opts)
	if err != nil {
		if os.Getenv("CI") == "" {
			tb.Skipf("no Solana localnet here (%v); CI runs this test", err)
		}
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = ln.Close() })
	return ln
}
