package node

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

func TestNewSwarmKeyIsIPFSFormat(t *testing.T) {
	data, err := NewSwarmKey()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 3 || lines[0] != "/key/swarm/psk/1.0.0/" || lines[1] != "/base16/" || len(lines[2]) != 64 {
		t.Fatalf("swarm key file = %q, want the 3-line /key/swarm/psk/1.0.0/ format", data)
	}
	s, err := ParseSwarmKey(data)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Private() || len(s.PSK) != 32 {
		t.Fatalf("parsed swarm: private=%v, %d-byte key", s.Private(), len(s.PSK))
	}
	if !bytes.Equal(EncodeSwarmKey(s.PSK), data) {
		t.Fatal("encode(parse(key)) != key")
	}
}

func TestSwarmIDsDifferAndHideTheKey(t *testing.T) {
	a, _ := NewSwarmKey()
	b, _ := NewSwarmKey()
	sa, _ := ParseSwarmKey(a)
	sb, _ := ParseSwarmKey(b)
	if sa.ID() == sb.ID() {
		t.Fatalf("two swarm keys share ID %s", sa.ID())
	}
	if (Swarm{}).ID() != PublicSwarm {
		t.Fatalf("zero Swarm ID = %q, want %q", (Swarm{}).ID(), PublicSwarm)
	}
	if strings.Contains(string(a), sa.ID()) {
		t.Fatal("swarm ID is part of the key itself")
	}
	if len(sa.ID()) != 16 {
		t.Fatalf("swarm ID %q, want 16 hex digits", sa.ID())
	}
}

func TestParseSwarmKeyRejectsBadFiles(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	for _, tc := range []struct{ name, data, want string }{
		{"empty", "", "ends early"},
		{"wrong header", "/key/swarm/psk/2.0.0/\n/base16/\n" + hex + "\n", "expected file header"},
		{"unknown encoding", "/key/swarm/psk/1.0.0/\n/base32/\n" + hex + "\n", "unknown encoding"},
		{"short key", "/key/swarm/psk/1.0.0/\n/base16/\nabcd\n", "has 4 characters"},
		{"not hex", "/key/swarm/psk/1.0.0/\n/base16/\n" + strings.Repeat("zz", 32) + "\n", "invalid byte"},
		{"all zeros", "/key/swarm/psk/1.0.0/\n/base16/\n" + strings.Repeat("00", 32) + "\n", "all zeros"},
		{"huge", strings.Repeat("x", maxSwarmKeyFile+1), "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSwarmKey([]byte(tc.data))
			if !errors.Is(err, ErrBadSwarmKey) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "gpumesh swarm init") {
				t.Fatalf("err = %v, want ErrBadSwarmKey saying %q and how to make a key", err, tc.want)
			}
		})
	}
}

func FuzzParseSwarmKey(f *testing.F) {
	good, _ := NewSwarmKey()
	f.Add(good)
	f.Add([]byte("/key/swarm/psk/1.0.0/\n/bin/\n"))
	f.Add([]byte("/key/swarm/psk/1.0.0/\n/base64/\nAAAA\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSwarmKey(data)
		if err != nil {
			if !errors.Is(err, ErrBadSwarmKey) {
				t.Fatalf("error %v does not wrap ErrBadSwarmKey", err)
			}
			return
		}
		if len(s.PSK) != 32 || len(s.ID()) != 16 {
			t.Fatalf("accepted a %d-byte key with ID %q", len(s.PSK), s.ID())
		}
	})
}

// mDNS would announce a private swarm's ID and every address of its peer
// to the whole LAN: it is off there unless asked for, and on in the public
// swarm unless turned off. A private peer started with the defaults has
// no mDNS service.
func TestMDNSIsOffInPrivateSwarmsUnlessAskedFor(t *testing.T) {
	key, _ := NewSwarmKey()
	private, err := ParseSwarmKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want bool
	}{
		{"public, default", Config{}, true},
		{"public, --mdns=false", Config{NoMDNS: true}, false},
		{"private, default", Config{Swarm: private}, false},
		{"private, --mdns", Config{Swarm: private, PrivateMDNS: true}, true},
		{"private, both", Config{Swarm: private, PrivateMDNS: true, NoMDNS: true}, false},
	} {
		if got := tc.cfg.mdns(); got != tc.want {
			t.Errorf("%s: mDNS on = %v, want %v", tc.name, got, tc.want)
		}
	}
	n, err := New(Config{Swarm: private, Listen: []string{loopback}, NoNAT: true, GPUs: "none"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.mdns != nil {
		t.Error("a private peer started with the defaults runs mDNS")
	}
}
