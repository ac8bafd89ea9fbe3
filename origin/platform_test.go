package origin

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestParsePlatform(t *testing.T) {
	for _, c := range []struct {
		in   string
		want ocispec.Platform
		bad  bool
	}{
		{in: "linux/amd64", want: ocispec.Platform{OS: "linux", Architecture: "amd64"}},
		{in: "linux/arm64/v8", want: ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}},
		{in: "linux", bad: true}, {in: "linux/", bad: true}, {in: "a/b/c/d", bad: true}, {in: "linux/arm/", bad: true},
	} {
		got, err := ParsePlatform(c.in)
		if (err != nil) != c.bad || !c.bad && (got.OS != c.want.OS || got.Architecture != c.want.Architecture || got.Variant != c.want.Variant) {
			t.Errorf("ParsePlatform(%q) = %+v, %v", c.in, got, err)
		}
		if !c.bad && PlatformString(got) != c.in {
			t.Errorf("PlatformString round trip: %q", PlatformString(got))
		}
	}
	arm := ocispec.Platform{OS: "linux", Architecture: "arm64"}
	if !PlatformMatch(ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, arm) || PlatformMatch(arm, ocispec.Platform{OS: "linux", Architecture: "amd64"}) {
		t.Error("PlatformMatch")
	}
}

// TestChooseManifest: an index resolves to the Shoal entry for this host's platform, whether
// marked by artifactType or by the platform feature, never to an original image beside it.
func TestChooseManifest(t *testing.T) {
	host := HostPlatform()
	other := ocispec.Platform{OS: "linux", Architecture: "s390x"}
	if host.Architecture == "s390x" {
		other.Architecture = "ppc64le"
	}
	d := func(s string) digest.Digest { return digest.FromString(s) }
	entry := func(name string, p ocispec.Platform, shoal bool) ocispec.Descriptor {
		e := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d(name), Size: 10, Platform: &p}
		if shoal {
			pp := p
			pp.OSFeatures = []string{PlatformFeature}
			e.Platform = &pp
		}
		return e
	}
	index := func(es ...ocispec.Descriptor) []byte {
		b, _ := json.Marshal(ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: es})
		return b
	}
	artifact := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d("art"), ArtifactType: ArtifactType}
	for _, c := range []struct {
		name string
		idx  []byte
		want digest.Digest
		err  string
	}{
		{"shoal entry after the originals", index(entry("orig-host", host, false), entry("orig-other", other, false), entry("shoal-other", other, true), entry("shoal-host", host, true)), d("shoal-host"), ""},
		{"old layout: artifactType, no platform", index(artifact), d("art"), ""},
		{"only one plain manifest", index(entry("orig-host", host, false)), d("orig-host"), ""},
		{"shoal for another platform only", index(entry("orig-host", host, false), entry("shoal-other", other, true)), "", "none for this host"},
		{"no shoal entry", index(entry("a", host, false), entry("b", other, false)), "", "none is a Shoal image"},
	} {
		got, err := chooseManifest(c.idx, "")
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %v, want %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil || got.Digest != c.want {
			t.Errorf("%s: got %s, %v; want %s", c.name, got.Digest, err, c.want)
		}
	}
	if _, err := chooseManifest([]byte("{"), ""); !errors.Is(err, ErrBadResponse) {
		t.Errorf("bad JSON: %v", err)
	}
}
