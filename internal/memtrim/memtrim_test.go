package memtrim

import (
	"context"
	"log/slog"
	"runtime/debug"
	"testing"
	"time"
)

func newTest(t *testing.T, cfg Config) *Trimmer {
	t.Helper()
	tr, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestStep: the trimmer trims only when the process is quiet and enough could go back.
func TestStep(t *testing.T) {
	const mib = 1 << 20
	cases := []struct {
		name        string
		last, now   Stats
		wantTrimmed bool
	}{
		{"quiet with free heap", Stats{Allocated: 100 * mib}, Stats{Allocated: 100*mib + 1, Reclaimable: 50 * mib}, true},
		{"busy", Stats{Allocated: 100 * mib}, Stats{Allocated: 140 * mib, Reclaimable: 50 * mib}, false},
		{"quiet, little to return", Stats{Allocated: 100 * mib}, Stats{Allocated: 100 * mib, Reclaimable: 7 * mib}, false},
		{"just under the quiet bound", Stats{Allocated: 100 * mib}, Stats{Allocated: 102*mib - 1, Reclaimable: 9 * mib}, true},
	}
	for _, c := range cases {
		tr := newTest(t, Config{})
		trimmed := false
		tr.read = func() Stats {
			if trimmed {
				return Stats{Allocated: c.now.Allocated}
			}
			return c.now
		}
		tr.trim = func() { trimmed = true }
		next := tr.step(c.last)
		if trimmed != c.wantTrimmed {
			t.Errorf("%s: trimmed = %v, want %v", c.name, trimmed, c.wantTrimmed)
		}
		if trimmed && next.Reclaimable != 0 {
			t.Errorf("%s: after a trim the next look compares with %+v, want the figures read after it", c.name, next)
		}
	}
}

func TestConfig(t *testing.T) {
	if _, err := New(Config{Interval: time.Millisecond}, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("an interval of 1ms was accepted")
	}
	tr := newTest(t, Config{})
	if tr.cfg != DefaultConfig() {
		t.Errorf("zero config gave %+v, want the defaults %+v", tr.cfg, DefaultConfig())
	}
}

var sink [][]byte

// TestRunReturnsMemory: on the real runtime, 64 MiB allocated and dropped is handed back to the
// OS within a few intervals of going quiet, and Run ends with its context.
func TestRunReturnsMemory(t *testing.T) {
	for range 64 {
		sink = append(sink, make([]byte, 1<<20))
	}
	sink = nil
	before := ReadStats()
	if before.Reclaimable < 16<<20 {
		t.Fatalf("only %d bytes reclaimable after dropping 64 MiB", before.Reclaimable)
	}
	tr := newTest(t, Config{Interval: 20 * time.Millisecond})
	trims := 0
	tr.trim = func() { trims++; debug.FreeOSMemory() }
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for ReadStats().Reclaimable >= 8<<20 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if left := ReadStats().Reclaimable; left >= 8<<20 || trims == 0 {
		t.Errorf("after going quiet: %d bytes still reclaimable, %d trims", left, trims)
	}
}
