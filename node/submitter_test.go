package node_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A provider's reason for not running a member reaches the submitter
// whole, not cut to a line's worth: the user reads what to do.
func TestProviderReasonReachesTheSubmitterWhole(t *testing.T) {
	// The provider runs containers only; the job has no image.
	m := meshtest.Start(t, 2, meshtest.Options{Seed: 21, Providers: 1, Price: "fixed:2.10"})
	sub := m.Nodes[1]
	spec, err := jobspec.Parse([]byte(`name: no-image
command: [sh, -c, "true"]
resources: {gpus: 1, gpu: {model: H100}}
maxPrice: 2.50
timeout: 1m
`), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	job, err := sub.SubmitJob(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	var j node.Job
	testwait.Until(t, ctx, "the job to end", func() (bool, string) {
		j, _ = sub.Job(job.ID)
		return j.State.Ended(), string(j.State)
	})
	const why = "this provider runs containers only; give the job an image (the process executor is for trusted private swarms, turned on with --executors docker,process)"
	if j.State != node.JobFailed || len(j.Runs) != 1 || j.Runs[0].State != node.MemberFailed || j.Runs[0].Error != why {
		t.Fatalf("job %s (%s), runs %+v: want failed, its member failed with %q", j.State, j.Reason, j.Runs, why)
	}
	if !strings.HasSuffix(j.Reason, "could not run the job: "+why) {
		t.Errorf("job's reason %q does not end with the provider's whole reason", j.Reason)
	}
}
