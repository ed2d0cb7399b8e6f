package exec_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/gpumesh/gpumesh/exec"
)

// newDocker is a Docker executor on the test engine, with TestImage there.
func newDocker(t *testing.T) *exec.Docker {
	t.Helper()
	testImage(t)
	d, err := exec.NewDocker(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// dockerTask is a task of the test image running sh -c script.
func dockerTask(t *testing.T, script string) exec.Task {
	return exec.Task{
		Name:    taskName(t),
		Image:   TestImage,
		Command: []string{"sh", "-c", script},
		Outputs: t.TempDir(),
		WorkDir: t.TempDir(),
	}
}

// dockerSubject is the Docker executor, for the contract: containers of the
// test image on the test engine.
func dockerSubject() subject {
	return subject{
		name:        "docker",
		zero:        &exec.Docker{},
		start:       func(t *testing.T) exec.Executor { return newDocker(t) },
		task:        dockerTask,
		outputsSeen: func(exec.Task) string { return exec.OutputsMount },
		paused: func(t *testing.T, task exec.Task) bool {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			ins, err := dockerClient(t).ContainerInspect(ctx, task.Name)
			if err != nil {
				t.Fatal(err)
			}
			return ins.State != nil && ins.State.Paused
		},
		// The container gone is every process of the task gone.
		assertNothingLeft: func(t *testing.T, task exec.Task) { assertNoContainer(t, task.Name) },
	}
}

// assertNoContainer fails if a container of the task is left.
func assertNoContainer(t *testing.T, name string) {
	t.Helper()
	cli := dockerClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", exec.LabelTask+"="+name))})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Errorf("container of task %s left behind: %v (%s)", name, list[0].Names, list[0].State)
	}
}

func TestDockerMissingImageIsErrNoImage(t *testing.T) {
	d := newDocker(t)
	task := dockerTask(t, "true")
	task.Image = "gpumesh-test:no-such-image-" + strings.ToLower(strings.ReplaceAll(taskName(t), "-", ""))
	_, err := d.Run(context.Background(), task)
	if !errors.Is(err, exec.ErrNoImage) {
		t.Fatalf("err = %v, want ErrNoImage", err)
	}
	if !strings.Contains(err.Error(), task.Image) || !strings.Contains(err.Error(), "docker load") {
		t.Errorf("error does not name the image and how to get it: %v", err)
	}
	assertNoContainer(t, task.Name)
}

func TestDockerNetwork(t *testing.T) {
	d := newDocker(t)

	task := dockerTask(t, "ls /sys/class/net")
	out := newSyncBuf()
	task.Stdout = out
	if _, err := d.Run(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(out.String()); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("without Network the container sees interfaces %v, want only lo", got)
	}

	host, err := os.ReadDir("/sys/class/net")
	if err != nil {
		t.Skipf("cannot list this host's interfaces: %v", err)
	}
	var want []string
	for _, e := range host {
		want = append(want, e.Name())
	}
	task = dockerTask(t, "ls /sys/class/net")
	task.Network = true
	out = newSyncBuf()
	task.Stdout = out
	if _, err := d.Run(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(out.String())
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("with Network the container sees interfaces %v, want the host's %v", got, want)
	}
}

// A task with JoinNet runs with no network until its caller adds one:
// JoinNet gets the container's process, and the command runs only once
// the job interface is up. A JoinNet that fails ends the task with its
// error.
func TestDockerJoinNetAddsTheInterfaceBeforeTheWork(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("adding an interface to a container needs root")
	}
	d := newDocker(t)
	task := dockerTask(t, "ls /sys/class/net")
	task.JoinNet = func(pid int) error {
		out, err := osexec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "sh", "-c",
			"ip tuntap add dev "+exec.JoinNetIface+" mode tun && ip addr add 10.9.0.2/16 dev "+exec.JoinNetIface+" && ip link set "+exec.JoinNetIface+" up").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	out := newSyncBuf()
	task.Stdout = out
	res, err := d.Run(context.Background(), task)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("run: %+v, %v", res, err)
	}
	if got := strings.Fields(out.String()); !slices.Equal(got, []string{exec.JoinNetIface, "lo"}) {
		t.Errorf("the work saw interfaces %v, want %s and lo", got, exec.JoinNetIface)
	}

	task = dockerTask(t, "echo ran")
	task.JoinNet = func(int) error { return errors.New("no interface today") }
	out = newSyncBuf()
	task.Stdout = out
	if _, err := d.Run(context.Background(), task); err == nil || !strings.Contains(err.Error(), "no interface today") {
		t.Errorf("a failing JoinNet: %v, want its error", err)
	}
	if strings.Contains(out.String(), "ran") {
		t.Error("the work ran without its job network")
	}
}

