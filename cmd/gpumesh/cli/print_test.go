package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node"
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
