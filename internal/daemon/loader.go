package daemon

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/origin"
)

// imageLoader makes an image from its reference: the origin to read it from, its chunk manifests
// and a verified local bootstrap. The daemon's is originLoader; tests use fakes.
type imageLoader interface {
	// Load resolves ref at its origin.
	Load(ctx context.Context, ref string) (*image, error)
	// Reload makes the image from a manifest saved earlier (a restart): no resolving.
	Reload(ctx context.Context, ref string, manifest []byte) (*image, error)
}

// originLoader loads images from registries and local layouts (package origin) and keeps their
// bootstraps in dir.
type originLoader struct {
	cfg origin.Config
	dir string // <data>/bootstraps
}

var _ imageLoader = originLoader{}

func (l originLoader) Load(ctx context.Context, ref string) (*image, error) {
	src, err := origin.Open(ref, l.cfg)
	if err != nil {
		return nil, err
	}
	_, mb, err := src.Resolve(ctx)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", ref, err)
	}
	return l.load(ctx, ref, src, mb)
}

func (l originLoader) Reload(ctx context.Context, ref string, manifest []byte) (*image, error) {
	src, err := origin.Open(ref, l.cfg)
	if err != nil {
		return nil, err
	}
	return l.load(ctx, ref, src, manifest)
}

func (l originLoader) load(ctx context.Context, ref string, src origin.Source, mb []byte) (*image, error) {
	im, err := bootstrap.ParseImage(mb, func(desc ocispec.Descriptor) ([]byte, error) {
		return fetchAll(ctx, src, desc.Digest, bootstrap.MaxMetadataSize)
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	boot, err := l.fetchBootstrap(ctx, src, im)
	if err != nil {
		return nil, fmt.Errorf("image %s: bootstrap: %w", ref, err)
	}
	return &image{Ref: ref, Image: im, Manifest: mb, BootPath: boot, origin: src}, nil
}

// fetchBootstrap keeps the bootstrap as a local, verified file: EROFS metadata never leaves the
// host once fetched (file-backed and FUSE mounts read it directly; fscache serves it).
func (l originLoader) fetchBootstrap(ctx context.Context, src origin.Source, im *bootstrap.Image) (string, error) {
	desc := im.Bootstrap
	path := filepath.Join(l.dir, desc.Digest.Encoded())
	if st, err := os.Stat(path); err == nil && st.Size() == desc.Size {
		return path, nil
	}
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return "", err
	}
	rc, err := src.Open(ctx, desc.Digest)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(l.dir, ".fetch-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	h := digest.SHA256.Digester()
	n, err := io.Copy(io.MultiWriter(tmp, h.Hash()), io.LimitReader(rc, desc.Size+1))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	if n != desc.Size || h.Digest() != desc.Digest {
		return "", fmt.Errorf("bootstrap %s: got %d bytes with digest %s: %w", desc.Digest, n, h.Digest(), chunk.ErrCorrupt)
	}
	f, err := os.Open(tmp.Name())
	if err != nil {
		return "", err
	}
	// A bootstrap that is not a well-formed EROFS image of these blobs is refused before any
	// mount: the kernel never sees it.
	var sizes []int64
	for _, b := range im.Blobs {
		sizes = append(sizes, b.Manifest.BlobSize) // the devices: uncompressed
	}
	fsys, err := bootstrap.Open(f, n)
	if err == nil {
		err = fsys.Check(sizes)
	}
	f.Close()
	if err != nil {
		return "", fmt.Errorf("bootstrap %s: %w", desc.Digest, err)
	}
	return path, os.Rename(tmp.Name(), path)
}

func fetchAll(ctx context.Context, src origin.Source, d digest.Digest, limit int64) ([]byte, error) {
	rc, err := src.Open(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return bootstrap.ReadAllLimited(rc, limit, d.String())
}
