package node_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/mr-tron/base58"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/chain/localnet"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/internal/testlocalnet"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// A ring of 50 fresh identities co-signing each other's receipts moves no
// honest submitter's choice. The ring's provider is a real node whose
// history is 49 receipts co-signed by the other 49 identities (real keys,
// real signatures), anchored on the local Solana, claiming payments that
// never happened, and one real payment of 1,000 lamports between ring
// members. The submitter fetches them, checks every proof (they all
// hold), finds what was paid (a millionth of a SOL), and its choice
// between the ring's provider and an honest one at the same price stays
// what it is without the ring: the honest one (the lower peer ID).
func TestARingOfFreshIdentitiesMovesNoChoice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ln := testlocalnet.Start(t, localnet.Options{})
	const seed = 180
	m := meshtest.Start(t, 3, meshtest.Options{Seed: seed, Providers: 2, Price: "fixed:3.6", Executors: []string{"process"}, Private: true,
		Config: func(i int, c *node.Config) {
			c.PriceUnit, c.SolanaRPC, c.AnchorAge, c.SettleInterval = "SOL:9", ln.URL(), 100*time.Millisecond, time.Second
		}})
	honest, ring, sub := m.Nodes[0], m.Nodes[1], m.Nodes[2]
	ringKeyIndex := 1
	if ring.Host().ID() < honest.Host().ID() { // the honest one must win the tie
		honest, ring, ringKeyIndex = ring, honest, 0
	}
	for _, nd := range m.Nodes {
		if err := ln.Airdrop(ctx, nd.Info().SolanaAddress, 2_000_000_000); err != nil {
			t.Fatal(err)
		}
	}
	// The ring: the provider's own key and 49 fresh ones.
	raw, err := meshtest.Key(seed, ringKeyIndex).Key.Raw()
	if err != nil {
		t.Fatal(err)
	}
	keys := []ed25519.PrivateKey{ed25519.PrivateKey(raw[:64])}
	for range 49 {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	payer := keys[2]
	if err := ln.Airdrop(ctx, receipt.Address(payer), 10_000_000); err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-time.Hour)
	for i := 1; i < len(keys); i++ {
		r := receipt.Receipt{Version: receipt.Version, Job: fmt.Sprintf("ring%02d", i), Provider: receipt.Address(keys[0]), Consumer: receipt.Address(keys[i]),
			Class: "H100-80GB", Unit: "SOL", ResultHash: receipt.ResultHash(0, nil), Util: -1}
		r.Meter(8, start, start.Add(time.Hour), 3_600_000_000) // 28.8 SOL of work
		fake := make([]byte, 64)
		_, _ = rand.Read(fake)
		r.Paid, r.Payments = r.Amount, []string{base58.Encode(fake)} // a payment that never happened
		if i == 2 {
			p, err := chain.Pay(ctx, ln.URL(), payer, r.Provider, 1000, r.Key()+"-1")
			if err != nil {
				t.Fatal(err)
			}
			r.Payments = append(r.Payments, p.Signature)
		}
		sr, err := receipt.Sign(r, keys[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := sr.Countersign(keys[i]); err != nil {
			t.Fatal(err)
		}
		if err := ring.SaveReceipt(sr); err != nil {
			t.Fatal(err)
		}
	}
	err = testwait.Poll(ctx, func() (bool, string) {
		st, err := ring.Proofs("")
		if err != nil {
			return false, err.Error()
		}
		return st.Stats.Anchored == 49, fmt.Sprintf("%d of 49 anchored", st.Stats.Anchored)
	})
	if err != nil {
		t.Fatal(err)
	}

	rep := sub.Provider(ctx, ring.Host().ID(), true)
	s := rep.Score
	if rep.Shown != 49 || s.Receipts != 49 || len(rep.Bad) != 0 {
		t.Fatalf("fetched %d of %d, %d verified, bad %v (%s): want every ring receipt shown and its proof holding", rep.Shown, rep.Total, s.Receipts, rep.Bad, rep.FetchError)
	}
	if s.Counted != 1 || s.PaidTotal != 1000 || s.Rank() != 0.8 {
		t.Fatalf("ring evidence: %d counted, %d lamports paid, %s: want only the real 1000 lamports counted, the score ranked as an unknown provider's", s.Counted, s.PaidTotal, s.Formula)
	}
	t.Logf("the ring's provider: %s", s.Formula)
	if r := sub.Ranking(); r.Scores[ring.Host().ID()] > r.Unknown {
		t.Fatalf("ranking: the ring's provider at %v, above an unknown one (%v)", r.Scores[ring.Host().ID()], r.Unknown)
	}
	j := runToEnd(t, ctx, sub, solSpec(t, "true"))
	if j.State != node.JobDone || j.Members[0].Provider != honest.Host().ID() {
		t.Fatalf("job %s on %s (%s): want it done on the honest provider, as without the ring", j.State, j.Members[0].Provider, j.Reason)
	}
	if len(j.Spares) != 1 || j.Spares[0].Provider != ring.Host().ID() {
		t.Fatalf("spares %v: want the ring's provider's bid there, passed over", j.Spares)
	}
}
