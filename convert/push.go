package convert

import (
	"context"
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-p2p/shoal/origin"
)

// PushOptions configures Push.
type PushOptions struct {
	// IntoIndex publishes the Shoal manifests in an index under dst's tag after the source's
	// own manifests (which must be in dst's repository: dst names the source's repository), so
	// that one tag serves Shoal hosts and every other runtime.
	IntoIndex bool
	// Progress is called as blobs go (see origin.PushOptions).
	Progress func(origin.PushProgress)
}

// Push uploads the layout a Convert wrote (layoutDir, with res) to dst: blobs the registry lacks,
// then the manifests, the tag last. One image without IntoIndex is pushed as a manifest under
// the tag; several, or IntoIndex, as an image index.
func Push(ctx context.Context, res *Result, layoutDir, src, dst string, cfg origin.Config, opts PushOptions) (ocispec.Descriptor, error) {
	po := origin.PushOptions{Progress: opts.Progress}
	if opts.IntoIndex {
		s, err := origin.ParseReference(src)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		d, err := origin.ParseReference(dst)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		if s.Registry != d.Registry || s.Repository != d.Repository {
			return ocispec.Descriptor{}, fmt.Errorf("--into-index publishes beside the source's manifests, so %s must be in the repository of %s", dst, src)
		}
		po.MountFrom = nil
		return origin.PushIndex(ctx, layoutDir, dst, res.SourceManifests, cfg, po)
	}
	if len(res.Images) == 1 {
		po.Manifest = res.Images[0].Manifest.Digest // which need not be this host's platform
		return origin.Push(ctx, layoutDir, dst, cfg, po)
	}
	return origin.PushIndex(ctx, layoutDir, dst, nil, cfg, po)
}
