package bootstrap

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
)

// TestChunker: chunks are cut per file from its start, all-zero chunks become holes, identical
// chunks are stored once, and the manifest covers exactly what was stored.
func TestChunker(t *testing.T) {
	const cs = 64 << 10
	bw, err := NewBlobWriter(filepath.Join(t.TempDir(), "blob"), 3, cs)
	must(t, err)
	ch := NewChunker(bw, cs)
	a := randBytes(t, 3*cs+100)
	zeros := make([]byte, 2*cs+5)
	copy(zeros[cs:], "x") // chunk 1 not zero
	ra, err := ch.AddFile(bytes.NewReader(a), int64(len(a)), "a")
	must(t, err)
	rz, err := ch.AddFile(bytes.NewReader(zeros), int64(len(zeros)), "z")
	must(t, err)
	rb, err := ch.AddFile(bytes.NewReader(a), int64(len(a)), "again")
	must(t, err)
	if _, err := ch.AddFile(bytes.NewReader(a[:10]), 20, "short"); !errors.Is(err, ErrRead) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short file: %v", err)
	}
	must(t, ch.Wait())
	d, m, err := bw.Finish()
	must(t, err)
	if len(ra) != 4 || len(rz) != 3 || !rz[0].Hole || rz[1].Hole || !rz[2].Hole {
		t.Fatalf("refs %+v %+v", ra, rz)
	}
	for i := range ra {
		if ra[i] != rb[i] || ra[i].Device != 3 || ra[i].Hole {
			t.Fatalf("identical content stored twice or wrongly: %+v %+v", ra[i], rb[i])
		}
	}
	if len(m.Chunks) != 5 || m.BlobSize != 4*cs+4096 || m.Blob != d || bw.DedupSaved() != 3*cs+4096 {
		t.Fatalf("manifest %d chunks, blob %d, saved %d", len(m.Chunks), m.BlobSize, bw.DedupSaved())
	}
	last := append(append([]byte(nil), a[3*cs:]...), make([]byte, 4096-100)...)
	if m.Chunks[3].CID != chunk.CID(last) {
		t.Error("the last chunk's CID is not over its block-padded bytes")
	}
}

