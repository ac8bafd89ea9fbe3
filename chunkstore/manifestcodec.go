package chunkstore

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ipfs/go-cid"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

// The index keeps each blob's chunk manifest (the M key) in a compact binary form, not the JSON
// the manifest travels as: a store with more blobs than Config.ManifestCache parses a manifest on
// every miss of that cache, and JSON with base32 CIDs cost about 2 ms per 1000 chunks (most of a
// lookup's time at 10 million chunks, BENCHMARKS.md). Values written before this form are JSON
// and start with '{'; decodeIndexManifest reads both.
//
//	0x01 (manifestCodecV1)
//	uvarint schemaVersion
//	uvarint len, blob digest bytes
//	uvarint blobSize, uvarint storedSize, uvarint chunkSize
//	uvarint len, chunking
//	uvarint number of chunks, then per chunk:
//	  uvarint offset, uvarint length, uvarint len, CID bytes,
//	  uvarint storedOffset, uvarint storedLength, uvarint len, codec
//
// Every length is checked against what is left before anything is sliced or allocated, and the
// result goes through Manifest.Validate, so a damaged value is an error (ErrCorrupt), never a
// panic or an allocation sized by the bytes.
const manifestCodecV1 = 0x01

// minChunkBytes bounds the chunk count a value may claim before its chunks are read: each chunk
// takes at least 6 bytes, so a count above len/6 is a lie.
const minChunkBytes = 6

func encodeIndexManifest(m *chunk.Manifest) []byte {
	b := make([]byte, 0, 64+len(m.Chunks)*(52+len(m.Blob)/16))
	b = append(b, manifestCodecV1)
	b = binary.AppendUvarint(b, uint64(m.SchemaVersion))
	b = appendString(b, string(m.Blob))
	b = binary.AppendUvarint(b, uint64(m.BlobSize))
	b = binary.AppendUvarint(b, uint64(m.StoredSize))
	b = binary.AppendUvarint(b, uint64(m.ChunkSize))
	b = appendString(b, m.Chunking)
	b = binary.AppendUvarint(b, uint64(len(m.Chunks)))
	for _, c := range m.Chunks {
		b = binary.AppendUvarint(b, uint64(c.Offset))
		b = binary.AppendUvarint(b, uint64(c.Length))
		b = appendString(b, c.CID.KeyString())
		b = binary.AppendUvarint(b, uint64(c.StoredOffset))
		b = binary.AppendUvarint(b, uint64(c.StoredLength))
		b = appendString(b, string(c.Codec))
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

var errManifestValue = errors.New("malformed manifest value")

// decodeIndexManifest reads an M value in either form and validates the manifest.
func decodeIndexManifest(v []byte) (*chunk.Manifest, error) {
	if len(v) > 0 && v[0] == '{' {
		return chunk.ParseManifest(v)
	}
	if len(v) == 0 || v[0] != manifestCodecV1 {
		return nil, fmt.Errorf("%w: unknown form", errManifestValue)
	}
	d := manifestDecoder{b: v[1:]}
	m := &chunk.Manifest{}
	m.SchemaVersion = int(d.int())
	m.Blob = digest.Digest(d.str())
	m.BlobSize = d.int()
	m.StoredSize = d.int()
	m.ChunkSize = d.int()
	m.Chunking = d.str()
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)/minChunkBytes) {
		d.fail("%d chunks in %d bytes", n, len(d.b))
	}
	if d.err == nil {
		m.Chunks = make([]chunk.Chunk, 0, n)
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		var c chunk.Chunk
		c.Offset = d.int()
		c.Length = d.int()
		if raw := d.bytes(); d.err == nil {
			id, err := cid.Cast(raw) // copies what it keeps
			if err != nil {
				d.fail("chunk %d: CID: %v", i, err)
				break
			}
			c.CID = id
		}
		c.StoredOffset = d.int()
		c.StoredLength = d.int()
		c.Codec = chunk.Codec(d.str())
		m.Chunks = append(m.Chunks, c)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d bytes after the last chunk", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

type manifestDecoder struct {
	b   []byte
	err error
}

func (d *manifestDecoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errManifestValue, fmt.Sprintf(format, args...))
	}
}

func (d *manifestDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, k := binary.Uvarint(d.b)
	if k <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[k:]
	return v
}

// int is a uvarint that must fit an int64 without going negative.
func (d *manifestDecoder) int() int64 {
	v := d.uvarint()
	if v > 1<<62 {
		d.fail("value %d out of range", v)
		return 0
	}
	return int64(v)
}

func (d *manifestDecoder) str() string { return string(d.bytes()) }

// bytes is a length-prefixed field, sliced from the value (not copied).
func (d *manifestDecoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("field of %d bytes, %d left", n, len(d.b))
		return nil
	}
	s := d.b[:n]
	d.b = d.b[n:]
	return s
}
