package zchunk

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/shoal-p2p/shoal/chunk"
)

// sourceFiles are small source-like files that share most of their text (licence header,
// imports), as the files of a tree do: what a dictionary is for.
func sourceFiles(n, size int) [][]byte {
	var out [][]byte
	for i := range n {
		var b bytes.Buffer
		b.WriteString("// Copyright 2026 The Shoal Authors. All rights reserved.\n// Use of this source code is governed by a BSD-style licence.\n\npackage shoal\n\nimport (\n\t\"context\"\n\t\"fmt\"\n\t\"io\"\n)\n\n")
		for j := 0; b.Len() < size; j++ {
			fmt.Fprintf(&b, "func handler%d_%d(ctx context.Context, w io.Writer) error { _, err := fmt.Fprintf(w, \"%%d\", %d); return err }\n", i, j, (i*31+j)%1000)
		}
		out = append(out, b.Bytes()[:size])
	}
	return out
}

func mustTrain(t testing.TB, samples [][]byte, size, level int) *Dict {
	t.Helper()
	d, err := Train(samples, size, level)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDictRoundTrip: chunks encoded with a trained dictionary decode byte-identical with it
// (compressible ones as frames naming the dictionary, incompressible ones raw), the frames are
// smaller than without it, and the same samples train the same dictionary (builds stay
// reproducible).
func TestDictRoundTrip(t *testing.T) {
	files := sourceFiles(200, 4096)
	d := mustTrain(t, files, 16<<10, 1)
	again := mustTrain(t, files, 16<<10, 1)
	if !bytes.Equal(d.Bytes(), again.Bytes()) || d.ID() != again.ID() {
		t.Fatal("the same samples trained two different dictionaries")
	}
	plain := mustEncoder(t, 1)
	e, err := plain.WithDict(d)
	if err != nil {
		t.Fatal(err)
	}
	fresh := sourceFiles(220, 4096)[200:] // not in the sample
	var withDict, without int
	cases := map[string][]byte{"random": random(t, 64<<10), "mixed": append(text(32<<10), random(t, 32<<10)...), "one byte": {7}}
	for i, f := range fresh {
		cases[fmt.Sprintf("source %d", i)] = f
	}
	for name, data := range cases {
		stored, codec := e.Encode(nil, data)
		want := chunk.CodecZstdDict
		if name == "random" || name == "one byte" {
			want = chunk.CodecNone
		}
		if codec != want {
			t.Errorf("%s: codec %q, want %q", name, codec, want)
		}
		v, err := DecodeVerifiedWith(chunkOf(data, codec), stored, d)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(v.Bytes(), data) {
			t.Fatalf("%s: decoded bytes differ", name)
		}
		if codec == chunk.CodecZstdDict && name != "mixed" {
			z, _ := plain.Encode(nil, data)
			withDict, without = withDict+len(stored), without+len(z)
		}
	}
	if withDict*10 > without*9 {
		t.Errorf("with the dictionary %d bytes, without %d: want at least a tenth saved on files like the sample", withDict, without)
	}
}

// TestWrongDictionary: a frame is decoded only with the dictionary its codec says: a frame made
// with another dictionary (another image's, or one with the same ID and other bytes), a frame
// naming a dictionary under codec zstd, and a dictionary frame without its dictionary are all
// refused as corrupt, never decoded into wrong bytes.
func TestWrongDictionary(t *testing.T) {
	files := sourceFiles(200, 4096)
	d := mustTrain(t, files, 16<<10, 1)
	other := mustTrain(t, sourceFiles(300, 4096)[100:], 16<<10, 1)
	if other.ID() == d.ID() {
		t.Fatal("two samples gave one dictionary ID")
	}
	data := sourceFiles(201, 4096)[200]
	enc := func(dd *Dict) []byte {
		e, err := mustEncoder(t, 1).WithDict(dd)
		if err != nil {
			t.Fatal(err)
		}
		z, codec := e.Encode(nil, data)
		if codec != chunk.CodecZstdDict {
			t.Fatal("did not compress")
		}
		return z
	}
	// Same ID as d, other content (what the frame copies from: data itself, one byte changed):
	// the frame names d's ID, so only the decoded length or the CID can tell.
	near := append([]byte(nil), data...)
	near[len(near)/2] ^= 1
	impostor, err := zstd.NewWriter(nil, zstd.WithEncoderDictRaw(d.ID(), near), zstd.WithEncoderCRC(false))
	if err != nil {
		t.Fatal(err)
	}
	plainFrame, _ := mustEncoder(t, 1).Encode(nil, data)
	cd := chunkOf(data, chunk.CodecZstdDict)
	cases := []struct {
		name   string
		c      chunk.Chunk
		stored []byte
		d      *Dict
	}{
		{"another image's dictionary", cd, enc(other), d},
		{"same ID, other dictionary bytes", cd, impostor.EncodeAll(data, nil), d},
		{"dictionary frame, codec zstd", chunkOf(data, chunk.CodecZstd), enc(d), d},
		{"dictionary frame, no dictionary given", cd, enc(d), nil},
		{"frame without a dictionary, codec zstd-dict", cd, plainFrame, d},
		{"decoded with the wrong dictionary", cd, enc(d), other},
	}
	for _, tc := range cases {
		v, err := DecodeVerifiedWith(tc.c, tc.stored, tc.d)
		if !errors.Is(err, chunk.ErrCorrupt) || !v.IsZero() {
			t.Errorf("%s: err %v, want ErrCorrupt", tc.name, err)
		}
	}
	// The right one decodes.
	if _, err := DecodeVerifiedWith(cd, enc(d), d); err != nil {
		t.Fatal(err)
	}
}

// TestParseDict: what is not a usable dictionary is refused before any frame meets it.
func TestParseDict(t *testing.T) {
	d := mustTrain(t, sourceFiles(200, 4096), 16<<10, 1)
	noID := append([]byte(nil), d.Bytes()...)
	noID[4], noID[5], noID[6], noID[7] = 0, 0, 0, 0
	for name, raw := range map[string][]byte{
		"empty":     nil,
		"garbage":   random(t, 4096),
		"truncated": d.Bytes()[:64],
		"ID 0":      noID,
		"too big":   make([]byte, chunk.MaxDictSize+1),
	} {
		if _, err := ParseDict(raw); !errors.Is(err, chunk.ErrCorrupt) {
			t.Errorf("%s: err %v, want ErrCorrupt", name, err)
		}
	}
	if _, err := Train(sourceFiles(2, 4096), 16<<10, 1); !errors.Is(err, ErrNoDict) {
		t.Errorf("8 KiB of sample for a 16 KiB dictionary: err %v, want ErrNoDict", err)
	}
	if _, err := Train([][]byte{random(t, 1<<20)}, 16<<10, 1); !errors.Is(err, ErrNoDict) {
		t.Errorf("random sample: err %v, want ErrNoDict", err)
	}
	m := &chunk.Manifest{Dict: d.Bytes()}
	a, err := DictOf(m)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := DictOf(&chunk.Manifest{Dict: append([]byte(nil), d.Bytes()...)})
	if a != b {
		t.Error("two manifests with one dictionary got two Dicts")
	}
	if none, err := DictOf(&chunk.Manifest{}); none != nil || err != nil {
		t.Errorf("manifest without a dictionary: %v, %v", none, err)
	}
}

// FuzzDecodeDict: whatever a peer or an origin sends as a dictionary frame, and whatever a
// manifest holds as the dictionary, decoding ends in an error wrapping ErrCorrupt or exactly the
// chunk's length of bytes; never a panic, never more.
func FuzzDecodeDict(f *testing.F) {
	files := sourceFiles(200, 4096)
	d := mustTrain(f, files, 8<<10, 1)
	e, _ := mustEncoder(f, 1).WithDict(d)
	z, _ := e.Encode(nil, files[0])
	f.Add(z, int64(len(files[0])), d.Bytes())
	f.Add(z[:12], int64(len(files[0])), d.Bytes())
	f.Add(z, int64(100), d.Bytes())
	f.Add(z, int64(len(files[0])), d.Bytes()[:200])
	f.Fuzz(func(t *testing.T, stored []byte, length int64, raw []byte) {
		dd, err := ParseDict(raw)
		if err != nil {
			if !errors.Is(err, chunk.ErrCorrupt) {
				t.Fatalf("ParseDict error does not wrap ErrCorrupt: %v", err)
			}
			dd = d
		}
		c := chunk.Chunk{Length: length, CID: chunk.CID(nil), Codec: chunk.CodecZstdDict}
		out, err := DecodeWith(c, stored, dd)
		if err != nil {
			if !errors.Is(err, chunk.ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		if int64(len(out)) != length || cap(out) > int(length) {
			t.Fatalf("decoded %d bytes (cap %d) for a %d-byte chunk", len(out), cap(out), length)
		}
	})
}

// BenchmarkDecodeDict: a 16 KiB source chunk decoded with and without a dictionary (the cold
// read's decode step; the dictionary must not slow it).
func BenchmarkDecodeDict(b *testing.B) {
	files := sourceFiles(400, 16<<10)
	d := mustTrain(b, files[:200], DefaultDictSize/4, 1)
	plain := mustEncoder(b, 1)
	withDict, _ := plain.WithDict(d)
	data := files[300]
	for _, tc := range []struct {
		name string
		e    *Encoder
		d    *Dict
	}{{"none", plain, nil}, {"dict", withDict, d}} {
		z, codec := tc.e.Encode(nil, data)
		c := chunkOf(data, codec)
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := DecodeWith(c, z, tc.d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecodeTree: the decode step of a cold read from the origin, over real source files:
// up to 2000 files of the Go distribution's src (each a chunk, cut at 1 MiB), stored at level 1
// without and with a dictionary trained on every 8th file's start (as an image build's
// sample). Each iteration decodes every chunk once; bytes/s is of chunk bytes. The tree is
// $SHOAL_BENCH_SRC, default /usr/local/go/src; skipped without it.
func BenchmarkDecodeTree(b *testing.B) {
	root := os.Getenv("SHOAL_BENCH_SRC")
	if root == "" {
		root = "/usr/local/go/src"
	}
	var files [][]byte
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || len(files) >= 2000 || !d.Type().IsRegular() {
			return nil
		}
		if data, err := os.ReadFile(p); err == nil && len(data) > 0 {
			files = append(files, data[:min(len(data), 1<<20)])
		}
		return nil
	})
	if len(files) < 100 {
		b.Skipf("%s: %d files", root, len(files))
	}
	var samples [][]byte
	for i := 0; i < len(files); i += 8 {
		samples = append(samples, files[i][:min(len(files[i]), DictSamplePiece)])
	}
	d := mustTrain(b, samples, DefaultDictSize, 1)
	plain := mustEncoder(b, 1)
	withDict, _ := plain.WithDict(d)
	for _, tc := range []struct {
		name string
		e    *Encoder
		d    *Dict
	}{{"none", plain, nil}, {"dict", withDict, d}} {
		var total, stored int64
		cs := make([]chunk.Chunk, len(files))
		zs := make([][]byte, len(files))
		for i, f := range files {
			var codec chunk.Codec
			zs[i], codec = tc.e.Encode(nil, f)
			cs[i] = chunk.Chunk{Length: int64(len(f)), Codec: codec}
			total += int64(len(f))
			stored += int64(len(zs[i]))
		}
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(total)
			b.ReportMetric(float64(stored)/float64(total), "stored/data")
			b.ReportMetric(float64(total)/float64(len(files)), "bytes/chunk")
			for b.Loop() {
				for i := range cs {
					if _, err := DecodeWith(cs[i], zs[i], tc.d); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// TestTrainNothingRepeats: samples that are compressible but share nothing a dictionary could
// hold (each one run of one byte, as in a tree of files of "xxx…") make no dictionary:
// ErrNoDict, which builds take as "none" rather than a failure.
func TestTrainNothingRepeats(t *testing.T) {
	var samples [][]byte
	for i := range 40000 {
		samples = append(samples, bytes.Repeat([]byte("x"), 64+i%136))
	}
	if d, err := Train(samples, MinDictSize, DefaultLevel); !errors.Is(err, ErrNoDict) {
		t.Fatalf("Train = %v, %v; want ErrNoDict", d, err)
	}
}
