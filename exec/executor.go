package exec

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/docker/go-units"
)

// An Executor runs one member's part of a job on this provider: a container
// (Docker) or a process (trusted private swarms only). Both keep the same
// contract, so node treats them alike:
//
//   - Run blocks until the work has ended and every resource it made
//     (container, process group) is gone.
//   - Cancelling ctx stops the work: SIGTERM, then SIGKILL after StopGrace.
//   - Timeout, when set, stops the work the same way; the Result says so.
//   - The work sees exactly the leased GPUs: NVIDIA_VISIBLE_DEVICES and
//     CUDA_VISIBLE_DEVICES name Task.GPUs (UUIDs), and nothing else.
//   - Its outputs go to the folder Task.Outputs, seen by the work at the path
//     in $GPUMESH_OUTPUTS.
//   - Stdout and Stderr receive the work's output as it is written.
type Executor interface {
	// Name is "docker" or "process".
	Name() string
	// Run runs a task to its end. The error is for a task that could not
	// run at all (no such image, a bad command): it says what was wrong and
	// what to do. A task that ran and failed has a nil error and a Result
	// with its exit code.
	Run(ctx context.Context, t Task) (Result, error)
}

// Pauser is an Executor that can pause a running task (it keeps its memory
// and GPUs, does no work) and let it go on: what a provider does while a
// consumer is late to pay.
type Pauser interface {
	Pause(ctx context.Context, name string) error
	Resume(ctx context.Context, name string) error
}

// Task is one member's part of a job.
type Task struct {
	Name    string            // unique on this provider, e.g. "gpumesh-<job>-<rank>": the container's name
	Owner   string            // the peer running it (its peer ID): containers are labelled with it
	Image   string            // container image (docker executor); ignored by the process executor
	Command []string          // argv; nil runs the image's entrypoint (docker); required by the process executor
	Env     map[string]string // the job's environment, launcher variables included
	GPUs    []string          // UUIDs of the leased GPUs, e.g. "GPU-5b3c..."
	Real    bool              // GPUs are NVIDIA devices to hand to the container runtime (false for mock GPUs)
	WorkDir string            // a folder of this task's, made by the caller; the process executor runs in it
	Outputs string            // a folder of this task's, made by the caller, for its outputs
	Network bool              // the work needs the cluster network (host network); false: no network at all, its own loopback only
	Timeout time.Duration     // 0: none
	Memory  int64             // bytes; 0: no limit
	CPUs    float64           // cores; 0: no limit
	// Egress lets work without Network reach the internet, never this host,
	// its LAN or link-local addresses (docker: the egress network, set up
	// by Docker.OpenEgress; with JoinNet too, the job's interface is added
	// beside it, and the job's subnet goes there). The process executor
	// ignores it.
	Egress bool
	// Disk caps the bytes the work may write (docker: its container's
	// writable layer and its outputs folder); 0: no limit.
	Disk int64
	// LogBytes caps the output read back from the work, stdout and stderr
	// together (docker: the container's log files too); 0: DefaultLogBytes.
	LogBytes int64
	// StartBy, when set, is when the work must have started: an image pull
	// still running then is given up (docker).
	StartBy time.Time
	// JoinNet, when set, gives the work its job's own network (a job of
	// several members) in place of Network: the work runs in a network
	// namespace of its own with nothing in it but Egress's (docker:
	// network none, or the egress network; the
	// process executor: a new namespace), JoinNet is called with its first
	// process once it has started (the caller gives that process's
	// namespace an interface), and the work's command runs only once the
	// interface JoinNetIface is up: /bin/sh, which the image (or host) must
	// have, waits for it. An error stops the work, and Run returns it.
	JoinNet func(pid int) error
	// Inputs are files or folders of the caller's that the work sees at
	// their Target (docker: bind mounts, read-only unless Writable, as a
	// checkpoint folder is). The process executor ignores them: its caller
	// places inputs and checkpoints in WorkDir.
	Inputs []Mount

	Stdout, Stderr io.Writer // where output goes as it is written; nil discards

	// Started, if set, is called once when the work has started.
	Started func(at time.Time)

	// Spawned, if set, is called by the process executor once the work's
	// process group exists and before its output is read or Started is
	// called: a provider records the group there, so that after a crash it
	// can kill what is left. An error stops the work at once, and Run
	// returns it. The docker executor does not call it (containers carry
	// their owner's label instead).
	Spawned func(ProcessGroup) error
}

// Mount is a file or folder of the host (Source, absolute) that a
// container sees at Target: read-only unless Writable.
type Mount struct {
	Source, Target string
	Writable       bool
}

// Result is how a task ended.
type Result struct {
	ExitCode int       // the work's exit status; 128+signal when killed by one
	Start    time.Time // when the work started
	End      time.Time // when it ended
	TimedOut bool      // stopped because Timeout passed
	Stopped  bool      // stopped because ctx was cancelled
	// OOMKilled: the work ran out of its memory limit (Task.Memory) and
	// the kernel killed a process of it (docker).
	OOMKilled bool
	// DiskFull: the work wrote more than Task.Disk and was stopped.
	DiskFull bool
}

// DefaultLogBytes is how much output of one task is read back when
// Task.LogBytes is 0.
const DefaultLogBytes = 64 << 20

// Environment variables every task gets.
const (
	EnvOutputs = "GPUMESH_OUTPUTS" // where to write outputs
)

// JoinNetIface is the interface whose coming up a task with JoinNet waits
// for.
const JoinNetIface = "jobnet0"

// joinNetWait runs a task's command ("$@") once its job interface is up
// with its address (the subnet's route through it is in /proc/net/route,
// which shows the reader's own namespace, unlike a /sys mounted outside
// it), and fails with 125 if it is not within 30 s. Shell builtins only,
// but for sleep.
const joinNetWait = `i=0; until (while read -r d _; do [ "$d" = ` + JoinNetIface + ` ] && exit 0; done </proc/net/route; exit 1); do ` +
	`i=$((i+1)); [ "$i" -ge 300 ] && { echo "gpumesh: the job network did not come up" >&2; exit 125; }; sleep 0.1; done; exec "$@"`

// joinNetCommand is argv run once the job interface is up.
func joinNetCommand(argv []string) []string {
	return append([]string{"/bin/sh", "-c", joinNetWait, "gpumesh-jobnet"}, argv...)
}

// StopGrace is how long work has between SIGTERM and SIGKILL.
const StopGrace = 5 * time.Second

// ErrNoImage marks a task whose image is not on this provider and could not
// be pulled.
var ErrNoImage = errors.New("image not available")

// awaitWork waits for the work to end (a value on ended), its timeout to
// pass (0: none) or ctx to end, whichever comes first, and says which.
func awaitWork[T any](ctx context.Context, timeout time.Duration, ended <-chan T) (v T, timedOut, stopped bool) {
	var expired <-chan time.Time
	if timeout > 0 {
		timer := time.NewTimer(timeout)
		defer timer.Stop()
		expired = timer.C
	}
	select {
	case v = <-ended:
	case <-expired:
		timedOut = true
	case <-ctx.Done():
		stopped = true
	}
	return v, timedOut, stopped
}

// ParseSize reads a size in bytes as people write it: 64GiB, 512m, 1.5g,
// 1024 (bytes); the units are powers of 1024.
func ParseSize(s string) (int64, error) { return units.RAMInBytes(s) }

// FormatSize writes a size in bytes as people read it: 64GiB, 512MiB.
func FormatSize(n int64) string { return units.BytesSize(float64(n)) }
