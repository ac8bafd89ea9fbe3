package chunkstore

import (
	"container/list"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/shoal-p2p/shoal/internal/metrics"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-p2p/shoal/chunk"
)

// manifestCache keeps the most recently used parsed manifests, at most max of them and at most
// maxChunks chunks over all (a parsed chunk takes about 110 bytes: 65 536 chunks are about 7 MiB),
// but always the last one put; the rest live in the index.
type manifestCache struct {
	mu        sync.Mutex
	max       int
	maxChunks int
	chunks    int
	m         map[digest.Digest]*list.Element
	lru       list.List
}

type manifestEntry struct {
	d digest.Digest
	m *chunk.Manifest
}

func newManifestCache(max, maxChunks int) *manifestCache {
	return &manifestCache{max: max, maxChunks: maxChunks, m: make(map[digest.Digest]*list.Element)}
}

func (c *manifestCache) get(d digest.Digest) *chunk.Manifest {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[d]; ok {
		c.lru.MoveToFront(e)
		return e.Value.(*manifestEntry).m
	}
	return nil
}

func (c *manifestCache) put(d digest.Digest, m *chunk.Manifest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[d]; ok {
		ent := e.Value.(*manifestEntry)
		c.chunks += len(m.Chunks) - len(ent.m.Chunks)
		ent.m = m
		c.lru.MoveToFront(e)
	} else {
		c.m[d] = c.lru.PushFront(&manifestEntry{d, m})
		c.chunks += len(m.Chunks)
	}
	for c.lru.Len() > 1 && (c.lru.Len() > c.max || c.chunks > c.maxChunks) {
		e := c.lru.Back()
		c.lru.Remove(e)
		ent := e.Value.(*manifestEntry)
		delete(c.m, ent.d)
		c.chunks -= len(ent.m.Chunks)
	}
}

// badgerLogger sends badger's logs to slog.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Error(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}
func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}
func (b badgerLogger) Infof(f string, a ...any) {
	b.l.Debug(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}
func (b badgerLogger) Debugf(f string, a ...any) {
	b.l.Debug(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}

// metrics exposes the store's counters to Prometheus.
type storeMetrics struct {
	cols       []prometheus.Collector
	unregister func()
}

func newMetrics(s *Store, reg prometheus.Registerer) (*storeMetrics, error) {
	m := &storeMetrics{}
	counter := func(name, help string, f func() int64) {
		m.cols = append(m.cols, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "shoal_chunkstore_" + name, Help: help}, func() float64 { return float64(f()) }))
	}
	gauge := func(name, help string, f func() int64) {
		m.cols = append(m.cols, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "shoal_chunkstore_" + name, Help: help}, func() float64 { return float64(f()) }))
	}
	counter("written_bytes_total", "Chunk bytes written to the store.", s.ctr.bytesWritten.Load)
	counter("written_chunks_total", "Chunks written to the store.", s.ctr.chunksWritten.Load)
	counter("evicted_chunks_total", "Chunks evicted to stay under the size limit.", s.ctr.chunksEvicted.Load)
	counter("evicted_bytes_total", "Bytes evicted to stay under the size limit.", s.ctr.bytesEvicted.Load)
	counter("verify_failures_total", "Chunks whose bytes did not match their CID.", s.ctr.verifyFailures.Load)
	counter("read_bytes_total", "Bytes served from the store.", s.ctr.bytesRead.Load)
	gauge("present_bytes", "Bytes of present chunks.", s.used.Load)
	gauge("max_bytes", "Configured size limit (0: none).", func() int64 { return s.cfg.MaxBytes })
	gauge("open_files", "Backing files held open.", func() int64 { return int64(s.files.len()) })
	// The collectors read this store's fields: registered for its lifetime, not shared.
	un, err := metrics.RegisterOwned(reg, m.cols...)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: %w", err)
	}
	m.unregister = un
	return m, nil
}
