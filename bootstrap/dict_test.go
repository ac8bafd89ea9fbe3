package bootstrap

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
)

// makeSourceTree adds many small source-like files (sharing their header, as a tree's do) to
// makeMixedTree's compressible, incompressible and mixed ones: enough sample for a dictionary.
func makeSourceTree(t testing.TB, dir string, chunkSize int) {
	t.Helper()
	makeMixedTree(t, dir, chunkSize)
	for i := range 60 {
		var b bytes.Buffer
		b.WriteString("// Copyright 2026 The Shoal Authors.\n\npackage shoal\n\nimport (\n\t\"context\"\n\t\"fmt\"\n)\n\n")
		for j := 0; b.Len() < 3000+i*50; j++ {
			fmt.Fprintf(&b, "func h%d_%d(ctx context.Context) error { return fmt.Errorf(\"%%d\", %d) }\n", i, j, (i*7+j)%100)
		}
		writeFile(t, filepath.Join(dir, "src", fmt.Sprintf("f%02d.go", i)), b.Bytes())
	}
}

// TestBuildWithDict: an image built with a trained dictionary stores compressible chunks as
// frames that use it (raw the incompressible ones), carries the dictionary in its chunk
// manifest, reads back byte-identical through every chunk's stored form with the same CIDs as
// without it, stores fewer bytes than without it, and is the same image when built again.
func TestBuildWithDict(t *testing.T) {
	const chunkSize = 64 << 10
	src := t.TempDir()
	makeSourceTree(t, src, chunkSize)
	without := buildImageOpts(t, src, BuildOptions{ChunkSize: chunkSize, Compression: CompressionZstd})
	with := buildImageOpts(t, src, BuildOptions{ChunkSize: chunkSize, Compression: CompressionZstd, DictSize: zchunk.MinDictSize})
	m, wm := with.res.Image.Blobs[0].Manifest, without.res.Image.Blobs[0].Manifest
	if len(m.Dict) == 0 || len(wm.Dict) != 0 {
		t.Fatalf("dictionary of %d bytes (built without: %d)", len(m.Dict), len(wm.Dict))
	}
	codecs := map[chunk.Codec]int{}
	for i, c := range m.Chunks {
		codecs[c.Codec]++
		if !c.CID.Equals(wm.Chunks[i].CID) || c.Offset != wm.Chunks[i].Offset {
			t.Fatalf("chunk %d: %d %s, without a dictionary %d %s", i, c.Offset, c.CID, wm.Chunks[i].Offset, wm.Chunks[i].CID)
		}
	}
	if codecs[chunk.CodecZstdDict] == 0 || codecs[chunk.CodecNone] == 0 {
		t.Errorf("codecs %v: want frames with the dictionary and raw chunks (the tree is mixed)", codecs)
	}
	if m.StoredBytes() >= wm.StoredBytes() {
		t.Errorf("stored %d bytes with the dictionary, %d without", m.StoredBytes(), wm.StoredBytes())
	}
	compareTree(t, with, src)
	again := buildImageOpts(t, src, BuildOptions{ChunkSize: chunkSize, Compression: CompressionZstd, DictSize: zchunk.MinDictSize})
	if again.res.Image.Digest != with.res.Image.Digest {
		t.Errorf("built twice: %s, then %s", with.res.Image.Digest, again.res.Image.Digest)
	}
	// mkfs.erofs's blob is encoded afterwards (EncodeBlob): it gets the dictionary too.
	if _, err := os.Stat("/usr/bin/mkfs.erofs"); err == nil {
		mk := buildImageOpts(t, src, BuildOptions{ChunkSize: chunkSize, Engine: EngineMkfs, Compression: CompressionZstd, DictSize: zchunk.MinDictSize})
		if len(mk.res.Image.Blobs[0].Manifest.Dict) == 0 {
			t.Error("mkfs engine: no dictionary")
		}
		compareTree(t, mk, src)
	}
	// Too little compressible data for one: no dictionary, and the image is as before.
	small := t.TempDir()
	for i := range 10 {
		writeFile(t, filepath.Join(small, fmt.Sprintf("r%d", i)), randBytes(t, 20000))
	}
	writeFile(t, filepath.Join(small, "t"), compressibleText(2000, 1))
	sm := buildImageOpts(t, small, BuildOptions{ChunkSize: chunkSize, Compression: CompressionZstd, DictSize: zchunk.DefaultDictSize})
	if len(sm.res.Image.Blobs[0].Manifest.Dict) != 0 {
		t.Error("a dictionary trained on 2000 bytes of text")
	}
	compareTree(t, sm, small)
}

