package exec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
	"github.com/docker/docker/pkg/stdcopy"
)

// Container settings every docker task gets.
const (
	// OutputsMount is where a container sees Task.Outputs ($GPUMESH_OUTPUTS).
	OutputsMount = "/outputs"
	// LabelTask is the container label holding Task.Name; it marks the
	// containers gpumesh made.
	LabelTask = "gpumesh.task"
	// LabelOwner is the container label holding Task.Owner: the peer that
	// runs it, so a peer restarted after a crash finds what it left.
	LabelOwner = "gpumesh.owner"
	// PidsLimit caps the processes of one container.
	PidsLimit = 4096
)

// dockerCallTimeout bounds the engine calls made after the task's context is
// done (stop, inspect, remove), so a wedged engine cannot hang Run forever.
const dockerCallTimeout = 30 * time.Second

// logDrainTimeout is how long Run waits, once the container has exited, for
// the last of its logs before it gives up on them.
const logDrainTimeout = 10 * time.Second

// Docker runs tasks as containers of a local Docker engine: no privileges,
// every capability dropped, no network unless the task asks for the cluster
// network, and only the leased GPUs handed to it (through the NVIDIA
// container toolkit when they are real).
type Docker struct {
	cli *client.Client
}

var _ Executor = (*Docker)(nil)

// NewDocker connects to the Docker engine named by the environment
// (DOCKER_HOST, DOCKER_API_VERSION, DOCKER_CERT_PATH, DOCKER_TLS_VERIFY;
// the local socket by default), agrees on an API version with it (API 1.41,
// Docker 20.10, and newer) and checks that it answers.
func NewDocker(ctx context.Context) (*Docker, error) {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker executor: bad Docker client settings in the environment (DOCKER_HOST, DOCKER_CERT_PATH, ...): %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(pctx); err != nil {
		host := cli.DaemonHost()
		_ = cli.Close()
		return nil, fmt.Errorf("docker executor: the Docker engine is not reachable at %s: %w; start dockerd (or install it: apt-get install docker.io), make sure this user may use its socket (the docker group), or set DOCKER_HOST to the engine's address", host, err)
	}
	return &Docker{cli: cli}, nil
}

// Close releases the connection to the engine.
func (d *Docker) Close() error { return d.cli.Close() }

// Name is "docker".
func (d *Docker) Name() string { return "docker" }

