package exec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/docker/go-units"
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

// minLogFile is the smallest json-file log file a container gets, bytes.
const minLogFile = 64 << 10

// logDrainTimeout is how long Run waits, once the container has exited, for
// the last of its logs before it gives up on them.
const logDrainTimeout = 10 * time.Second

// Docker runs tasks as containers of a local Docker engine: no privileges,
// every capability dropped, no network unless the task asks for the cluster
// network, and only the leased GPUs handed to it (through the NVIDIA
// container toolkit when they are real).
type Docker struct {
	cli   *client.Client
	cfg   DockerConfig
	cache *ImageCache

	// noStorageOpt is set once the engine has refused a size on a
	// container's writable layer (overlay2 not on xfs with pquota, ...):
	// from then on Task.Disk is kept by measuring it.
	noStorageOpt atomic.Bool

	egress bool // OpenEgress made the egress network and rules; guarded by egressMu
}

// DockerConfig bounds what jobs bring onto this machine. The zero value
// takes the defaults.
type DockerConfig struct {
	// PullTimeout is the longest an image pull may take; 0:
	// DefaultPullTimeout. Task.StartBy may end it sooner.
	PullTimeout time.Duration
	// PullMaxBytes caps an image's download (its layers as the registry
	// sizes them, compressed); 0: DefaultPullMaxBytes; negative: no cap.
	PullMaxBytes int64
	// Cache is the images pulled for jobs, evicted least recently used
	// first over its cap; nil: one in memory with the default cap.
	Cache *ImageCache
	// DiskCheck is how often a task's disk use is measured, where the engine
	// cannot cap it; 0: 2 s. Work may overshoot Task.Disk by what it writes
	// in that time before it is stopped.
	DiskCheck time.Duration
	// EgressDNS are the resolvers of tasks with egress; nil:
	// DefaultEgressDNS.
	EgressDNS []string
	Log       *slog.Logger
	// Host is the engine's address (unix:///var/run/docker.sock,
	// tcp://...); "": the environment's (DOCKER_HOST), else the local
	// socket.
	Host string
	// Removed, if set, is told the references of the images Cache
	// removed, after each eviction that removed some. It must not block
	// long, nor call back into the Docker executor.
	Removed func(refs []string)
}

// Defaults of DockerConfig.
const (
	// DefaultPullTimeout stays under the submitter's start deadline
	// (5 min from a member's start to its work running), so a slow pull
	// fails here with its reason rather than as "never started".
	DefaultPullTimeout  = 4 * time.Minute
	DefaultPullMaxBytes = 30 << 30
	defaultDiskCheck    = 2 * time.Second
)

// ErrImageTooBig marks an image pull given up because the image is larger
// than this provider takes (DockerConfig.PullMaxBytes).
var ErrImageTooBig = errors.New("image too large")

var _ Executor = (*Docker)(nil)

// NewDocker connects to the Docker engine named by the environment
// (DOCKER_HOST, DOCKER_API_VERSION, DOCKER_CERT_PATH, DOCKER_TLS_VERIFY;
// the local socket by default), agrees on an API version with it (API 1.41,
// Docker 20.10, and newer) and checks that it answers.
func NewDocker(ctx context.Context) (*Docker, error) {
	return NewDockerWith(ctx, DockerConfig{})
}

// NewDockerWith is NewDocker with the bounds of cfg.
func NewDockerWith(ctx context.Context, cfg DockerConfig) (*Docker, error) {
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if cfg.Host != "" {
		opts = append(opts, client.WithHost(cfg.Host))
	}
	cli, err := client.NewClientWithOpts(opts...)
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
	cache := cfg.Cache
	if cache == nil {
		cache = &ImageCache{Log: cfg.Log}
	}
	return &Docker{cli: cli, cfg: cfg, cache: cache}, nil
}

// Machine is the memory (bytes) and CPU cores of the engine's machine.
func (d *Docker) Machine(ctx context.Context) (memory int64, cpus int, err error) {
	info, err := d.cli.Info(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("docker executor: asking the engine about its machine: %w", err)
	}
	return info.MemTotal, info.NCPU, nil
}

// Cache is the executor's image cache.
func (d *Docker) Cache() *ImageCache { return d.cache }

func (d *Docker) log() *slog.Logger {
	if d.cfg.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.cfg.Log
}

