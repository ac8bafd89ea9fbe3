package cachefiles

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
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
	if reg == nil {
		return m, nil
	}
	// A new Server in the same process (a restarted worker loop) reuses the registered series.
	reuse := func(c prometheus.Collector) (prometheus.Collector, error) {
		err := reg.Register(c)
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			return are.ExistingCollector, nil
		}
		if err != nil {
			return nil, fmt.Errorf("cachefiles metrics: %w", err)
		}
		return c, nil
	}
	var err error
	set := func(c prometheus.Collector, assign func(prometheus.Collector)) {
		if err != nil {
			return
		}
		var got prometheus.Collector
		if got, err = reuse(c); err == nil {
			assign(got)
		}
	}
	set(m.requests, func(c prometheus.Collector) { m.requests = c.(*prometheus.CounterVec) })
	set(m.openMisses, func(c prometheus.Collector) { m.openMisses = c.(prometheus.Counter) })
	set(m.readFailures, func(c prometheus.Collector) { m.readFailures = c.(prometheus.Counter) })
	set(m.readBytes, func(c prometheus.Collector) { m.readBytes = c.(prometheus.Counter) })
	set(m.readSeconds, func(c prometheus.Collector) { m.readSeconds = c.(prometheus.Histogram) })
	set(m.objects, func(c prometheus.Collector) { m.objects = c.(prometheus.Gauge) })
	return m, err
}
