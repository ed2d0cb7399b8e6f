package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A private swarm trusts its members: a provider's first tick counts in the
// index at full weight on every board, with no probation (the default board
// config, 2 minutes of probation in the public swarm). The same mesh in the
// public swarm shows the ask at once and keeps it out of the index.
func TestPrivateSwarmBoardHasNoProbation(t *testing.T) {
	for _, private := range []bool{true, false} {
		t.Run(fmt.Sprintf("private=%v", private), func(t *testing.T) {
			m := meshtest.Start(t, 3, meshtest.Options{Seed: 14, Providers: 1, Price: "fixed:2.10", Private: private})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			testwait.Until(t, ctx, "every board to show the provider's ask", func() (bool, string) {
				for i, nd := range m.Nodes {
					if q := board(nd); q.Best != usd(2.10) || q.GPUs != 8 {
						return false, fmt.Sprintf("node %d: %+v", i, q)
					}
				}
				return true, ""
			})
			for i, nd := range m.Nodes {
				q := board(nd)
				if private && (q.Counted != 1 || q.Mature != 1 || q.Median != usd(2.10)) {
					t.Errorf("node %d in a private swarm: %+v; want the ask counted at once, at full weight", i, q)
				}
				if !private && (q.Counted != 0 || q.Median != 0) {
					t.Errorf("node %d in the public swarm: %+v; want the new provider on probation", i, q)
				}
			}
		})
	}
}