// Close removes the egress network and its rules if this executor made
// them (and no other of this process uses them), and releases the
// connection to the engine.
func (d *Docker) Close() error {
	err := d.closeEgress()
	return errors.Join(err, d.cli.Close())
}

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
	// In use from before the pull, so the eviction after it spares it.
	d.cache.Acquire(t.Image, time.Now())
	defer d.cache.Release(t.Image)
	if err := d.ensureImage(ctx, t.Image, t.StartBy); err != nil {
		return Result{}, err
	}
	if err := d.removeStale(ctx, t.Name); err != nil {
		return Result{}, err
	}

	if t.Egress && !d.egressOpen() {
		return Result{}, fmt.Errorf("docker executor: task %q asks for egress, which this provider has not set up (OpenEgress)", t.Name)
	}
	cfg, hcfg := containerConfig(t)
	if t.JoinNet != nil {
		argv := t.Command
		if argv == nil {
			ins, err := d.cli.ImageInspect(ctx, t.Image)
			if err != nil {
				return Result{}, fmt.Errorf("docker executor: reading image %s: %w", t.Image, err)
			}
			if ins.Config != nil {
				argv = append(append([]string{}, ins.Config.Entrypoint...), ins.Config.Cmd...)
			}
			if len(argv) == 0 {
				return Result{}, fmt.Errorf("docker executor: task %q: image %s has no command; give the job one", t.Name, t.Image)
			}
		}
		wrapped := joinNetCommand(argv)
		cfg.Entrypoint, cfg.Cmd = wrapped[:4], wrapped[4:]
	}
	if t.Egress && !t.Network {
		hcfg.DNS = d.cfg.EgressDNS
		if hcfg.DNS == nil {
			hcfg.DNS = DefaultEgressDNS
		}
	}
	capDisk := t.Disk > 0 && !d.noStorageOpt.Load()
	if capDisk {
		hcfg.StorageOpt = map[string]string{"size": strconv.FormatInt(t.Disk, 10)}
	}
	created, err := d.cli.ContainerCreate(ctx, cfg, hcfg, nil, nil, t.Name)
	if err != nil && capDisk && storageOptRefused(err) {
		// This engine's storage driver cannot cap a container's writable
		// layer: the disk watch below measures it instead.
		d.noStorageOpt.Store(true)
		d.log().Info("the Docker storage driver cannot cap a container's disk (--storage-opt size); measuring each task's disk use instead", "err", err)
		capDisk, hcfg.StorageOpt = false, nil
		created, err = d.cli.ContainerCreate(ctx, cfg, hcfg, nil, nil, t.Name)
	}
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
	ins, ierr := d.cli.ContainerInspect(bg, id)
	if ierr == nil && ins.State != nil {
		if at, ok := engineTime(ins.State.StartedAt); ok {
			res.Start = at
		}
	}
	if t.JoinNet != nil {
		if ierr == nil && (ins.State == nil || ins.State.Pid == 0) {
			ierr = errors.New("the engine gave no process of it")
		}
		if ierr == nil {
			ierr = t.JoinNet(ins.State.Pid)
		}
		if ierr != nil {
			return Result{}, fmt.Errorf("docker executor: task %q: its job network: %w", t.Name, ierr)
		}
	}
	if t.Started != nil {
		t.Started(res.Start)
	}

	// The logs from the json-file log, from the container's first byte,
	// followed until it stops or the cap on them is reached.
	logsDone := make(chan error, 1)
	lc := newLogCap(t.logBytes(), orDiscard(t.Stdout), orDiscard(t.Stderr))
	stdout, stderr := lc.writers()
	stderrHead := &headWriter{w: stderr}
	logs, lerr := d.cli.ContainerLogs(bg, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: true})
	if lerr != nil {
		// The work runs on; say on its stderr why its output is missing.
		_, _ = fmt.Fprintf(orDiscard(t.Stderr), "gpumesh: cannot read the logs of container %s: %v\n", shortID(id), lerr)
		logsDone <- lerr
	} else {
		go func() {
			defer logs.Close()
			_, cerr := stdcopy.StdCopy(stdout, stderrHead, logs)
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

	// The disk watch stops work that writes more than it may.
	workCtx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	var diskFull atomic.Bool
	watchDone := make(chan struct{})
	if t.Disk > 0 {
		go func() {
			defer close(watchDone)
			if d.watchDisk(workCtx, id, t, !capDisk) {
				diskFull.Store(true)
				lc.note(fmt.Sprintf("gpumesh: the work wrote more than its disk limit of %s; stopping it\n", units.BytesSize(float64(t.Disk))))
				stopWork()
			}
		}()
	} else {
		close(watchDone)
	}

	var w waitOut
	w, res.TimedOut, res.Stopped = awaitWork(workCtx, t.Timeout, waited)
	if diskFull.Load() && ctx.Err() == nil {
		res.Stopped, res.DiskFull = false, true
	}
	if res.TimedOut || res.Stopped || res.DiskFull {
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
	stopWork()
	<-watchDone

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
		if ins.State.OOMKilled && waitErr == nil {
			res.OOMKilled = true
			lc.note(fmt.Sprintf("gpumesh: the work ran out of its memory limit of %s; the kernel killed a process of it\n", units.BytesSize(float64(t.Memory))))
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

// ensureImage makes sure the image is on this provider, pulling it if not:
// within DockerConfig.PullTimeout and by startBy (zero: no such bound), and
// no larger than DockerConfig.PullMaxBytes. A pull given up leaves no image
// behind. A pulled image goes into the cache, which then evicts what is over
// its cap.
func (d *Docker) ensureImage(ctx context.Context, ref string, startBy time.Time) error {
	_, err := d.cli.ImageInspect(ctx, ref)
	if err == nil {
		return nil
	}
	if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("docker executor: looking up image %s: %w", ref, err)
	}
	timeout := d.cfg.PullTimeout
	if timeout <= 0 {
		timeout = DefaultPullTimeout
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !startBy.IsZero() {
		var cancel2 context.CancelFunc
		pctx, cancel2 = context.WithDeadline(pctx, startBy)
		defer cancel2()
	}
	limit := d.cfg.PullMaxBytes
	if limit == 0 {
		limit = DefaultPullMaxBytes
	}
	if err := d.pull(pctx, ref, limit); err != nil {
		d.dropPartial(ref)
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("docker executor: pulling image %s: %w", ref, ctx.Err())
		case errors.Is(err, ErrImageTooBig):
			return fmt.Errorf("%w: %w; use a smaller image, or ask a provider that takes larger ones", ErrNoImage, err)
		case pctx.Err() != nil:
			left := time.Until(startBy).Round(time.Second)
			why := fmt.Sprintf("its time limit of %s", timeout)
			if !startBy.IsZero() && left < timeout {
				why = "the job's start deadline"
			}
			return fmt.Errorf("%w: pulling image %s did not finish within %s; use a smaller image, a registry closer to this provider, or a provider that has the image", ErrNoImage, ref, why)
		}
		return fmt.Errorf("%w: image %s is not on this provider and pulling it failed (%v); get it here with `docker pull %s` from a reachable registry, or `docker load -i <file>` from an export made with `docker save`", ErrNoImage, ref, err, ref)
	}
	ins, err := d.cli.ImageInspect(ctx, ref)
	if err != nil {
		return fmt.Errorf("%w: image %s is still not on this provider after a pull (%v); get it here with `docker pull %s` or `docker load -i <file>`", ErrNoImage, ref, err, ref)
	}
	d.cache.Pulled(ref, ins.ID, ins.Size, time.Now())
	d.evict(ctx)
	return nil
}

// pull pulls ref, and gives up once the layers it downloads add up to more
// than limit bytes (negative: no limit). The engine ends a pull whose client
// went away.
func (d *Docker) pull(ctx context.Context, ref string, limit int64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rc, err := d.cli.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		return err
	}
	defer rc.Close()
	// The progress stream carries the pull's own errors and the size of
	// every layer it downloads.
	layers := map[string]int64{}
	var total int64
	dec := json.NewDecoder(io.LimitReader(rc, 64<<20))
	for {
		var m jsonmessage.JSONMessage
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if m.Error != nil {
			return m.Error
		}
		if m.Progress == nil || m.ID == "" {
			continue
		}
		size := max(m.Progress.Total, m.Progress.Current)
		if size > layers[m.ID] {
			total += size - layers[m.ID]
			layers[m.ID] = size
		}
		if limit >= 0 && total > limit {
			return fmt.Errorf("%w: image %s has more than %s of layers to download, over this provider's cap of %s", ErrImageTooBig, ref, units.BytesSize(float64(total)), units.BytesSize(float64(limit)))
		}
	}
}

// dropPartial removes what a pull given up may have left under the name:
// an image the engine finished just as the pull was given up.
func (d *Docker) dropPartial(ref string) {
	ctx, cancel := context.WithTimeout(context.Background(), dockerCallTimeout)
	defer cancel()
	if _, err := d.cli.ImageInspect(ctx, ref); err == nil {
		_, _ = d.cli.ImageRemove(ctx, ref, image.RemoveOptions{PruneChildren: true})
	}
}

// storageOptRefused says whether a create failed because the storage
// driver cannot cap a container's writable layer.
func storageOptRefused(err error) bool {
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "storage-opt") || strings.Contains(msg, "storage opt") || strings.Contains(msg, "storageopt")
}

// watchDisk measures, every DiskCheck, what a running task has written: its
// outputs folder and, when layer is set (the engine could not cap it), its
// container's writable layer. It says true once that is over t.Disk, and
// false when ctx ends first.
func (d *Docker) watchDisk(ctx context.Context, id string, t Task, layer bool) bool {
	every := d.cfg.DiskCheck
	if every <= 0 {
		every = defaultDiskCheck
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
		used := dirSize(t.Outputs, t.Disk)
		if layer && used <= t.Disk {
			ictx, cancel := context.WithTimeout(ctx, dockerCallTimeout)
			ins, _, err := d.cli.ContainerInspectWithRaw(ictx, id, true)
			cancel()
			if err == nil && ins.SizeRw != nil {
				used += *ins.SizeRw
			}
		}
		if used > t.Disk {
			return true
		}
	}
}

// dirSize is the bytes of the files under dir, counted until they pass
// stop.
func dirSize(dir string, stop int64) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, e os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
		if n > stop {
			return filepath.SkipAll
		}
		return nil
	})
	return n
}

