package node_test

import (
	"context"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A running job's members' connections are protected from the connection
// manager's trimming while it runs, and no longer once it has ended; the
// providers a submitter asked for bids are tagged as worth keeping, so
// its next request finds their connections open.
func TestARunningJobKeepsItsMembersConnections(t *testing.T) {
	o := h100s(41, 2)
	o.ConnLow, o.ConnHigh = 64, 256 // a connection manager, as a real node has
	m := meshtest.Start(t, 3, o)
	sub := m.Nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The submitter asks the providers its price board names.
	testwait.Until(t, ctx, "both providers' asks on the submitter's board", func() bool {
		q := sub.Prices("H100-80GB").Classes
		return len(q) == 1 && q[0].Providers == 2
	})
	job, err := sub.SubmitJob(ctx, jobSpec(t, 8, ""))
	if err != nil {
		t.Fatal(err)
	}
	j := waitJob(t, ctx, sub, job.ID, "to run its member", func(j node.Job) bool {
		return len(j.Runs) == 1 && j.Runs[0].State == node.MemberRunning
	})
	cm := sub.Host().ConnManager()
	member := j.Members[0].Provider
	keep := "gpumesh-job-" + job.ID
	if !cm.IsProtected(member, keep) {
		t.Errorf("the running member %s's connection is not protected", member)
	}
	if info := cm.GetTagInfo(member); info == nil || info.Tags["gpumesh-asked"] == 0 {
		t.Errorf("the member %s, asked for a bid, is not tagged as worth keeping: %+v", member, info)
	}
	if _, err := sub.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, ctx, "the member's connection unprotected", func() (bool, string) {
		j, _ := sub.Job(job.ID)
		return !cm.IsProtected(member, keep), string(j.State)
	})
}
