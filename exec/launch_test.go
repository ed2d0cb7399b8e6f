package exec_test

import (
	"reflect"
	"strconv"
	"testing"

	"github.com/gpumesh/gpumesh/exec"
)

const launchJob = "0123456789abcdef0123456789abcdef"

// launchCluster is the placements of a job over three members of 8, 8 and 4
// GPUs whose member 0 listens at addr:29500.
func launchCluster(launcher, addr string) []exec.Placement {
	gpus := []int{8, 8, 4}
	ps := make([]exec.Placement, len(gpus))
	for rank, g := range gpus {
		ps[rank] = exec.Placement{
			Job:        launchJob,
			Launcher:   launcher,
			Rank:       rank,
			Members:    len(gpus),
			GPUs:       g,
			WorldGPUs:  20,
			MasterAddr: addr,
			MasterPort: 29500,
		}
	}
	return ps
}

func gpumeshEnv(rank, members int) map[string]string {
	return map[string]string{
		"GPUMESH_JOB":     launchJob,
		"GPUMESH_RANK":    strconv.Itoa(rank),
		"GPUMESH_MEMBERS": strconv.Itoa(members),
	}
}

func TestLaunchEnvTorchrun(t *testing.T) {
	for _, p := range launchCluster(exec.LauncherTorchrun, "10.0.0.1") {
		rank, nproc := strconv.Itoa(p.Rank), strconv.Itoa(p.GPUs)
		want := gpumeshEnv(p.Rank, 3)
		for k, v := range map[string]string{
			"MASTER_ADDR":        "10.0.0.1",
			"MASTER_PORT":        "29500",
			"NNODES":             "3",
			"NODE_RANK":          rank,
			"NPROC_PER_NODE":     nproc,
			"WORLD_SIZE":         "20", // all GPUs, not members
			"PET_MASTER_ADDR":    "10.0.0.1",
			"PET_MASTER_PORT":    "29500",
			"PET_NNODES":         "3",
			"PET_NODE_RANK":      rank,
			"PET_NPROC_PER_NODE": nproc,
		} {
			want[k] = v
		}
		got := exec.LaunchEnv(p)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("rank %d:\n got %v\nwant %v", p.Rank, got, want)
		}
		if _, ok := got["PET_WORLD_SIZE"]; ok {
			t.Errorf("rank %d: PET_WORLD_SIZE set; torchrun has no such flag", p.Rank)
		}
		if _, ok := got["RAY_ADDRESS"]; ok {
			t.Errorf("rank %d: RAY_ADDRESS set for torchrun", p.Rank)
		}
	}
}

func TestLaunchEnvNone(t *testing.T) {
	for _, launcher := range []string{exec.LauncherNone, ""} {
		for _, p := range launchCluster(launcher, "10.0.0.1") {
			if got, want := exec.LaunchEnv(p), gpumeshEnv(p.Rank, 3); !reflect.DeepEqual(got, want) {
				t.Errorf("launcher %q, rank %d:\n got %v\nwant %v", launcher, p.Rank, got, want)
			}
		}
	}
	// With no master, as on a single member, every launcher gets only the
	// job's own variables.
	for _, launcher := range []string{exec.LauncherNone, exec.LauncherTorchrun, exec.LauncherRay} {
		p := exec.Placement{Job: launchJob, Launcher: launcher, Members: 1, GPUs: 2, WorldGPUs: 2}
		if got, want := exec.LaunchEnv(p), gpumeshEnv(0, 1); !reflect.DeepEqual(got, want) {
			t.Errorf("launcher %q without a master:\n got %v\nwant %v", launcher, got, want)
		}
	}
}

func TestLaunchEnvRay(t *testing.T) {
	for _, c := range []struct{ addr, ray string }{
		{"10.0.0.1", "10.0.0.1:29500"},
		{"head.example", "head.example:29500"},
		{"fd00::1", "[fd00::1]:29500"},
		{"2001:db8::7", "[2001:db8::7]:29500"},
	} {
		for _, p := range launchCluster(exec.LauncherRay, c.addr) {
			want := gpumeshEnv(p.Rank, 3)
			want["RAY_ADDRESS"] = c.ray
			want["MASTER_ADDR"] = c.addr
			want["MASTER_PORT"] = "29500"
			want["NPROC_PER_NODE"] = strconv.Itoa(p.GPUs)
			if got := exec.LaunchEnv(p); !reflect.DeepEqual(got, want) {
				t.Errorf("master %s, rank %d:\n got %v\nwant %v", c.addr, p.Rank, got, want)
			}
		}
	}
}

func TestLaunchCommand(t *testing.T) {
	command := []string{"python", "driver.py", "--epochs", "3"}

	head := exec.LaunchCommand(exec.LauncherRay, 0, command)
	if len(head) != 4+len(command) || head[0] != "sh" || head[1] != "-c" || head[3] != "gpumesh-ray-head" {
		t.Fatalf("ray head: %q", head)
	}
	wantScript := `ray start --head --port="$MASTER_PORT" --node-ip-address="$MASTER_ADDR" --num-gpus="${NPROC_PER_NODE:-0}" && exec "$@"`
	if head[2] != wantScript {
		t.Fatalf("ray head script %q, want %q", head[2], wantScript)
	}
	if !reflect.DeepEqual(head[4:], command) {
		t.Fatalf("ray head runs %q as the driver, want %q", head[4:], command)
	}

	wantWorker := []string{"sh", "-c", `exec ray start --address="$RAY_ADDRESS" ${GPUMESH_ADDR:+--node-ip-address="$GPUMESH_ADDR"} --num-gpus="${NPROC_PER_NODE:-0}" --block`}
	for _, rank := range []int{1, 2, 4095} {
		if got := exec.LaunchCommand(exec.LauncherRay, rank, command); !reflect.DeepEqual(got, wantWorker) {
			t.Fatalf("ray worker %d: %q, want %q", rank, got, wantWorker)
		}
	}

	// Other launchers run the command as it is.
	for _, launcher := range []string{exec.LauncherNone, exec.LauncherTorchrun, ""} {
		for _, rank := range []int{0, 1, 2} {
			if got := exec.LaunchCommand(launcher, rank, command); !reflect.DeepEqual(got, command) {
				t.Errorf("launcher %q, rank %d: %q, want %q", launcher, rank, got, command)
			}
		}
		if got := exec.LaunchCommand(launcher, 0, nil); got != nil {
			t.Errorf("launcher %q: no command became %q", launcher, got)
		}
	}
}

func TestLaunchEndsWithRankZero(t *testing.T) {
	for launcher, want := range map[string]bool{
		exec.LauncherRay:      true,
		exec.LauncherTorchrun: false,
		exec.LauncherNone:     false,
		"":                    false,
	} {
		if got := exec.EndsWithRankZero(launcher); got != want {
			t.Errorf("EndsWithRankZero(%q) = %v, want %v", launcher, got, want)
		}
	}
}
