package origin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Layout is a Source that reads a local OCI image layout directory (oci-layout, index.json,
// blobs/<alg>/<hex>), such as `shoal image build` writes.
type Layout struct {
	dir     string
	refName string // manifest to pick by org.opencontainers.image.ref.name; "" for the default
	maxMan  int64
}

var _ Source = (*Layout)(nil)

// NewLayout returns a Source over the layout in dir. refName picks a manifest of index.json by its
// ref name annotation; empty picks the Shoal image, or the only manifest. It checks that dir is a
// layout but reads nothing else.
func NewLayout(dir, refName string, cfg Config) (*Layout, error) {
	if err := checkLayout(dir); err != nil {
		return nil, err
	}
	return &Layout{dir: dir, refName: refName, maxMan: cfg.MaxManifestSize}, nil
}

func checkLayout(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, ocispec.ImageLayoutFile))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("layout %s: no %s file: %w", dir, ocispec.ImageLayoutFile, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("layout %s: %w", dir, err)
	}
	var l ocispec.ImageLayout
	if err := json.Unmarshal(b, &l); err != nil || l.Version == "" {
		return fmt.Errorf("layout %s: bad %s: %w", dir, ocispec.ImageLayoutFile, ErrUnsupported)
	}
	return nil
}

// blobPath is where a layout keeps a blob. The digest is validated first: a digest from the
// network must not name a path outside the layout.
func blobPath(dir string, d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("digest %q: %v: %w", truncate(string(d), 100), err, ErrInvalidReference)
	}
	return filepath.Join(dir, ocispec.ImageBlobsDir, d.Algorithm().String(), d.Encoded()), nil
}

// readIndex reads the layout's index.json.
func readIndex(dir string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(dir, ocispec.ImageIndexFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("layout %s: no index.json: %w", dir, ErrNotFound)
		}
		return nil, fmt.Errorf("layout %s: %w", dir, err)
	}
	return b, nil
}

// readVerified reads a whole blob of at most maxSize bytes and checks its digest.
func readVerified(dir string, d digest.Digest, maxSize int64) ([]byte, error) {
	p, err := blobPath(dir, d)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("layout %s: blob %s: %w", dir, d, ErrNotFound)
		}
		return nil, fmt.Errorf("layout %s: %w", dir, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("layout %s: blob %s: %w", dir, d, err)
	}
	if int64(len(b)) > maxSize {
		return nil, fmt.Errorf("layout %s: blob %s: larger than %d bytes: %w", dir, d, maxSize, ErrUnsupported)
	}
	if d.Algorithm().FromBytes(b) != d {
		return nil, fmt.Errorf("layout %s: blob %s: content does not match the digest: %w", dir, d, ErrCorrupt)
	}
	return b, nil
}

// Resolve reads index.json, picks the manifest and verifies it.
func (l *Layout) Resolve(ctx context.Context) (ocispec.Descriptor, []byte, error) {
	idx, err := readIndex(l.dir)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	d, err := chooseManifest(idx, l.refName)
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("layout %s: %w", l.dir, err)
	}
	b, err := readVerified(l.dir, d.Digest, l.maxMan)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	desc, err := describeManifest(b, d.MediaType)
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("layout %s: manifest %s: %w", l.dir, d.Digest, err)
	}
	if isIndex(desc.MediaType) {
		return ocispec.Descriptor{}, nil, fmt.Errorf("layout %s: manifest %s is an index: %w", l.dir, d.Digest, ErrUnsupported)
	}
	return desc, b, nil
}

// ReadRange reads exactly length bytes at off.
func (l *Layout) ReadRange(ctx context.Context, dgst digest.Digest, off, length int64) ([]byte, error) {
	what := fmt.Sprintf("layout %s: blob %s range [%d,%d)", l.dir, dgst, off, off+length)
	if err := checkRange(dgst, off, length); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, _ := blobPath(l.dir, dgst)
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", what, ErrNotFound)
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if off+length > fi.Size() {
		return nil, fmt.Errorf("%s: blob is only %d bytes: %w", what, fi.Size(), ErrRange)
	}
	buf := make([]byte, length)
	if _, err := f.ReadAt(buf, off); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return buf, nil
}

// Open streams a whole blob, verifying it at EOF.
func (l *Layout) Open(ctx context.Context, dgst digest.Digest) (io.ReadCloser, error) {
	what := fmt.Sprintf("layout %s: blob %s", l.dir, dgst)
	p, err := blobPath(l.dir, dgst)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", what, ErrNotFound)
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return &verifyingReader{rc: f, v: dgst.Verifier(), what: what}, nil
}
