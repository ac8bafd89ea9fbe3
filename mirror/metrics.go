package mirror

import (
	"github.com/prometheus/client_golang/prometheus"

	shoalmetrics "github.com/shoal-p2p/shoal/internal/metrics"
)

// registerMetrics exposes the mirror's counters as shoal_mirror_* series read from the live
// mirror; the returned function unregisters them (at Close).
func (m *Mirror) registerMetrics(reg prometheus.Registerer) (func(), error) {
	bytesBy := func(source string, read func() int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "shoal_mirror_bytes_total", Help: "Registry mirror bytes by source: upstream and peer (fetched, verified; through: the part of peer that a blob's rendezvous owner fetched for us), served (sent to clients).",
			ConstLabels: prometheus.Labels{"source": source}}, func() float64 { return float64(read()) })
	}
	return shoalmetrics.RegisterOwned(reg,
		bytesBy("upstream", m.upstreamBytes.Load),
		bytesBy("peer", m.peerBytes.Load),
		bytesBy("through", m.throughBytes.Load),
		bytesBy("served", m.served.Load),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "shoal_mirror_for_peers_total", Help: "Upstream fetches the registry mirror made as a blob's rendezvous owner for peers."},
			func() float64 { return float64(m.forPeers.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "shoal_mirror_requests_total", Help: "HTTP requests to the registry mirror."},
			func() float64 { return float64(m.requests.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "shoal_mirror_local_hits_total", Help: "Registry mirror requests for content already kept."},
			func() float64 { return float64(m.localHits.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "shoal_mirror_peer_rejected_total", Help: "Blob fetches from peers the registry mirror refused (wrong bytes, broken off)."},
			func() float64 { return float64(m.peerRejected.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "shoal_mirror_kept_bytes", Help: "Bytes the registry mirror keeps on disk."},
			func() float64 { b, _ := m.store.usage(); return float64(b) }),
	)
}
