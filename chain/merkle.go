package chain

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// A batch of receipts is a Merkle tree over SHA-256: a leaf is
// SHA-256(0x00 || data) and an inner node SHA-256(0x01 || left || right),
// so a leaf can never pass for a node. A level of odd length carries its
// last node up unchanged (nothing is duplicated, so no two different
// batches share a root). Only the root goes on chain; each receipt keeps
// the path from its leaf to the root.

// Hash is a SHA-256 digest.
type Hash [32]byte

// String is the hash in lowercase hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// MarshalText writes lowercase hex.
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText reads 64 hex digits.
func (h *Hash) UnmarshalText(b []byte) error {
	if len(b) != 64 {
		return fmt.Errorf("hash of %d hex digits, want 64", len(b))
	}
	if _, err := hex.Decode(h[:], b); err != nil {
		return fmt.Errorf("hash: %v", err)
	}
	return nil
}

const (
	leafPrefix = 0x00
	nodePrefix = 0x01
)

// LeafHash is the leaf of an item's data.
func LeafHash(data []byte) Hash {
	h := sha256.New()
	h.Write([]byte{leafPrefix})
	h.Write(data)
	var out Hash
	h.Sum(out[:0])
	return out
}

func nodeHash(left, right Hash) Hash {
	var buf [65]byte
	buf[0] = nodePrefix
	copy(buf[1:], left[:])
	copy(buf[33:], right[:])
	return sha256.Sum256(buf[:])
}

// Step is one step of a Merkle path: the sibling's hash and which side it
// is on.
type Step struct {
	Hash  Hash `json:"hash"`
	Right bool `json:"right"` // the sibling is the right child
}

// Tree is a Merkle tree over leaves.
type Tree struct {
	levels [][]Hash // levels[0] the leaves, the last one the root alone
}

// ErrEmptyTree is the error of a tree without leaves.
var ErrEmptyTree = errors.New("a Merkle tree needs at least one leaf")

// NewTree builds the tree of leaves (kept, not copied).
func NewTree(leaves []Hash) (*Tree, error) {
	if len(leaves) == 0 {
		return nil, ErrEmptyTree
	}
	t := &Tree{levels: [][]Hash{leaves}}
	for level := leaves; len(level) > 1; {
		next := make([]Hash, (len(level)+1)/2)
		for i := 0; i+1 < len(level); i += 2 {
			next[i/2] = nodeHash(level[i], level[i+1])
		}
		if len(level)%2 == 1 {
			next[len(next)-1] = level[len(level)-1]
		}
		t.levels = append(t.levels, next)
		level = next
	}
	return t, nil
}

// Root is the tree's root.
func (t *Tree) Root() Hash { return t.levels[len(t.levels)-1][0] }

// Len is the number of leaves.
func (t *Tree) Len() int { return len(t.levels[0]) }

// Path is the path from leaf i to the root.
func (t *Tree) Path(i int) []Step {
	var path []Step
	for _, level := range t.levels[:len(t.levels)-1] {
		sib := i ^ 1
		if sib < len(level) {
			path = append(path, Step{Hash: level[sib], Right: sib > i})
		}
		i /= 2
	}
	return path
}

// RootOf is the root a leaf and its path lead to.
func RootOf(leaf Hash, path []Step) Hash {
	h := leaf
	for _, s := range path {
		if s.Right {
			h = nodeHash(h, s.Hash)
		} else {
			h = nodeHash(s.Hash, h)
		}
	}
	return h
}
