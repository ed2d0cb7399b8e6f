package node_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// scrape reads a Prometheus text page into series -> value, where a
// series is its name and labels as the page writes them.
func scrape(t *testing.T, url string) (map[string]float64, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %v %s", url, err, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out, string(body)
}

// A hostile peer speaking the real protocols gets refused in four ways:
// negotiation streams held open past its share of the fair queue,
// direct requests for bids over its rate, a forged request for bids on
// the topic and a message that does not decode. Each refusal shows on the
// provider's /metrics, by reason, and no series names the peer.
func TestHostileRefusalsShowOnMetricsByReason(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	o := h100s(0x3e, 1)
	o.Config = func(i int, c *node.Config) {
		if i == 0 {
			c.Metrics = addr
		}
	}
	m := meshtest.Start(t, 2, o)
	prov, sub := m.Nodes[0], m.Nodes[1]
	adv := m.AddAdversary(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	provID, advID := prov.Host().ID(), adv.ID.PeerID
	url := "http://" + addr + "/metrics"

	const (
		dropped   = `gpumesh_negotiation_dropped_total{reason="peer_bound"}`
		rate      = `gpumesh_refused_total{reason="rate",what="rfb_direct"}`
		forged    = `gpumesh_gossip_refused_total{reason="forged",topic="rfb",verdict="reject"}`
		malformed = `gpumesh_refused_total{reason="malformed",what="negotiate"}`
	)
	before, _ := scrape(t, url)
	if before[dropped] != 0 || before[rate] != 0 || before[forged] != 0 || before[malformed] != 0 {
		t.Fatalf("refusals before any hostile peer: %v %v %v %v", before[dropped], before[rate], before[forged], before[malformed])
	}

	// Streams held open, a message written on each and never ended: past
	// gossip.FairQueuePer of them are dropped unread.
	const held = gossip.FairQueuePer + 8
	data, err := node.SealNegotiation(adv.ID, &gossip.Release{Job: meshtest.NewJobID(), From: advID, Provider: provID, Reason: "held"})
	if err != nil {
		t.Fatal(err)
	}
	var streams []network.Stream
	defer func() {
		for _, s := range streams {
			_ = s.Reset()
		}
	}()
	for range held {
		s, err := adv.Host.NewStream(ctx, provID, node.NegotiateProtocol)
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
		_, _ = s.Write(data)
	}
	testwait.Until(t, ctx, "the held streams past the bound dropped", func() (bool, string) {
		d := prov.NegotiationDropped(advID)
		return d >= held-gossip.FairQueuePer, fmt.Sprintf("%d dropped", d)
	})

	for _, s := range streams { // its share of the queue free again
		_ = s.Reset()
	}
	streams = nil

	// Direct requests as fast as it can: past the burst, refused unread.
	for range 40 {
		_ = adv.Ask(ctx, provID, adv.Request(meshtest.NewJobID(), h100, 1, 2_500_000, "USDC:6"))
	}
	// A request on the topic that names another submitter than its signer.
	forgedRFB := adv.Request(meshtest.NewJobID(), h100, 1, 2_500_000, "USDC:6")
	forgedRFB.Submitter = sub.Host().ID()
	if err := adv.Publish(ctx, forgedRFB); err != nil {
		t.Fatal(err)
	}
	// Bytes that are no negotiation message.
	_ = adv.SendRaw(ctx, provID, []byte("not a message")) // the provider resets the stream once it has read it

	var after map[string]float64
	var body string
	testwait.Until(t, ctx, "every refusal on /metrics", func() (bool, string) {
		after, body = scrape(t, url)
		return after[dropped] >= held-gossip.FairQueuePer && after[rate] > 0 && after[forged] >= 1 && after[malformed] >= 1,
			fmt.Sprintf("dropped %v, rate %v, forged %v, malformed %v", after[dropped], after[rate], after[forged], after[malformed])
	})
	if got, want := after[dropped], float64(prov.NegotiationDropped(advID)); got != want {
		t.Errorf("%s = %v, the queue counted %v", dropped, got, want)
	}
	for _, id := range []string{advID.String(), sub.Host().ID().String()} {
		if strings.Contains(body, id) {
			t.Errorf("/metrics names a peer (%s): labels must be reasons, never peers", id)
		}
	}
}
