package exec

import (
	"fmt"
	"math"
	"regexp"
	"strings"
)

// familyRE finds the GPU family in an NVML product name: A100, H100, H200,
// B200, L40S, A10G, T4, V100, RTX 4090, RTX A6000, ...
var familyRE = regexp.MustCompile(`(?i)\b(RTX\s?[A-Z]?\d{4}(?:\s?Ti)?|[A-Z]{1,2}\d{1,4}[A-Z]?)\b`)

// Class is the canonical name of a GPU kind in offers, prices and jobs:
// the family and the memory in whole GB, e.g. "H100-80GB", "A100-40GB",
// "RTX4090-24GB". Two GPUs of one class can stand in for each other.
func Class(productName string, memoryBytes uint64) string {
	return Model(productName) + "-" + fmt.Sprint(VRAMGB(memoryBytes)) + "GB"
}

// Model is the family part of a class: "NVIDIA H100 80GB HBM3" gives "H100".
func Model(productName string) string {
	name := strings.TrimSpace(productName)
	for _, p := range []string{"Mock ", "NVIDIA ", "GeForce ", "Tesla ", "Quadro "} {
		name = strings.TrimSpace(strings.TrimPrefix(name, p))
	}
	m := familyRE.FindString(name)
	if m == "" {
		m = strings.Fields(name + " GPU")[0]
	}
	return strings.ToUpper(strings.ReplaceAll(m, " ", ""))
}

// VRAMGB is a memory size in whole GB as a vendor prints it. NVML reports
// less than the label (an "80GB" H100 has 79.6 GiB, a "141GB" H200 140.4 GiB,
// a "24GB" RTX 4090 23.99 GiB), so the size in GiB is rounded up.
func VRAMGB(memoryBytes uint64) uint32 {
	return uint32(math.Ceil(float64(memoryBytes)/(1<<30) - 0.01))
}