// Run runs t in a new container named t.Name and removes the container
// before it returns. The image is pulled if it is not on this provider; an
// image that cannot be had gives an error wrapping ErrNoImage.
func (d *Docker) Run(ctx context.Context, t Task) (res Result, err error) {
	if t.Image == "" {
		return Result{}, fmt.Errorf("docker executor: task %q names no image", t.Name)
	}
	if t.Outputs == "" {
		return Result{}, fmt.Errorf("docker executor: task %q has no outputs folder (Task.Outputs); the caller must make one", t.Name)
	}
	abs, err := filepath.Abs(t.Outputs)
	if err != nil {
		return Result{}, fmt.Errorf("docker executor: outputs folder %q: %w", t.Outputs, err)
	}
	t.Outputs = abs
	if err := d.ensureImage(ctx, t.Image); err != nil {
		return Result{}, err
	}
	if err := d.removeStale(ctx, t.Name); err != nil {
		return Result{}, err
	}

	cfg, hcfg := containerConfig(t)
	created, err := d.cli.ContainerCreate(ctx, cfg, hcfg, nil, nil, t.Name)
	if err != nil {
		return Result{}, fmt.Errorf("docker executor: creating the container of task %q (image %s): %w", t.Name, t.Image, err)
	}
	id := created.ID
	// Whatever happens from here, the container goes, even when ctx is done.
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), dockerCallTimeout)
		defer cancel()
		rerr := d.cli.ContainerRemove(rctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
		if rerr != nil && !cerrdefs.IsNotFound(rerr) && err == nil {
			err = fmt.Errorf("docker executor: removing the container of task %q (%s): %w; remove it with `docker rm -f %s`", t.Name, shortID(id), rerr, shortID(id))
		}
	}()

	// The engine calls of a running task use their own context: a cancelled
	// ctx must stop the container, not cut its logs or its exit status.
	bg, cancelBG := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBG()

	if err := d.cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		if ctx.Err() != nil {
			return Result{}, fmt.Errorf("docker executor: task %q was cancelled before it started: %w", t.Name, ctx.Err())
		}
		hint := "check that the command exists in the image"
		if t.Real && len(t.GPUs) > 0 && strings.Contains(err.Error(), "device driver") {
			hint = "install the NVIDIA Container Toolkit (nvidia-container-toolkit) and restart dockerd so the engine can hand GPUs to containers"
		}
		return Result{}, fmt.Errorf("docker executor: starting task %q (image %s, command %q): %w; %s", t.Name, t.Image, t.Command, err, hint)
	}
	res.Start = time.Now()
	if ins, ierr := d.cli.ContainerInspect(bg, id); ierr == nil && ins.State != nil {
		if at, ok := engineTime(ins.State.StartedAt); ok {
			res.Start = at
		}
	}
	if t.Started != nil {
		t.Started(res.Start)
	}

	// The logs from the json-file log, from the container's first byte,
	// followed until it stops.
	logsDone := make(chan error, 1)
	stderrHead := &headWriter{w: orDiscard(t.Stderr)}
	logs, lerr := d.cli.ContainerLogs(bg, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: true})
	if lerr != nil {
		// The work runs on; say on its stderr why its output is missing.
		_, _ = fmt.Fprintf(orDiscard(t.Stderr), "gpumesh: cannot read the logs of container %s: %v\n", shortID(id), lerr)
		logsDone <- lerr
	} else {
		go func() {
			defer logs.Close()
			_, cerr := stdcopy.StdCopy(orDiscard(t.Stdout), stderrHead, logs)
			logsDone <- cerr
		}()
	}

	// "not-running" after the start cannot miss an exit: it answers at once
	// for a container that has already ended.
	type waitOut struct {
		code int
		err  error
	}
	waited := make(chan waitOut, 1)
	waitC, waitErrC := d.cli.ContainerWait(bg, id, container.WaitConditionNotRunning)
	go func() { // always takes the one answer, so the client's goroutine ends
		select {
		case w := <-waitC:
			code, err := waitResult(w)
			waited <- waitOut{code, err}
		case err := <-waitErrC:
			waited <- waitOut{-1, err}
		}
	}()

	var w waitOut
	w, res.TimedOut, res.Stopped = awaitWork(ctx, t.Timeout, waited)
	if res.TimedOut || res.Stopped {
		if serr := d.stop(id); serr != nil {
			w = waitOut{-1, serr}
		} else {
			select {
			case w = <-waited:
			case <-time.After(dockerCallTimeout):
				w = waitOut{-1, errors.New("the container did not end after it was stopped")}
			}
		}
	}
	exit, waitErr := w.code, w.err

	// Every log byte is copied before Run returns; a log stream that does not
	// end after the container has is cut off.
	select {
	case <-logsDone:
	case <-time.After(logDrainTimeout):
		cancelBG()
		<-logsDone
	}

	ictx, cancel := context.WithTimeout(context.Background(), dockerCallTimeout)
	defer cancel()
	res.End = time.Now()
	if ins, ierr := d.cli.ContainerInspect(ictx, id); ierr == nil && ins.State != nil {
		if waitErr != nil && !ins.State.Running {
			exit, waitErr = ins.State.ExitCode, nil
		}
		if at, ok := engineTime(ins.State.StartedAt); ok {
			res.Start = at
		}
		if at, ok := engineTime(ins.State.FinishedAt); ok && !at.Before(res.Start) {
			res.End = at
		}
	}
	if waitErr != nil {
		return res, fmt.Errorf("docker executor: waiting for task %q (container %s) to end: %w", t.Name, shortID(id), waitErr)
	}
	res.ExitCode = exit
	if msg := stderrHead.initExecFailure(exit); msg != "" {
		return res, fmt.Errorf("docker executor: task %q could not run its command %q in image %s: %s; check that the command exists in the image and is executable", t.Name, t.Command, t.Image, msg)
	}
	return res, nil
}

// headWriter passes writes on and keeps the first bytes, where docker-init
// says that it could not start the command.
type headWriter struct {
	w    io.Writer
	head []byte
}

func (h *headWriter) Write(p []byte) (int, error) {
	if n := 512 - len(h.head); n > 0 {
		h.head = append(h.head, p[:min(n, len(p))]...)
	}
	return h.w.Write(p)
}

