// The layout tests check the shape of the module: the import graph the
// design card draws (cmd -> node -> {dht, gossip, exec, chain}, the four
// never importing each other) and a doc comment on every package.

package node_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/gpumesh/gpumesh"

type pkg struct {
	ImportPath string
	Doc        string
	Imports    []string
	Name       string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 6 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

// layer names the top-level folder of a package of this module.
func layer(path string) string {
	rest := strings.TrimPrefix(strings.TrimPrefix(path, module), "/")
	first, _, _ := strings.Cut(rest, "/")
	return first
}

func TestImportGraphFollowsTheDesign(t *testing.T) {
	capability := map[string]bool{"dht": true, "gossip": true, "exec": true, "chain": true}
	allowed := map[string]map[string]bool{
		"cmd":    {"cmd": true, "node": true, "dht": true, "gossip": true, "exec": true, "chain": true, "internal": true},
		"node":   {"node": true, "dht": true, "gossip": true, "exec": true, "chain": true, "internal": true},
		"dht":    {"dht": true, "internal": true},
		"gossip": {"gossip": true, "internal": true},
		"exec":   {"exec": true, "internal": true},
		"chain":  {"chain": true, "internal": true},
	}
	for _, p := range listPackages(t) {
		from := layer(p.ImportPath)
		ok, known := allowed[from]
		if !known {
			continue // internal/ and the like
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			to := layer(imp)
			if !ok[to] {
				t.Errorf("%s imports %s: %s may not import %s", p.ImportPath, imp, from, to)
			}
			if capability[from] && capability[to] && from != to {
				t.Errorf("%s imports %s: capability packages do not import each other; pass what is needed through node", p.ImportPath, imp)
			}
		}
	}
}

func TestEveryPackageHasADocComment(t *testing.T) {
	for _, p := range listPackages(t) {
		if p.Name == "main" && strings.HasSuffix(p.ImportPath, "/cmd/gpumesh") && p.Doc != "" {
			continue
		}
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no doc comment", p.ImportPath)
		}
	}
}

func TestOnlyExecImportsNVML(t *testing.T) {
	found := false
	for _, p := range listPackages(t) {
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, "github.com/NVIDIA/go-nvml") {
				continue
			}
			if layer(p.ImportPath) != "exec" {
				t.Errorf("%s imports %s: only exec may use go-nvml (it needs cgo)", p.ImportPath, imp)
			}
			found = found || layer(p.ImportPath) == "exec"
		}
	}
	if !found {
		t.Error("exec does not import go-nvml: where do GPUs come from?")
	}
}

func TestOnlyChainTalksToSolana(t *testing.T) {
	found := false
	for _, p := range listPackages(t) {
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, "github.com/gagliardetto/solana-go") {
				continue
			}
			if p.ImportPath != module+"/chain" {
				t.Errorf("%s imports %s: only the chain package may use solana-go", p.ImportPath, imp)
			}
			found = true
		}
	}
	if !found {
		t.Error("chain does not import solana-go: how are proofs anchored?")
	}
}

// deps lists every package a package links, itself included.
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

func TestOnlyExecImportsDocker(t *testing.T) {
	found := false
	for _, p := range listPackages(t) {
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, "github.com/docker/") {
				continue
			}
			if p.ImportPath != module+"/exec" && p.ImportPath != module+"/internal/testdocker" {
				t.Errorf("%s imports %s: only the exec package (and the tests' engine kit) may use the Docker client", p.ImportPath, imp)
			}
			found = true
		}
	}
	if !found {
		t.Error("exec does not import the Docker client: how do containers run?")
	}
}

// The pure pieces (a job spec, the job protocol's frames, receipts, the run
// attempt machine, the job store) link no GPU, container or Solana code and
// no node, so a verifier, a client or a test can use them alone.
func TestPurePackagesLinkNoNodeGPUOrContainerCode(t *testing.T) {
	heavy := []string{"github.com/NVIDIA/go-nvml", "github.com/docker/", "github.com/gagliardetto/solana-go", module + "/node", module + "/exec", module + "/chain"}
	for _, pure := range []string{"node/jobspec", "node/jobwire", "node/attempt", "node/jobstore", "node/reputation", "node/jobqueue", "node/images", "exec/receipt"} {
		for _, d := range deps(t, module+"/"+pure) {
			if d == module+"/"+pure || strings.HasPrefix(d, module+"/"+pure+"/") {
				continue
			}
			for _, h := range heavy {
				if d == h || strings.HasPrefix(d, h+"/") || (strings.HasSuffix(h, "/") && strings.HasPrefix(d, h)) {
					if d == module+"/exec/receipt" || d == module+"/node/jobspec" {
						continue // pure themselves
					}
					t.Errorf("%s links %s", pure, d)
				}
			}
		}
	}
}
