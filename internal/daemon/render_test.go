package daemon

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

func sampleReport() StatsReport {
	return StatsReport{
		PeerID:         "12D3KooWLZ3zdwc9trZmGaxCpNhyhhQTwwvZXyG5QMS8nz6ZxR6N",
		Rights:         RightsReport{Enabled: true, Denied: 4, Granted: 2, Refused: 1, PresentedOK: 3},
		Bytes:          ByteTotals{Local: 5 << 20, Dedup: 1 << 20, Peers: 60 << 20, Origin: 20 << 20, ServedToPeers: 33 << 20},
		Chunks:         ChunkTotals{Dedup: 1, Peers: 60, Origin: 20, ServedToPeers: 33},
		WireBytes:      WireTotals{Peers: 21 << 20, Origin: 7 << 20, ServedToPeers: 11 << 20},
		OriginOffload:  float64(61) / 81,
		VerifyFailures: 4, VerifyFailuresBy: VerifyBySource{Peers: 3, Origin: 1}, FetchFailures: 1, Bans: 1,
		Cache:   CacheReport{PresentBytes: 81 << 20, MaxBytes: 10 << 30, EvictedBytes: 0, Blobs: 1},
		Latency: map[string]Lat{"peers": {P50: 12.5, P99: 80.25}, "origin": {P50: 30, P99: 120}, "dedup": {P50: 1, P99: 2}},
		Images: []ImageReport{{Ref: "127.0.0.1:5000/img:latest", Digest: "sha256:acc91784e7df340fbb7d571b4cc386ae9d9ecb0af1f55a7cea42d0a0f2308da1",
			Mounts: map[string]string{"/mnt/a": "fuse"}, Bytes: 80 << 20, BytesPresent: 60 << 20, Chunks: 80, ChunksPresent: 60, Prefetch: "running"}},
		ClusterPrefetch: []ClusterPrefetchReport{{ID: 1, Ref: "127.0.0.1:5000/img:latest", Percent: 50, Started: "2026-12-04T20:00:00Z", State: "running",
			Done: 1, Bytes: 160 << 20, BytesPresent: 100 << 20, Hosts: []ClusterHostReport{
				{Peer: "12D3KooWLZ3zdwc9trZmGaxCpNhyhhQTwwvZXyG5QMS8nz6ZxR6N", Self: true, Image: "sha256:acc9", State: "done", Bytes: 80 << 20, BytesPresent: 80 << 20},
				{Peer: "12D3KooWRz6hfEF3pmXq5dFu4v8DyjP1JGLfXrvAzw6KnLRq2wGm", Image: "sha256:acc9", State: "running", Bytes: 80 << 20, BytesPresent: 20 << 20}}}},
		Peers: []PeerReport{
			{ID: "12D3KooWQDy8mRSx4U3h1TQGP6VcJxJ5NnTz8kHPXb9zDMNNs", Addrs: []string{"/ip4/127.0.0.1/tcp/7602"}, FoundBy: []string{"static"}, Connected: true,
				BytesUp: 33 << 20, BytesDown: 50 << 20, RequestsIn: 33, RequestsOut: 50, P50: 10, P99: 40, Standing: "good"},
			{ID: "12D3KooWSlowPeerSlowPeerSlowPeerSlowPeerSlowPeerSlowXX", Addrs: []string{"/ip4/127.0.0.1/tcp/7604"}, FoundBy: []string{"dht"}, Connected: true,
				BytesDown: 2 << 20, RequestsOut: 16, P50: 900, P99: 4000, Standing: "demoted", SlowShare: 0.75},
			{ID: "12D3KooWBadPeerBadPeerBadPeerBadPeerBadPeerBadPeerXX", Addrs: []string{"/ip4/127.0.0.1/tcp/7603"}, FoundBy: []string{"inbound"},
				BytesDown: 10 << 20, RequestsOut: 12, Errors: 1, Corrupt: 3, Banned: true, Standing: "banned"},
		},
		Uptime: 3725,
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestRenderGolden(t *testing.T) {
	var b bytes.Buffer
	RenderStats(&b, sampleReport())
	golden(t, "stats.txt", b.Bytes())
	b.Reset()
	RenderPeers(&b, sampleReport().Peers)
	golden(t, "peers.txt", b.Bytes())
	b.Reset()
	RenderImages(&b, sampleReport().Images)
	golden(t, "images.txt", b.Bytes())
	b.Reset()
	RenderStats(&b, StatsReport{PeerID: "x", Latency: map[string]Lat{}})
	golden(t, "stats-empty.txt", b.Bytes())
}

// TestStatsJSONSchema pins the documented `shoal stats --json` fields: adding is fine, renaming
// or removing breaks users' scripts, and this test.
func TestStatsJSONSchema(t *testing.T) {
	b, err := json.Marshal(sampleReport())
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"":                       {"peerID", "bytes", "chunks", "wireBytes", "originOffload", "verifyFailures", "verifyFailuresBySource", "fetchFailures", "bans", "cache", "latency", "images", "peers", "uptimeSeconds", "rights", "clusterPrefetch"},
		"clusterPrefetch":        {"id", "ref", "percent", "started", "state", "done", "failed", "bytes", "bytesPresent", "hosts"},
		"rights":                 {"enabled", "denied", "granted", "refused", "presentedOK", "presentedDenied"},
		"bytes":                  {"local", "dedup", "peers", "origin", "servedToPeers"},
		"chunks":                 {"dedup", "peers", "origin", "servedToPeers"},
		"wireBytes":              {"peers", "origin"},
		"verifyFailuresBySource": {"local", "peers", "origin"},
		"cache":                  {"presentBytes", "maxBytes", "evictedBytes", "blobs"},
		"peers":                  {"id", "addrs", "foundBy", "connected", "bytesUp", "bytesDown", "requestsIn", "requestsOut", "p50ms", "p99ms", "errors", "corrupt", "banned"},
		"images":                 {"ref", "digest", "mounts", "bytes", "bytesPresent", "chunks", "chunksPresent", "prefetch"},
		"latency":                {"peers", "origin", "dedup"},
	}
	for obj, keys := range want {
		var m map[string]any
		switch v := doc[obj].(type) {
		case nil:
			m = doc
		case []any:
			m = v[0].(map[string]any)
		case map[string]any:
			m = v
		}
		var got []string
		for k := range m {
			got = append(got, k)
		}
		sort.Strings(got)
		w := append([]string(nil), keys...)
		sort.Strings(w)
		for _, k := range w {
			if _, ok := m[k]; !ok {
				t.Errorf("stats JSON %q lacks %q (has %v)", obj, k, got)
			}
		}
	}
	if got := doc["bytes"].(map[string]any)["peers"].(float64); got != 60<<20 {
		t.Errorf("bytes.peers = %v", got)
	}
	// The schema document lists every field.
	spec, err := os.ReadFile("../../docs/stats.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, keys := range want {
		for _, k := range keys {
			if !strings.Contains(string(spec), "`"+k+"`") {
				t.Errorf("docs/stats.md does not document %q", k)
			}
		}
	}
}
