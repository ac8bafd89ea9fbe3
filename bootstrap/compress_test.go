package bootstrap

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/shoal-p2p/shoal/chunk"
)

// compressibleText is source-code-like text: what most of an image's bytes look like.
func compressibleText(n int, seed int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "func f%d_%d(x int) int { return x*%d + %d } // a line of source\n", seed, i, i%97, i%13)
	}
	return b.Bytes()[:n]
}

// makeMixedTree adds compressible, incompressible and mixed files to makeTree's shapes.
func makeMixedTree(t testing.TB, dir string, chunkSize int) {
	t.Helper()
	makeTree(t, dir, chunkSize)
	writeFile(t, filepath.Join(dir, "text", "big.go"), compressibleText(3*chunkSize+777, 1))
	writeFile(t, filepath.Join(dir, "text", "small.go"), compressibleText(5000, 2))
	writeFile(t, filepath.Join(dir, "text", "mixed"), append(compressibleText(chunkSize/2, 3), randBytes(t, chunkSize)...))
	writeFile(t, filepath.Join(dir, "text", "copy-of-big.go"), compressibleText(3*chunkSize+777, 1))
}

// TestBuildCompressed: an image built with zstd chunks reads back byte-identical through every
// chunk's stored form, by both engines, with the same CIDs as the uncompressed build of the
// same tree; compressible chunks are stored as frames, incompressible ones raw, and the stored
// blob is smaller than the device.
func TestBuildCompressed(t *testing.T) {
	const chunkSize = 64 << 10
	src := t.TempDir()
	makeMixedTree(t, src, chunkSize)
	plain := buildImageOpts(t, src, BuildOptions{ChunkSize: chunkSize})
	engines := []string{EngineGo}
	if _, err := os.Stat("/usr/bin/mkfs.erofs"); err == nil {
		engines = append(engines, EngineMkfs)
	}
	for _, engine := range engines {
		for _, level := range []int{1, 3, 19} {
			t.Run(fmt.Sprintf("%s/level=%d", engine, level), func(t *testing.T) {
				bi := buildImageOpts(t, src, BuildOptions{ChunkSize: chunkSize, Engine: engine, Compression: CompressionZstd, CompressionLevel: level})
				m := bi.res.Image.Blobs[0].Manifest
				if m.SchemaVersion != chunk.ManifestSchemaStored {
					t.Fatalf("schema %d", m.SchemaVersion)
				}
				var frames, raw int
				for _, c := range m.Chunks {
					switch c.Codec {
					case chunk.CodecZstd:
						frames++
					case chunk.CodecNone:
						raw++
					}
				}
				if frames == 0 || raw == 0 {
					t.Errorf("%d zstd chunks, %d raw: want both (the tree is mixed)", frames, raw)
				}
				if bi.res.BlobBytes >= bi.res.DeviceBytes || bi.res.BlobBytes != bi.res.Image.Blobs[0].Size || m.StoredBytes() != m.StoredSize {
					t.Errorf("stored %d bytes (layer %d, chunks %d) for a %d-byte device", bi.res.BlobBytes, bi.res.Image.Blobs[0].Size, m.StoredBytes(), bi.res.DeviceBytes)
				}
				// Same tree, same chunks: the CIDs of the uncompressed build, by device offset.
				if engine == EngineGo {
					pm := plain.res.Image.Blobs[0].Manifest
					if len(pm.Chunks) != len(m.Chunks) || pm.BlobSize != m.BlobSize {
						t.Fatalf("%d chunks over %d bytes, uncompressed %d over %d", len(m.Chunks), m.BlobSize, len(pm.Chunks), pm.BlobSize)
					}
					for i, c := range m.Chunks {
						if c.Offset != pm.Chunks[i].Offset || !c.CID.Equals(pm.Chunks[i].CID) {
							t.Fatalf("chunk %d: %d %s, uncompressed %d %s", i, c.Offset, c.CID, pm.Chunks[i].Offset, pm.Chunks[i].CID)
						}
					}
				}
				compareTree(t, bi, src)
				// The layout reads back as the same image.
				im, _, err := Layout{bi.out}.ReadImage("")
				must(t, err)
				if im.Blobs[0].Manifest.StoredSize != m.StoredSize || im.StoredBytes() != m.StoredSize {
					t.Fatalf("layout image: stored %d", im.Blobs[0].Manifest.StoredSize)
				}
			})
		}
	}
	t.Run("fsck", func(t *testing.T) {
		bi := buildImageOpts(t, src, BuildOptions{ChunkSize: chunkSize, Compression: CompressionZstd})
		checkAgainstFsck(t, bi, src)
	})
	t.Run("bad options", func(t *testing.T) {
		for _, o := range []BuildOptions{{Compression: "lz4"}, {Compression: CompressionZstd, CompressionLevel: 23}, {Compression: CompressionNone, CompressionLevel: 3}} {
			if _, err := Build(t.Context(), src, filepath.Join(t.TempDir(), "x"), o); err == nil {
				t.Errorf("%+v accepted", o)
			}
		}
	})
}

// compareTree reads every regular file of the image through its devices and compares it with
// the source.
func compareTree(t *testing.T, bi *builtImage, src string) {
	t.Helper()
	n := 0
	must(t, bi.fs.Walk(func(p string, in *Inode) error {
		if !in.Mode.IsRegular() {
			return nil
		}
		got, err := bi.fs.ReadFile(in, bi.devices(), 1<<30)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		want, err := os.ReadFile(filepath.Join(src, p))
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("%s: content differs", p)
		}
		n++
		return nil
	}))
	if n < 10 {
		t.Fatalf("only %d files compared", n)
	}
}

// TestDeviceReaderRefusesWrongStoredBytes: a stored blob whose bytes do not decode to the
// chunk's CID is an error, not wrong file content.
func TestDeviceReaderRefusesWrongStoredBytes(t *testing.T) {
	const chunkSize = 64 << 10
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "a.go"), compressibleText(2*chunkSize, 1))
	bi := buildImageOpts(t, src, BuildOptions{ChunkSize: chunkSize, Compression: CompressionZstd})
	b, err := os.ReadFile(bi.paths[0])
	must(t, err)
	m := bi.res.Image.Blobs[0].Manifest
	buf := make([]byte, 100)
	if _, err := DeviceReader(bytes.NewReader(b), m).ReadAt(buf, m.Chunks[1].Offset); err != nil {
		t.Fatal(err)
	}
	b[m.Chunks[1].StoredOffset+m.Chunks[1].StoredLength/2] ^= 0x55
	if _, err := DeviceReader(bytes.NewReader(b), m).ReadAt(buf, m.Chunks[1].Offset); err == nil {
		t.Fatal("damaged frame read without error")
	}
}
