// Package exec runs jobs on a provider's GPUs: the GPU inventory (NVIDIA
// go-nvml), the Docker and process executors, metering and receipts of work.
// It is filled in by the directory and exec issues.
package exec
