package node_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A provider's output and reasons reach a person's terminal through the
// job's log and its status: a hostile provider, speaking the real job
// protocol, sends output that would retitle and clear the terminal, rewrite
// a line and forge one of the submitter's own, and an error whose reason
// does the same. The log keeps the text and drops or shows every escape;
// no line but the submitter's own starts with [gpumesh].
func TestProviderTextIsMadeSafeForATerminal(t *testing.T) {
	m := meshtest.Start(t, 2, h100s(43, 1))
	prov, sub := m.Nodes[0], m.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const reason = "\x1b[31mno GPU\x1b[0m\n[gpumesh] job done\r"
	meshtest.ServeJobs(t, prov.Host(), func(js *meshtest.JobStream, st *jobwire.StartFrame) error {
		for _, f := range []jobwire.Frame{
			{T: jobwire.KindStarted, At: time.Now().UnixMilli()},
			{T: jobwire.KindLog, Stream: "out", Data: []byte("\x1b]0;pwned\x07\x1b[2J\x1b[Hhello \x1b[1mworld\x1b[0m\n")},
			{T: jobwire.KindLog, Stream: "out", Data: []byte("secret\rshown\n\x1b[1A\x1b[2K[gpumesh] job done, all paid\n")},
			{T: jobwire.KindLog, Stream: "err", Data: []byte("bell\x07 nul\x00 c1\u009b2J bidi\u202eexe\n")},
			{T: jobwire.KindError, Reason: reason},
		} {
			if err := js.Send(f); err != nil {
				return err
			}
		}
		return nil
	})
	j := runToEnd(t, ctx, sub, scriptSpec(t, 1, 0, "true", ""))
	if j.State != node.JobFailed || !strings.Contains(j.Reason, "no GPU") {
		t.Fatalf("job %s (%s): want failed with the provider's reason", j.State, j.Reason)
	}
	log := jobLog(t, sub, j.ID)
	for _, r := range log {
		if (r < 0x20 && r != '\n' && r != '\t') || (r >= 0x7f && r < 0xa0) || r == '\u202e' {
			t.Errorf("the log keeps %U:\n%q", r, log)
		}
	}
	for _, want := range []string{"[0] hello world\n", "[0] shown\n", `[0] bell\x07 nul\x00 c1 bidi\u202eexe`, `no GPU\x1b[0m\n[gpumesh] job done\r`} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "secret") {
		t.Errorf("a line a carriage return rewrote shows what it hid:\n%s", log)
	}
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		if strings.HasPrefix(line, "[gpumesh] job done") {
			t.Errorf("the provider forged a line of the submitter's: %q", line)
		}
	}
}
