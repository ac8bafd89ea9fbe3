// Package metrics is the one way Shoal's packages register their Prometheus collectors, so every
// package follows the same rules: a nil Registerer registers nothing (the package still counts,
// privately), sharing a Registerer between several components is allowed, and a conflict is an
// error that names the metric, never a panic.
//
//	m.bytes, err = metrics.Register(reg, prometheus.NewCounter(...)) // shared series
//	unregister, err := metrics.RegisterOwned(reg, gaugeFunc, ...)   // series of one live object
//	defer unregister()                                               // at the object's Close
package metrics

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c with reg and returns the collector to use. Where an equal collector is
// registered already (a second origin Source on the same Registerer, a cachefiles server started
// again in the same process), that one is returned, so both count into one series. A collector of
// the same name but another kind or labels is an error.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if reg == nil {
		return c, nil
	}
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("registering metric %s: %w", describe(c), err)
}

// RegisterOwned registers collectors that read one live object (CounterFunc, GaugeFunc over a
// store's or node's fields): they cannot be shared with another object, so one registered
// already is an error. It registers all or none, and returns the function that unregisters them,
// for the object's Close.
func RegisterOwned(reg prometheus.Registerer, cs ...prometheus.Collector) (unregister func(), err error) {
	if reg == nil {
		return func() {}, nil
	}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, r := range cs[:i] {
				reg.Unregister(r)
			}
			return nil, fmt.Errorf("registering metric %s: %w", describe(c), err)
		}
	}
	return func() {
		for _, c := range cs {
			reg.Unregister(c)
		}
	}, nil
}

// describe names a collector's metrics for an error message.
func describe(c prometheus.Collector) string {
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	name := ""
	for d := range ch {
		if name == "" {
			name = d.String()
		}
	}
	return name
}
