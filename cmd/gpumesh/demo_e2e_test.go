package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The demo, shortened (--exit), runs as a user runs it and leaves nothing
// behind: no process, no file.
func TestDemoRunsEndToEndAndCleansUp(t *testing.T) {
	if _, err := os.Stat(filepath.Join("..", "..", "chain", "localnet", "node_modules", "litesvm")); err != nil {
		if os.Getenv("CI") == "" {
			t.Skip("the demo needs the local Solana's npm packages: make localnet")
		}
		t.Fatal("the demo needs the local Solana's npm packages: .ci/run must run npm ci in chain/localnet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gmBin, "demo", "--exit", "--explorer", "")
	cmd.Env = append(os.Environ(), "GPUMESH_LOCALNET_DIR="+filepath.Join("..", "..", "chain", "localnet"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("gpumesh demo: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{
		"[3/8] waiting for the swarm to mesh", "found 24 GPUs from 3 providers",
		"[0] rank 0 of 2: 8 GPUs", "[1] rank 1 of 2: 8 GPUs",
		": done", "countersigned", "USDC in", "token transfers as it ran", "memo \"gpumesh:1:", "OK: receipt of job",
	} {
		if !strings.Contains(text, want) {
			t.Fatalf("the demo did not show %q:\n%s", want, text)
		}
	}
	m := regexp.MustCompile(`everything lives in (\S+)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("the demo did not say where it lives:\n%s", text)
	}
	if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Fatalf("the demo left %s behind (%v)", m[1], err)
	}
	// No process of the demo's is left: none has its folder in its command line.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(m[1])) {
			t.Fatalf("a process of the demo is still running: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}