func TestDockerRemovesAStaleContainerOfTheTask(t *testing.T) {
	d := newDocker(t)
	cli := dockerClient(t)
	ctx := context.Background()

	// A crashed run's container: same name, gpumesh's label.
	task := dockerTask(t, "echo fresh")
	cfg, hcfg := exec.ContainerConfig(task)
	if _, err := cli.ContainerCreate(ctx, cfg, hcfg, nil, nil, task.Name); err != nil {
		t.Fatal(err)
	}
	out := newSyncBuf()
	task.Stdout = out
	if _, err := d.Run(ctx, task); err != nil {
		t.Fatal(err)
	}
	if out.String() != "fresh\n" {
		t.Errorf("stdout = %q", out.String())
	}
	assertNoContainer(t, task.Name)

	// Someone else's container of that name is left alone.
	other := dockerTask(t, "true")
	c, err := cli.ContainerCreate(ctx, &container.Config{Image: TestImage, Cmd: []string{"true"}}, nil, nil, nil, other.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true}) })
	_, err = d.Run(ctx, other)
	if err == nil || !strings.Contains(err.Error(), "did not make") {
		t.Errorf("err = %v, want a refusal to remove a container gpumesh did not make", err)
	}
	if _, err := cli.ContainerInspect(ctx, c.ID); err != nil {
		t.Errorf("the other container is gone: %v", err)
	}
}

