package node

import (
	"errors"
	"testing"

	"github.com/gpumesh/gpumesh/gossip"
)

func TestNegotiationMessagesAreSignedByTheirAuthor(t *testing.T) {
	alice, _ := NewIdentity()
	mallory, _ := NewIdentity()
	a := &Node{id: alice}
	m := &Node{id: mallory}
	var job gossip.JobID
	job[0] = 7
	rel := &gossip.Release{Job: job, From: alice.PeerID, Provider: mallory.PeerID, Reason: "done"}

	sealed, err := a.sealNegotiation(rel)
	if err != nil {
		t.Fatal(err)
	}
	got, err := openNegotiation(sealed)
	if err != nil || got.Author() != alice.PeerID {
		t.Fatalf("open a good message: %v, %v", got, err)
	}
	// Mallory signs a message that names Alice as its author.
	forged, err := m.sealNegotiation(rel)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openNegotiation(forged); !errors.Is(err, gossip.ErrBadNegotiation) {
		t.Fatalf("forged author: err = %v, want ErrBadNegotiation", err)
	}
	// A flipped byte breaks the signature.
	bad := append([]byte{}, sealed...)
	bad[len(bad)/2] ^= 1
	if _, err := openNegotiation(bad); !errors.Is(err, gossip.ErrBadNegotiation) {
		t.Fatalf("tampered: err = %v, want ErrBadNegotiation", err)
	}
	if _, err := openNegotiation(make([]byte, maxSignedNegotiation+1)); !errors.Is(err, gossip.ErrBadNegotiation) {
		t.Fatalf("oversized: err = %v", err)
	}
}

func FuzzOpenNegotiation(f *testing.F) {
	id, _ := NewIdentity()
	n := &Node{id: id}
	var job gossip.JobID
	seed, _ := n.sealNegotiation(&gossip.Release{Job: job, From: id.PeerID, Provider: id.PeerID, Reason: "x"})
	f.Add(seed)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := openNegotiation(data)
		if err != nil {
			if !errors.Is(err, gossip.ErrBadNegotiation) {
				t.Fatalf("error %v does not wrap ErrBadNegotiation", err)
			}
			return
		}
		if msg.Author() == "" {
			t.Fatal("accepted a message without an author")
		}
	})
}
