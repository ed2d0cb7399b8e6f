package exec

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// GPU is one device as NVML sees it.
type GPU struct {
	Index             int    `json:"index"`
	UUID              string `json:"uuid"`
	Name              string `json:"name"`              // NVML product name, e.g. "NVIDIA H100 80GB HBM3"
	Class             string `json:"class"`             // canonical class, e.g. "H100-80GB"
	MemoryTotal       uint64 `json:"memoryTotal"`       // bytes
	MemoryFree        uint64 `json:"memoryFree"`        // bytes
	ComputeCapability string `json:"computeCapability"` // e.g. "9.0"
	MIG               bool   `json:"mig"`               // MIG mode on
	Utilization       int    `json:"utilization"`       // percent busy over NVML's last sample period; -1 if unknown
}

// Machine describes the host beside its GPUs.
type Machine struct {
	OS          string `json:"os"`
	Arch        string `json:"arch"`
	CPUs        int    `json:"cpus"`
	MemoryBytes uint64 `json:"memoryBytes"`
	Driver      string `json:"driver,omitempty"` // NVIDIA driver version
	CUDA        string `json:"cuda,omitempty"`   // highest CUDA version the driver supports, e.g. "12.4"
}

// Inventory is what a peer has to offer.
type Inventory struct {
	Source  string  `json:"source"` // "nvml", "mock:dgxa100", "none"
	Machine Machine `json:"machine"`
	GPUs    []GPU   `json:"gpus"`
	Note    string  `json:"note,omitempty"` // why there are no GPUs, when there are none
}

// GPUSource reads the GPUs of this host. Inventory may be called from any
// goroutine; Close releases NVML and is safe to call twice.
type GPUSource interface {
	Inventory() (Inventory, error)
	Close() error
}

// GPU source specs for OpenGPUs.
const (
	GPUsAuto = "auto" // NVML if the driver is there, else none
	GPUsNVML = "nvml" // NVML, and an error without it
	GPUsNone = "none" // offer nothing
)

// mocks are go-nvml's own mock machines, for tests and demos without GPUs.
var mocks = map[string]func() *server.Server{
	"mock:dgxa100": dgxa100.New, // 8x A100-SXM4-40GB
	"mock:dgxh100": dgxh100.New, // 8x H100 80GB HBM3
}

// ErrNoDriver means the NVIDIA driver's NVML library is not on this host:
// normal on a peer without NVIDIA GPUs.
var ErrNoDriver = errors.New("exec: no NVIDIA driver (libnvidia-ml.so.1 not found)")

// OpenGPUs opens the GPU source named by spec: "auto" (or ""), "nvml",
// "none", "mock:dgxa100" or "mock:dgxh100".
func OpenGPUs(spec string) (GPUSource, error) {
	switch spec {
	case "", GPUsAuto:
		// Any NVML failure (no library, driver not loaded, no permission,
		// a driver/library mismatch) leaves a peer without GPUs, not down.
		src, err := openNVML()
		if err != nil {
			return noGPUs{note: err.Error() + ": this peer offers no GPUs"}, nil
		}
		return src, nil
	case GPUsNVML:
		return openNVML()
	case GPUsNone:
		return noGPUs{note: "GPUs turned off (--gpus none)"}, nil
	}
	if mk, ok := mocks[spec]; ok {
		srv := mk()
		idle(srv)
		return &nvmlSource{lib: srv, name: spec}, nil
	}
	return nil, fmt.Errorf("--gpus %q: want auto, nvml, none, mock:dgxa100 or mock:dgxh100", spec)
}

// idle fills in what go-nvml's mock machines leave out, so they look like
// idle GPUs: all memory free and no utilization.
func idle(srv *server.Server) {
	for _, d := range srv.Devices {
		md, ok := d.(*server.Device)
		if !ok {
			continue
		}
		md.MemoryInfo.Free = md.MemoryInfo.Total
		if md.GetUtilizationRatesFunc == nil {
			md.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.SUCCESS }
		}
	}
}

func openNVML() (GPUSource, error) {
	lib := nvml.New()
	if ret := lib.Init(); ret != nvml.SUCCESS {
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND {
			return nil, ErrNoDriver
		}
		return nil, fmt.Errorf("exec: NVML init: %s", lib.ErrorString(ret))
	}
	return &nvmlSource{lib: lib, name: GPUsNVML, shutdown: true}, nil
}

