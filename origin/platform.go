package origin

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// PlatformFeature marks a Shoal image's entry in an image index (platform.os.features), beside
// the original image's entries: Shoal takes it, other runtimes (which take the first entry for
// their platform, and the originals come first) never do. The same value as
// bootstrap.PlatformFeature.
const PlatformFeature = "shoal.image.v1"

// HostPlatform is the platform of this machine.
func HostPlatform() ocispec.Platform {
	p := ocispec.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	if runtime.GOARCH == "arm64" {
		p.Variant = "v8"
	}
	return p
}

// ParsePlatform parses "os/arch[/variant]" ("linux/amd64", "linux/arm64/v8").
func ParsePlatform(s string) (ocispec.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return ocispec.Platform{}, fmt.Errorf("platform %q: want os/arch[/variant]", s)
	}
	p := ocispec.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		if parts[2] == "" {
			return ocispec.Platform{}, fmt.Errorf("platform %q: empty variant", s)
		}
		p.Variant = parts[2]
	}
	return p, nil
}

// PlatformString formats p as os/arch[/variant].
func PlatformString(p ocispec.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// normalizeVariant gives the variant an architecture has when none is written.
func normalizeVariant(p ocispec.Platform) string {
	switch {
	case p.Architecture == "arm64" && p.Variant == "":
		return "v8"
	case p.Architecture == "amd64" && p.Variant == "v1":
		return ""
	}
	return p.Variant
}

// PlatformMatch reports whether an index entry's platform have is the platform want. A want
// without a variant matches any variant.
func PlatformMatch(want, have ocispec.Platform) bool {
	if want.OS != have.OS || want.Architecture != have.Architecture {
		return false
	}
	return want.Variant == "" || normalizeVariant(want) == normalizeVariant(have)
}

// IsShoalEntry reports whether an index entry names a Shoal image.
func IsShoalEntry(d ocispec.Descriptor) bool {
	return d.ArtifactType == ArtifactType || d.Platform != nil && slices.Contains(d.Platform.OSFeatures, PlatformFeature)
}

// ParseIndex decodes an image index (OCI or Docker manifest list).
func ParseIndex(b []byte) (*ocispec.Index, error) {
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("index is not JSON: %v: %w", err, ErrBadResponse)
	}
	return &idx, nil
}

// chooseManifest picks the image manifest an index stands for: the one whose ref name annotation
// is refName when that is set; else the Shoal image for this host's platform (an entry without a
// platform matches any); else the index's only manifest.
func chooseManifest(indexJSON []byte, refName string) (ocispec.Descriptor, error) {
	idx, err := ParseIndex(indexJSON)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	host := HostPlatform()
	var candidates, shoal []ocispec.Descriptor
	var others []string
	for _, d := range idx.Manifests {
		if err := d.Digest.Validate(); err != nil || d.Digest.Algorithm() != digest.SHA256 {
			continue
		}
		if refName != "" {
			if d.Annotations[ocispec.AnnotationRefName] == refName {
				return d, nil
			}
			continue
		}
		candidates = append(candidates, d)
		if !IsShoalEntry(d) {
			continue
		}
		if d.Platform == nil || PlatformMatch(host, *d.Platform) {
			shoal = append(shoal, d)
		} else {
			others = append(others, PlatformString(*d.Platform))
		}
	}
	if refName != "" {
		return ocispec.Descriptor{}, fmt.Errorf("no manifest named %q: %w", refName, ErrNotFound)
	}
	switch {
	case len(shoal) > 0:
		return shoal[0], nil
	case len(others) > 0:
		return ocispec.Descriptor{}, fmt.Errorf("index has Shoal images for %s, none for this host (%s): %w",
			strings.Join(others, ", "), PlatformString(host), ErrNotFound)
	case len(candidates) == 1:
		return candidates[0], nil
	}
	return ocispec.Descriptor{}, fmt.Errorf("index lists %d manifests and none is a Shoal image: %w", len(candidates), ErrUnsupported)
}

// IsIndex reports whether a media type is an image index or a Docker manifest list.
func IsIndex(mediaType string) bool { return isIndex(mediaType) }

// ManifestReader is what reads an image's manifests and indexes, unresolved: Registry and Layout.
type ManifestReader interface {
	// Root returns the manifest or index the reference names, its digest verified.
	Root(ctx context.Context) (ocispec.Descriptor, []byte, error)
	// Manifest returns the manifest or index with digest d, verified.
	Manifest(ctx context.Context, d digest.Digest) (ocispec.Descriptor, []byte, error)
}

var (
	_ ManifestReader = (*Registry)(nil)
	_ ManifestReader = (*Layout)(nil)
)

// Root returns the manifest or index the reference names.
func (r *Registry) Root(ctx context.Context) (ocispec.Descriptor, []byte, error) {
	return r.fetchManifest(ctx, r.ref.manifestRef(), r.ref.Digest)
}

// Manifest returns the manifest or index with digest d from the reference's repository.
func (r *Registry) Manifest(ctx context.Context, d digest.Digest) (ocispec.Descriptor, []byte, error) {
	if err := d.Validate(); err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("%s: %v: %w", r.describe("manifest"), err, ErrInvalidReference)
	}
	return r.fetchManifest(ctx, d.String(), d)
}

// Root returns the layout's index.json (as an index), or the manifest picked by the ref name.
func (l *Layout) Root(ctx context.Context) (ocispec.Descriptor, []byte, error) {
	b, err := readIndex(l.dir)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	if l.refName == "" {
		return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(b), Size: int64(len(b))}, b, nil
	}
	d, err := chooseManifest(b, l.refName)
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("layout %s: %w", l.dir, err)
	}
	return l.Manifest(ctx, d.Digest)
}

// Manifest reads the manifest or index with digest d from the layout.
func (l *Layout) Manifest(ctx context.Context, d digest.Digest) (ocispec.Descriptor, []byte, error) {
	b, err := readVerified(l.dir, d, l.maxMan)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	desc, err := describeManifest(b, "")
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("layout %s: manifest %s: %w", l.dir, d, err)
	}
	return desc, b, nil
}
