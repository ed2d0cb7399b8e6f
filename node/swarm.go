package node

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/libp2p/go-libp2p/core/pnet"
)

// ErrBadSwarmKey marks a swarm key file that cannot be used.
var ErrBadSwarmKey = errors.New("bad swarm key")

// PublicSwarm is the name of the open swarm that peers without a swarm key join.
const PublicSwarm = "public"

// Swarm says which network a peer belongs to. The zero value is the public
// swarm; a private swarm has a pre-shared key (PSK) that every member holds.
type Swarm struct {
	PSK pnet.PSK // nil for the public swarm; 32 bytes otherwise
}

// Private reports whether the swarm is guarded by a pre-shared key.
func (s Swarm) Private() bool { return len(s.PSK) > 0 }

// ID names the swarm in protocol IDs and topic names: "public", or for a
// private swarm 16 hex digits of a hash of its key (the key itself never
// leaves the machine).
func (s Swarm) ID() string {
	if !s.Private() {
		return PublicSwarm
	}
	h := sha256.New()
	h.Write([]byte("gpumesh swarm id v1\x00"))
	h.Write(s.PSK)
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// maxSwarmKeyFile bounds what ReadSwarmKey reads; a swarm.key is ~100 bytes.
const maxSwarmKeyFile = 1024

// NewSwarmKey returns the contents of a new swarm.key file in the format IPFS
// private networks use: "/key/swarm/psk/1.0.0/", "/base16/", 64 hex digits.
func NewSwarmKey() ([]byte, error) {
	psk := make([]byte, 32)
	if _, err := io.ReadFull(rand.Reader, psk); err != nil {
		return nil, fmt.Errorf("new swarm key: %w", err)
	}
	return EncodeSwarmKey(psk), nil
}

// EncodeSwarmKey writes a 32-byte PSK as a swarm.key file.
func EncodeSwarmKey(psk []byte) []byte {
	return []byte("/key/swarm/psk/1.0.0/\n/base16/\n" + hex.EncodeToString(psk) + "\n")
}

// ParseSwarmKey decodes the bytes of a swarm.key file.
func ParseSwarmKey(data []byte) (Swarm, error) {
	const want = `want three lines: "/key/swarm/psk/1.0.0/", "/base16/" and 64 hex digits; make one with ` + "`gpumesh swarm init`"
	if len(data) > maxSwarmKeyFile {
		return Swarm{}, fmt.Errorf("%w: %d bytes is too large, %s", ErrBadSwarmKey, len(data), want)
	}
	if lines := strings.Split(string(data), "\n"); len(lines) >= 3 && strings.TrimSpace(lines[1]) == "/base16/" {
		if k := strings.TrimSpace(lines[2]); len(k) != 64 {
			return Swarm{}, fmt.Errorf("%w: the key line has %d characters; %s", ErrBadSwarmKey, len(k), want)
		}
	}
	psk, err := pnet.DecodeV1PSK(bytes.NewReader(data))
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = errors.New("file ends early")
		}
		return Swarm{}, fmt.Errorf("%w: %v; %s", ErrBadSwarmKey, err, want)
	}
	if bytes.Equal(psk, make([]byte, len(psk))) {
		return Swarm{}, fmt.Errorf("%w: the key is all zeros, which anyone could guess; %s", ErrBadSwarmKey, want)
	}
	return Swarm{PSK: psk}, nil
}

// ReadSwarmKey loads a swarm.key file.
func ReadSwarmKey(path string) (Swarm, error) {
	data, err := readBounded(path, maxSwarmKeyFile)
	if err != nil {
		return Swarm{}, fmt.Errorf("read swarm key: %w; make one with `gpumesh swarm init --out %s`", err, path)
	}
	s, err := ParseSwarmKey(data)
	if err != nil {
		return Swarm{}, fmt.Errorf("swarm key %s: %w", path, err)
	}
	return s, nil
}
