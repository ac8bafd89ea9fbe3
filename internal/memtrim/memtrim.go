package memtrim

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Config sets when a Trimmer trims. Zero fields take DefaultConfig's values.
type Config struct {
	// Interval is how often the Trimmer looks.
	Interval time.Duration
	// QuietBytes: a process that allocated less than this in one Interval counts as quiet.
	QuietBytes uint64
	// MinFree is the least reclaimable memory worth a collection and a release.
	MinFree uint64
}

// DefaultConfig looks every 2 s, calls under 2 MiB allocated in that time quiet (one 1 MiB chunk
// fetched or served is activity), and trims from 8 MiB reclaimable.
func DefaultConfig() Config {
	return Config{Interval: 2 * time.Second, QuietBytes: 2 << 20, MinFree: 8 << 20}
}

// Validate checks the settings after defaults are applied.
func (c Config) Validate() error {
	if c.Interval < 10*time.Millisecond {
		return fmt.Errorf("memtrim: interval %v: must be at least 10ms", c.Interval)
	}
	return nil
}

// Stats are the runtime figures a Trimmer decides on.
type Stats struct {
	Allocated   uint64 // bytes allocated since the process started
	Reclaimable uint64 // free heap not returned to the OS, plus heap objects beyond the last live heap
}

// Trimmer returns free heap to the OS when the process is quiet. Its zero value is not usable:
// call New.
type Trimmer struct {
	cfg  Config
	log  *slog.Logger
	read func() Stats // ReadStats; tests replace it
	trim func()       // debug.FreeOSMemory; tests replace it
}

// New returns a Trimmer with cfg's zero fields defaulted.
func New(cfg Config, log *slog.Logger) (*Trimmer, error) {
	d := DefaultConfig()
	if cfg.Interval == 0 {
		cfg.Interval = d.Interval
	}
	if cfg.QuietBytes == 0 {
		cfg.QuietBytes = d.QuietBytes
	}
	if cfg.MinFree == 0 {
		cfg.MinFree = d.MinFree
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Trimmer{cfg: cfg, log: log, read: ReadStats, trim: debug.FreeOSMemory}, nil
}

// Run looks every Interval until ctx ends, and returns nil then.
func (t *Trimmer) Run(ctx context.Context) error {
	tick := time.NewTicker(t.cfg.Interval)
	defer tick.Stop()
	last := t.read()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		last = t.step(last)
	}
}

// step looks once, trims if it should, and returns the figures to compare the next look with.
func (t *Trimmer) step(last Stats) Stats {
	now := t.read()
	if now.Allocated-last.Allocated >= t.cfg.QuietBytes || now.Reclaimable < t.cfg.MinFree {
		return now
	}
	start := time.Now()
	t.trim()
	after := t.read()
	t.log.Debug("returned free heap to the OS", "reclaimable_bytes", now.Reclaimable,
		"left_bytes", after.Reclaimable, "took", time.Since(start))
	return after
}

var statNames = []string{
	"/gc/heap/allocs:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/objects:bytes",
	"/gc/heap/live:bytes",
}

// ReadStats reads the process's Stats from runtime/metrics.
func ReadStats() Stats {
	s := make([]metrics.Sample, len(statNames))
	for i, n := range statNames {
		s[i].Name = n
	}
	metrics.Read(s)
	v := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	st := Stats{Allocated: v(0), Reclaimable: v(1)}
	if objects, live := v(2), v(3); objects > live {
		st.Reclaimable += objects - live
	}
	return st
}
