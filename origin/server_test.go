package origin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

// startServer runs the embedded origin over the layouts and returns its host:port.
func startServer(t testing.TB, layouts map[string]string, cfg ServerConfig) (*Server, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s, err := NewServer(layouts, cfg)
	if err != nil {
		t.Fatal(err)
	}
	l := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s, l.Addr().String()
}

func TestServerSource(t *testing.T) {
	im := makeLayout(t, t.TempDir(), 20, "v1")
	other := makeLayout(t, t.TempDir(), 21, "")
	_, host := startServer(t, map[string]string{"img": im.dir, "team/other": other.dir}, DefaultServerConfig())
	for _, tc := range []struct {
		ref string
		im  *testImage
	}{
		{host + "/img:latest", im},
		{host + "/img:v1", im},
		{host + "/img@" + im.desc.Digest.String(), im},
		{host + "/team/other", other},
	} {
		src, err := Open(tc.ref, testConfig(host))
		if err != nil {
			t.Fatal(err)
		}
		t.Run(tc.ref[len(host):], func(t *testing.T) { testSource(t, src, tc.im) })
	}
}

func TestServerHTTP(t *testing.T) {
	im := makeLayout(t, t.TempDir(), 22, "v1")
	s, host := startServer(t, map[string]string{LayoutName(im.dir + "/"): im.dir}, DefaultServerConfig())
	name := LayoutName(im.dir)
	big := im.biggest()
	size := big.Size
	blobURL := fmt.Sprintf("http://%s/v2/%s/blobs/%s", host, name, big.Digest)
	for _, tc := range []struct {
		method, path, rng string
		code              int
		contentRange      string
		length            int64
	}{
		{"GET", "/v2/", "", 200, "", 2},
		{"HEAD", blobURL, "", 200, "", size},
		{"GET", blobURL, "bytes=0-99", 206, fmt.Sprintf("bytes 0-99/%d", size), 100},
		{"GET", blobURL, "bytes=-10", 206, fmt.Sprintf("bytes %d-%d/%d", size-10, size-1, size), 10},
		{"GET", blobURL, fmt.Sprintf("bytes=%d-", size-5), 206, fmt.Sprintf("bytes %d-%d/%d", size-5, size-1, size), 5},
		{"GET", blobURL, "bytes=0-1,5-6", 200, "", size}, // multiple ranges: whole blob
		{"GET", blobURL, fmt.Sprintf("bytes=%d-", size), 416, fmt.Sprintf("bytes */%d", size), -1},
		{"GET", fmt.Sprintf("http://%s/v2/%s/manifests/v1", host, name), "", 200, "", im.desc.Size},
		{"HEAD", fmt.Sprintf("http://%s/v2/%s/manifests/latest", host, name), "", 200, "", im.desc.Size},
		{"GET", fmt.Sprintf("http://%s/v2/%s/manifests/nope", host, name), "", 404, "", -1},
		{"GET", fmt.Sprintf("http://%s/v2/nope/manifests/latest", host), "", 404, "", -1},
		{"GET", fmt.Sprintf("http://%s/v2/%s/blobs/sha256:abc", host, name), "", 400, "", -1},
		{"PUT", fmt.Sprintf("http://%s/v2/%s/manifests/latest", host, name), "", 405, "", -1},
		{"DELETE", blobURL, "", 405, "", -1},
	} {
		u := tc.path
		if strings.HasPrefix(u, "/") {
			u = "http://" + host + u
		}
		req, _ := http.NewRequest(tc.method, u, nil)
		if tc.rng != "" {
			req.Header.Set("Range", tc.rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || resp.Header.Get("Content-Range") != tc.contentRange {
			t.Errorf("%s %s %q: %s Content-Range %q, want %d %q", tc.method, u, tc.rng, resp.Status, resp.Header.Get("Content-Range"), tc.code, tc.contentRange)
		}
		if tc.length >= 0 && resp.ContentLength != tc.length {
			t.Errorf("%s %s %q: Content-Length %d, want %d", tc.method, u, tc.rng, resp.ContentLength, tc.length)
		}
		if tc.method == "GET" && tc.length >= 0 && int64(len(body)) != tc.length {
			t.Errorf("%s %s %q: %d body bytes, want %d", tc.method, u, tc.rng, len(body), tc.length)
		}
	}
	resp, err := http.Get("http://" + host + StatsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	want := 100 + 10 + 5 + size + im.desc.Size
	if st.BytesServed != want || s.Stats().BytesServed != want {
		t.Fatalf("stats %+v, want %d bytes served", st, want)
	}
	if st.Ranges != 3 || st.Manifests != 1 || st.NotFound != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestServerConfigErrors(t *testing.T) {
	dir := makeLayout(t, t.TempDir(), 23, "").dir
	for _, tc := range []struct {
		layouts map[string]string
		cfg     ServerConfig
	}{
		{nil, DefaultServerConfig()},
		{map[string]string{"Upper": dir}, DefaultServerConfig()},
		{map[string]string{"img": t.TempDir()}, DefaultServerConfig()},
		{map[string]string{"img": dir}, ServerConfig{Rate: -1}},
	} {
		if _, err := NewServer(tc.layouts, tc.cfg); err == nil {
			t.Errorf("NewServer(%v, %+v) succeeded", tc.layouts, tc.cfg)
		}
	}
}

// TestServerRateCaps checks that --rate slows a transfer (a coarse check; the accuracy figure
// comes from BenchmarkServerRate).
func TestServerRateCaps(t *testing.T) {
	im := makeLayout(t, t.TempDir(), 24, "")
	_, host := startServer(t, map[string]string{"img": im.dir}, ServerConfig{Rate: 2 << 20})
	src, _ := Open(host+"/img", testConfig(host))
	big := im.biggest() // 1 MiB + 123: about half a second at 2 MiB/s
	start := time.Now()
	if _, err := readAll(context.Background(), src, big.Digest); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("%d bytes at 2 MiB/s took %v", big.Size, d)
	}
}
