package node_test

import (
	"bufio"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
	"github.com/gpumesh/gpumesh/node/reputation"
	"github.com/libp2p/go-libp2p/core/network"
)

// A peer that answers the evidence exchange with what it likes gets
// nothing counted: a response over its bounds is refused whole, and
// proofs that do not hold are listed with why, each checked before any
// RPC call (the RPC here answers nothing).
func TestEvidenceFromAHostileProviderCountsForNothing(t *testing.T) {
	m := meshtest.Start(t, 1, meshtest.Options{Seed: 181, Config: func(i int, c *node.Config) {
		c.SolanaRPC, c.PriceUnit = "http://127.0.0.1:9/", "SOL:9"
	}})
	viewer := m.Nodes[0]
	adv := m.AddAdversary(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var answer reputation.Response
	adv.Host.SetStreamHandler(reputation.Protocol, func(s network.Stream) {
		defer s.Close()
		if _, err := reputation.ReadRequest(bufio.NewReader(s)); err != nil {
			t.Errorf("the viewer's request: %v", err)
			return
		}
		_ = reputation.WriteFrame(s, answer)
	})
	var tooMany []json.RawMessage
	for range reputation.MaxProofs + 1 {
		tooMany = append(tooMany, json.RawMessage(`{}`))
	}
	answer = reputation.Response{V: 1, Proofs: tooMany, Total: len(tooMany)}
	rep := viewer.Provider(ctx, adv.Host.ID(), true)
	if !strings.Contains(rep.FetchError, "65 proofs, asked for 64") || rep.Score.Receipts != 0 {
		t.Fatalf("fetch error %q, %d receipts: want the response refused whole", rep.FetchError, rep.Score.Receipts)
	}
	answer = reputation.Response{V: 1, Proofs: []json.RawMessage{
		json.RawMessage(`{"v":1}`),
		json.RawMessage(`{"v":7,"key":"x"}`),
	}, Total: 2}
	rep = viewer.Provider(ctx, adv.Host.ID(), true)
	if rep.FetchError != "" || rep.Shown != 2 || len(rep.Bad) != 2 || rep.Score.Receipts != 0 || rep.Score.Score != 0.8 {
		t.Fatalf("report %+v: want both proofs shown, both refused, nothing counted", rep)
	}
	for _, why := range rep.Bad {
		if !strings.Contains(why, "proof does not hold") {
			t.Errorf("refused proof: %q, want why it does not hold", why)
		}
	}
}
