package node

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestDataDirLockIsExclusive(t *testing.T) {
	dir := t.TempDir()
	a := &DataDir{Path: dir}
	if err := a.Init(); err != nil {
		t.Fatal(err)
	}
	if err := a.Lock(); err != nil {
		t.Fatal(err)
	}
	b := &DataDir{Path: dir}
	err := b.Lock()
	if !errors.Is(err, ErrDataDirInUse) {
		t.Fatalf("second lock: err = %v, want ErrDataDirInUse", err)
	}
	if !strings.Contains(err.Error(), "--data") || !strings.Contains(err.Error(), "pid") {
		t.Fatalf("error %q should name the other pid and the --data fix", err)
	}
	a.Unlock()
	a.Unlock() // twice is fine
	if err := b.Lock(); err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	b.Unlock()
}

func TestDataDirInitKeepsExistingKey(t *testing.T) {
	d := &DataDir{Path: t.TempDir()}
	if err := d.Init(); err != nil {
		t.Fatal(err)
	}
	first, err := ReadKeyFile(d.Key())
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(); err != nil {
		t.Fatal(err)
	}
	second, _ := ReadKeyFile(d.Key())
	if first.PeerID != second.PeerID {
		t.Fatal("Init replaced an existing key")
	}
	c, err := d.LoadConfig()
	if err != nil || c.Port != DefaultPort {
		t.Fatalf("default config = %+v, %v; want port %d", c, err, DefaultPort)
	}
}

func TestLoadConfigSaysWhatIsWrong(t *testing.T) {
	for _, tc := range []struct{ name, data, want string }{
		{"unknown field", `{"prot": 1}`, `unknown field "prot"`},
		{"bad json", `{port: 1}`, "invalid character"},
		{"bad port", `{"port": 70000}`, "port 70000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &DataDir{Path: t.TempDir()}
			if err := os.WriteFile(d.Config(), []byte(tc.data), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := d.LoadConfig()
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), d.Config()) {
				t.Fatalf("err = %v, want it to name the file and say %q", err, tc.want)
			}
		})
	}
}