func TestDockerContainerConfig(t *testing.T) {
	uuids := []string{"GPU-5b3c0d1e-aaaa-1111", "GPU-7f2a9c4b-bbbb-2222"}
	base := exec.Task{
		Name:    "gpumesh-job-0",
		Image:   "pytorch/pytorch:latest",
		Command: []string{"python", "train.py"},
		Env:     map[string]string{"RANK": "0", "CUDA_VISIBLE_DEVICES": "0,1,2,3"},
		GPUs:    uuids,
		Outputs: "/var/lib/gpumesh/jobs/j/outputs",
		Memory:  8 << 30,
		CPUs:    2.5,
	}
	env := func(cfg *container.Config) map[string]string {
		m := map[string]string{}
		for _, kv := range cfg.Env {
			k, v, _ := strings.Cut(kv, "=")
			if _, dup := m[k]; dup {
				t.Errorf("%s set twice", k)
			}
			m[k] = v
		}
		return m
	}

	onGPUs := base
	onGPUs.Real = true
	cfg, h := exec.ContainerConfig(onGPUs)
	if len(h.DeviceRequests) != 1 {
		t.Fatalf("real GPUs: DeviceRequests = %+v, want one", h.DeviceRequests)
	}
	dr := h.DeviceRequests[0]
	if dr.Driver != "nvidia" || !slices.Equal(dr.DeviceIDs, uuids) || len(dr.Capabilities) != 1 || !slices.Equal(dr.Capabilities[0], []string{"gpu"}) || dr.Count != 0 {
		t.Errorf("device request = %+v", dr)
	}
	e := env(cfg)
	joined := strings.Join(uuids, ",")
	if e["NVIDIA_VISIBLE_DEVICES"] != joined || e["CUDA_VISIBLE_DEVICES"] != joined || e["RANK"] != "0" || e[exec.EnvOutputs] != exec.OutputsMount {
		t.Errorf("env = %v", cfg.Env)
	}
	if cfg.Image != base.Image || !slices.Equal(cfg.Cmd, base.Command) || cfg.Labels[exec.LabelTask] != base.Name {
		t.Errorf("config = %+v", cfg)
	}
	if h.Privileged || !slices.Equal(h.CapDrop, []string{"ALL"}) || len(h.CapAdd) != 0 || !slices.Contains(h.SecurityOpt, "no-new-privileges") || h.ReadonlyRootfs {
		t.Errorf("privileges: privileged %v capdrop %v capadd %v secopt %v", h.Privileged, h.CapDrop, h.CapAdd, h.SecurityOpt)
	}
	if h.NetworkMode != "none" {
		t.Errorf("network = %q, want none", h.NetworkMode)
	}
	if h.Memory != 8<<30 || h.NanoCPUs != 2_500_000_000 || h.PidsLimit == nil || *h.PidsLimit != exec.PidsLimit {
		t.Errorf("limits: memory %d nanocpus %d pids %v", h.Memory, h.NanoCPUs, h.PidsLimit)
	}
	if len(h.Mounts) != 1 || h.Mounts[0].Source != base.Outputs || h.Mounts[0].Target != exec.OutputsMount || h.Mounts[0].ReadOnly || h.Mounts[0].Type != "bind" {
		t.Errorf("mounts = %+v", h.Mounts)
	}

	// mock GPUs: named in the environment, no devices asked of the
	// runtime; a member of a job of several, on its job network.
	mock := base
	mock.JoinNet = func(int) error { return nil }
	cfg, h = exec.ContainerConfig(mock)
	if len(h.DeviceRequests) != 0 {
		t.Errorf("mock GPUs: DeviceRequests = %+v, want none", h.DeviceRequests)
	}
	if e := env(cfg); e["NVIDIA_VISIBLE_DEVICES"] != joined || e["CUDA_VISIBLE_DEVICES"] != joined {
		t.Errorf("mock GPUs: env = %v", cfg.Env)
	}
	if h.NetworkMode != "none" || h.NetworkMode.IsHost() {
		t.Errorf("a member of a job network: network = %q, want none (its interface is added once it runs), never the host's", h.NetworkMode)
	}

	none := base // no GPUs at all
	none.Real, none.GPUs, none.Memory, none.CPUs, none.Command = true, nil, 0, 0, nil
	cfg, h = exec.ContainerConfig(none)
	if len(h.DeviceRequests) != 0 {
		t.Errorf("no GPUs: DeviceRequests = %+v", h.DeviceRequests)
	}
	if e := env(cfg); e["NVIDIA_VISIBLE_DEVICES"] != "void" || e["CUDA_VISIBLE_DEVICES"] != "" {
		t.Errorf("no GPUs: env = %v", cfg.Env)
	}
	if cfg.Cmd != nil || h.Memory != 0 || h.NanoCPUs != 0 || h.MemorySwap != 0 {
		t.Errorf("no command/limits: cmd %v memory %d nanocpus %d swap %d", cfg.Cmd, h.Memory, h.NanoCPUs, h.MemorySwap)
	}
}

func TestDockerContainerUser(t *testing.T) {
	task := exec.Task{Name: "gpumesh-job-0", Image: TestImage, Outputs: "/o", Env: map[string]string{"A": "1"}}
	cfg, _ := exec.ContainerConfigFor(task, 0, 0)
	if cfg.User != "" || slices.ContainsFunc(cfg.Env, func(kv string) bool { return strings.HasPrefix(kv, "HOME=") }) {
		t.Errorf("a root peer: user %q env %v, want the image's user and HOME", cfg.User, cfg.Env)
	}
	cfg, _ = exec.ContainerConfigFor(task, 1000, 1001)
	if cfg.User != "1000:1001" || !slices.Contains(cfg.Env, "HOME=/tmp") || !slices.Contains(cfg.Env, "A=1") {
		t.Errorf("a peer of uid 1000: user %q env %v, want 1000:1001 and HOME=/tmp", cfg.User, cfg.Env)
	}
	if _, ok := task.Env["HOME"]; ok {
		t.Error("the task's Env was changed")
	}
	task.Env["HOME"] = "/work"
	cfg, _ = exec.ContainerConfigFor(task, 1000, 1001)
	if !slices.Contains(cfg.Env, "HOME=/work") || slices.Contains(cfg.Env, "HOME=/tmp") {
		t.Errorf("the job's HOME is not kept: %v", cfg.Env)
	}
}

func TestNewDockerNamesAnUnreachableEngine(t *testing.T) {
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(t.TempDir(), "no.sock"))
	_, err := exec.NewDocker(context.Background())
	if err == nil {
		t.Fatal("NewDocker with no engine: no error")
	}
	for _, want := range []string{"not reachable", "no.sock", "start dockerd", "DOCKER_HOST"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}
