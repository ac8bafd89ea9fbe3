package chunk

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/ipfs/go-cid"
	"github.com/multiformats/go-multihash"
	"github.com/opencontainers/go-digest"
)

// BlockSize is the EROFS block size of every Shoal image. The fscache frontend needs blocks the
// size of a page, and chunk lengths are rounded up to it.
const BlockSize = 4096

// Versions of the chunk manifest JSON.
const (
	// ManifestSchemaVersion is schema 1: the blob is stored as the kernel reads it (uncompressed),
	// so a chunk's stored bytes are its bytes at Offset.
	ManifestSchemaVersion = 1
	// ManifestSchemaStored is schema 2: the blob as stored (and fetched from the origin) is a
	// sequence of stored chunks, each compressed (Codec) or raw, at its own StoredOffset and
	// StoredLength; Offset and Length stay the chunk's place in the uncompressed blob the kernel
	// reads (the EROFS device, the store's backing file). BlobSize is that uncompressed size and
	// StoredSize the stored blob's (the OCI layer's size).
	ManifestSchemaStored = 2
)

// Codec says how a chunk's stored bytes encode its bytes.
type Codec string

// Codecs of stored chunks.
const (
	CodecNone Codec = ""     // stored as they are
	CodecZstd Codec = "zstd" // one zstd frame, no dictionary (package chunk/zchunk)
	// CodecZstdDict is one zstd frame made with the manifest's dictionary (Manifest.Dict), whose
	// ID the frame names. Readers that predate it refuse such chunks as an unknown codec.
	CodecZstdDict Codec = "zstd-dict"
)

// MaxDictSize bounds a manifest's zstd dictionary (Manifest.Dict): what a reader holds in memory
// per blob, and what a small image pays for it in metadata.
const MaxDictSize = 1 << 20

// Chunking says how a blob was cut into chunks.
const (
	// ChunkingEROFS: chunks are exactly the EROFS chunks (from the inodes' chunk indexes) that file
	// data occupies in the blob. Identical file content gives identical chunks in every image.
	ChunkingEROFS = "erofs-chunk-index"
	// ChunkingFixed: the blob is cut into fixed-size pieces from offset 0. Used for images whose
	// data is not chunk-indexed.
	ChunkingFixed = "fixed"
)

// Chunk is one content-addressed piece of a data blob.
type Chunk struct {
	Offset int64   // byte offset in the (uncompressed) blob, a multiple of BlockSize
	Length int64   // bytes, a multiple of BlockSize except possibly the blob's last chunk
	CID    cid.Cid // CIDv1, raw codec, sha2-256 of exactly Length bytes at Offset

	// Where the chunk is in the blob as stored (schema 2): StoredLength bytes at StoredOffset,
	// encoded by Codec. StoredLength 0 means the stored bytes are the chunk's own at Offset
	// (schema 1, and chunks made in memory); use Stored.
	StoredOffset int64
	StoredLength int64
	Codec        Codec

	// SubHashes are the sha256 digests of the chunk's consecutive sub-blocks of the manifest's
	// SubBlockSize bytes (the last one shorter), concatenated: 32 bytes each, "" when the
	// manifest has none for this chunk (subblock.go). A string, so Chunk stays comparable.
	SubHashes string
}

// End is the offset one past the chunk's last byte.
func (c Chunk) End() int64 { return c.Offset + c.Length }

// Stored is the range of the stored blob that holds the chunk: what is fetched from the origin.
func (c Chunk) Stored() Range {
	if c.StoredLength == 0 {
		return Range{Offset: c.Offset, Length: c.Length}
	}
	return Range{Offset: c.StoredOffset, Length: c.StoredLength}
}

type chunkJSON struct {
	Offset       int64  `json:"offset"`
	Length       int64  `json:"length"`
	CID          string `json:"cid"`
	StoredOffset int64  `json:"storedOffset,omitempty"`
	StoredLength int64  `json:"storedLength,omitempty"`
	Codec        Codec  `json:"codec,omitempty"`
	SubHashes    []byte `json:"subs,omitempty"` // base64 of the concatenated digests
}

