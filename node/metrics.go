package node

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// startMetrics registers gpumesh's own gauges beside libp2p's and serves
// them at http://<Metrics>/metrics.
func (n *Node) startMetrics() error {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "gpumesh", Name: name, Help: help}, f)
	}
	n.reg.MustRegister(
		gauge("peers_connected", "Peers with an open connection.", func() float64 { return float64(len(n.host.Network().Peers())) }),
		gauge("dht_routing_table_peers", "Peers in the DHT routing table.", func() float64 { return float64(n.dht.RoutingTableSize()) }),
		gauge("gossip_peers", "Connected peers that speak GossipSub.", func() float64 { return float64(n.gossip.Peers()) }),
		gauge("uptime_seconds", "Seconds since the node started.", func() float64 { return time.Since(n.started).Seconds() }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "gpumesh", Name: "requests_for_bids_on_topic_total",
			Help: "This peer's own requests for bids put on the swarm's topic: direct requests whose named providers were too few or silent."},
			func() float64 { return float64(n.TopicRequests()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "gpumesh", Name: "releases_sent_again_total",
			Help: "Releases of this peer's ended jobs sent again after a send failed (a provider not reached): each frees GPUs that would otherwise stay held until the reservation lapses."},
			func() float64 { again, _ := n.ReleasesSentAgain(); return float64(again) }),
	)
	n.reg.MustRegister(refusalCollector{n})
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "gpumesh", Name: "build_info", Help: "Version and swarm of this peer."}, []string{"version", "swarm"})
	info.WithLabelValues(n.cfg.version(), n.cfg.Swarm.ID()).Set(1)
	n.reg.MustRegister(info)

	l, err := net.Listen("tcp", n.cfg.Metrics)
	if err != nil {
		return fmt.Errorf("metrics on %s: %w; pick another address with --metrics", n.cfg.Metrics, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(n.reg, promhttp.HandlerOpts{Registry: n.reg}))
	n.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.metrics.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Warn("metrics server stopped", "err", err)
		}
	}()
	n.log.Info("metrics", "url", "http://"+l.Addr().String()+"/metrics")
	return nil
}

// refusals counts what this peer refused or dropped of other peers'
// messages, by what and why. Both come from fixed sets (never a peer ID
// or a peer's own words), so the metric's series stay few however many
// strangers misbehave. Its zero value counts.
type refusals struct {
	mu sync.Mutex           // guards n
	n  map[[2]string]uint64 // {what, why} -> count
}

// add counts one refusal.
func (r *refusals) add(what, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[[2]string]uint64{}
	}
	r.n[[2]string{what, why}]++
}

// count is how many refusals of what for why were counted.
func (r *refusals) count(what, why string) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[[2]string{what, why}]
}

// Kinds of refusal (refusals.add's what).
const (
	refusedRFBDirect = "rfb_direct" // a request for bids sent to this provider directly
	refusedRFBQueue  = "rfb_queue"  // an accepted request for bids pushed out of its full queue
	refusedNegotiate = "negotiate"  // a direct negotiation message (bid, award, answer, ...)
	refusedBill      = "bill"       // a provider's bill (attempt.Bill*)
	refusedReceipt   = "receipt"    // a provider's receipt, not countersigned
)

var (
	refusedDesc = prometheus.NewDesc("gpumesh_refused_total",
		"Messages of other peers this peer refused, by what (rfb_direct, rfb_queue, negotiate, bill, receipt) and why.", []string{"what", "reason"}, nil)
	negDroppedDesc = prometheus.NewDesc("gpumesh_negotiation_dropped_total",
		"Direct negotiation messages dropped by the fair queue: peer_bound (its peer had its bound being read or waiting), full (the queue was full), pushed_out (the newest of the peer with the most waiting made room).", []string{"reason"}, nil)
	gossipRefusedDesc = prometheus.NewDesc("gpumesh_gossip_refused_total",
		"Messages of a topic refused by its validator or GossipSub: reject (the delivering peer loses score) or ignore, by reason.", []string{"topic", "verdict", "reason"}, nil)
	forgersDesc = prometheus.NewDesc("gpumesh_content_forgers_cut_total",
		"Peers disconnected for sending blocks that do not hash to the CID asked, or over the size limit.", nil, nil)
)

// refusalCollector reads the refusal counts at each scrape.
type refusalCollector struct{ n *Node }

func (c refusalCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- refusedDesc
	ch <- negDroppedDesc
	ch <- gossipRefusedDesc
	ch <- forgersDesc
}

func (c refusalCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	n.refusedBy.mu.Lock()
	keys := make([][2]string, 0, len(n.refusedBy.n))
	for k := range n.refusedBy.n {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, k int) bool { return keys[i][0]+"\x00"+keys[i][1] < keys[k][0]+"\x00"+keys[k][1] })
	counts := make([]uint64, len(keys))
	for i, k := range keys {
		counts[i] = n.refusedBy.n[k]
	}
	n.refusedBy.mu.Unlock()
	for i, k := range keys {
		counter(refusedDesc, counts[i], k[0], k[1])
	}
	if q := n.negQueue; q != nil {
		n.negQMu.Lock()
		d := q.Drops()
		n.negQMu.Unlock()
		counter(negDroppedDesc, d.PeerBound, "peer_bound")
		counter(negDroppedDesc, d.Full, "full")
		counter(negDroppedDesc, d.PushedOut, "pushed_out")
	}
	if n.gossip != nil {
		for _, r := range n.gossip.Refusals() {
			counter(gossipRefusedDesc, r.Count, r.Topic, r.Verdict, r.Reason)
		}
	}
	if n.content != nil {
		counter(forgersDesc, uint64(max(n.content.ForgersCut(), 0)))
	}
}
