package chunkstore

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

func codecManifests() []*chunk.Manifest {
	a, b := []byte("chunk a"), bytes.Repeat([]byte{7}, 4096)
	plain := &chunk.Manifest{SchemaVersion: chunk.ManifestSchemaVersion, Blob: digest.FromString("blob"), BlobSize: 8192 + 7,
		Chunking: chunk.ChunkingFixed, ChunkSize: 8192, Chunks: []chunk.Chunk{
			{Offset: 0, Length: 4096, CID: chunk.CID(b)},
			{Offset: 8192, Length: 7, CID: chunk.CID(a)},
		}}
	stored := &chunk.Manifest{SchemaVersion: chunk.ManifestSchemaStored, Blob: digest.FromString("stored"), BlobSize: 8192,
		StoredSize: 4096 + 100, Chunking: chunk.ChunkingEROFS, ChunkSize: 4096, Chunks: []chunk.Chunk{
			{Offset: 0, Length: 4096, CID: chunk.CID(b), StoredOffset: 0, StoredLength: 100, Codec: chunk.CodecZstd},
			{Offset: 4096, Length: 4096, CID: chunk.CID(bytes.Repeat([]byte{9}, 4096)), StoredOffset: 100, StoredLength: 4096},
		}}
	empty := &chunk.Manifest{SchemaVersion: chunk.ManifestSchemaVersion, Blob: digest.FromString("empty"), BlobSize: 0,
		Chunking: chunk.ChunkingFixed, ChunkSize: 4096, Chunks: []chunk.Chunk{}}
	return []*chunk.Manifest{plain, stored, empty}
}

// TestIndexManifestRoundTrip: both schemas and an empty manifest come back equal from the binary
// form, and JSON values written by earlier versions still read.
func TestIndexManifestRoundTrip(t *testing.T) {
	for _, m := range codecManifests() {
		if err := m.Validate(); err != nil {
			t.Fatalf("test manifest %s: %v", m.Blob, err)
		}
		got, err := decodeIndexManifest(encodeIndexManifest(m))
		if err != nil {
			t.Fatalf("%s: %v", m.Blob, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("%s: binary round trip gave %+v, want %+v", m.Blob, got, m)
		}
		js, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err = decodeIndexManifest(js)
		if err != nil || !reflect.DeepEqual(got.Chunks, m.Chunks) || got.Blob != m.Blob {
			t.Errorf("%s: JSON value read as %+v, %v", m.Blob, got, err)
		}
	}
}

// TestIndexManifestBytes pins the encoding: what is in an index on disk must stay readable.
func TestIndexManifestBytes(t *testing.T) {
	m := &chunk.Manifest{SchemaVersion: 2, Blob: "sha256:ab", BlobSize: 4096, StoredSize: 10, Chunking: "erofs",
		ChunkSize: 4096, Chunks: []chunk.Chunk{{Offset: 0, Length: 4096, CID: chunk.CID(make([]byte, 4096)), StoredLength: 10, Codec: "zstd"}}}
	want := "01" + "02" + "09" + hex.EncodeToString([]byte("sha256:ab")) + "8020" + "0a" + "8020" +
		"05" + hex.EncodeToString([]byte("erofs")) + "01" +
		"00" + "8020" + "24" + hex.EncodeToString(m.Chunks[0].CID.Bytes()) + "00" + "0a" + "04" + hex.EncodeToString([]byte("zstd"))
	if got := hex.EncodeToString(encodeIndexManifest(m)); got != want {
		t.Errorf("encoding\n got %s\nwant %s", got, want)
	}
}

// TestIndexManifestMalformed: damaged values are errors, not panics or huge allocations.
func TestIndexManifestMalformed(t *testing.T) {
	good := encodeIndexManifest(codecManifests()[1])
	cases := map[string][]byte{
		"empty":          nil,
		"unknown form":   {0x7f, 1, 2},
		"truncated":      good[:len(good)-3],
		"trailing bytes": append(append([]byte(nil), good...), 0),
		"huge count":     append([]byte{manifestCodecV1, 1, 0, 0, 0, 0, 0}, 0xff, 0xff, 0xff, 0xff, 0x0f),
		"huge string":    {manifestCodecV1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"bad varint":     {manifestCodecV1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		"bad JSON":       []byte(`{"chunks": [`),
	}
	for name, v := range cases {
		if _, err := decodeIndexManifest(v); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	if _, err := decodeIndexManifest([]byte{0x7f}); !errors.Is(err, errManifestValue) {
		t.Errorf("unknown form: %v, want errManifestValue", err)
	}
}

func FuzzIndexManifest(f *testing.F) {
	for _, m := range codecManifests() {
		f.Add(encodeIndexManifest(m))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		m, err := decodeIndexManifest(v)
		if err != nil {
			return
		}
		// What decodes is a valid manifest, and encoding it again decodes to the same.
		again, err := decodeIndexManifest(encodeIndexManifest(m))
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("re-encoding %+v: %+v, %v", m, again, err)
		}
	})
}