// MarshalJSON writes the CID as its string form. The stored range and codec are written only
// when set, so a schema 1 manifest encodes as it always has.
func (c Chunk) MarshalJSON() ([]byte, error) {
	j := chunkJSON{Offset: c.Offset, Length: c.Length, CID: c.CID.String(), Codec: c.Codec}
	if c.SubHashes != "" {
		j.SubHashes = []byte(c.SubHashes)
	}
	if c.StoredLength != 0 {
		j.StoredOffset, j.StoredLength = c.StoredOffset, c.StoredLength
	}
	b, err := json.Marshal(j)
	if err != nil {
		return nil, err
	}
	if c.StoredLength != 0 && c.StoredOffset == 0 {
		// omitempty drops a stored offset of 0, which is a place like any other: write it.
		// (After every other field, so a schema 1 manifest and one without sub-blocks encode
		// as they always have.)
		b = append(b[:len(b)-1], `,"storedOffset":0}`...)
	}
	return b, nil
}

// UnmarshalJSON reads what MarshalJSON writes.
func (c *Chunk) UnmarshalJSON(b []byte) error {
	var j chunkJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	id, err := cid.Decode(j.CID)
	if err != nil {
		return fmt.Errorf("chunk at %d: bad cid %q: %w", j.Offset, j.CID, err)
	}
	*c = Chunk{Offset: j.Offset, Length: j.Length, CID: id, StoredOffset: j.StoredOffset, StoredLength: j.StoredLength, Codec: j.Codec, SubHashes: string(j.SubHashes)}
	return nil
}

// Manifest lists the chunks of one data blob, sorted by offset and non-overlapping.
type Manifest struct {
	SchemaVersion int           `json:"schemaVersion"`
	Blob          digest.Digest `json:"blob"`     // sha256 digest of the whole blob as stored (the OCI layer)
	BlobSize      int64         `json:"blobSize"` // bytes of the uncompressed blob (the EROFS device)
	// StoredSize is the size of the blob as stored, schema 2 only (StoredBlobSize).
	StoredSize int64  `json:"storedSize,omitempty"`
	Chunking   string `json:"chunking"` // ChunkingEROFS or ChunkingFixed
	ChunkSize  int64  `json:"chunkSize"`
	// SubBlockSize is the size of the sub-blocks whose digests chunks carry (Chunk.SubHashes),
	// 0 if none do (manifests made before sub-blocks, and those built without them). Readers
	// that do not know it ignore it and the sub-block digests: the chunks and their CIDs are
	// the same either way.
	SubBlockSize int64 `json:"subBlockSize,omitempty"`
	// Dict is the zstd dictionary (the format of `zstd --train`, at most MaxDictSize bytes)
	// that chunks of CodecZstdDict are compressed with, trained at build time from a sample of
	// the blob's chunks; nil when none is (schema 1, and images built without one). It travels
	// inside the manifest (base64 in the JSON), so the manifest's digest names it: a reader gets
	// it with the manifest, once per blob, verified like the rest.
	Dict   []byte  `json:"dict,omitempty"`
	Chunks []Chunk `json:"chunks"`
}

// StoredBlobSize is the size of the blob as stored: the OCI layer's size, what Blob is the digest
// of.
func (m *Manifest) StoredBlobSize() int64 {
	if m.SchemaVersion == ManifestSchemaStored {
		return m.StoredSize
	}
	return m.BlobSize
}

// StoredBytes is the sum of the chunks' stored lengths: what must be fetched from the origin to
// hold the whole blob.
func (m *Manifest) StoredBytes() int64 {
	var n int64
	for _, c := range m.Chunks {
		n += c.Stored().Length
	}
	return n
}

// ErrCorrupt is wrapped by every error that reports bytes which do not match their CID.
var ErrCorrupt = errors.New("content does not match its address")

// CID returns the CID Shoal gives to data: CIDv1, raw codec, sha2-256.
func CID(data []byte) cid.Cid {
	sum := sha256.Sum256(data)
	mh, _ := multihash.Encode(sum[:], multihash.SHA2_256) // cannot fail for a known code and 32 bytes
	return cid.NewCidV1(cid.Raw, mh)
}

// Verified is a chunk's bytes known to match its CID. Only Verify makes one, so a function that
// takes a Verified needs no hash of its own: each chunk is hashed once per source on its way to
// the store.
type Verified struct {
	id   cid.Cid
	data []byte
}

// CID is the CID the bytes were verified against.
func (v Verified) CID() cid.Cid { return v.id }

// Bytes are the verified bytes. They may be shared with other holders of v: do not modify them.
func (v Verified) Bytes() []byte { return v.data }

// Len is the number of bytes.
func (v Verified) Len() int64 { return int64(len(v.data)) }

