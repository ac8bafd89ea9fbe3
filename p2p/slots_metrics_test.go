package p2p

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestUploadSlotGauges: the upload-slot gauges (the Grafana dashboard's "Upload slots" panel)
// read the node's live slots and queue.
func TestUploadSlotGauges(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := testConfig()
	cfg.UploadSlots, cfg.Registerer = 3, reg
	n, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	gauge := func(name string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatalf("%s not registered", name)
		return 0
	}
	// Two uploads hold slots, one request waits (as serve does).
	n.slots <- struct{}{}
	n.slots <- struct{}{}
	n.queued.Add(1)
	for name, want := range map[string]float64{"shoal_p2p_upload_slots": 3, "shoal_p2p_upload_slots_busy": 2, "shoal_p2p_upload_queued_requests": 1} {
		if got := gauge(name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	<-n.slots
	<-n.slots
	n.queued.Add(-1)
	if got := gauge("shoal_p2p_upload_slots_busy"); got != 0 {
		t.Errorf("after the uploads, busy = %v", got)
	}
	if n := testutil.CollectAndCount(reg, "shoal_p2p_upload_slots"); n != 1 {
		t.Errorf("shoal_p2p_upload_slots has %d series", n)
	}
}
