package zchunk

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/shoal-p2p/shoal/chunk"
)

func text(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		b.WriteString("func main() { fmt.Println(\"hello, shoal\") } // line ")
		b.WriteByte(byte('0' + i%10))
		b.WriteByte('\n')
	}
	return b.Bytes()[:n]
}

func random(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func mustEncoder(t testing.TB, level int) *Encoder {
	t.Helper()
	e, err := NewEncoder(level)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func chunkOf(data []byte, codec chunk.Codec) chunk.Chunk {
	return chunk.Chunk{Length: int64(len(data)), CID: chunk.CID(data), Codec: codec}
}

func TestRoundTrip(t *testing.T) {
	mixed := append(text(64<<10), random(t, 64<<10)...)
	cases := []struct {
		name  string
		data  []byte
		codec chunk.Codec
	}{
		{"compressible", text(1 << 20), chunk.CodecZstd},
		{"incompressible", random(t, 1<<20), chunk.CodecNone},
		{"mixed", mixed, chunk.CodecZstd},
		{"one block of zeros", make([]byte, chunk.BlockSize), chunk.CodecZstd},
		{"one byte", []byte{7}, chunk.CodecNone},
	}
	for _, level := range []int{1, 3, 9, 19} {
		e := mustEncoder(t, level)
		for _, c := range cases {
			prefix := []byte("prefix")
			out, codec := e.Encode(append([]byte(nil), prefix...), c.data)
			if codec != c.codec {
				t.Errorf("level %d %s: codec %q, want %q", level, c.name, codec, c.codec)
			}
			if !bytes.HasPrefix(out, prefix) {
				t.Fatalf("level %d %s: dst prefix lost", level, c.name)
			}
			stored := out[len(prefix):]
			if codec == chunk.CodecZstd && !Pays(len(stored), len(c.data)) {
				t.Errorf("level %d %s: %d bytes stored compressed for %d", level, c.name, len(stored), len(c.data))
			}
			v, err := DecodeVerified(chunkOf(c.data, codec), stored)
			if err != nil {
				t.Fatalf("level %d %s: %v", level, c.name, err)
			}
			if !bytes.Equal(v.Bytes(), c.data) {
				t.Fatalf("level %d %s: decoded bytes differ", level, c.name)
			}
		}
	}
	if _, err := NewEncoder(0); err == nil {
		t.Fatal("level 0 accepted")
	}
	if _, err := NewEncoder(23); err == nil {
		t.Fatal("level 23 accepted")
	}
}

// TestHostileFrames: whatever an origin or a peer sends in place of a chunk's stored bytes is
// refused with chunk.ErrCorrupt, and decoding never produces more than the chunk's length.
func TestHostileFrames(t *testing.T) {
	data := text(256 << 10)
	good := mustEncoder(t, 3)
	z, codec := good.Encode(nil, data)
	if codec != chunk.CodecZstd {
		t.Fatal("text did not compress")
	}
	c := chunkOf(data, chunk.CodecZstd)

	// A bomb: a small frame of 16 MiB of zeros claimed to be the 256 KiB chunk.
	plain, _ := zstd.NewWriter(nil)
	bomb := plain.EncodeAll(make([]byte, 16<<20), nil)
	// The same bomb without a declared content size (streamed), so only the cap stops it.
	var streamed bytes.Buffer
	sw, _ := zstd.NewWriter(&streamed, zstd.WithSingleSegment(false))
	for range 64 {
		_, _ = sw.Write(make([]byte, 256<<10))
	}
	_ = sw.Close()
	// A frame that needs a dictionary the decoder does not have.
	dict := text(8 << 10)
	dw, err := zstd.NewWriter(nil, zstd.WithEncoderDictRaw(1234, dict))
	if err != nil {
		t.Fatal(err)
	}
	withDict := dw.EncodeAll(data, nil)
	// The right frame twice: twice the bytes.
	twice := append(append([]byte(nil), z...), z...)
	// A frame of other bytes of the same length.
	other := append([]byte(nil), data...)
	other[100] ^= 1
	wrong, _ := good.Encode(nil, other)

	cases := []struct {
		name   string
		c      chunk.Chunk
		stored []byte
	}{
		{"bomb", c, bomb},
		{"streamed bomb", c, streamed.Bytes()},
		{"truncated", c, z[:len(z)/2]},
		{"empty", c, nil},
		{"garbage", c, random(t, 4096)},
		{"wrong dictionary", c, withDict},
		{"two frames", c, twice},
		{"other content", c, wrong},
		{"raw too short", chunkOf(data, chunk.CodecNone), data[:len(data)-1]},
		{"raw too long", chunkOf(data, chunk.CodecNone), append(append([]byte(nil), data...), 0)},
		{"unknown codec", chunk.Chunk{Length: c.Length, CID: c.CID, Codec: "lz4"}, z},
		{"length past the cap", chunk.Chunk{Length: MaxChunkSize + 1, CID: c.CID, Codec: chunk.CodecZstd}, bomb},
	}
	for _, tc := range cases {
		out, err := DecodeVerified(tc.c, tc.stored)
		if !errors.Is(err, chunk.ErrCorrupt) {
			t.Errorf("%s: err %v, want ErrCorrupt", tc.name, err)
		}
		if !out.IsZero() {
			t.Errorf("%s: returned bytes", tc.name)
		}
		if raw, err := Decode(tc.c, tc.stored); err == nil && int64(len(raw)) != tc.c.Length {
			t.Errorf("%s: Decode returned %d bytes for a %d-byte chunk", tc.name, len(raw), tc.c.Length)
		}
	}
}

func FuzzDecode(f *testing.F) {
	e := mustEncoder(f, 3)
	data := text(8 << 10)
	z, _ := e.Encode(nil, data)
	f.Add(z, int64(len(data)))
	f.Add(z[:10], int64(len(data)))
	plain, _ := zstd.NewWriter(nil)
	f.Add(plain.EncodeAll(make([]byte, 1<<20), nil), int64(4096))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd}, int64(4096))
	f.Fuzz(func(t *testing.T, stored []byte, length int64) {
		c := chunk.Chunk{Length: length, CID: chunk.CID(nil), Codec: chunk.CodecZstd}
		out, err := Decode(c, stored)
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

func BenchmarkDecode(b *testing.B) {
	e := mustEncoder(b, 3)
	data := text(1 << 20)
	z, _ := e.Encode(nil, data)
	c := chunkOf(data, chunk.CodecZstd)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Decode(c, z); err != nil {
			b.Fatal(err)
		}
	}
}

// TestIncompressible: data zstd cannot shrink is recognised without encoding it, and data it can
// (text, zeros, a random file padded with zeros to the block) is still tried.
func TestIncompressible(t *testing.T) {
	halfZero := append(random(t, 2048), make([]byte, 2048)...)
	cases := []struct {
		name string
		data []byte
		want bool
	}{
		{"random 1 MiB", random(t, 1<<20), true},
		{"random 4 KiB", random(t, 4096), true},
		{"random 1 MiB + 100 bytes", random(t, 1<<20+100), true},
		{"text", text(1 << 20), false},
		{"zeros", make([]byte, 1<<20), false},
		{"random half a block, zero padded", halfZero, false},
		{"empty", nil, false},
		// Sampled with a shorter stride (at least 4096 bytes counted).
		{"random 8 KiB + 1", random(t, 8193), true},
		{"random 12 KiB", random(t, 12<<10), true},
		{"random 40 KiB + 5", random(t, 40<<10+5), true},
		{"text 12 KiB", text(12 << 10), false},
		{"text 40 KiB", text(40 << 10), false},
		{"random 8 KiB then 8 KiB of zeros", append(random(t, 8<<10), make([]byte, 8<<10)...), false},
	}
	e := mustEncoder(t, DefaultLevel)
	for _, c := range cases {
		if got := Incompressible(c.data); got != c.want {
			t.Errorf("%s: Incompressible = %v, want %v", c.name, got, c.want)
		}
		if !c.want || len(c.data) == 0 {
			continue
		}
		stored, codec := e.Encode(nil, c.data)
		if codec != chunk.CodecNone || !bytes.Equal(stored, c.data) {
			t.Errorf("%s: Encode gave codec %q and %d bytes, want the raw %d", c.name, codec, len(stored), len(c.data))
		}
	}
	// The half-zero block pays as a frame: the check must not have kept it raw.
	if _, codec := e.Encode(nil, halfZero); codec != chunk.CodecZstd {
		t.Errorf("random half block zero padded: codec %q, want zstd", codec)
	}
}

// TestEncodeAppendsInPlace: with room after dst, the frame is encoded there and returned without
// a copy; dst's bytes stay in front and the frame decodes to the data.
func TestEncodeAppendsInPlace(t *testing.T) {
	e := mustEncoder(t, DefaultLevel)
	data := text(300 << 10)
	for _, room := range []int{0, 100, 1 << 20} {
		dst := append(make([]byte, 0, 3+room), "abc"...)
		out, codec := e.Encode(dst, data)
		if codec != chunk.CodecZstd || string(out[:3]) != "abc" {
			t.Fatalf("room %d: codec %q, prefix %q", room, codec, out[:3])
		}
		got, err := Decode(chunk.Chunk{Length: int64(len(data)), StoredLength: int64(len(out) - 3), Codec: codec}, out[3:])
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("room %d: decode: %v (equal %v)", room, err, bytes.Equal(got, data))
		}
	}
}

func BenchmarkEncodeRandom(b *testing.B) {
	data := random(b, 1<<20)
	e := mustEncoder(b, DefaultLevel)
	b.SetBytes(int64(len(data)))
	var dst []byte
	for b.Loop() {
		dst, _ = e.Encode(dst[:0], data)
	}
}
