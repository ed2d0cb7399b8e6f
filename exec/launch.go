package exec

import (
	"strconv"
	"strings"
)

// Launchers a job may name.
const (
	LauncherNone     = "none"
	LauncherTorchrun = "torchrun"
	LauncherRay      = "ray"
)

// Placement is where one member sits in its job's cluster: what a launcher
// needs to tie the members together.
type Placement struct {
	Job        string
	Launcher   string // none, torchrun or ray ("" is none)
	Rank       int    // this member, from 0
	Members    int    // members of the cluster
	GPUs       int    // this member's GPUs
	WorldGPUs  int    // GPUs of all members
	MasterAddr string // member 0's address, as the others reach it
	MasterPort int    // a port member 0 listens on for the launcher's rendezvous
}

// LaunchEnv is the environment a launcher gives a member, on top of the
// job's own.
//
// Every member gets GPUMESH_JOB, GPUMESH_RANK and GPUMESH_MEMBERS. torchrun
// gets its rendezvous in its own terms, both as the variables training
// scripts read (MASTER_ADDR, MASTER_PORT, NNODES, NODE_RANK,
// NPROC_PER_NODE, WORLD_SIZE: all GPUs) and as the PET_ variables torchrun
// takes for its flags, so `torchrun --nnodes=$NNODES --node_rank=$NODE_RANK
// --nproc_per_node=$NPROC_PER_NODE --master_addr=$MASTER_ADDR
// --master_port=$MASTER_PORT train.py` and a bare `torchrun train.py` both
// work. ray gets RAY_ADDRESS, the head's address, on every member.
func LaunchEnv(p Placement) map[string]string {
	env := map[string]string{
		"GPUMESH_JOB":     p.Job,
		"GPUMESH_RANK":    strconv.Itoa(p.Rank),
		"GPUMESH_MEMBERS": strconv.Itoa(p.Members),
	}
	if p.MasterAddr == "" {
		return env
	}
	addr, port := p.MasterAddr, strconv.Itoa(p.MasterPort)
	switch p.Launcher {
	case LauncherTorchrun:
		for k, v := range map[string]string{
			"MASTER_ADDR":    addr,
			"MASTER_PORT":    port,
			"NNODES":         strconv.Itoa(p.Members),
			"NODE_RANK":      strconv.Itoa(p.Rank),
			"NPROC_PER_NODE": strconv.Itoa(p.GPUs),
			"WORLD_SIZE":     strconv.Itoa(p.WorldGPUs),
		} {
			env[k] = v
			if k != "WORLD_SIZE" {
				env["PET_"+k] = v
			}
		}
	case LauncherRay:
		env["MASTER_ADDR"], env["MASTER_PORT"] = addr, port
		env["RAY_ADDRESS"] = joinHostPort(addr, port)
		env["NPROC_PER_NODE"] = strconv.Itoa(p.GPUs)
	}
	return env
}

// LaunchCommand is the command a member runs. For ray, member 0 starts the
// head and then runs the job's command as the driver, and the others start
// workers that join the head and block until stopped; other launchers run
// the command as it is.
func LaunchCommand(launcher string, rank int, command []string) []string {
	if launcher != LauncherRay {
		return command
	}
	if rank == 0 {
		head := `ray start --head --port="$MASTER_PORT" --node-ip-address="$MASTER_ADDR" --num-gpus="${NPROC_PER_NODE:-0}" && exec "$@"`
		return append([]string{"sh", "-c", head, "gpumesh-ray-head"}, command...)
	}
	// A worker on a job network says its own job address ($GPUMESH_ADDR):
	// its namespace has no default route for ray to find one by.
	return []string{"sh", "-c", `exec ray start --address="$RAY_ADDRESS" ${GPUMESH_ADDR:+--node-ip-address="$GPUMESH_ADDR"} --num-gpus="${NPROC_PER_NODE:-0}" --block`}
}

// EndsWithRankZero reports whether a launcher's job is over when member 0
// ends (ray: the workers block until stopped), rather than when every
// member has.
func EndsWithRankZero(launcher string) bool { return launcher == LauncherRay }

func joinHostPort(host, port string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}