// layoutFetch fetches descriptors from a layout, counting which it was asked for; broken lists
// digests whose bytes it damages.
type layoutFetch struct {
	l      Layout
	asked  map[digest.Digest]int
	broken map[digest.Digest]bool
}

func (f *layoutFetch) fetch(d ocispec.Descriptor) ([]byte, error) {
	f.asked[d.Digest]++
	b, err := os.ReadFile(f.l.BlobPath(d.Digest))
	if err != nil {
		return nil, err
	}
	if f.broken[d.Digest] {
		b[len(b)/2] ^= 1
	}
	return b, nil
}

// TestCompressedMetadata: an image carries its chunk manifest and bootstrap compressed too; a
// reader fetches only the compressed chunk manifest, gets the same manifest as from the plain
// one, and falls back to the plain one when the compressed form is damaged or missing (an image
// from before has none: its plain objects are all there is). The compressed bootstrap decodes
// to the bootstrap, and a wrong one is refused.
func TestCompressedMetadata(t *testing.T) {
	const chunkSize = 64 << 10
	src := t.TempDir()
	makeSourceTree(t, src, chunkSize)
	bi := buildImageOpts(t, src, BuildOptions{ChunkSize: chunkSize, Compression: CompressionZstd, DictSize: zchunk.MinDictSize})
	lay := Layout{bi.out}
	_, mb, err := lay.ReadImage("")
	must(t, err)
	var om ocispec.Manifest
	must(t, json.Unmarshal(mb, &om))
	types := map[string]ocispec.Descriptor{}
	for _, l := range om.Layers {
		types[l.MediaType] = l
	}
	zc, zb := types[MediaTypeChunksZstd], types[MediaTypeBootstrapZstd]
	plainC := types[MediaTypeChunks]
	if zc.Digest == "" || zb.Digest == "" || zc.Size >= plainC.Size || zb.Size >= bi.res.Image.Bootstrap.Size {
		t.Fatalf("compressed layers: chunks %d bytes (plain %d), bootstrap %d (plain %d)", zc.Size, plainC.Size, zb.Size, bi.res.Image.Bootstrap.Size)
	}
	for name, tc := range map[string]struct {
		broken     map[digest.Digest]bool
		manifest   []byte
		wantPlain  bool
		wantZstdOK bool
	}{
		"compressed":    {wantZstdOK: true},
		"damaged":       {broken: map[digest.Digest]bool{zc.Digest: true}, wantPlain: true},
		"from before":   {manifest: withoutLayers(t, mb, MediaTypeChunksZstd, MediaTypeBootstrapZstd), wantPlain: true},
		"plain damaged": {broken: map[digest.Digest]bool{plainC.Digest: true}, wantZstdOK: true},
	} {
		f := &layoutFetch{l: lay, asked: map[digest.Digest]int{}, broken: tc.broken}
		man := mb
		if tc.manifest != nil {
			man = tc.manifest
		}
		im, err := ParseImage(man, f.fetch)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := im.Blobs[0].Manifest; len(got.Chunks) != len(bi.res.Image.Blobs[0].Manifest.Chunks) || !bytes.Equal(got.Dict, bi.res.Image.Blobs[0].Manifest.Dict) {
			t.Errorf("%s: a different chunk manifest", name)
		}
		if plain := f.asked[plainC.Digest] > 0; plain != tc.wantPlain {
			t.Errorf("%s: plain chunk manifest fetched: %v, want %v", name, plain, tc.wantPlain)
		}
		if ok := im.BootstrapZstd.Digest == zb.Digest; ok != (tc.manifest == nil) {
			t.Errorf("%s: compressed bootstrap %q", name, im.BootstrapZstd.Digest)
		}
	}
	zbytes, err := os.ReadFile(lay.BlobPath(zb.Digest))
	must(t, err)
	boot, err := DecompressMeta(zbytes, bi.res.Image.Bootstrap)
	must(t, err)
	plainBoot, err := os.ReadFile(lay.BlobPath(bi.res.Image.Bootstrap.Digest))
	must(t, err)
	if !bytes.Equal(boot, plainBoot) {
		t.Fatal("compressed bootstrap decodes to other bytes")
	}
	smaller := bi.res.Image.Bootstrap
	smaller.Size--
	other := Descriptor{Digest: digest.FromString("x"), Size: bi.res.Image.Bootstrap.Size}
	for name, d := range map[string]Descriptor{"claimed a byte shorter": smaller, "another digest": other} {
		if _, err := DecompressMeta(zbytes, d); !errors.Is(err, chunk.ErrCorrupt) {
			t.Errorf("%s: err %v, want ErrCorrupt", name, err)
		}
	}
}

