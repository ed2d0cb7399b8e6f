package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	gmexec "github.com/gpumesh/gpumesh/exec"
)

// The demo, shortened (--exit), runs as a user runs it and leaves nothing
// behind: no process, no file.
func TestDemoRunsEndToEndAndCleansUp(t *testing.T) {
	needLocalnet(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gmBin, "demo", "--exit", "--explorer", "")
	cmd.Env = append(os.Environ(), "GPUMESH_LOCALNET_DIR="+filepath.Join("..", "..", "chain", "localnet"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("gpumesh demo: %v\n%s", err, out.String())
	}
	checkDemo(t, out.String())
}

// A user who is not root runs the demo: its providers cannot make job
// networks (no TUN devices), yet in the demo's private swarm they still
// take the two members of its 16-GPU job, which meet on the host network
// and say so. Run as nobody, since these tests run as root.
func TestDemoRunsForAUserWhoIsNotRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run the demo as another user (nobody); run as a user who is not root, TestDemoRunsEndToEndAndCleansUp is this test")
	}
	needLocalnet(t)
	nobody, err := gmexec.LookupJobUser("nobody", false)
	if err != nil {
		t.Skip(err)
	}
	home, err := os.MkdirTemp("", "gmdemo-nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	if err := os.Chown(home, int(nobody.UID), int(nobody.GID)); err != nil {
		t.Fatal(err)
	}
	localnet, err := filepath.Abs(filepath.Join("..", "..", "chain", "localnet"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gmBin, "demo", "--exit", "--explorer", "")
	cmd.Dir = home
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody.UID, Gid: nobody.GID, Groups: []uint32{}}}
	cmd.Env = append(os.Environ(), "HOME="+home, "GPUMESH_LOCALNET_DIR="+localnet)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("gpumesh demo as nobody: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{
		"[gpumesh] the members meet on the host network (provider cannot make job networks",
		"member 0: host network (its provider cannot make job networks)",
		"member 1: host network (its provider cannot make job networks)",
	} {
		if !strings.Contains(text, want) {
			t.Fatalf("the demo as nobody did not show %q:\n%s", want, text)
		}
	}
	checkDemo(t, text)
}

// needLocalnet skips a test of the demo where the local Solana's npm
// packages are missing (outside CI).
func needLocalnet(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(filepath.Join("..", "..", "chain", "localnet", "node_modules", "litesvm")); err != nil {
		if os.Getenv("CI") == "" {
			t.Skip("the demo needs the local Solana's npm packages: make localnet")
		}
		t.Fatal("the demo needs the local Solana's npm packages: .ci/run must run npm ci in chain/localnet")
	}
}

// checkDemo checks what a demo run showed: its 16-GPU job of two members
// done, paid, anchored and verified; and that it left nothing behind.
func checkDemo(t *testing.T, text string) {
	t.Helper()
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
