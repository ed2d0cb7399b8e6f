package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mr-tron/base58"
)

func TestKeyFileRoundTripsAndIsASolanaKeypair(t *testing.T) {
	id, err := NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "key.json")
	if err := WriteKeyFile(path, id); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v, want 0600", st.Mode().Perm())
	}
	var nums []int
	data, _ := os.ReadFile(path)
	if err := json.Unmarshal(data, &nums); err != nil || len(nums) != 64 {
		t.Fatalf("key file is not a JSON array of 64 numbers: %q", data)
	}
	got, err := ReadKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.PeerID != id.PeerID || got.SolanaAddress != id.SolanaAddress {
		t.Fatalf("read back %s/%s, want %s/%s", got.PeerID, got.SolanaAddress, id.PeerID, id.SolanaAddress)
	}
	// The Solana address is the raw public key: the last 32 numbers of the file.
	pub, err := base58.Decode(got.SolanaAddress)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range pub {
		if int(b) != nums[32+i] {
			t.Fatalf("Solana address byte %d = %d, key file has %d", i, b, nums[32+i])
		}
	}
	// And the peer ID embeds the same public key.
	pk, err := got.PeerID.ExtractPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := pk.Raw()
	if !bytes.Equal(raw, pub) {
		t.Fatal("peer ID and Solana address hold different public keys")
	}
}

func TestWriteKeyFileNeverOverwrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key.json")
	a, _ := NewIdentity()
	b, _ := NewIdentity()
	if err := WriteKeyFile(path, a); err != nil {
		t.Fatal(err)
	}
	err := WriteKeyFile(path, b)
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second write: err = %v, want 'already exists'", err)
	}
	got, _ := ReadKeyFile(path)
	if got.PeerID != a.PeerID {
		t.Fatal("the first key was replaced")
	}
}

func TestParseKeyRejectsBadFiles(t *testing.T) {
	id, _ := NewIdentity()
	good, _ := id.ed25519Bytes()
	nums := func(b []byte) []byte {
		n := make([]int, len(b))
		for i := range b {
			n[i] = int(b[i])
		}
		out, _ := json.Marshal(n)
		return out
	}
	flipped := append([]byte{}, good...)
	flipped[63] ^= 1
	for _, tc := range []struct {
		name, data, want string
	}{
		{"not json", "hello", "not a JSON array"},
		{"object", `{"a":1}`, "not a JSON array"},
		{"short", string(nums(good[:63])), "63 numbers"},
		{"empty array", "[]", "0 numbers"},
		{"out of range", "[" + strings.Repeat("300,", 63) + "300]", "out of range"},
		{"garbled public half", string(nums(flipped)), "does not match"},
		{"huge", strings.Repeat(" ", maxKeyFile+1), "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseKey([]byte(tc.data))
			if !errors.Is(err, ErrBadKey) {
				t.Fatalf("err = %v, want ErrBadKey", err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "gpumesh key new") && tc.name != "garbled public half" {
				t.Fatalf("err = %q, want it to say %q and how to fix it", err, tc.want)
			}
		})
	}
	if _, err := ParseKey(nums(good)); err != nil {
		t.Fatalf("good key rejected: %v", err)
	}
}

func FuzzParseKey(f *testing.F) {
	id, _ := NewIdentity()
	raw, _ := id.ed25519Bytes()
	n := make([]int, len(raw))
	for i := range raw {
		n[i] = int(raw[i])
	}
	good, _ := json.Marshal(n)
	f.Add(good)
	f.Add([]byte("[1,2,3]"))
	f.Add([]byte("null"))
	f.Fuzz(func(t *testing.T, data []byte) {
		id, err := ParseKey(data)
		if err != nil {
			if !errors.Is(err, ErrBadKey) {
				t.Fatalf("error %v does not wrap ErrBadKey", err)
			}
			return
		}
		// Anything accepted must round-trip to the same identity.
		raw, err := id.ed25519Bytes()
		if err != nil {
			t.Fatal(err)
		}
		again, err := IdentityFromEd25519(raw)
		if err != nil || again.PeerID != id.PeerID {
			t.Fatalf("accepted key does not round-trip: %v", err)
		}
	})
}

func TestReadingAnEndlessFileStopsAtTheBound(t *testing.T) {
	_, err := ReadKeyFile("/dev/zero")
	if !errors.Is(err, ErrBadKey) || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("err = %v, want a too-large bad key", err)
	}
	_, err = ReadSwarmKey("/dev/zero")
	if !errors.Is(err, ErrBadSwarmKey) || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("err = %v, want a too-large bad swarm key", err)
	}
}
