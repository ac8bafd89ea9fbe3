package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// dashboardFile is the chart's Grafana dashboard (packaging/helm/shoal).
const dashboardFile = "../packaging/helm/shoal/dashboards/shoal.json"

var metricName = regexp.MustCompile(`\bshoal_[a-z0-9_]+`)

// dashboardMetrics returns every shoal_* name in the dashboard's PromQL: panel targets and
// template variable queries, at any depth.
func dashboardMetrics(t *testing.T) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	names := map[string][]string{} // name -> the expressions using it
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "query" || k == "definition") {
					for _, n := range metricName.FindAllString(s, -1) {
						names[n] = append(names[n], s)
					}
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
	return names
}

// scrape returns the sample names a daemon's /metrics exposes (histograms as their _bucket,
// _sum and _count series).
func scrape(t *testing.T, addr string) map[string]bool {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, b)
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			seen[line[:i]] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return seen
}

// TestDashboardMetricsExist: every metric the Grafana dashboard queries is one a real daemon
// exposes, so the dashboard cannot drift from the code. Two daemons (the second a peer of the
// first, both with the registry mirror on) prefetch an image, one from the origin and one from
// the other, so the series that appear only with traffic (by source, by status) exist; the
// names of both scrapes together must cover the dashboard's.
func TestDashboardMetricsExist(t *testing.T) {
	want := dashboardMetrics(t)
	if len(want) < 20 {
		t.Fatalf("the dashboard queries only %d shoal metrics: %v", len(want), want)
	}
	c := newCluster(t, 0)
	var admins []string
	for i := range 2 {
		admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		c.extra = []string{"--admin", admin, "--mirror-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t))}
		var peers []string
		if i > 0 {
			peers = []string{c.daemons[0].addr}
		}
		c.daemons = append(c.daemons, c.startDaemon(i+1, peers))
		admins = append(admins, admin)
	}
	run(t, "prefetch", c.ref, "--wait", "--api", c.daemons[0].sock)
	run(t, "prefetch", c.ref, "--wait", "--api", c.daemons[1].sock)
	if s := c.stats(c.daemons[1]); s.Bytes.Peers == 0 {
		t.Fatalf("the second daemon took nothing from its peer (%+v): the traffic series would be missing", s.Bytes)
	}

	have := map[string]bool{}
	for _, a := range admins {
		for n := range scrape(t, a) {
			have[n] = true
		}
	}
	var missing []string
	for n, exprs := range want {
		if !have[n] {
			missing = append(missing, fmt.Sprintf("%s (in %q)", n, exprs[0]))
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("the dashboard queries metrics no daemon exposes:\n  %s", strings.Join(missing, "\n  "))
	}
	t.Logf("the dashboard's %d shoal metrics all exist", len(want))
}
