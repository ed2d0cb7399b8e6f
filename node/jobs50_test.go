package node_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// market50 starts 50 peers: ten providers of 8x H100-80GB asking 1.50,
// 1.60, ... 2.40 USDC/GPU-h, the even ones in eu-west/ams1 and the odd ones
// in us-east/nyc2; forty peers without GPUs.
func market50(t testing.TB) *meshtest.Mesh {
	return meshtest.Start(t, 50, meshtest.Options{Seed: 50, Providers: 10, Executors: []string{"process"}, Private: true, Config: func(i int, c *node.Config) {
		if i < 10 {
			c.Price = fmt.Sprintf("fixed:%d.%d0", 1+(5+i)/10, (5+i)%10)
			c.Region = []string{"eu-west/ams1", "us-east/nyc2"}[i%2]
		}
	}})
}

func TestClustersOn50Peers(t *testing.T) {
	m := market50(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	providers := m.Nodes[:10]
	for _, tc := range []struct {
		name      string
		gpus      int
		extra     string
		colocated bool
		maxPrice  uint64
	}{
		{"1 GPU", 1, "", false, 2_500_000},
		{"8 GPUs", 8, "", false, 2_500_000},
		{"32 GPUs spread", 32, "placement: spread", false, 2_500_000},
		{"32 GPUs colocated", 32, "placement: colocated", true, 2_500_000},
		{"16 GPUs at most 1.80", 16, "maxPrice: 1.80", false, 1_800_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			submitter := m.Nodes[10+len(tc.name)%40]
			start := time.Now()
			j := submit(t, ctx, submitter, jobSpec(t, tc.gpus, tc.extra))
			if !holds(j) {
				t.Fatalf("%s (%s), want formed", j.State, j.Reason)
			}
			total, zones := gpusOf(j)
			if total != tc.gpus {
				t.Fatalf("%d GPUs, want %d", total, tc.gpus)
			}
			if tc.colocated && len(zones) != 1 {
				t.Fatalf("colocated cluster over zones %v", zones)
			}
			for _, mb := range j.Members {
				if mb.Price > tc.maxPrice {
					t.Fatalf("member %s asks %d, above the max %d", mb.Provider, mb.Price, tc.maxPrice)
				}
			}
			t.Logf("formed in %v: %d members, %d per hour", time.Since(start).Round(time.Millisecond), len(j.Members), j.Cost)
			if _, err := submitter.CancelJob(ctx, j.ID); err != nil {
				t.Fatal(err)
			}
			waitFree(t, ctx, providers)
		})
	}

	t.Run("a provider that vanishes is replaced", func(t *testing.T) {
		// The cheapest provider bids, then stops answering: awards to it go
		// nowhere, and after the award timeout another takes its place.
		cheapest := providers[0]
		cheapest.Host().RemoveStreamHandler(node.NegotiateProtocol)
		j := submit(t, ctx, m.Nodes[30], jobSpec(t, 8, ""))
		if !holds(j) {
			t.Fatalf("%s (%s), want formed by a replacement", j.State, j.Reason)
		}
		for _, mb := range j.Members {
			if mb.Provider == cheapest.Identity().PeerID {
				t.Fatal("the vanished provider is still a member")
			}
		}
	})
}

func TestHundredRacingSubmissionsNeverShareAGPU(t *testing.T) {
	m := market50(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	type sub struct {
		nd *node.Node
		id string
	}
	var (
		mu   sync.Mutex
		subs []sub
		wg   sync.WaitGroup
	)
	for i := range 100 {
		nd := m.Nodes[10+i%40]
		wg.Add(1)
		go func() {
			defer wg.Done()
			j, err := nd.SubmitJob(ctx, jobSpec(t, 8, ""))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			subs = append(subs, sub{nd, j.ID})
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, s := range subs {
		waitJob(t, ctx, s.nd, s.id, "to end its race", func(j node.Job) bool { return j.State != node.JobNegotiating })
	}
	// Every race has ended: what the jobs hold now, read at once (a job
	// read as formed when its own race ended may have failed since, and
	// its GPUs gone to one whose race ended later).
	held := map[string]int{}
	holders := map[string][]sub{}
	formed := 0
	for _, s := range subs {
		j, _ := s.nd.Job(s.id)
		if holds(j) {
			formed++
			for _, mb := range j.Members {
				held[mb.Provider.String()] += int(mb.GPUs)
				holders[mb.Provider.String()] = append(holders[mb.Provider.String()], s)
			}
		}
	}
	for p, g := range held {
		if g > 8 {
			var now []string
			for _, s := range holders[p] {
				j, _ := s.nd.Job(s.id)
				now = append(now, fmt.Sprintf("%s: %s %q, members %+v", s.id, j.State, j.Reason, j.Members))
			}
			t.Fatalf("provider %s leased %d of its 8 GPUs; its jobs now: %s", p, g, strings.Join(now, "; "))
		}
	}
	if formed == 0 || formed > 10 {
		t.Fatalf("%d of 100 jobs of 8 GPUs formed on 80 GPUs, want 1..10", formed)
	}
	t.Logf("%d of 100 racing jobs formed; no GPU leased twice", formed)
}