// IsZero reports whether v is the zero Verified (no bytes were verified).
func (v Verified) IsZero() bool { return !v.id.Defined() }

// Verify checks that data is exactly the bytes named by id and returns them as Verified. Only
// sha2-256 raw CIDs are accepted: a CID naming another hash is an error, not a pass. Errors wrap
// ErrCorrupt.
func Verify(id cid.Cid, data []byte) (Verified, error) {
	pref := id.Prefix()
	if pref.Version != 1 || pref.Codec != cid.Raw || pref.MhType != multihash.SHA2_256 {
		return Verified{}, fmt.Errorf("chunk %s: unsupported cid prefix (want v1 raw sha2-256): %w", id, ErrCorrupt)
	}
	if got := CID(data); !got.Equals(id) {
		return Verified{}, fmt.Errorf("chunk %s: %d bytes hash to %s: %w", id, len(data), got, ErrCorrupt)
	}
	return Verified{id: id, data: data}, nil
}

// Validate checks the manifest's own consistency: known schema and chunking, sorted,
// non-overlapping, block-aligned chunks inside the blob, CIDs of the accepted kind.
func (m *Manifest) Validate() error {
	stored := m.SchemaVersion == ManifestSchemaStored
	if m.SchemaVersion != ManifestSchemaVersion && !stored {
		return fmt.Errorf("chunk manifest for %s: schema version %d, want %d or %d", m.Blob, m.SchemaVersion, ManifestSchemaVersion, ManifestSchemaStored)
	}
	if err := m.Blob.Validate(); err != nil {
		return fmt.Errorf("chunk manifest: blob digest: %w", err)
	}
	if m.Chunking != ChunkingEROFS && m.Chunking != ChunkingFixed {
		return fmt.Errorf("chunk manifest for %s: unknown chunking %q", m.Blob, m.Chunking)
	}
	if m.BlobSize < 0 || m.ChunkSize <= 0 || m.ChunkSize%BlockSize != 0 {
		return fmt.Errorf("chunk manifest for %s: bad sizes (blob %d, chunk %d)", m.Blob, m.BlobSize, m.ChunkSize)
	}
	if m.StoredSize < 0 || !stored && m.StoredSize != 0 {
		return fmt.Errorf("chunk manifest for %s: stored size %d in schema %d", m.Blob, m.StoredSize, m.SchemaVersion)
	}
	if err := m.validateSubBlockSize(); err != nil {
		return err
	}
	if len(m.Dict) > MaxDictSize || len(m.Dict) > 0 && !stored {
		return fmt.Errorf("chunk manifest for %s: dictionary of %d bytes in schema %d (at most %d, schema %d only)", m.Blob, len(m.Dict), m.SchemaVersion, MaxDictSize, ManifestSchemaStored)
	}
	var prev, prevStored int64
	for i, c := range m.Chunks {
		if err := m.validateStored(i, c, stored, prevStored); err != nil {
			return err
		}
		if err := m.validateSubHashes(i, c); err != nil {
			return err
		}
		prevStored = c.Stored().End()
		switch {
		case c.Offset%BlockSize != 0:
			return fmt.Errorf("chunk manifest for %s: chunk %d offset %d not block-aligned", m.Blob, i, c.Offset)
		case c.Length <= 0 || c.Length > m.ChunkSize:
			return fmt.Errorf("chunk manifest for %s: chunk %d length %d out of range", m.Blob, i, c.Length)
		case c.Offset < prev:
			return fmt.Errorf("chunk manifest for %s: chunk %d at %d overlaps or is out of order", m.Blob, i, c.Offset)
		case c.Offset > m.BlobSize-c.Length:
			return fmt.Errorf("chunk manifest for %s: chunk %d [%d,%d) past blob size %d", m.Blob, i, c.Offset, c.End(), m.BlobSize)
		case c.Length%BlockSize != 0 && c.End() != m.BlobSize:
			return fmt.Errorf("chunk manifest for %s: chunk %d length %d not block-aligned", m.Blob, i, c.Length)
		}
		pref := c.CID.Prefix()
		if !c.CID.Defined() || pref.Version != 1 || pref.Codec != cid.Raw || pref.MhType != multihash.SHA2_256 {
			return fmt.Errorf("chunk manifest for %s: chunk %d: cid %s is not v1 raw sha2-256", m.Blob, i, c.CID)
		}
		prev = c.End()
	}
	return nil
}

