package node

import (
	"errors"
	"fmt"
	"net"
	"net/http"
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
	)
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
