package node_test

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A provider cannot fill its submitter's disk. The submitter here keeps 4
// MiB of log, 4 MiB of outputs and 1000 output files and folders a job; a
// hostile provider, speaking the real job protocol, tries an endless log
// (up to 10 GiB, made as it goes), 100k empty files, and files that
// announce 1 MiB each and never finish. Each time the job fails, its
// provider's fault, naming the member and its provider; the job's folder
// stays within the quotas; and the provider is cut off long before it has
// sent what it meant to.
func TestAProviderCannotFillTheSubmittersDisk(t *testing.T) {
	const (
		logQuota   = 4 << 20
		outQuota   = 4 << 20
		fileQuota  = 1000
		floodBytes = 10 << 30 // what the endless log tries to send
		manyFiles  = 100_000
	)
	o := h100s(41, 1)
	o.Config = func(i int, c *node.Config) {
		c.JobLogBytes, c.JobOutputBytes, c.JobOutputFiles = logQuota, outQuota, fileQuota
	}
	m := meshtest.Start(t, 2, o)
	prov, sub := m.Nodes[0], m.Nodes[1]
	stop, stopHostile := context.WithCancel(context.Background())
	t.Cleanup(stopHostile) // before the mesh closes: the hostile writer gives up

	var sent atomic.Int64 // bytes of log or output data the provider got out
	meshtest.ServeJobs(t, prov.Host(), func(js *meshtest.JobStream, st *jobwire.StartFrame) error {
		start := time.Now().UnixMilli()
		if err := js.Send(jobwire.Frame{T: jobwire.KindStarted, At: start}); err != nil {
			return err
		}
		// A write that fails is the submitter having cut this member off:
		// what the test expects, so the script ends without an error.
		write := func(f jobwire.Frame) bool { return stop.Err() == nil && js.Send(f) == nil }
		switch st.Spec.Name {
		case "log-flood":
			// Short lines: the log's rank prefixes make the file three
			// times what is sent, and the quota is on the file.
			chunk := bytes.Repeat([]byte("x\n"), jobwire.MaxLogChunk/2)
			for range floodBytes / len(chunk) {
				if !write(jobwire.Frame{T: jobwire.KindLog, Stream: "out", Data: chunk}) {
					return nil
				}
				sent.Add(int64(len(chunk)))
			}
		case "many-files":
			const empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" // SHA-256 of nothing
			for i := range manyFiles {
				if !write(jobwire.Frame{T: jobwire.KindFile, File: &receipt.OutputFile{Path: fmt.Sprintf("d%d/f%d", i%10, i), SHA256: empty}}) {
					return nil
				}
			}
		case "unfinished-files":
			for i := range manyFiles {
				f := &receipt.OutputFile{Path: fmt.Sprintf("part-%d.bin", i), Size: 1 << 20, SHA256: strings.Repeat("ab", 32)}
				if !write(jobwire.Frame{T: jobwire.KindFile, File: f}) ||
					!write(jobwire.Frame{T: jobwire.KindChunk, Data: make([]byte, 1024)}) {
					return nil
				}
				sent.Add(1024)
			}
		}
		return fmt.Errorf("job %s: the submitter took all %d bytes", st.Spec.Name, sent.Load())
	})

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for _, tc := range []struct{ name, quota string }{
		{"log-flood", "--job-log-quota"},
		{"many-files", "--job-output-files"},
		{"unfinished-files", "--job-output-quota"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sent.Store(0)
			spec := scriptSpec(t, 1, 0, "true", "")
			spec.Name = tc.name
			j := runToEnd(t, ctx, sub, spec)
			if j.State != node.JobFailed || !strings.Contains(j.Reason, "member 0 (") ||
				!strings.Contains(j.Reason, "its provider sent more than this peer keeps of a job") || !strings.Contains(j.Reason, tc.quota) {
				t.Errorf("job %s (%s): want failed, member 0's provider past %s", j.State, j.Reason, tc.quota)
			}
			if len(j.Runs) != 1 || j.Runs[0].Provider != prov.Host().ID() || j.Runs[0].State != node.MemberFailed {
				t.Errorf("runs %+v: want member 0 on %s, failed", j.Runs, prov.Host().ID())
			}
			if j.Attempt != 0 {
				t.Errorf("attempt %d: a provider at fault must not get a retry", j.Attempt)
			}

			dir := filepath.Join(sub.StateDir(), "jobs", j.ID)
			logInfo, err := os.Stat(filepath.Join(dir, "log"))
			if err != nil {
				t.Fatal(err)
			}
			// The submitter's own notes (a few lines) may follow the quota.
			if logInfo.Size() > logQuota+8<<10 {
				t.Errorf("log of %d bytes, quota %d", logInfo.Size(), logQuota)
			}
			var outBytes int64
			var entries int
			err = filepath.WalkDir(filepath.Join(dir, "outputs"), func(path string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				entries++
				if info, err := d.Info(); err == nil && !d.IsDir() {
					outBytes += info.Size()
				}
				return nil
			})
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			if outBytes > outQuota || entries > fileQuota+1 { // +1: the outputs folder itself
				t.Errorf("outputs: %d bytes in %d files and folders; quota %d bytes, %d entries", outBytes, entries, outQuota, fileQuota)
			}
			if got := sent.Load(); got > 64<<20 {
				t.Errorf("the provider got %d bytes out before it was cut off: more than it could in flight", got)
			}
			t.Logf("%s: log %d bytes, outputs %d bytes in %d entries; the provider sent %d bytes of data; reason: %s",
				tc.name, logInfo.Size(), outBytes, entries, sent.Load(), j.Reason)
		})
	}
}
