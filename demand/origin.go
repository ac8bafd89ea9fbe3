package demand

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
)

// RangeReader reads bytes of a blob as the origin stores it (origin.Source).
type RangeReader interface {
	ReadRange(ctx context.Context, blob digest.Digest, off, length int64) ([]byte, error)
}

// StoredOrigin returns the OriginFunc of blob read from src by byte ranges: each chunk's stored
// range (chunk.Chunk.Stored: its own range in an uncompressed blob, its frame in a compressed
// one) is read and decoded, the output capped at the chunk's length (zchunk.Decode). The bytes
// are not verified here: whoever receives them verifies them once (the resolver without a
// cluster, package p2p with one). Bytes that do not decode are an error wrapping
// chunk.ErrCorrupt, asked for again like bytes that do not match their CID. Chunks of
// chunk.CodecZstdDict are decoded with m's dictionary (zchunk.DictOf, parsed once per blob); a
// frame naming another dictionary is refused like any bytes that do not decode.
func StoredOrigin(src RangeReader, m *chunk.Manifest) OriginFunc {
	blob := m.Blob
	dict, dictErr := zchunk.DictOf(m)
	return func(ctx context.Context, c chunk.Chunk) ([]byte, error) {
		if src == nil {
			return nil, fmt.Errorf("blob %s: no origin", blob)
		}
		if dictErr != nil {
			return nil, dictErr
		}
		s := c.Stored()
		stored, err := src.ReadRange(ctx, blob, s.Offset, s.Length)
		if err != nil {
			return nil, err
		}
		data, err := zchunk.DecodeWith(c, stored, dict)
		if err != nil {
			return nil, fmt.Errorf("from origin, blob %s stored at [%d,%d): %w", blob, s.Offset, s.End(), err)
		}
		return data, nil
	}
}
