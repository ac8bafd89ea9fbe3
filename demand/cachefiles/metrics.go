package cachefiles

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	shoalmetrics "github.com/shoal-p2p/shoal/internal/metrics"
)

// metrics are the shoal_cachefiles_* series. They exist whether or not a Registerer is configured,
// so code never checks for nil.
type metrics struct {
	requests     *prometheus.CounterVec // by op: OPEN, CLOSE, READ, malformed, unknown
	openMisses   prometheus.Counter
	readFailures prometheus.Counter
	readBytes    prometheus.Counter
	readSeconds  prometheus.Histogram
	objects      prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_cachefiles_requests_total", Help: "Requests read from /dev/cachefiles, by opcode (or malformed, unknown).",
		}, []string{"op"}),
		openMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_cachefiles_open_misses_total", Help: "OPEN requests for an unknown volume or cookie, answered -ENOENT.",
		}),
		readFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_cachefiles_read_failures_total", Help: "READ requests completed without data (the reader gets EIO).",
		}),
		readBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_cachefiles_read_bytes_total", Help: "Bytes copied into backing files through the kernel's anonymous fds for READ requests (bootstraps, zero gaps); blob chunks the chunk store wrote in place are not counted.",
		}),
		readSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "shoal_cachefiles_read_seconds", Help: "Time from dispatching a READ to completing it.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		objects: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_cachefiles_open_objects", Help: "Anonymous fds (opened bootstraps and blobs) held.",
		}),
	}
	// A new Server in the same process (a restarted worker loop) shares the registered series.
	var err error
	if m.requests, err = shoalmetrics.Register(reg, m.requests); err != nil {
		return nil, fmt.Errorf("cachefiles: %w", err)
	}
	if m.openMisses, err = shoalmetrics.Register(reg, m.openMisses); err != nil {
		return nil, fmt.Errorf("cachefiles: %w", err)
	}
	if m.readFailures, err = shoalmetrics.Register(reg, m.readFailures); err != nil {
		return nil, fmt.Errorf("cachefiles: %w", err)
	}
	if m.readBytes, err = shoalmetrics.Register(reg, m.readBytes); err != nil {
		return nil, fmt.Errorf("cachefiles: %w", err)
	}
	if m.readSeconds, err = shoalmetrics.Register(reg, m.readSeconds); err != nil {
		return nil, fmt.Errorf("cachefiles: %w", err)
	}
	if m.objects, err = shoalmetrics.Register(reg, m.objects); err != nil {
		return nil, fmt.Errorf("cachefiles: %w", err)
	}
	return m, nil
}
