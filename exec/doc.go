// Package exec runs jobs on a provider's GPUs. It holds the three things a
// provider needs from its machine:
//
//   - the GPU inventory (gpus.go, class.go): NVIDIA's go-nvml where a driver
//     is present, or go-nvml's own mock machines (mock:dgxa100,
//     mock:dgxh100) for tests and demos; each GPU with its class
//     ("H100-80GB"), memory and utilization;
//   - the executors (executor.go): one contract, Run blocks until the work
//     and everything it made are gone, with Docker (docker.go: containers
//     with GPU device requests, no privileges, no network but their own
//     loopback unless they must meet, memory, CPU, disk and log limits,
//     bounded pulls, labelled so a restarted peer removes what it left;
//     imagecache.go: the images it pulled, removed least recently used
//     first over a cap) and plain processes (process.go: own folder, own
//     process group with a parent-death signal, an unprivileged job user;
//     procgroup.go: the group recorded and killed after a crash, the job
//     user found or made); both can pause and resume a task (unpaid work),
//     and let its submitter in (attach.go: Attacher, a command run inside
//     the running task, and a dial to a port the work listens on);
//   - the launchers' environment (launch.go): torchrun and Ray variables for
//     a multi-member job.
//
// Receipts of work, which anyone must be able to verify without linking
// NVML or the Docker client, are in exec/receipt.
package exec