func TestRunnableConfig(t *testing.T) {
	src := []byte(`{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/x"]},"future":{"k":1},` +
		`"rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("1", 64) + `"]},"history":[{"created_by":"RUN x"}]}`)
	layers := []ocispec.Descriptor{
		{Digest: digest.FromString("b"), Annotations: map[string]string{AnnotationSnapshotRole: RoleBlob}},
		{Digest: digest.FromString("boot"), Annotations: map[string]string{AnnotationSnapshotRole: RoleBootstrap}},
	}
	b, err := RunnableConfig(src, layers, ocispec.Platform{})
	must(t, err)
	var c struct {
		Future  map[string]int `json:"future"`
		Config  struct{ Entrypoint []string }
		RootFS  ocispec.RootFS
		History []ocispec.History
	}
	must(t, json.Unmarshal(b, &c))
	if c.Future["k"] != 1 || c.Config.Entrypoint[0] != "/x" || len(c.RootFS.DiffIDs) != 2 || c.RootFS.DiffIDs[1] != layers[1].Digest ||
		len(c.History) != 3 || !c.History[0].EmptyLayer || c.History[2].EmptyLayer {
		t.Fatalf("config %s", b)
	}
	if _, err := RunnableConfig([]byte(`[1]`), layers, ocispec.Platform{}); err == nil {
		t.Error("a config that is not an object accepted")
	}
	min, err := RunnableConfig(nil, layers, ocispec.Platform{OS: "linux", Architecture: "arm64"})
	must(t, err)
	if !bytes.Contains(min, []byte(`"architecture":"arm64"`)) {
		t.Errorf("minimal config %s", min)
	}
}

// TestChunkerCompressedRepeats: with an encoder, a chunk seen many times (by workers racing to
// encode it) is stored once, in a stored form that decodes to its CID, whichever copy the
// workers encoded; random chunks are stored raw.
func TestChunkerCompressedRepeats(t *testing.T) {
	const cs = 64 << 10
	enc, err := ChunkEncoder(CompressionZstd, 0)
	must(t, err)
	path := filepath.Join(t.TempDir(), "blob")
	bw, err := NewStoredBlobWriter(path, 1, cs, enc)
	must(t, err)
	ch := NewChunker(bw, cs)
	text := bytes.Repeat([]byte("the same words again and again, "), 3*cs/32)
	noise := randBytes(t, cs)
	var refs [][]ChunkRef
	for i := range 40 {
		f := text
		if i%3 == 0 {
			f = noise
		}
		r, err := ch.AddFile(bytes.NewReader(f), int64(len(f)), "f")
		must(t, err)
		refs = append(refs, r)
	}
	must(t, ch.Wait())
	_, m, err := bw.Finish()
	must(t, err)
	// The text's 3 chunks are identical (the phrase divides the chunk size), so 1 of it, 1 of
	// the noise.
	if len(m.Chunks) != 2 {
		t.Fatalf("%d chunks stored, want 2 (1 of the text, 1 of the noise)", len(m.Chunks))
	}
	for i, r := range refs {
		first := refs[1] // the first text file
		if i%3 == 0 {
			first = refs[0]
		}
		if !slices.Equal(r, first) {
			t.Fatalf("file %d: refs %+v differ from the first copy's %+v", i, r, first)
		}
	}
	blob, err := os.ReadFile(path)
	must(t, err)
	for _, c := range m.Chunks {
		stored := blob[c.StoredOffset : c.StoredOffset+c.StoredLength]
		if _, err := zchunk.DecodeVerified(c, stored); err != nil {
			t.Errorf("chunk at %d: %v", c.Offset, err)
		}
		isNoise := c.CID == chunk.CID(noise)
		if isNoise != (c.Codec == chunk.CodecNone) {
			t.Errorf("chunk at %d (noise %v) stored with codec %q", c.Offset, isNoise, c.Codec)
		}
	}
}

// TestChunkerSubBlocks: chunks larger than a sub-block get their sub-block digests (computed on
// the workers), raw and compressed alike, and they verify against the chunk's bytes.
func TestChunkerSubBlocks(t *testing.T) {
	const cs = 4 * chunk.DefaultSubBlockSize
	for _, compression := range []string{CompressionNone, CompressionZstd} {
		enc, err := ChunkEncoder(compression, 0)
		must(t, err)
		path := filepath.Join(t.TempDir(), "blob")
		bw, err := NewStoredBlobWriter(path, 1, cs, enc)
		must(t, err)
		ch := NewChunker(bw, cs)
		text := bytes.Repeat([]byte("sub-blocks of text, "), 2*cs/20)
		noise := randBytes(t, cs+3*chunk.DefaultSubBlockSize/2)
		files := [][]byte{text, noise, noise}
		for _, f := range files {
			_, err := ch.AddFile(bytes.NewReader(f), int64(len(f)), "f")
			must(t, err)
		}
		must(t, ch.Wait())
		_, m, err := bw.Finish()
		must(t, err)
		if m.SubBlockSize != chunk.DefaultSubBlockSize {
			t.Fatalf("%s: sub-block size %d", compression, m.SubBlockSize)
		}
		blob, err := os.ReadFile(path)
		must(t, err)
		with := 0
		for _, c := range m.Chunks {
			v, err := zchunk.DecodeVerified(c, blob[c.Stored().Offset:c.Stored().End()])
			must(t, err)
			data := v.Bytes()
			n := chunk.NumSubBlocks(c.Length, m.SubBlockSize)
			if n > 1 {
				with++
			}
			if c.SubHashes != chunk.SubHashes(data, m.SubBlockSize) {
				t.Fatalf("%s: chunk at %d: sub-block digests are not those of its bytes", compression, c.Offset)
			}
			for i := range n {
				r := chunk.SubBlock(c.Length, m.SubBlockSize, i)
				must(t, chunk.VerifySubBlock(c, m.SubBlockSize, i, data[r.Offset:r.End()]))
			}
		}
		if with != 4 {
			t.Fatalf("%s: %d chunks with sub-blocks, want 4 (text's 2, noise's 2)", compression, with)
		}
	}
}
