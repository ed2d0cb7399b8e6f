package cli_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/cmd/gpumesh/cli"
	"github.com/rogpeppe/go-internal/testscript"
)

// TestMain lets the test binary stand in for the gpumesh binary: testscript
// runs "gpumesh" in a script as this binary, in a child process, so a node
// started in the background gets real signals.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"gpumesh": func() {
			os.Exit(cli.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
		},
	})
}

// TestCLISessionsBehaveAsScripted runs testdata/script/*.txtar: each reads
// like a newcomer's session at a shell. Every script gets its own $WORK with
// GPUMESH_DATA=$WORK/data, and $PORT, a free TCP port on 127.0.0.1.
//
// Besides testscript's own commands, scripts may use:
//
//	exitcode N PROG ARGS...  run PROG and want exit status N
//	grab VAR REGEXP          set $VAR to REGEXP's first group in the last stdout
func TestCLISessionsBehaveAsScripted(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			env.Setenv("GPUMESH_DATA", env.WorkDir+"/data")
			// Under -race every gpumesh run is a race-enabled binary, which
			// sleeps a second on a clean exit unless told not to.
			env.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
			port, err := freePort()
			if err != nil {
				return err
			}
			env.Setenv("PORT", strconv.Itoa(port))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exitcode": cmdExitCode,
			"grab":     cmdGrab,
		},
	})
}

// freePort finds a TCP port on 127.0.0.1 that is free now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// cmdExitCode runs a program and checks its exit status, which '! exec'
// cannot: it tells usage errors (2) from failures (1).
func cmdExitCode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exitcode N PROG [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exitcode: %q is not a number", args[0])
	}
	got := 0
	if err := ts.Exec(args[1], args[2:]...); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("exitcode: %v", err)
		}
		got = ee.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s exited with status %d, want %d", args[1], got, want)
	}
}

// cmdGrab sets an environment variable to what the first group of a regexp
// matched in the last command's stdout.
func cmdGrab(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: grab VAR REGEXP")
	}
	re, err := regexp.Compile(`(?m)` + args[1])
	if err != nil {
		ts.Fatalf("grab: %v", err)
	}
	m := re.FindStringSubmatch(ts.ReadFile("stdout"))
	if len(m) < 2 {
		ts.Fatalf("grab: no match for %q with a group in stdout", args[1])
	}
	ts.Setenv(args[0], m[1])
}
