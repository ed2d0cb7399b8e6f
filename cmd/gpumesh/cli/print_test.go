package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/jobwire"
)

// What a provider wrote into a job (its reasons, errors, class and zone
// names) shows as text in `gpumesh job status`, never acting on the
// terminal.
func TestJobStatusShowsProviderTextInert(t *testing.T) {
	const evil = "\x1b]0;pwned\x07\x1b[2J\u009b1A\u202e\nforged\r"
	j := node.Job{
		ID: "j1", State: node.JobFailed, Reason: "member 0 could not run the job: " + evil,
		Members: []gossip.Member{{Class: "H100-80GB" + evil, Zone: "eu" + evil, GPUs: 1}},
		Runs:    []node.MemberRun{{State: node.MemberFailed, Error: evil, Receipt: evil}},
	}
	var out bytes.Buffer
	g := &globals{stdout: &out, stderr: &out}
	printJob(g, j, 0)
	got := out.String()
	for _, r := range got {
		if (r < 0x20 && r != '\n') || (r >= 0x7f && r < 0xa0) || r == '\u202e' {
			t.Fatalf("job status prints %U:\n%q", r, got)
		}
	}
	if !strings.Contains(got, `\x1b]0;pwned\x07\x1b[2J\x9b1A\u202e\nforged\r`) {
		t.Errorf("job status does not show the provider's text as escapes:\n%s", got)
	}
	if strings.Contains(got, "\nforged") {
		t.Errorf("the provider's text starts a line of its own:\n%s", got)
	}
}

// `job ls` and `job status` show a queued job's reason and the time it may
// still wait, the reason inert like any provider-made text.
func TestQueuedJobsShowWhyTheyWaitAndForHowLong(t *testing.T) {
	j := node.Job{
		ID: "j1", State: node.JobQueued, Reason: "no cluster can form: 8 GPUs available, need 16\x1b[2J",
		Spec:        jobspec.Spec{Name: "train", Queue: "30m", Resources: jobspec.Resources{GPUs: 16}},
		QueuedUntil: time.Now().Add(20*time.Minute + 30*time.Second), Tries: 3,
	}
	var out bytes.Buffer
	g := &globals{stdout: &out, stderr: &out}
	printJobs(g, node.JobsPage{Jobs: []node.Job{j}}, node.JobsQuery{})
	printJob(g, j, 0)
	got := out.String()
	for _, want := range []string{
		"j1 queued (20m3", " left of its queue 30m, tried again 3 times): no cluster can form: 8 GPUs available, need 16\\x1b[2J\n",
		"queued: 20m3",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "\x1b") {
		t.Errorf("the reason reaches the terminal raw:\n%q", got)
	}
}

// `job status` shows each member's job address and what its provider
// metered on the job network.
func TestJobStatusShowsEachMembersJobAddress(t *testing.T) {
	j := node.Job{
		ID: "j1", State: node.JobDone,
		Members: []gossip.Member{{GPUs: 8}, {GPUs: 8}},
		Runs: []node.MemberRun{
			{Rank: 0, State: node.MemberExited, Addr: "10.26.0.2", Net: &jobwire.NetMeter{SentBytes: 2048, ReceivedBytes: 3 << 20}},
			{Rank: 1, State: node.MemberExited, Addr: "10.26.0.3", Net: &jobwire.NetMeter{SentBytes: 3 << 20, ReceivedBytes: 2048, Dropped: 4, Direct: 1}},
		},
	}
	var out bytes.Buffer
	printJob(&globals{stdout: &out, stderr: &out}, j, 0)
	for _, want := range []string{
		"member 0: job address 10.26.0.2, sent 2KiB, received 3MiB on the job network\n",
		"member 1: job address 10.26.0.3, sent 3MiB, received 2KiB on the job network (4 packets dropped); its provider reached 1 other providers directly, 0 through a relay\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// `job status` says where each member's image came from and how many
// bytes moved, a provider's peer IDs inert.
func TestJobStatusSaysWhereEachImageCameFrom(t *testing.T) {
	j := node.Job{
		ID: "j1", State: node.JobDone,
		Members: []gossip.Member{{Class: "H100-80GB", GPUs: 1}, {Class: "H100-80GB", GPUs: 1}},
		Runs: []node.MemberRun{
			{Rank: 0, State: node.MemberExited, Image: &node.ImageReport{Source: node.ImageFromMesh, Bytes: 200 << 20, Moved: 150 << 20, From: []string{"12D3KooWsub", "12D3KooWp0\x1b[2J"}, Millis: 1234}},
			{Rank: 1, State: node.MemberExited, Image: &node.ImageReport{Source: node.ImageFromProvider, Bytes: 200 << 20, Millis: 5}},
		},
	}
	var out bytes.Buffer
	g := &globals{stdout: &out, stderr: &out}
	printJob(g, j, 0)
	got := out.String()
	for _, want := range []string{
		"member 0 image: over the mesh, 150MiB moved of 200MiB from 12D3KooWsub, 12D3KooWp0\\x1b[2J (1234 ms)\n",
		"member 1 image: on its provider already, 0 B moved (5 ms)\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
}

// `job receipts` shows the checkpoint bytes a receipt carries ("-" for
// none).
func TestJobReceiptsShowCheckpointBytes(t *testing.T) {
	rs := []receipt.Signed{
		{Receipt: receipt.Receipt{Job: "j1", Rank: 0, GPUs: 1, Class: "H100-80GB", Unit: "USDC", CheckpointBytes: 3 << 20}},
		{Receipt: receipt.Receipt{Job: "j1", Rank: 1, GPUs: 1, Class: "H100-80GB", Unit: "USDC"}},
	}
	var out bytes.Buffer
	printReceipts(&globals{stdout: &out, stderr: &out}, rs)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "CHECKPOINTS") {
		t.Fatalf("receipts table:\n%s", out.String())
	}
	if f := strings.Fields(lines[1]); len(f) < 6 || f[5] != exec.FormatSize(3<<20) {
		t.Errorf("rank 0's checkpoints column: %q, want %s:\n%s", f, exec.FormatSize(3<<20), out.String())
	}
	if f := strings.Fields(lines[2]); len(f) < 6 || f[5] != "-" {
		t.Errorf("rank 1's checkpoints column: %q, want -:\n%s", f, out.String())
	}
}
