package chunk

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"testing"

	"github.com/ipfs/go-cid"
	"github.com/opencontainers/go-digest"
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func testManifest(t testing.TB, blob []byte, chunk int64) *Manifest {
	t.Helper()
	m, err := FixedManifest(bytes.NewReader(blob), digest.FromBytes(blob), int64(len(blob)), chunk)
	must(t, err)
	return m
}

func TestFixedManifest(t *testing.T) {
	blob := randBytes(t, 3*BlockSize+100)
	m := testManifest(t, blob, 2*BlockSize)
	if len(m.Chunks) != 2 || m.Chunks[1].Offset != 2*BlockSize || m.Chunks[1].Length != BlockSize+100 {
		t.Fatalf("chunks %+v", m.Chunks)
	}
	must(t, m.Validate())
	for _, c := range m.Chunks {
		_, err := Verify(c.CID, blob[c.Offset:c.End()])
		must(t, err)
	}
	if _, err := FixedManifest(bytes.NewReader(blob[:10]), m.Blob, int64(len(blob)), BlockSize); err == nil {
		t.Fatal("short blob accepted")
	}
	if _, err := FixedManifest(bytes.NewReader(blob), m.Blob, int64(len(blob)), 1000); err == nil {
		t.Fatal("unaligned chunk size accepted")
	}
}

func TestVerify(t *testing.T) {
	data := []byte("hello chunk")
	id := CID(data)
	if id.String() != "bafkreihrkq7vj2zizxfsrmvulvhn2dnoyz3wqr3bv4z2joejt42gvykgva" {
		// The CID of a fixed string pins the format (v1, raw, sha2-256, base32) for every host;
		// the expected value was computed independently (python hashlib + base32).
		t.Fatalf("CID changed: %s", id)
	}
	v, err := Verify(id, data)
	must(t, err)
	if !v.CID().Equals(id) || string(v.Bytes()) != string(data) || v.Len() != int64(len(data)) || v.IsZero() {
		t.Fatalf("Verified = %v %q", v.CID(), v.Bytes())
	}
	if v, err := Verify(id, []byte("hello chunK")); !errors.Is(err, ErrCorrupt) || !v.IsZero() {
		t.Fatalf("tampered data: %v", err)
	}
	if _, err := Verify(id, data[:5]); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("truncated data: %v", err)
	}
}

