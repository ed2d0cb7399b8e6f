package exec_test

import (
	"context"
	osexec "os/exec"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec"
)

// BenchmarkDockerRun times the Docker executor against the bare CLI on the
// same work: `docker run --rm --network none <image> true` (the baseline)
// and Docker.Run of a task running true. It reports each in ms/op and the
// executor's time over the baseline's; ns/op is the executor's.
func BenchmarkDockerRun(b *testing.B) {
	img := testImage(b)
	cli, err := osexec.LookPath("docker")
	if err != nil {
		b.Fatalf("the baseline needs the docker CLI: %v (apt-get install docker.io)", err)
	}
	d, err := exec.NewDocker(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	outputs := b.TempDir()
	ctx := context.Background()

	var bare, executor time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if out, err := osexec.Command(cli, "run", "--rm", "--network", "none", img, "true").CombinedOutput(); err != nil {
			b.Fatalf("docker run: %v: %s", err, out)
		}
		bare += time.Since(start)

		start = time.Now()
		res, err := d.Run(ctx, exec.Task{Name: taskName(b), Image: img, Command: []string{"true"}, Outputs: outputs})
		if err != nil {
			b.Fatal(err)
		}
		if res.ExitCode != 0 {
			b.Fatalf("true exited %d", res.ExitCode)
		}
		executor += time.Since(start)
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(bare)/float64(time.Millisecond)/n, "bare-ms/op")
	b.ReportMetric(float64(executor)/float64(time.Millisecond)/n, "executor-ms/op")
	b.ReportMetric(float64(executor)/float64(bare), "executor/bare")
	b.ReportMetric(float64(executor.Nanoseconds())/n, "ns/op")
}
