package origin

import (
	"context"
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ManifestByTag returns the manifest or index that tag names in the reference's repository,
// unresolved, its digest checked against the registry's Docker-Content-Digest header when sent
// (the registry mirror's pass-through of tags; one Registry serves every tag of a repository and
// keeps its tokens).
func (r *Registry) ManifestByTag(ctx context.Context, tag string) (ocispec.Descriptor, []byte, error) {
	if !tagPattern.MatchString(tag) {
		return ocispec.Descriptor{}, nil, fmt.Errorf("%s: bad tag %q: %w", r.describe("manifest"), truncate(tag, 80), ErrInvalidReference)
	}
	return r.fetchManifest(ctx, tag, "")
}

// DescribeManifest returns the descriptor (media type, digest, size, artifact type) of manifest
// or index bytes; the media type comes from the body when it says, else from contentType. An
// error wraps ErrUnsupported or ErrBadResponse when b is not an image manifest or index.
func DescribeManifest(b []byte, contentType string) (ocispec.Descriptor, error) {
	return describeManifest(b, contentType)
}
