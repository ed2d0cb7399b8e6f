package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrDataDirInUse is returned when another running node holds the data dir.
var ErrDataDirInUse = errors.New("data dir in use")

// DefaultPort is the TCP (and QUIC/UDP) port a peer listens on unless the
// config or --listen says otherwise.
const DefaultPort = 4021

// Files inside a data dir.
const (
	keyFile      = "key.json"    // Solana CLI keypair: the peer's identity
	configFile   = "config.json" // FileConfig
	apiFile      = "api"         // multiaddrs of the running node's local API, one a line
	apiTokenFile = "api.token"   // bearer token for the optional TCP API
	apiSocket    = "api.sock"    // unix socket of the local API
	lockFile     = "lock"        // flock'ed by the running node; holds its pid
	storeDir     = "store"       // the node's datastore
)

// DefaultDataDir is $GPUMESH_DATA, else ~/.gpumesh.
func DefaultDataDir() string {
	if d := os.Getenv("GPUMESH_DATA"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		return ".gpumesh"
	}
	return filepath.Join(home, ".gpumesh")
}

// FileConfig is the data dir's config.json. Flags override it. The zero
// value is valid and means every default.
type FileConfig struct {
	Port      int      `json:"port,omitempty"`      // listen port for the default addresses; 0 means DefaultPort
	Listen    []string `json:"listen,omitempty"`    // multiaddrs; empty means all interfaces on Port
	Bootstrap []string `json:"bootstrap,omitempty"` // multiaddrs with /p2p/ of peers to join
	SwarmKey  string   `json:"swarmKey,omitempty"`  // path of a swarm.key; empty means the public swarm
}

// DataDir is a peer's home: key, config, store, and the api file that tells
// client commands where the running node listens. Paths works on a closed
// DataDir; Lock marks it as used by a running node.
type DataDir struct {
	Path string
	lock *os.File
}

// Key, Config, APIFile, APIToken, APISocket and Store name the data dir's files.
func (d *DataDir) Key() string       { return filepath.Join(d.Path, keyFile) }
func (d *DataDir) Config() string    { return filepath.Join(d.Path, configFile) }
func (d *DataDir) APIFile() string   { return filepath.Join(d.Path, apiFile) }
func (d *DataDir) APIToken() string  { return filepath.Join(d.Path, apiTokenFile) }
func (d *DataDir) APISocket() string { return filepath.Join(d.Path, apiSocket) }
func (d *DataDir) Store() string     { return filepath.Join(d.Path, storeDir) }

// Init creates the data dir (mode 0700) with a new key and a default config
// where they are missing, and leaves existing ones alone.
func (d *DataDir) Init() error {
	if err := os.MkdirAll(d.Path, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if _, err := os.Stat(d.Key()); errors.Is(err, fs.ErrNotExist) {
		id, err := NewIdentity()
		if err != nil {
			return err
		}
		if err := WriteKeyFile(d.Key(), id); err != nil {
			return err
		}
	}
	if _, err := os.Stat(d.Config()); errors.Is(err, fs.ErrNotExist) {
		data, _ := json.MarshalIndent(FileConfig{Port: DefaultPort}, "", "  ")
		if err := os.WriteFile(d.Config(), append(data, '\n'), 0o600); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
	}
	return nil
}

// Lock takes the data dir for this process. Another running node holding it
// gives ErrDataDirInUse with its pid. The lock goes with the process, so a
// crashed node never leaves it stuck.
func (d *DataDir) Lock() error {
	f, err := os.OpenFile(filepath.Join(d.Path, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("lock data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(f.Name())
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("%w: %s is used by another running gpumesh node (pid %s); stop it, or give this one its own --data DIR",
				ErrDataDirInUse, d.Path, strings.TrimSpace(string(pid)))
		}
		return fmt.Errorf("lock data dir: %w", err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	d.lock = f
	return nil
}

// Unlock releases the lock taken by Lock. It is safe to call twice.
func (d *DataDir) Unlock() {
	if d.lock != nil {
		_ = d.lock.Truncate(0)
		_ = d.lock.Close()
		d.lock = nil
	}
}

// LoadConfig reads config.json; a missing file is the zero FileConfig.
func (d *DataDir) LoadConfig() (FileConfig, error) {
	var c FileConfig
	data, err := os.ReadFile(d.Config())
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("config %s: %v; fix the file or delete it to get the defaults", d.Config(), err)
	}
	if c.Port < 0 || c.Port > 65535 {
		return c, fmt.Errorf("config %s: port %d is not 0..65535", d.Config(), c.Port)
	}
	return c, nil
}
