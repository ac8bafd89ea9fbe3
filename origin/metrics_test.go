package origin

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetrics: Sources and servers sharing one Registerer count into the same series.
func TestMetrics(t *testing.T) {
	im := makeLayout(t, t.TempDir(), 50, "")
	reg := prometheus.NewRegistry()
	_, host := startServer(t, map[string]string{"img": im.dir}, ServerConfig{Registerer: reg})
	cfg := testConfig(host)
	cfg.Registerer = reg
	big := im.biggest()
	for range 2 {
		src, err := Open(host+"/img", cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := src.ReadRange(context.Background(), big.Digest, 0, 1000); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			got[mf.GetName()] += m.GetCounter().GetValue()
		}
	}
	for name, want := range map[string]float64{
		"shoal_origin_requests_total":          2,
		"shoal_origin_read_bytes_total":        2000,
		"shoal_origin_server_sent_bytes_total": 2000,
		"shoal_origin_server_requests_total":   2,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
}
