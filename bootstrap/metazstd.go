package bootstrap

import (
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-p2p/shoal/chunk"
)

// Compressed metadata. A chunk manifest (JSON, about 180 bytes a chunk) and a bootstrap (EROFS
// inodes and chunk indexes) compress to a third and a fifth of their size, and every host that
// loads an image fetches both: for a tree of many small files they were 5% of what a host took
// from the origin. So an image also carries each of them zstd-compressed, as a layer of its own
// (MediaTypeChunksZstd, MediaTypeBootstrapZstd) whose AnnotationUncompressed names the plain
// object. Readers that know the types fetch the compressed form and check it twice: its own
// digest as fetched, and the plain object's digest and size once decoded (decoding never
// produces more than the plain object's size). Readers that predate them ignore layers of types
// they do not know and fetch the plain objects, which stay in every image: old hosts read new
// images, new hosts read old ones (no compressed layers: the plain objects, as before).
const (
	// MediaTypeChunksZstd is a chunk manifest's JSON as one zstd frame.
	MediaTypeChunksZstd = MediaTypeChunks + "+zstd"
	// MediaTypeBootstrapZstd is the bootstrap as one zstd frame.
	MediaTypeBootstrapZstd = MediaTypeBootstrap + "+zstd"
	// AnnotationUncompressed on a compressed metadata layer names the digest of the object it
	// is the compressed form of.
	AnnotationUncompressed = "dev.shoal.uncompressed"
)

var (
	metaEncOnce sync.Once
	metaEnc     *zstd.Encoder
	metaDecOnce sync.Once
	metaDec     *zstd.Decoder
	metaDecErr  error
)

// compressMeta returns b as one zstd frame, or nil when that does not save an eighth of it or
// b is larger than MaxMetadataSize (what decompressMeta will produce).
func compressMeta(b []byte) []byte {
	if len(b) > MaxMetadataSize {
		return nil
	}
	metaEncOnce.Do(func() {
		metaEnc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderCRC(false), zstd.WithEncoderConcurrency(1))
	})
	z := metaEnc.EncodeAll(b, nil)
	if len(z) > len(b)-len(b)/8 {
		return nil
	}
	return z
}

// decompressMeta decodes the compressed form z of the object plain (its digest and size) and
// checks the result against it: never more than plain.Size bytes are produced. Errors wrap
// chunk.ErrCorrupt.
func decompressMeta(z []byte, plain ocispec.Descriptor) ([]byte, error) {
	if plain.Size < 0 || plain.Size > MaxMetadataSize {
		return nil, fmt.Errorf("compressed form of %s: size %d out of [0, %d]: %w", plain.Digest, plain.Size, MaxMetadataSize, chunk.ErrCorrupt)
	}
	metaDecOnce.Do(func() {
		metaDec, metaDecErr = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxMemory(MaxMetadataSize), zstd.WithDecoderMaxWindow(MaxMetadataSize),
			zstd.WithDecodeAllCapLimit(true))
	})
	if metaDecErr != nil {
		return nil, metaDecErr
	}
	b, err := metaDec.DecodeAll(z, make([]byte, 0, plain.Size))
	if err != nil {
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) {
			err = fmt.Errorf("decodes to more than %d bytes", plain.Size)
		}
		return nil, fmt.Errorf("compressed form of %s (%d bytes): %v: %w", plain.Digest, len(z), err, chunk.ErrCorrupt)
	}
	if got := digest.FromBytes(b); int64(len(b)) != plain.Size || got != plain.Digest {
		return nil, fmt.Errorf("compressed form of %s decodes to %d bytes with digest %s, want %d: %w", plain.Digest, len(b), got, plain.Size, chunk.ErrCorrupt)
	}
	return b, nil
}

// DecompressMeta is decompressMeta for a loader holding a compressed metadata object (Image's
// BootstrapZstd): z decoded and checked against the plain object's digest and size.
func DecompressMeta(z []byte, plain Descriptor) ([]byte, error) {
	return decompressMeta(z, ocispec.Descriptor{Digest: plain.Digest, Size: plain.Size})
}

// fetchMeta returns the plain object l through fetch: its compressed form z first if the image
// has one (checked as decompressMeta does), else, or if that fails, l itself as it is.
func fetchMeta(fetch FetchFunc, l ocispec.Descriptor, z *ocispec.Descriptor) ([]byte, error) {
	if z != nil {
		if zb, err := fetch(*z); err == nil && digest.FromBytes(zb) == z.Digest && int64(len(zb)) == z.Size {
			if b, err := decompressMeta(zb, l); err == nil {
				return b, nil
			}
		}
	}
	return fetch(l)
}