// initExecFailure is docker-init's message when the container's command
// could not be executed (it then exits 127, or 126), or "" for work that ran.
// Read it only after the writes have ended.
func (h *headWriter) initExecFailure(exit int) string {
	if exit != 126 && exit != 127 {
		return ""
	}
	line, _, _ := strings.Cut(string(h.head), "\n")
	if strings.HasPrefix(line, "[FATAL tini (") && strings.Contains(line, "] exec ") {
		return strings.TrimSpace(line)
	}
	return ""
}

// stop stops a container: SIGTERM (or the image's stop signal), then SIGKILL
// after StopGrace. It runs with its own bounded context since the task's may
// be done.
func (d *Docker) stop(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), StopGrace+dockerCallTimeout)
	defer cancel()
	grace := int(StopGrace / time.Second)
	_ = d.cli.ContainerUnpause(ctx, id) // a paused task takes its SIGTERM too (an error: it was not paused)
	if err := d.cli.ContainerStop(ctx, id, container.StopOptions{Timeout: &grace}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("stopping container %s: %w", shortID(id), err)
	}
	return nil
}

// ensureImage makes sure the image is on this provider, pulling it if not.
func (d *Docker) ensureImage(ctx context.Context, ref string) error {
	_, err := d.cli.ImageInspect(ctx, ref)
	if err == nil {
		return nil
	}
	if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("docker executor: looking up image %s: %w", ref, err)
	}
	pull := func() error {
		rc, err := d.cli.ImagePull(ctx, ref, image.PullOptions{})
		if err != nil {
			return err
		}
		defer rc.Close()
		// The progress stream carries the pull's own errors.
		return jsonmessage.DisplayJSONMessagesStream(rc, io.Discard, 0, false, nil)
	}
	if err := pull(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("docker executor: pulling image %s: %w", ref, ctx.Err())
		}
		return fmt.Errorf("%w: image %s is not on this provider and pulling it failed (%v); get it here with `docker pull %s` from a reachable registry, or `docker load -i <file>` from an export made with `docker save`", ErrNoImage, ref, err, ref)
	}
	if _, err := d.cli.ImageInspect(ctx, ref); err != nil {
		return fmt.Errorf("%w: image %s is still not on this provider after a pull (%v); get it here with `docker pull %s` or `docker load -i <file>`", ErrNoImage, ref, err, ref)
	}
	return nil
}

// removeStale removes a container left by an earlier run of the same task
// (a crash of this peer). A container of that name that gpumesh did not make
// is left alone.
func (d *Docker) removeStale(ctx context.Context, name string) error {
	if name == "" {
		return nil
	}
	ins, err := d.cli.ContainerInspect(ctx, name)
	if cerrdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("docker executor: looking for an old container named %q: %w", name, err)
	}
	if ins.Config == nil || ins.Config.Labels[LabelTask] != name {
		return fmt.Errorf("docker executor: a container named %q exists that gpumesh did not make (no %s label); remove or rename it (`docker rm -f %s`)", name, LabelTask, name)
	}
	if err := d.cli.ContainerRemove(ctx, ins.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("docker executor: removing the old container of task %q (%s): %w; remove it with `docker rm -f %s`", name, shortID(ins.ID), err, name)
	}
	return nil
}

// Pause freezes a running task's container (docker pause): its memory and
// GPUs stay, its processes do no work until Resume.
func (d *Docker) Pause(ctx context.Context, name string) error {
	if err := d.cli.ContainerPause(ctx, name); err != nil {
		return fmt.Errorf("docker executor: pausing %s: %w", name, err)
	}
	return nil
}

// Resume lets a paused task's container go on (docker unpause).
func (d *Docker) Resume(ctx context.Context, name string) error {
	if err := d.cli.ContainerUnpause(ctx, name); err != nil {
		return fmt.Errorf("docker executor: resuming %s: %w", name, err)
	}
	return nil
}

// RemoveOwned removes every container an owner's tasks left behind (a
// peer killed while its jobs ran) and says how many there were.
func (d *Docker) RemoveOwned(ctx context.Context, owner string) (int, error) {
	if owner == "" {
		return 0, nil
	}
	list, err := d.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", LabelOwner+"="+owner))})
	if err != nil {
		return 0, fmt.Errorf("docker executor: listing the containers of %s: %w", owner, err)
	}
	removed := 0
	for _, c := range list {
		if err := d.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
			return removed, fmt.Errorf("docker executor: removing container %s: %w; remove it with `docker rm -f %s`", shortID(c.ID), err, shortID(c.ID))
		}
		removed++
	}
	return removed, nil
}

