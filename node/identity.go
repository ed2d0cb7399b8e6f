package node

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/mr-tron/base58"
)

// ErrBadKey marks a key file that is not a Solana CLI keypair.
var ErrBadKey = errors.New("bad key file")

// Identity is a peer's one key seen from both worlds: the libp2p peer ID and
// the Solana address are the same ed25519 public key.
type Identity struct {
	Key           crypto.PrivKey
	PeerID        peer.ID
	SolanaAddress string // base58 of the 32-byte public key
}

// NewIdentity returns a fresh random identity.
func NewIdentity() (Identity, error) {
	_, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Identity{}, fmt.Errorf("generate key: %w", err)
	}
	return IdentityFromEd25519(sk)
}

// IdentityFromEd25519 wraps a 64-byte ed25519 private key (seed then public key).
func IdentityFromEd25519(sk ed25519.PrivateKey) (Identity, error) {
	if len(sk) != ed25519.PrivateKeySize {
		return Identity{}, fmt.Errorf("%w: want %d bytes, got %d", ErrBadKey, ed25519.PrivateKeySize, len(sk))
	}
	key, err := crypto.UnmarshalEd25519PrivateKey(sk)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	return IdentityFromKey(key)
}

// IdentityFromKey derives the peer ID and Solana address of an ed25519 key.
func IdentityFromKey(key crypto.PrivKey) (Identity, error) {
	if key.Type() != crypto.Ed25519 {
		return Identity{}, fmt.Errorf("%w: key type %s, want Ed25519", ErrBadKey, key.Type())
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return Identity{}, fmt.Errorf("peer ID from key: %w", err)
	}
	pub, err := key.GetPublic().Raw()
	if err != nil {
		return Identity{}, fmt.Errorf("public key: %w", err)
	}
	return Identity{Key: key, PeerID: id, SolanaAddress: base58.Encode(pub)}, nil
}

// ed25519Bytes returns the 64-byte seed||public form the Solana CLI stores.
func (id Identity) ed25519Bytes() ([]byte, error) {
	raw, err := id.Key.Raw()
	if err != nil {
		return nil, err
	}
	if len(raw) < ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: raw key is %d bytes", ErrBadKey, len(raw))
	}
	return raw[:ed25519.PrivateKeySize], nil
}

// WriteKeyFile stores the identity as a Solana CLI keypair file (a JSON array
// of 64 numbers) with mode 0600. It never overwrites an existing file, so a
// key that holds funds or a reputation cannot be lost by accident.
func WriteKeyFile(path string, id Identity) error {
	raw, err := id.ed25519Bytes()
	if err != nil {
		return err
	}
	nums := make([]int, len(raw))
	for i, b := range raw {
		nums[i] = int(b)
	}
	data, err := json.Marshal(nums)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	exists := func() error {
		return fmt.Errorf("write key: %s already exists; move it away or pick another path with --out", path)
	}
	if _, err := os.Lstat(path); err == nil {
		return exists()
	}
	// Written whole to a temp file, then linked into place: a crash leaves
	// either no key file or a complete one, and link never replaces one.
	f, err := os.CreateTemp(filepath.Dir(path), ".key-*.tmp")
	if err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write key %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write key %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write key %s: %w", path, err)
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return exists()
		}
		return fmt.Errorf("write key %s: %w", path, err)
	}
	return nil
}

// maxKeyFile bounds what ReadKeyFile reads: a keypair file is ~250 bytes.
const maxKeyFile = 4096

// ReadKeyFile loads a Solana CLI keypair file.
func ReadKeyFile(path string) (Identity, error) {
	data, err := readBounded(path, maxKeyFile)
	if err != nil {
		return Identity{}, fmt.Errorf("read key: %w; make one with `gpumesh key new --out %s`", err, path)
	}
	id, err := ParseKey(data)
	if err != nil {
		return Identity{}, fmt.Errorf("key file %s: %w", path, err)
	}
	return id, nil
}

// ParseKey decodes the bytes of a Solana CLI keypair file and checks that its
// public half matches its seed.
func ParseKey(data []byte) (Identity, error) {
	const want = "a JSON array of 64 numbers 0..255 (a Solana CLI keypair); make a new one with `gpumesh key new`"
	if len(data) > maxKeyFile {
		return Identity{}, fmt.Errorf("%w: %d bytes is too large for a keypair, want %s", ErrBadKey, len(data), want)
	}
	var nums []int
	if err := json.Unmarshal(data, &nums); err != nil {
		return Identity{}, fmt.Errorf("%w: not %s: %v", ErrBadKey, want, err)
	}
	if len(nums) != ed25519.PrivateKeySize {
		return Identity{}, fmt.Errorf("%w: %d numbers, want %s", ErrBadKey, len(nums), want)
	}
	raw := make([]byte, len(nums))
	for i, n := range nums {
		if n < 0 || n > 255 {
			return Identity{}, fmt.Errorf("%w: number %d at index %d is out of range, want %s", ErrBadKey, n, i, want)
		}
		raw[i] = byte(n)
	}
	sk := ed25519.NewKeyFromSeed(raw[:ed25519.SeedSize])
	if !sk.Public().(ed25519.PublicKey).Equal(ed25519.PublicKey(raw[ed25519.SeedSize:])) {
		return Identity{}, fmt.Errorf("%w: the public key (last 32 numbers) does not match the secret seed (first 32): the file is garbled; make a new one with `gpumesh key new`", ErrBadKey)
	}
	return IdentityFromEd25519(sk)
}

// readBounded reads at most max+1 bytes of a file, so a wrong path (a
// device, a huge file) cannot hang or exhaust memory; the caller's parser
// reports the size.
func readBounded(path string, max int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, int64(max)+1))
}