// validateStored checks a chunk's stored range and codec: none in schema 1; in schema 2 a range
// inside the stored blob, after the previous chunk's, raw bytes exactly the chunk's length and a
// compressed frame no longer than that (a longer one would have been stored raw).
func (m *Manifest) validateStored(i int, c Chunk, stored bool, prevStored int64) error {
	if !stored {
		if c.StoredLength != 0 || c.StoredOffset != 0 || c.Codec != CodecNone {
			return fmt.Errorf("chunk manifest for %s: chunk %d has a stored range or codec in schema %d", m.Blob, i, m.SchemaVersion)
		}
		return nil
	}
	switch {
	case c.Codec != CodecNone && c.Codec != CodecZstd && c.Codec != CodecZstdDict:
		return fmt.Errorf("chunk manifest for %s: chunk %d: unknown codec %q", m.Blob, i, c.Codec)
	case c.Codec == CodecZstdDict && len(m.Dict) == 0:
		return fmt.Errorf("chunk manifest for %s: chunk %d: codec %s, but the manifest has no dictionary", m.Blob, i, c.Codec)
	case c.StoredLength <= 0 || c.StoredOffset < 0:
		return fmt.Errorf("chunk manifest for %s: chunk %d: stored range [%d,+%d) is empty or negative", m.Blob, i, c.StoredOffset, c.StoredLength)
	case c.Codec == CodecNone && c.StoredLength != c.Length:
		return fmt.Errorf("chunk manifest for %s: chunk %d stored raw in %d bytes, not its length %d", m.Blob, i, c.StoredLength, c.Length)
	case c.StoredLength > c.Length:
		return fmt.Errorf("chunk manifest for %s: chunk %d: %s frame of %d bytes is longer than the chunk (%d)", m.Blob, i, c.Codec, c.StoredLength, c.Length)
	case c.StoredOffset < prevStored:
		return fmt.Errorf("chunk manifest for %s: chunk %d stored at %d overlaps or is out of order", m.Blob, i, c.StoredOffset)
	case c.StoredOffset > m.StoredSize-c.StoredLength:
		return fmt.Errorf("chunk manifest for %s: chunk %d stored at [%d,%d) past stored size %d", m.Blob, i, c.StoredOffset, c.StoredOffset+c.StoredLength, m.StoredSize)
	}
	return nil
}

// ChunksIn returns the chunks that overlap [off, off+length), in offset order. Bytes of the range
// not covered by any chunk are not file data and read as zeros.
func (m *Manifest) ChunksIn(off, length int64) []Chunk {
	if length <= 0 {
		return nil
	}
	end := off + length
	// First chunk whose end is past off.
	i := sort.Search(len(m.Chunks), func(i int) bool { return m.Chunks[i].End() > off })
	j := i
	for j < len(m.Chunks) && m.Chunks[j].Offset < end {
		j++
	}
	return m.Chunks[i:j]
}

// DataBytes is the sum of the chunk lengths: what must be fetched to hold the whole blob.
func (m *Manifest) DataBytes() int64 {
	var n int64
	for _, c := range m.Chunks {
		n += c.Length
	}
	return n
}

// ParseManifest decodes and validates a chunk manifest.
func ParseManifest(b []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("chunk manifest: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// FixedManifest cuts content of the given size into chunkSize pieces from offset 0 and names each.
// It is the chunking of blobs whose data is not chunk-indexed, and of bootstraps when they are
// stored and served like blobs (the fscache frontend reads the bootstrap through the cache too).
func FixedManifest(r io.ReaderAt, dgst digest.Digest, size, chunkSize int64) (*Manifest, error) {
	if chunkSize <= 0 || chunkSize%BlockSize != 0 {
		return nil, fmt.Errorf("fixed chunking of %s: chunk size %d is not a positive multiple of %d", dgst, chunkSize, BlockSize)
	}
	m := &Manifest{SchemaVersion: ManifestSchemaVersion, Blob: dgst, BlobSize: size, Chunking: ChunkingFixed, ChunkSize: chunkSize}
	buf := make([]byte, chunkSize)
	for off := int64(0); off < size; off += chunkSize {
		n := min(chunkSize, size-off)
		if k, err := r.ReadAt(buf[:n], off); int64(k) < n {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("fixed chunking of %s at %d: %w", dgst, off, err)
		}
		m.Chunks = append(m.Chunks, Chunk{Offset: off, Length: n, CID: CID(buf[:n])})
	}
	return m, nil
}