// containerConfig is the container a task runs in. It starts nothing, so
// tests can check what a task would get.
func containerConfig(t Task) (*container.Config, *container.HostConfig) {
	return containerConfigFor(t, os.Geteuid(), os.Getegid())
}

// containerConfigFor is containerConfig for a peer running as uid:gid.
//
// A peer running as root leaves the image's user alone. A peer of another
// user runs the work as that user: container root, with every capability
// dropped (CAP_DAC_OVERRIDE included), could not write to the outputs folder
// the peer made, and whatever it wrote would be root's, which the peer could
// not clean up. Such work gets HOME=/tmp unless the job sets HOME, since the
// image has no home for that user.
func containerConfigFor(t Task, uid, gid int) (*container.Config, *container.HostConfig) {
	var user string
	if uid != 0 {
		user = fmt.Sprintf("%d:%d", uid, gid)
		if _, ok := t.Env["HOME"]; !ok {
			env := make(map[string]string, len(t.Env)+1)
			for k, v := range t.Env {
				env[k] = v
			}
			env["HOME"] = "/tmp"
			t.Env = env
		}
	}
	cfg := &container.Config{
		Image:  t.Image,
		Cmd:    t.Command, // nil: the image's entrypoint and command
		Env:    taskEnv(t, OutputsMount),
		User:   user,
		Labels: map[string]string{LabelTask: t.Name},
	}
	if t.Owner != "" {
		cfg.Labels[LabelOwner] = t.Owner
	}
	pids := int64(PidsLimit)
	useInit := true // docker-init as PID 1: forwards SIGTERM, reaps zombies
	network := container.NetworkMode("none")
	if t.Network {
		network = "host"
	}
	h := &container.HostConfig{
		NetworkMode:    network,
		Privileged:     false,
		CapDrop:        []string{"ALL"},
		SecurityOpt:    []string{"no-new-privileges"},
		ReadonlyRootfs: false,
		Init:           &useInit,
		// The logs are read back from the json-file log, which every engine
		// supports, whatever its default log driver.
		LogConfig: container.LogConfig{Type: "json-file"},
		Resources: container.Resources{
			Memory:    t.Memory,
			NanoCPUs:  int64(t.CPUs * 1e9),
			PidsLimit: &pids,
		},
	}
	if t.Memory > 0 {
		h.Resources.MemorySwap = t.Memory // no swap beyond the memory limit
	}
	if t.Outputs != "" {
		h.Mounts = []mount.Mount{{Type: mount.TypeBind, Source: t.Outputs, Target: OutputsMount, ReadOnly: false}}
	}
	if t.Real && len(t.GPUs) > 0 {
		h.Resources.DeviceRequests = []container.DeviceRequest{{
			Driver:       "nvidia",
			DeviceIDs:    append([]string(nil), t.GPUs...),
			Capabilities: [][]string{{"gpu"}},
		}}
	}
	return cfg, h
}

// taskEnv is a task's environment as KEY=value lines, sorted: the job's
// variables, then the ones gpumesh sets, which win over the job's.
func taskEnv(t Task, outputs string) []string {
	m := make(map[string]string, len(t.Env)+3)
	for k, v := range t.Env {
		m[k] = v
	}
	for k, v := range gpuEnv(t.GPUs) {
		m[k] = v
	}
	m[EnvOutputs] = outputs
	env := make([]string, 0, len(m))
	for k, v := range m {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return env
}

// gpuEnv names the leased GPUs for the NVIDIA runtime and CUDA. No GPUs:
// NVIDIA_VISIBLE_DEVICES=void (the runtime hands over none) and an empty
// CUDA_VISIBLE_DEVICES (CUDA sees none).
func gpuEnv(gpus []string) map[string]string {
	if len(gpus) == 0 {
		return map[string]string{"NVIDIA_VISIBLE_DEVICES": "void", "CUDA_VISIBLE_DEVICES": ""}
	}
	list := strings.Join(gpus, ",")
	return map[string]string{"NVIDIA_VISIBLE_DEVICES": list, "CUDA_VISIBLE_DEVICES": list}
}

// engineTime parses a time the engine reports; an unset one ("0001-01-01...")
// is no time.
func engineTime(s string) (time.Time, bool) {
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || at.Year() <= 1 {
		return time.Time{}, false
	}
	return at, true
}

func waitResult(w container.WaitResponse) (int, error) {
	if w.Error != nil && w.Error.Message != "" {
		return -1, errors.New(w.Error.Message)
	}
	return int(w.StatusCode), nil
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