// logCap passes a task's stdout and stderr on until, together, they reach
// its cap; then it says so once on stderr and refuses more, which ends the
// reading of the container's log.
type logCap struct {
	mu     sync.Mutex // guards left, cut and writes to out and err
	left   int64
	limit  int64
	cut    bool
	stdout io.Writer
	stderr io.Writer
}

var errLogCap = errors.New("log cap reached")

func newLogCap(limit int64, stdout, stderr io.Writer) *logCap {
	return &logCap{left: limit, limit: limit, stdout: stdout, stderr: stderr}
}

func (c *logCap) writers() (stdout, stderr io.Writer) {
	return capWriter{c, false}, capWriter{c, true}
}

// note writes a line of gpumesh's own to stderr, past the cap.
func (c *logCap) note(msg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _ = io.WriteString(c.stderr, msg)
}

type capWriter struct {
	c   *logCap
	err bool
}

func (w capWriter) Write(p []byte) (int, error) {
	c := w.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cut {
		return 0, errLogCap
	}
	out := c.stdout
	if w.err {
		out = c.stderr
	}
	k := int64(len(p))
	if k > c.left {
		k = c.left
	}
	if k > 0 {
		if _, err := out.Write(p[:k]); err != nil {
			return 0, err
		}
		c.left -= k
	}
	if k < int64(len(p)) {
		c.cut = true
		_, _ = fmt.Fprintf(c.stderr, "\ngpumesh: output cut at %s (this provider's cap on a task's log); the rest is dropped\n", units.BytesSize(float64(c.limit)))
		return int(k), errLogCap
	}
	return len(p), nil
}

func (t Task) logBytes() int64 {
	if t.LogBytes > 0 {
		return t.LogBytes
	}
	return DefaultLogBytes
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
	switch {
	case t.JoinNet != nil && t.Egress: // the egress network, and the job's interface the caller adds
		network = EgressNetwork
	case t.JoinNet != nil: // none, until the caller adds the job's interface
	case t.Network:
		network = "host"
	case t.Egress:
		network = EgressNetwork
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
		// Its files are capped at the bytes read back: two files of half.
		LogConfig: container.LogConfig{Type: "json-file", Config: map[string]string{
			"max-size": strconv.FormatInt(max(t.logBytes()/2, minLogFile), 10),
			"max-file": "2",
		}},
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
	for _, in := range t.Inputs {
		h.Mounts = append(h.Mounts, mount.Mount{Type: mount.TypeBind, Source: in.Source, Target: in.Target, ReadOnly: !in.Writable})
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
