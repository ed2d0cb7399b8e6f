package node_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"
)

// A provider whose addresses change tells the swarm with its next tick a
// minute or more after its last, however long its unchanged ask would
// otherwise wait to be sent again (here the re-send floor is half an
// hour). Virtual time, simulated links.
func TestAProvidersNewAddressGoesOutWithinAMinute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := meshtest.Start(t, 3, meshtest.Options{Seed: 5, Providers: 1, Price: "fixed:2.10", Latency: 10 * time.Millisecond, LinkOnDial: true, Config: func(i int, c *node.Config) {
			c.PriceResend = gossip.Resend{Floor: 30 * time.Minute, Cap: time.Hour}
		}})
		defer m.CloseInBubble()
		prov, watcher := m.Nodes[0], m.Nodes[2]
		var (
			mu    sync.Mutex
			ticks []gossip.Tick
		)
		stop := watcher.WatchPrices(func(tk gossip.Tick) {
			if tk.Provider == prov.Host().ID() {
				mu.Lock()
				ticks = append(ticks, tk)
				mu.Unlock()
			}
		})
		defer stop()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		last := func() (gossip.Tick, int) {
			mu.Lock()
			defer mu.Unlock()
			if len(ticks) == 0 {
				return gossip.Tick{}, 0
			}
			return ticks[len(ticks)-1], len(ticks)
		}
		testwait.Until(t, ctx, "a tick of the provider's, with its address", func() bool {
			tk, _ := last()
			return slices.ContainsFunc(tk.Addrs, func(a ma.Multiaddr) bool { return slices.ContainsFunc(prov.Host().Addrs(), a.Equal) })
		})
		prev, before := last()
		moved := ma.StringCast("/ip4/100.64.9.9/tcp/4001")
		prov.Host().Peerstore().AddAddr(prov.Host().ID(), moved, peerstore.PermanentAddrTTL)
		start := time.Now()
		testwait.Until(t, ctx, "a tick with the new address", func() bool {
			tk, _ := last()
			return slices.ContainsFunc(tk.Addrs, moved.Equal)
		})
		took := time.Since(start)
		tk, n := last()
		if n != before+1 || took > 75*time.Second {
			t.Fatalf("the new address went out %v after it came, with %d ticks; want the next tick, within 75 s (a minute after the last, a loop pass of 5 s, the host's own address update)", took, n-before)
		}
		if gap := tk.Time.Sub(prev.Time); gap < time.Minute {
			t.Fatalf("the tick with the new address came %v after the last: addresses that flap would send a tick each", gap)
		}
		t.Logf("the new address went out %v after it came", took)
	})
}
