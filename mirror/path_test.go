package mirror

import (
	"errors"
	"strings"
	"testing"
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
