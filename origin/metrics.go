package origin

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-p2p/shoal/internal/metrics"
)

// clientMetrics counts what the clients of one Registerer ask of origins.
type clientMetrics struct {
	requests *prometheus.CounterVec // by status code ("error" for no response)
	retries  prometheus.Counter
	bytes    prometheus.Counter
}

func newClientMetrics(reg prometheus.Registerer) *clientMetrics {
	return &clientMetrics{
		requests: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_origin_requests_total",
			Help: "HTTP requests sent to origins, by status code.",
		}, []string{"code"})),
		retries: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_origin_retries_total",
			Help: "Origin requests retried after a failure.",
		})),
		bytes: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_origin_read_bytes_total",
			Help: "Blob and manifest bytes read from origins.",
		})),
	}
}

// serverMetrics counts what the embedded origin server serves.
type serverMetrics struct {
	requests *prometheus.CounterVec // by status code
	bytes    prometheus.Counter
}

func newServerMetrics(reg prometheus.Registerer) *serverMetrics {
	return &serverMetrics{
		requests: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_origin_server_requests_total",
			Help: "Requests answered by the embedded origin server, by status code.",
		}, []string{"code"})),
		bytes: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_origin_server_sent_bytes_total",
			Help: "Body bytes sent by the embedded origin server.",
		})),
	}
}

// register registers c through the shared helper. A conflicting collector of another type leaves
// the client counting privately: a metrics clash must not stop reads.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	got, err := metrics.Register(reg, c)
	if err != nil {
		return c
	}
	return got
}
