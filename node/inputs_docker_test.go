package node_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/testdocker"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A container job sees its input as a read-only mount and writes its
// checkpoint folder, which reaches the submitter.
func TestDockerJobReadsInputsAndWritesCheckpoints(t *testing.T) {
	img := testdocker.EnsureImage(t)
	m := meshtest.Start(t, 2, meshtest.Options{Seed: 72, Providers: 1, Price: "fixed:2.10"})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir, dataSum := inputTree(t)
	script := `sh /inputs/train/train.sh; busybox sha256sum /inputs/train/data.bin; ` +
		`if echo x > /inputs/train/data.bin 2>/dev/null; then echo writable; else echo read-only; fi; ` +
		`echo 3 > "$GPUMESH_CHECKPOINT/step" && echo "checkpoint at $GPUMESH_CHECKPOINT"`
	y := fmt.Sprintf("name: docker-inputs\nimage: %s\ncommand: [sh, -c, %q]\nresources:\n  gpus: 1\n  gpu: {model: H100}\nmaxPrice: 2.50\ntimeout: 5m\n"+
		"inputs:\n  - {src: %s, dst: /inputs/train}\ncheckpoint: {path: /checkpoints, every: 1h}\n", img, script, dir)
	spec, err := jobspec.Parse([]byte(y), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	sub := m.Nodes[1]
	j := runToEnd(t, ctx, sub, spec)
	log := jobLog(t, sub, j.ID)
	if j.State != node.JobDone {
		t.Fatalf("job %s (%s):\n%s", j.State, j.Reason, log)
	}
	for _, want := range []string{"[0] training\n", "[0] " + dataSum, "[0] read-only\n", "[0] checkpoint at /checkpoints\n"} {
		if !strings.Contains(log, want) {
			t.Errorf("the job's log lacks %q:\n%s", want, log)
		}
	}
	// The last sync, at the end of the work, reaches the submitter.
	testwait.Until(t, ctx, "the checkpoint kept by the submitter", func() (bool, string) {
		c, ok := sub.JobCheckpoint(j.ID)
		return ok && c.Files == 1 && c.Bytes == 2, fmt.Sprintf("%+v", c)
	})
}
