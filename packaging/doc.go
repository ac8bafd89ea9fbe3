// Package packaging holds what installs Shoal on hosts and clusters, and the tests that keep it
// true: systemd/ (a unit), kubernetes/daemonset.yaml (rendered from the chart with its default
// values by `make packaging`), helm/shoal (the chart: the daemon and the containerd snapshotter
// on every node, containerd configured by an init container, a metrics Service, a
// ServiceMonitor and a Grafana dashboard) and shoal.yaml (an example daemon config).
//
// The tests render the chart with a real `helm template` (bin/tools/helm, `make helm`), parse
// every object, load the rendered daemon config with the daemon's own loader, and run the
// chart's containerd script against the default configs of real containerd 1.6 and 2.x,
// checking the result with containerd's own `config dump`, and run the rendered init and
// restart containers' shell (the restart waits for the snapshotter's socket). e2e's
// TestDashboardMetricsExist checks the dashboard's metric names against a real daemon's
// /metrics.
package packaging
