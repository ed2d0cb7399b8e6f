package exec

import (
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

func TestClassNamesAreCanonical(t *testing.T) {
	const gib = 1 << 30
	for _, tc := range []struct {
		name string
		mem  uint64
		want string
	}{
		{"NVIDIA H100 80GB HBM3", 81559 << 20, "H100-80GB"},
		{"NVIDIA A100-SXM4-40GB", 40536 << 20, "A100-40GB"},
		{"Mock NVIDIA A100-SXM4-40GB", 40 * gib, "A100-40GB"},
		{"NVIDIA A100-SXM4-80GB", 81920 << 20, "A100-80GB"},
		{"NVIDIA H200", 143771 << 20, "H200-141GB"},
		{"NVIDIA GeForce RTX 4090", 24564 << 20, "RTX4090-24GB"},
		{"NVIDIA RTX A6000", 49140 << 20, "RTXA6000-48GB"},
		{"Tesla T4", 15360 << 20, "T4-15GB"},
		{"NVIDIA L40S", 46068 << 20, "L40S-45GB"},
		{"NVIDIA A10G", 23028 << 20, "A10G-23GB"},
	} {
		if got := Class(tc.name, tc.mem); got != tc.want {
			t.Errorf("Class(%q, %d MiB) = %q, want %q", tc.name, tc.mem>>20, got, tc.want)
		}
	}
}

func TestMockMachinesLookLikeDGXs(t *testing.T) {
	for _, tc := range []struct {
		spec, class, cc string
	}{
		{"mock:dgxa100", "A100-40GB", "8.0"},
		{"mock:dgxh100", "H100-80GB", "9.0"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			src, err := OpenGPUs(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			inv, err := src.Inventory()
			if err != nil {
				t.Fatal(err)
			}
			if len(inv.GPUs) != 8 || inv.Source != tc.spec {
				t.Fatalf("%d GPUs from %q, want 8 from %q", len(inv.GPUs), inv.Source, tc.spec)
			}
			uuids := map[string]bool{}
			for _, g := range inv.GPUs {
				if g.Class != tc.class || g.ComputeCapability != tc.cc || g.MemoryFree != g.MemoryTotal || g.Utilization != 0 {
					t.Errorf("GPU %d = %+v, want an idle %s with compute %s", g.Index, g, tc.class, tc.cc)
				}
				uuids[g.UUID] = true
			}
			if len(uuids) != 8 {
				t.Errorf("%d distinct UUIDs, want 8", len(uuids))
			}
			if inv.Machine.Driver == "" || inv.Machine.CUDA != "12.4" || inv.Machine.CPUs < 1 {
				t.Errorf("machine = %+v, want driver, CUDA 12.4 and CPUs", inv.Machine)
			}
			if err := src.Close(); err != nil {
				t.Fatal(err)
			}
			if err := src.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if _, err := src.Inventory(); err == nil {
				t.Fatal("Inventory after Close succeeded")
			}
		})
	}
}

func TestNoDriverIsNotAnError(t *testing.T) {
	// This machine has no NVIDIA driver (CI never does): auto gives an empty
	// inventory that says why; nvml insists and fails.
	src, err := OpenGPUs(GPUsAuto)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := src.Inventory()
	if err != nil {
		t.Fatal(err)
	}
	if inv.Source == GPUsNVML {
		t.Skip("this machine has an NVIDIA driver")
	}
	if len(inv.GPUs) != 0 || !strings.Contains(inv.Note, "libnvidia-ml") {
		t.Fatalf("inventory without a driver = %+v, want no GPUs and a note naming libnvidia-ml", inv)
	}
	if _, err := OpenGPUs(GPUsNVML); err != ErrNoDriver {
		t.Fatalf("OpenGPUs(nvml) without a driver: err = %v, want ErrNoDriver", err)
	}
}

func TestOpenGPUsRejectsUnknownSpec(t *testing.T) {
	_, err := OpenGPUs("mock:dgx1")
	if err == nil || !strings.Contains(err.Error(), "mock:dgxa100") {
		t.Fatalf("err = %v, want the list of valid specs", err)
	}
}

func TestAFailingGPUIsLeftOutAndNamed(t *testing.T) {
	srv := dgxa100.New()
	idle(srv)
	bad := srv.Devices[3].(*server.Device)
	bad.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST }
	src := &nvmlSource{lib: srv, name: "mock:dgxa100"}
	inv, err := src.Inventory()
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.GPUs) != 7 || !strings.Contains(inv.Note, "device 3 memory") {
		t.Fatalf("%d GPUs, note %q; want the 7 healthy ones and a note naming device 3", len(inv.GPUs), inv.Note)
	}
	for _, g := range inv.GPUs {
		if g.Index == 3 {
			t.Fatal("the lost GPU is in the inventory")
		}
	}
}
