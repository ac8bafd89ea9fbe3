package origin

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Source is where an image's manifest and blobs are read from: a registry repository or a local
// OCI image layout. Implementations are safe for concurrent use.
type Source interface {
	// Resolve returns the image manifest's descriptor and bytes, the digest verified.
	Resolve(ctx context.Context) (ocispec.Descriptor, []byte, error)
	// ReadRange returns exactly length bytes of blob dgst from offset off, or an error. The
	// bytes are not verified: the caller checks them against their chunk CIDs.
	ReadRange(ctx context.Context, dgst digest.Digest, off, length int64) ([]byte, error)
	// Open streams a whole blob. Its digest is checked at the end: Read returns io.EOF only if
	// the bytes matched, so content must not be used before that. The caller must Close it: an
	// open blob holds one of the origin's concurrent request slots.
	Open(ctx context.Context, dgst digest.Digest) (io.ReadCloser, error)
}

// Open returns the Source named by ref: a local OCI layout directory ("oci:DIR", "oci:DIR:NAME"
// for the manifest with that ref name, an absolute or ./relative path, or any existing directory
// with an oci-layout file), or else a registry reference "host[:port]/name[:tag][@digest]".
func Open(ref string, cfg Config) (Source, error) {
	if dir, name, ok := layoutRef(ref); ok {
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
		return NewLayout(dir, name, cfg)
	}
	r, err := ParseReference(ref)
	if err != nil {
		return nil, err
	}
	return NewRegistry(r, cfg)
}

// layoutRef recognises references to local layouts.
func layoutRef(ref string) (dir, name string, ok bool) {
	if rest, found := strings.CutPrefix(ref, "oci:"); found {
		// "oci:DIR:NAME" unless DIR itself contains the colon.
		if i := strings.LastIndexByte(rest, ':'); i > 0 && !isDir(rest) {
			return rest[:i], rest[i+1:], true
		}
		return rest, "", true
	}
	if filepath.IsAbs(ref) || ref == "." || strings.HasPrefix(ref, "./") || strings.HasPrefix(ref, "../") {
		return ref, "", true
	}
	if _, err := os.Stat(filepath.Join(ref, ocispec.ImageLayoutFile)); err == nil {
		return ref, "", true
	}
	return "", "", false
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// verifyingReader checks a digest when its reader reaches EOF.
type verifyingReader struct {
	rc   io.ReadCloser
	v    digest.Verifier
	what string
	err  error
}

func (r *verifyingReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.rc.Read(p)
	_, _ = r.v.Write(p[:n]) // a hash: cannot fail
	if err == io.EOF && !r.v.Verified() {
		r.err = fmt.Errorf("%s: content does not match the digest: %w", r.what, ErrCorrupt)
		return n, r.err
	}
	if err != nil {
		r.err = err
	}
	return n, err
}

func (r *verifyingReader) Close() error { return r.rc.Close() }
