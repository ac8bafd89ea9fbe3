package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRegisterShares(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := prometheus.CounterOpts{Name: "shoal_test_things_total", Help: "Things."}
	a, err := Register(reg, prometheus.NewCounter(opts))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Register(reg, prometheus.NewCounter(opts))
	if err != nil {
		t.Fatal(err)
	}
	a.Inc()
	b.Inc()
	if got := testutil.ToFloat64(a); got != 2 {
		t.Fatalf("shared counter = %v, want 2", got)
	}
	// Same name, another kind: an error, not a panic.
	if _, err := Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{Name: "shoal_test_things_total", Help: "Things."})); err == nil {
		t.Fatal("conflicting registration accepted")
	}
	if _, err := Register[prometheus.Counter](nil, prometheus.NewCounter(opts)); err != nil {
		t.Fatal(err)
	}
}

func TestRegisterOwned(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := func() prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "shoal_test_open", Help: "Open."}, func() float64 { return 1 })
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "shoal_test_c_total", Help: "C."})
	un, err := RegisterOwned(reg, c, g())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := RegisterOwned(reg, prometheus.NewCounter(prometheus.CounterOpts{Name: "shoal_test_d_total", Help: "D."}), g()); err == nil {
		t.Fatal("a second owner of one series accepted")
	}
	if n, _ := testutil.GatherAndCount(reg); n != 2 {
		t.Fatalf("%d series after a refused registration, want 2 (all or none)", n)
	}
	un()
	if _, err := RegisterOwned(reg, g()); err != nil {
		t.Fatalf("after unregister: %v", err)
	}
}
