package node

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/gossip"
)

// privateSwarm is a private swarm for configs that need one.
var privateSwarm = Swarm{PSK: make([]byte, 32)}

// Whoever runs the node decides how honest its process executor can be:
// as root its jobs run as another user; as anyone else only with the
// operator's word that they run as the node's own user.
func TestConfigValidateProcessExecutorAndTheNodesUser(t *testing.T) {
	cfg := Config{Executors: []string{"process"}, Swarm: privateSwarm}
	err := cfg.validate()
	if os.Geteuid() == 0 {
		if err != nil {
			t.Fatalf("root, private swarm: %v, want nil", err)
		}
		cfg.JobsAsNodeUser = true
		if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), "jobs never run as root") {
			t.Errorf("root with --jobs-as-node-user: %v, want a refusal", err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), "could read its data dir, key.json (its wallet) included") || !strings.Contains(err.Error(), "--jobs-as-node-user") {
		t.Fatalf("not root: %v, want a refusal naming the risk and the flag", err)
	}
	cfg.JobsAsNodeUser = true
	if err := cfg.validate(); err != nil {
		t.Errorf("not root, acknowledged: %v, want nil", err)
	}
}

// Config.validate is what the local API's node and the CLI's flags are
// both held to: each refusal names the flag to fix and what it wants.
func TestConfigValidateRefusesWithTheFlagAndWhatItWants(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		flag string
		want string
	}{
		{"port below 0", Config{Port: -1}, "port", "port -1: want 0..65535"},
		{"port above 65535", Config{Port: 70000}, "port", "port 70000: want 0..65535"},
		{"dht mode", Config{DHTMode: "sometimes"}, "dht-mode", `--dht-mode: dht mode "sometimes": want auto, server or client`},
		{"explorer without port", Config{Explorer: "localhost"}, "explorer", `--explorer "localhost": want HOST:PORT`},
		{"api without data dir", Config{APIListen: "127.0.0.1:0"}, "api", "the local API needs a data dir (for its token); set --data"},
		{"api without port", Config{DataDir: "d", APIListen: "127.0.0.1"}, "api", `--api "127.0.0.1": want HOST:PORT`},
		{"metrics without port", Config{Metrics: "metrics"}, "metrics", `--metrics "metrics": want HOST:PORT`},
		{"unknown executor", Config{Executors: []string{"docker", "vm"}}, "executors", `--executors "vm": want docker, process or both (docker,process)`},
		{"empty executor", Config{Executors: []string{""}}, "executors", `--executors "": want docker, process`},
		{"process executor in the public swarm", Config{Executors: []string{"docker", "process"}}, "executors",
			"--executors process runs other peers' commands on this machine with no container, so it is only for a private swarm"},
		{"job dir in the data dir", Config{Executors: []string{"process"}, Swarm: privateSwarm, DataDir: "/d", JobDir: "/d/jobs"}, "job-dir",
			`--job-dir "/d/jobs" is inside the data dir "/d", which jobs must never see`},
		{"relative job dir", Config{Executors: []string{"process"}, Swarm: privateSwarm, JobDir: "jobs"}, "job-dir", `--job-dir "jobs": want an absolute path`},
		{"job flags without the process executor", Config{JobUser: "nobody"}, "executors", "--job-user, --job-dir and --jobs-as-node-user are for the process executor"},
		{"negative offer TTL", Config{OfferTTL: -time.Second}, "", "offer TTL -1s: want a positive duration"},
		{"price unit without decimals", Config{PriceUnit: "USDC"}, "price-unit", "--price-unit: bad price: unit \"USDC\": want TOKEN:DECIMALS"},
		{"price policy", Config{Price: "fixed:cheap"}, "price", "--price: "},
		{"price board", Config{PriceBoard: gossip.BoardConfig{Trim: 0.5}}, "", "price board: trim 0.5: want 0..0.45"},
		{"anchor batch below 0", Config{AnchorBatch: -1}, "anchor-batch", "--anchor-batch -1: want 1..100000"},
		{"anchor batch too big", Config{AnchorBatch: chain.MaxBatchSize + 1}, "anchor-batch", "--anchor-batch 100001: want 1..100000"},
		{"anchor age below 0", Config{AnchorAge: -time.Second}, "anchor-age", "--anchor-age -1s: want a positive duration"},
		{"settle interval under 1s", Config{SettleInterval: 10 * time.Millisecond}, "settle-interval", "--settle-interval 10ms: want at least 1s"},
		{"settle interval below 0", Config{SettleInterval: -time.Second}, "settle-interval", "--settle-interval -1s: want at least 1s"},
		{"heartbeat under 10ms", Config{Heartbeat: 5 * time.Millisecond}, "heartbeat", "--heartbeat 5ms: want at least 10ms"},
		{"heartbeat below 0", Config{Heartbeat: -time.Second}, "heartbeat", "--heartbeat -1s: want at least 10ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.validate()
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a *ConfigError", err)
			}
			if ce.Flag != tc.flag || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %q for flag %q, want %q for flag %q", err, ce.Flag, tc.want, tc.flag)
			}
			// New refuses what validate refuses, before anything is parsed.
			if _, err := New(tc.cfg); !errors.As(err, &ce) || ce.Flag != tc.flag {
				t.Fatalf("New: err = %v, want the ConfigError of %q", err, tc.flag)
			}
		})
	}
}

func TestConfigValidateTakesZeroValuesAndBounds(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Executors: []string{"docker", "process"}, Swarm: privateSwarm, JobDir: "/var/lib/j", JobsAsNodeUser: os.Geteuid() != 0, Heartbeat: MinHeartbeat, SettleInterval: MinSettleInterval,
			AnchorBatch: chain.MaxBatchSize, AnchorAge: time.Minute, Port: 65535, DHTMode: "client",
			DataDir: "d", APIListen: "127.0.0.1:0", Metrics: ":9100", Explorer: "127.0.0.1:8080",
			PriceUnit: "SOL:9", Price: "auto:floor=0.5,target=0.7"},
	} {
		if err := cfg.validate(); err != nil {
			t.Errorf("validate(%+v) = %v, want nil", cfg, err)
		}
	}
}

func TestConfigValidateReportsEveryProblemAtOnce(t *testing.T) {
	err := (&Config{Heartbeat: time.Millisecond, Executors: []string{"vm"}, SettleInterval: time.Millisecond}).validate()
	for _, want := range []string{"--heartbeat", "--executors", "--settle-interval"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to name %s", err, want)
		}
	}
}