func TestManifestValidateAndJSON(t *testing.T) {
	blob := randBytes(t, 5*BlockSize)
	good := testManifest(t, blob, BlockSize)
	b, err := json.Marshal(good)
	must(t, err)
	back, err := ParseManifest(b)
	must(t, err)
	if len(back.Chunks) != 5 || !back.Chunks[3].CID.Equals(good.Chunks[3].CID) {
		t.Fatalf("round trip: %+v", back)
	}
	bad := []struct {
		name string
		edit func(m *Manifest)
	}{
		{"schema", func(m *Manifest) { m.SchemaVersion = 9 }},
		{"chunking", func(m *Manifest) { m.Chunking = "cdc" }},
		{"digest", func(m *Manifest) { m.Blob = "sha256:xyz" }},
		{"unaligned", func(m *Manifest) { m.Chunks[1].Offset++ }},
		{"overlap", func(m *Manifest) { m.Chunks[2].Offset = m.Chunks[1].Offset }},
		{"past end", func(m *Manifest) { m.BlobSize = 3 * BlockSize }},
		{"too long", func(m *Manifest) { m.Chunks[0].Length = 2 * BlockSize }},
		{"zero length", func(m *Manifest) { m.Chunks[0].Length = 0 }},
		{"cid v0", func(m *Manifest) {
			m.Chunks[0].CID = mustDecodeCID(t, "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n")
		}},
	}
	for _, c := range bad {
		m := *good
		m.Chunks = append([]Chunk(nil), good.Chunks...)
		c.edit(&m)
		if err := m.Validate(); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
}

func TestChunksIn(t *testing.T) {
	m := &Manifest{Chunks: []Chunk{{Offset: 0, Length: 4096}, {Offset: 8192, Length: 8192}, {Offset: 16384, Length: 4096}}}
	cases := []struct {
		off, n int64
		want   []int64
	}{
		{0, 1, []int64{0}},
		{4096, 4096, nil}, // a gap: not file data
		{4000, 5000, []int64{0, 8192}},
		{8192, 8192, []int64{8192}},
		{16383, 2, []int64{8192, 16384}},
		{20480, 100, nil},
		{0, 0, nil},
	}
	for _, c := range cases {
		var got []int64
		for _, ch := range m.ChunksIn(c.off, c.n) {
			got = append(got, ch.Offset)
		}
		if fmtInts(got) != fmtInts(c.want) {
			t.Errorf("ChunksIn(%d,%d) = %v, want %v", c.off, c.n, got, c.want)
		}
	}
}

func fmtInts(v []int64) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func FuzzParseManifest(f *testing.F) {
	blob := make([]byte, 3*BlockSize)
	m, _ := FixedManifest(bytes.NewReader(blob), digest.FromBytes(blob), int64(len(blob)), BlockSize)
	b, _ := json.Marshal(m)
	f.Add(b)
	f.Add([]byte(`{"schemaVersion":1,"chunks":[{"offset":-1,"length":1,"cid":"x"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		// Whatever parses is consistent: ChunksIn over the whole blob returns every chunk.
		if got := m.ChunksIn(0, m.BlobSize); len(got) != len(m.Chunks) {
			t.Fatalf("ChunksIn lost chunks: %d of %d", len(got), len(m.Chunks))
		}
	})
}

func mustDecodeCID(t testing.TB, s string) cid.Cid {
	t.Helper()
	id, err := cid.Decode(s)
	must(t, err)
	return id
}

// storedManifest is a schema 2 manifest over blob cut at chunk, each chunk stored raw except
// every other one, "compressed" to half its length (the codec is not checked here).
func storedManifest(t testing.TB, blob []byte, chunkSize int64) *Manifest {
	t.Helper()
	m := testManifest(t, blob, chunkSize)
	m.SchemaVersion = ManifestSchemaStored
	var off int64
	for i := range m.Chunks {
		c := &m.Chunks[i]
		c.StoredOffset, c.StoredLength = off, c.Length
		if i%2 == 1 {
			c.StoredLength, c.Codec = c.Length/2, CodecZstd
		}
		off += c.StoredLength
	}
	m.StoredSize = off
	m.Blob = digest.FromString("the stored blob")
	return m
}

func TestStoredManifest(t *testing.T) {
	blob := randBytes(t, 6*BlockSize)
	good := storedManifest(t, blob, BlockSize)
	must(t, good.Validate())
	b, err := json.Marshal(good)
	must(t, err)
	back, err := ParseManifest(b)
	must(t, err)
	for i, c := range back.Chunks {
		if c != good.Chunks[i] {
			t.Fatalf("chunk %d: %+v after the round trip, want %+v", i, c, good.Chunks[i])
		}
	}
	if back.Chunks[0].StoredOffset != 0 || back.Chunks[0].Stored() != (Range{0, BlockSize}) {
		t.Fatalf("first chunk's stored range: %+v", back.Chunks[0].Stored())
	}
	if back.StoredBlobSize() != good.StoredSize || back.StoredBytes() != good.StoredSize || back.DataBytes() != int64(len(blob)) {
		t.Fatalf("sizes: stored %d (%d in chunks), data %d", back.StoredBlobSize(), back.StoredBytes(), back.DataBytes())
	}
	bad := []struct {
		name string
		edit func(m *Manifest)
	}{
		{"unknown codec", func(m *Manifest) { m.Chunks[1].Codec = "lz4" }},
		{"raw of another length", func(m *Manifest) { m.Chunks[0].StoredLength-- }},
		{"frame longer than the chunk", func(m *Manifest) { m.Chunks[1].StoredLength = 2 * BlockSize }},
		{"no stored range", func(m *Manifest) { m.Chunks[2].StoredLength = 0 }},
		{"negative stored offset", func(m *Manifest) { m.Chunks[0].StoredOffset = -1 }},
		{"stored overlap", func(m *Manifest) { m.Chunks[2].StoredOffset = m.Chunks[1].StoredOffset }},
		{"past stored size", func(m *Manifest) { m.StoredSize-- }},
		{"negative stored size", func(m *Manifest) { m.StoredSize = -1 }},
		{"huge stored offset", func(m *Manifest) { m.Chunks[5].StoredOffset = 1<<63 - 10 }},
		{"dictionary codec without a dictionary", func(m *Manifest) { m.Chunks[1].Codec = CodecZstdDict }},
		{"dictionary over the cap", func(m *Manifest) { m.Dict = make([]byte, MaxDictSize+1) }},
	}
	for _, c := range bad {
		m := *good
		m.Chunks = append([]Chunk(nil), good.Chunks...)
		c.edit(&m)
		if err := m.Validate(); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
	// A dictionary travels in the manifest and comes back byte for byte.
	withDict := *good
	withDict.Chunks = append([]Chunk(nil), good.Chunks...)
	withDict.Chunks[1].Codec, withDict.Dict = CodecZstdDict, []byte("a zstd dictionary's bytes")
	db, err := json.Marshal(&withDict)
	must(t, err)
	dback, err := ParseManifest(db)
	must(t, err)
	if !bytes.Equal(dback.Dict, withDict.Dict) || dback.Chunks[1].Codec != CodecZstdDict {
		t.Fatalf("dictionary after the round trip: %q, codec %q", dback.Dict, dback.Chunks[1].Codec)
	}
	if gb, _ := json.Marshal(good); bytes.Contains(gb, []byte(`"dict"`)) {
		t.Fatal("a manifest without a dictionary grew the field")
	}
	// Schema 1 carries no stored ranges, and encodes as it always has.
	old := testManifest(t, blob, BlockSize)
	ob, err := json.Marshal(old)
	must(t, err)
	if bytes.Contains(ob, []byte("stored")) || bytes.Contains(ob, []byte("codec")) {
		t.Fatalf("schema 1 manifest grew fields: %s", ob)
	}
	if old.StoredBlobSize() != old.BlobSize || old.Chunks[2].Stored() != (Range{2 * BlockSize, BlockSize}) {
		t.Fatalf("schema 1 stored view: %d %+v", old.StoredBlobSize(), old.Chunks[2].Stored())
	}
	for name, edit := range map[string]func(m *Manifest){
		"stored range": func(m *Manifest) { m.Chunks[1].StoredOffset, m.Chunks[1].StoredLength = 0, BlockSize },
		"codec":        func(m *Manifest) { m.Chunks[1].Codec = CodecZstd },
		"stored size":  func(m *Manifest) { m.StoredSize = 10 },
		"dictionary":   func(m *Manifest) { m.Dict = []byte("d") },
	} {
		m := *old
		m.Chunks = append([]Chunk(nil), old.Chunks...)
		edit(&m)
		if err := m.Validate(); err == nil {
			t.Errorf("schema 1 with a %s: accepted", name)
		}
	}
}

func FuzzParseStoredManifest(f *testing.F) {
	blob := make([]byte, 4*BlockSize)
	m := storedManifest(f, blob, BlockSize)
	b, _ := json.Marshal(m)
	f.Add(b)
	f.Add([]byte(`{"schemaVersion":2,"blob":"sha256:` + digest.FromString("x").Encoded() + `","blobSize":4096,"storedSize":10,"chunking":"fixed","chunkSize":4096,"chunks":[{"offset":0,"length":4096,"cid":"bafkreihrkq7vj2zizxfsrmvulvhn2dnoyz3wqr3bv4z2joejt42gvykgva","storedOffset":0,"storedLength":10,"codec":"zstd"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		// Whatever parses is consistent: every chunk's stored range lies inside the stored blob,
		// after the one before, and is no longer than the chunk.
		var prev int64
		for i, c := range m.Chunks {
			s := c.Stored()
			if s.Offset < prev || s.Length <= 0 || s.Length > c.Length || s.End() > m.StoredBlobSize() {
				t.Fatalf("chunk %d: stored %+v of a %d-byte chunk, previous end %d, stored size %d", i, s, c.Length, prev, m.StoredBlobSize())
			}
			prev = s.End()
		}
		if m.StoredBytes() > m.StoredBlobSize() {
			t.Fatalf("chunks store %d bytes in a %d-byte blob", m.StoredBytes(), m.StoredBlobSize())
		}
	})
}