// withoutLayers returns the OCI manifest mb without its layers of the given media types.
func withoutLayers(t testing.TB, mb []byte, types ...string) []byte {
	t.Helper()
	var m ocispec.Manifest
	must(t, json.Unmarshal(mb, &m))
	var keep []ocispec.Descriptor
	for _, l := range m.Layers {
		drop := false
		for _, ty := range types {
			drop = drop || l.MediaType == ty
		}
		if !drop {
			keep = append(keep, l)
		}
	}
	m.Layers = keep
	b, err := json.Marshal(m)
	must(t, err)
	return b
}

// FuzzDecompressMeta: a compressed metadata object from an origin or a peer decodes to exactly
// the plain object or is refused (ErrCorrupt), never to more than its size.
func FuzzDecompressMeta(f *testing.F) {
	plain := compressibleText(20000, 1)
	z := compressMeta(plain)
	f.Add(z, int64(len(plain)))
	f.Add(z[:len(z)/2], int64(len(plain)))
	enc, _ := zstd.NewWriter(nil)
	f.Add(enc.EncodeAll(make([]byte, 1<<20), nil), int64(100))
	d := Descriptor{Digest: digest.FromBytes(plain)}
	f.Fuzz(func(t *testing.T, z []byte, size int64) {
		d.Size = size
		b, err := DecompressMeta(z, d)
		if err != nil {
			if !errors.Is(err, chunk.ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		if !bytes.Equal(b, plain) {
			t.Fatalf("decoded %d bytes that are not the object", len(b))
		}
	})
}

// TestBuildNoDictPossible: a tree whose files make no dictionary (each one run of one byte:
// compressible, but nothing repeats across them) still builds, without one, and reads back
// byte-identical. (It failed before: `scripts/bench-fusetree.sh`'s tree of 100,000 such files.)
func TestBuildNoDictPossible(t *testing.T) {
	src := t.TempDir()
	for i := range 3000 {
		d := filepath.Join(src, fmt.Sprintf("d%02d", i/1000))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%04d", i)), bytes.Repeat([]byte("x"), 64+i%200), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	im := buildImageOpts(t, src, BuildOptions{Compression: CompressionZstd, DictSize: zchunk.MinDictSize}) // enough sample to train on
	if m := im.res.Image.Blobs[0].Manifest; len(m.Dict) != 0 {
		t.Fatalf("a dictionary of %d bytes from samples that share nothing", len(m.Dict))
	}
	compareTree(t, im, src)
}
