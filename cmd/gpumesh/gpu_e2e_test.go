package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	gpuexec "github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
)

// On a machine with an NVIDIA driver and GPUs (never CI's: there it
// skips), the whole path on real GPUs: a provider finds them through NVML
// (--gpus nvml), lists them as NVML reads them, publishes them, a peer
// without GPUs finds them, and a process job it submits runs on one of
// them as the job user, seeing that GPU and reaching it through the
// driver. `make gpu-check` builds this test and the binary to run where
// there is no go tool.
func TestRealGPUsEndToEnd(t *testing.T) {
	src, err := gpuexec.OpenGPUs(gpuexec.GPUsNVML)
	if err != nil {
		t.Skipf("no NVIDIA driver on this machine (%v): this test runs on a GPU machine (make gpu-check)", err)
	}
	inv, err := src.Inventory()
	_ = src.Close()
	if err != nil || len(inv.GPUs) == 0 {
		t.Skipf("NVML lists no GPUs here (%v, %q)", err, inv.Note)
	}
	smi, err := exec.LookPath("nvidia-smi")
	if err != nil {
		t.Fatalf("the driver is here but nvidia-smi is not on PATH: %v", err)
	}
	uuids := map[string]string{} // UUID -> class, as NVML lists them
	for _, g := range inv.GPUs {
		uuids[g.UUID] = g.Class
	}
	class := inv.GPUs[0].Class
	want := 0
	for _, g := range inv.GPUs {
		if g.Class == class {
			want++
		}
	}
	t.Logf("NVML: %d GPUs, driver %s (CUDA %s); %d of class %s", len(inv.GPUs), inv.Machine.Driver, inv.Machine.CUDA, want, class)

	common := append([]string{"--nat=false", "--dht-mode", "server"}, privateSwarm(t)...)
	_, jobFlags := jobDir(t)
	prov := startNode(t, "provider", dataDir(t), append(append(slices.Clone(common),
		"--gpus", "nvml", "--price", "fixed:2.10", "--executors", "process"), jobFlags...)...)

	var local node.LocalGPUs
	if err := gmJSON(prov.data, &local, "gpus", "local"); err != nil {
		t.Fatal(err)
	}
	if local.Inventory.Source != gpuexec.GPUsNVML || len(local.Inventory.GPUs) != len(inv.GPUs) {
		t.Fatalf("gpus local: source %q, %d GPUs; want nvml and the %d NVML lists", local.Inventory.Source, len(local.Inventory.GPUs), len(inv.GPUs))
	}
	for _, g := range local.Inventory.GPUs {
		if c, ok := uuids[g.UUID]; !ok || c != g.Class || g.MemoryTotal == 0 {
			t.Errorf("gpus local lists %s (%s, %d bytes), not as NVML does", g.UUID, g.Class, g.MemoryTotal)
		}
	}

	sub := startNode(t, "submitter", dataDir(t), append(slices.Clone(common), "--gpus", "none", "--bootstrap", prov.bootstrapAddr(t))...)
	testwait.For(t, meshWait, "the provider's GPUs found", func() (bool, string) {
		res, err := findGPUs(sub.data, "--model", class)
		if err != nil {
			return false, err.Error()
		}
		return res.Providers == 1 && res.GPUs == want, fmt.Sprintf("%d providers, %d GPUs", res.Providers, res.GPUs)
	})

	script := fmt.Sprintf(`echo "visible=$CUDA_VISIBLE_DEVICES world=$WORLD_SIZE"; %q --query-gpu=uuid,name --format=csv,noheader -i "$CUDA_VISIBLE_DEVICES"`, smi)
	spec := filepath.Join(t.TempDir(), "job.yaml")
	y := fmt.Sprintf("name: gpu-check\ncommand: [sh, -c, %q]\nresources: {gpus: 1, gpu: {model: %s}}\nlauncher: torchrun\nmaxPrice: 2.50\ntimeout: 2m\n", script, class)
	if err := os.WriteFile(spec, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := gm(sub.data, "job", "submit", spec, "-f")
	text := string(out)
	t.Logf("the job's output:\n%s", text)
	if err != nil {
		t.Fatalf("the job failed: %v", err)
	}
	m := regexp.MustCompile(`visible=(GPU-[0-9a-f-]+) world=1`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("the job saw no GPU UUID in CUDA_VISIBLE_DEVICES, or a world size other than 1")
	}
	if uuids[m[1]] != class {
		t.Fatalf("the job was given %s, not one of the provider's %s GPUs", m[1], class)
	}
	if !strings.Contains(text, m[1]+", ") {
		t.Fatalf("nvidia-smi, run by the job as the job user, did not list its GPU %s", m[1])
	}
}
