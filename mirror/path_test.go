package mirror

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func TestParsePath(t *testing.T) {
	d := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		in         string
		kind       int
		name, tag  string
		digest, ok bool
	}{
		{in: "/v2/", kind: kindBase, ok: true},
		{in: "/v2", kind: kindBase, ok: true},
		{in: "/v2/library/alpine/manifests/3.20", kind: kindManifest, name: "library/alpine", tag: "3.20", ok: true},
		{in: "/v2/a/manifests/" + d, kind: kindManifest, name: "a", digest: true, ok: true},
		{in: "/v2/a/b/c/blobs/" + d, kind: kindBlob, name: "a/b/c", digest: true, ok: true},
		// A repository may itself contain "blobs" or "manifests" components.
		{in: "/v2/blobs/manifests/x/blobs/" + d, kind: kindBlob, name: "blobs/manifests/x", digest: true, ok: true},
		{in: "/v2/a/blobs/latest"},                             // a blob needs a digest
		{in: "/v2/a/blobs/sha512:" + strings.Repeat("a", 128)}, // only sha256
		{in: "/v2/a/blobs/sha256:abc"},
		{in: "/v2/A/manifests/x"},
		{in: "/v2/a//b/manifests/x"},
		{in: "/v2/../manifests/x"},
		{in: "/v2/a/manifests/"},
		{in: "/v2/a/manifests/bad tag"},
		{in: "/v2/a/tags/list"},
		{in: "/v3/a/manifests/x"},
		{in: "/v2/a/manifests/x@" + d},
		{in: "/v2/" + strings.Repeat("a", 600) + "/manifests/x"},
	} {
		ap, err := parsePath(tc.in)
		if !tc.ok {
			if !errors.Is(err, errBadPath) {
				t.Errorf("%q: err %v, want errBadPath", tc.in, err)
			}
			continue
		}
		if err != nil || ap.kind != tc.kind || ap.name != tc.name || ap.tag != tc.tag || (ap.digest != "") != tc.digest {
			t.Errorf("%q: %+v, %v", tc.in, ap, err)
		}
	}
}

func TestUpstreamHost(t *testing.T) {
	for _, tc := range []struct{ ns, def, want string }{
		{"ghcr.io", "", "ghcr.io"},
		{"", "127.0.0.1:5000", "127.0.0.1:5000"},
		{"docker.io", "x.example", "registry-1.docker.io"},
		{"", "", ""},
		{"bad/host", "", ""},
		{"evil.example/path?x", "", ""},
	} {
		got, err := upstreamHost(tc.ns, tc.def)
		if got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("upstreamHost(%q, %q) = %q, %v; want %q", tc.ns, tc.def, got, err, tc.want)
		}
	}
}

// FuzzParsePath: any path parses to a valid request or errBadPath, never a panic; what parses
// names a valid repository and exactly one of tag and digest.
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"/v2/", "/v2/a/manifests/latest", "/v2/a/b/blobs/sha256:" + strings.Repeat("0", 64), "/v2/a/manifests/sha256:x", "/v2//blobs/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ap, err := parsePath(s)
		if err != nil {
			if !errors.Is(err, errBadPath) {
				t.Fatalf("%q: %v", s, err)
			}
			return
		}
		if ap.kind == kindBase {
			return
		}
		if ap.name == "" || (ap.tag == "") == (ap.digest == "") || (ap.kind == kindBlob && ap.digest == "") {
			t.Fatalf("%q: %+v", s, ap)
		}
		if ap.digest != "" && ap.digest.Validate() != nil {
			t.Fatalf("%q: invalid digest %q", s, ap.digest)
		}
	})
}

// FuzzServeHTTP: any path, query and Range header against a mirror holding one blob (no
// upstream, no peers) is answered with a status, never a panic or a hang; a 206 carries exactly
// the bytes of the blob it names.
func FuzzServeHTTP(f *testing.F) {
	blob := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	d := digest.FromBytes(blob)
	cfg := DefaultConfig()
	cfg.Dir = f.TempDir()
	cfg.Origin.DockerConfig = "-"
	// A fuzzed ?ns= may name any host: fail fast rather than retry (this machine has no
	// network beyond loopback).
	cfg.Origin.Retries, cfg.Origin.Timeout = 0, time.Second
	m, err := New(cfg, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = m.Close() })
	if _, err := m.store.ingest(d, 1<<20, func(w io.Writer) error { _, err := w.Write(blob); return err }); err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"bytes=0-9", "bytes=-5", "bytes=30-", "bytes=40-50", "bytes=1-2,4-5", "bytes=x", ""} {
		f.Add("/v2/a/blobs/"+d.String(), "", s)
	}
	f.Add("/v2/a/manifests/latest", "ns=bad/host", "")
	f.Fuzz(func(t *testing.T, path, query, rng string) {
		u := &url.URL{Path: path, RawQuery: query}
		req := httptest.NewRequest(http.MethodGet, "http://mirror.test/", nil)
		req.URL = u
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		ctx, cancel := context.WithTimeout(req.Context(), 5*time.Second)
		defer cancel()
		rec := httptest.NewRecorder()
		m.ServeHTTP(rec, req.WithContext(ctx))
		if rec.Code == 0 || rec.Code >= 600 {
			t.Fatalf("%q %q %q: status %d", path, query, rng, rec.Code)
		}
		if rec.Code == http.StatusPartialContent && !bytes.Contains(blob, rec.Body.Bytes()) && !strings.Contains(rec.Header().Get("Content-Type"), "multipart") {
			t.Fatalf("%q range %q: 206 with bytes not of the blob: %q", path, rng, rec.Body.Bytes())
		}
	})
}