// nvmlSource reads GPUs through an nvml.Interface: the real library or one
// of go-nvml's mocks.
type nvmlSource struct {
	lib      nvml.Interface
	name     string
	shutdown bool       // call Shutdown on Close (the real library)
	mu       sync.Mutex // NVML calls are serialized; the mocks are not safe for concurrent use
	closed   bool
}

var _ GPUSource = (*nvmlSource)(nil)

func (s *nvmlSource) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.shutdown {
		if ret := s.lib.Shutdown(); ret != nvml.SUCCESS {
			return fmt.Errorf("exec: NVML shutdown: %s", nvml.ErrorString(ret))
		}
	}
	return nil
}

func (s *nvmlSource) Inventory() (Inventory, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Inventory{}, errors.New("exec: GPU source closed")
	}
	inv := Inventory{Source: s.name, Machine: machine(), GPUs: []GPU{}}
	if v, ret := s.lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		inv.Machine.Driver = v
	}
	if v, ret := s.lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
		inv.Machine.CUDA = fmt.Sprintf("%d.%d", v/1000, v%1000/10)
	}
	n, ret := s.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return inv, fmt.Errorf("exec: NVML device count: %s", nvml.ErrorString(ret))
	}
	for i := range n {
		// A GPU that fails (fell off the bus, say) is left out and named in
		// the note; the others are still offered.
		var g GPU
		d, ret := s.lib.DeviceGetHandleByIndex(i)
		err := error(nil)
		if ret != nvml.SUCCESS {
			err = fmt.Errorf("exec: NVML device %d: %s", i, nvml.ErrorString(ret))
		} else {
			g, err = readGPU(i, d)
		}
		if err != nil {
			inv.Note = strings.TrimPrefix(inv.Note+"; "+err.Error(), "; ")
			continue
		}
		inv.GPUs = append(inv.GPUs, g)
	}
	if n == 0 {
		inv.Note = "NVML found no GPUs"
	}
	return inv, nil
}

func readGPU(i int, d nvml.Device) (GPU, error) {
	g := GPU{Index: i, Utilization: -1}
	var ret nvml.Return
	fail := func(what string) (GPU, error) {
		return GPU{}, fmt.Errorf("exec: NVML device %d %s: %s", i, what, nvml.ErrorString(ret))
	}
	if g.Name, ret = d.GetName(); ret != nvml.SUCCESS {
		return fail("name")
	}
	if g.UUID, ret = d.GetUUID(); ret != nvml.SUCCESS {
		return fail("UUID")
	}
	mem, ret := d.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return fail("memory")
	}
	g.MemoryTotal, g.MemoryFree = mem.Total, mem.Free
	major, minor, ret := d.GetCudaComputeCapability()
	if ret != nvml.SUCCESS {
		return fail("compute capability")
	}
	g.ComputeCapability = fmt.Sprintf("%d.%d", major, minor)
	// MIG and utilization are not supported everywhere (consumer cards, some
	// mocks): absent is not an error.
	if cur, _, ret := d.GetMigMode(); ret == nvml.SUCCESS {
		g.MIG = cur == nvml.DEVICE_MIG_ENABLE
	}
	if u, ret := d.GetUtilizationRates(); ret == nvml.SUCCESS {
		g.Utilization = int(u.Gpu)
	}
	g.Class = Class(g.Name, g.MemoryTotal)
	return g, nil
}

// noGPUs is the source of a peer that offers nothing.
type noGPUs struct{ note string }

func (n noGPUs) Inventory() (Inventory, error) {
	return Inventory{Source: GPUsNone, Machine: machine(), GPUs: []GPU{}, Note: n.note}, nil
}

func (noGPUs) Close() error { return nil }

// machine describes the host: OS, arch, CPUs and memory (from /proc/meminfo).
func machine() Machine {
	m := Machine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU()}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			var kb uint64
			if _, err := fmt.Sscanf(line, "MemTotal: %d kB", &kb); err == nil {
				m.MemoryBytes = kb * 1024
				break
			}
		}
	}
	return m
}
