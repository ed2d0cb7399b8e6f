# gpumesh: build, run and test a peer of the GPU compute mesh.
GO       ?= go
BIN      ?= bin/gpumesh
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/gpumesh/gpumesh/node.Version=$(VERSION)
DATA     ?= $(HOME)/.gpumesh
FUZZTIME ?= 15s
# go-nvml's cgo header marks old NVML calls deprecated; we call none of them.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

.PHONY: all build run demo test gpu-check gpu-check-build race lint bench bench-scale bench-scale-virtual scale-docs fuzz clean localnet

all: build

build: ## the gpumesh binary in bin/
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/gpumesh

run: build ## one peer with its data dir in $(DATA) (more flags: ARGS=...); Ctrl-C stops it
	$(BIN) --data $(DATA) node $(ARGS)

demo: build chain/localnet/node_modules ## a whole swarm on this machine and a job through it, end to end; then it keeps running until Ctrl-C (ARGS=--exit to stop after)
	$(BIN) demo $(ARGS)

chain/localnet/node_modules: chain/localnet/package-lock.json
	npm ci --prefix chain/localnet --no-audit --no-fund

test: ## what CI runs: every test, with the race detector
	$(GO) test -race -count=1 -timeout 15m ./...

gpu-check-build: build ## gpu-check's test, compiled into bin/ to carry to a GPU machine without the go tool (with bin/gpumesh)
	$(GO) test -c -trimpath -ldflags '-s -w' -o bin/gpumesh-e2e.test ./cmd/gpumesh

gpu-check: gpu-check-build ## on a machine with an NVIDIA driver: the real GPUs through NVML, published, found, a process job on one (skips without a driver); elsewhere: GPUMESH_E2E_BIN=bin/gpumesh bin/gpumesh-e2e.test -test.run RealGPUs -test.v
	GPUMESH_E2E_BIN=$(BIN) bin/gpumesh-e2e.test -test.run TestRealGPUsEndToEnd -test.v -test.timeout 5m

localnet: ## npm packages of the local Solana RPC that the chain tests run against (chain/localnet; Node.js >= 20.18)
	npm ci --prefix chain/localnet --no-audit --no-fund

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

bench: ## benchmarks: peer startup and RSS, mesh formation, price ticks at 100/500 peers, directory lookups at 100/1,000 peers, cluster formation on 50 peers (also under a flood of 10,000 requests for bids), 1,000 sequential jobs from one submitter; behind NAT (network namespaces, root): first log byte across two NATs, one relay holding 100 NATed peers' reservations (GPUMESH_BENCH_NATED), 20 peers on 0 ms and 50 ms ± 10 ms / 1% loss links (GPUMESH_BENCH_WAN_PEERS, GPUMESH_BENCH_WAN_FORMS; netem, or netlab's own NFQUEUE delay without it)
	$(GO) test -run '^$$' -bench . -skip 'SequentialJobs|Scale|NATFirstLogByte|RelayService|WANLinks' -benchtime 5x -timeout 30m ./cmd/... ./node/meshtest/... ./gossip/... ./exec/... ./chain/...
	$(GO) test -run '^$$' -bench 'NATFirstLogByte|WANLinks' -benchtime 3x -timeout 30m ./cmd/gpumesh/
	$(GO) test -run '^$$' -bench RelayService -benchtime 1x -timeout 30m ./cmd/gpumesh/
	$(GO) test -run '^$$' -bench SequentialJobs -benchtime 1000x -timeout 30m ./cmd/gpumesh/
	$(GO) test -run '^$$' -bench . -benchtime 50x -timeout 30m ./dht/... ./node/

SCALE ?= 1000
SCALEFLAGS ?=
bench-scale: ## whole nodes at SCALE peers (e.g. SCALE=1000,3000,10000) on 20 ms simulated links: lookups, price ticks, formation, memory and bandwidth per peer (docs/scale.md); progress on stderr; figures appended to docs/scale.jsonl; SCALEFLAGS adds flags (-scale.profile DIR, -scale.note "...")
	GODEBUG=adaptivestackstart=0 $(GO) test -run '^$$' -bench Scale -benchtime 1x -timeout 3h ./node/meshtest/ -scale.peers $(SCALE) -scale.out $(CURDIR)/docs/scale.jsonl $(SCALEFLAGS)

bench-scale-virtual: ## as bench-scale, in virtual time (testing/synctest): the figures are the protocol's on the simulated links, however long this machine's CPU takes (3,000 peers: 49 min on 2 cores, 19 GB: GOGC=25 GOMEMLIMIT=19GiB); the jobs run `true`
	GODEBUG=adaptivestackstart=0 $(GO) test -run '^TestScaleVirtual$$' -v -timeout 3h ./node/meshtest/ -scale.virtual -scale.peers $(SCALE) -scale.out $(CURDIR)/docs/scale.jsonl $(SCALEFLAGS)

scale-docs: ## rewrite docs/scale.md's table and docs/scale.svg from docs/scale.jsonl (bench-scale does it after each run)
	$(GO) run ./cmd/scaledoc

fuzz: ## each fuzz target for $(FUZZTIME)
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; done

clean:
	rm -rf bin
