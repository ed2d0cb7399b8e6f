package node_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// TestAProviderFormsItsOwnJobsOnItsOwnGPUs: a peer that is its own
// provider sends itself each job's request, bid, award and answer. Eight
// 1-GPU jobs submitted at once on a lone provider send it dozens of
// messages, more than its negotiation loop's inbox holds; they wait apart
// from it, so the loop never waits on itself, and every job forms on the
// provider's own GPUs.
func TestAProviderFormsItsOwnJobsOnItsOwnGPUs(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(0x5e1f, 1))
	prov := m.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	jobs := make([]*node.Job, 8)
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	for i := range jobs {
		wg.Go(func() { jobs[i], errs[i] = prov.SubmitJob(ctx, jobSpec(t, 1, "")) })
	}
	wg.Wait()
	for i, job := range jobs {
		if errs[i] != nil {
			t.Fatalf("job %d: %v", i, errs[i])
		}
		j := waitJob(t, ctx, prov, job.ID, "to leave negotiation", func(j node.Job) bool { return j.State != node.JobNegotiating })
		if !holds(j) || len(j.Members) != 1 || j.Members[0].Provider != prov.Host().ID() {
			t.Errorf("job %d: %s (%s) with members %v, want formed on the provider itself", i, j.State, j.Reason, j.Members)
		}
	}
}
