package demand

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
	"github.com/shoal-p2p/shoal/chunkstore"
	"github.com/shoal-p2p/shoal/chunkstore/storetest"
)

// storedBlob is a compressed blob (schema 2) in memory: chunks of text compress, the others are
// random and stored raw.
type storedBlob struct {
	data   []byte // the uncompressed device
	stored []byte // the blob as stored
	m      *chunk.Manifest
}

func newStoredBlob(t testing.TB, chunks int) storedBlob {
	t.Helper()
	plain := newTestBlob(t, chunks)
	data := plain.data
	for i, c := range plain.m.Chunks {
		if i%2 == 0 { // text: compresses
			var b bytes.Buffer
			for j := 0; b.Len() < int(c.Length); j++ {
				fmt.Fprintf(&b, "chunk %d line %d: the quick brown fox\n", i, j)
			}
			copy(data[c.Offset:c.End()], b.Bytes())
		}
	}
	enc, err := zchunk.NewEncoder(zchunk.DefaultLevel)
	if err != nil {
		t.Fatal(err)
	}
	return encodeStoredBlob(t, plain.m, data, enc)
}

// encodeStoredBlob stores the chunks of data (which plain describes) through enc.
func encodeStoredBlob(t testing.TB, plain *chunk.Manifest, data []byte, enc *zchunk.Encoder) storedBlob {
	t.Helper()
	m := *plain
	if d := enc.Dict(); d != nil {
		m.Dict = d.Bytes()
	}
	m.SchemaVersion = chunk.ManifestSchemaStored
	m.Chunks = nil
	var stored []byte
	for _, c := range plain.Chunks {
		c.CID = chunk.CID(data[c.Offset:c.End()])
		off := int64(len(stored))
		stored, c.Codec = enc.Encode(stored, data[c.Offset:c.End()])
		c.StoredOffset, c.StoredLength = off, int64(len(stored))-off
		m.Chunks = append(m.Chunks, c)
	}
	m.StoredSize = int64(len(stored))
	m.Blob = digest.FromBytes(stored)
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	return storedBlob{data: data, stored: stored, m: &m}
}

// rangeOrigin serves byte ranges of a stored blob, as a registry does, and can replace the
// stored bytes of one chunk with what a hostile origin would send.
type rangeOrigin struct {
	mu     sync.Mutex
	stored []byte
	calls  int
	bytes  int64
}

func (o *rangeOrigin) ReadRange(_ context.Context, _ digest.Digest, off, n int64) ([]byte, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls++
	o.bytes += n
	if off < 0 || off+n > int64(len(o.stored)) {
		return nil, errors.New("range out of the blob")
	}
	return append([]byte(nil), o.stored[off:off+n]...), nil
}

// padFrame pads a zstd frame to exactly n bytes with a skippable frame, so that it is a valid
// zstd stream of the stored length (what a hostile origin must send to be read at all).
func padFrame(t testing.TB, frame []byte, n int64) []byte {
	t.Helper()
	pad := int(n) - len(frame) - 8
	if pad < 0 {
		t.Fatalf("frame of %d bytes does not fit %d", len(frame), n)
	}
	out := append([]byte(nil), frame...)
	out = binary.LittleEndian.AppendUint32(out, 0x184D2A50)
	out = binary.LittleEndian.AppendUint32(out, uint32(pad))
	return append(out, make([]byte, pad)...)
}

// TestStoredOriginRoundTrip: a compressed blob's chunks come from the origin as their stored
// ranges, are decoded and verified, and land in the store byte-identical; the wire counts the
// stored bytes, the data the chunk bytes.
func TestStoredOriginRoundTrip(t *testing.T) {
	sb := newStoredBlob(t, 6)
	s := openStore(t)
	r, err := New(s, nil, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := s.AddBlob(context.Background(), sb.m); err != nil {
		t.Fatal(err)
	}
	o := &rangeOrigin{stored: sb.stored}
	r.AddBlob(sb.m, StoredOrigin(o, sb.m))
	if err := r.Ensure(context.Background(), sb.m.Blob, 0, sb.m.BlobSize); err != nil {
		t.Fatal(err)
	}
	for _, c := range sb.m.Chunks {
		if got := readBacking(t, s, sb.m.Blob, c.Offset, c.Length); !bytes.Equal(got, sb.data[c.Offset:c.End()]) {
			t.Fatalf("chunk at %d differs in the store", c.Offset)
		}
	}
	st := r.Stats().Sources[chunk.SourceOrigin]
	if o.bytes != sb.m.StoredSize || st.WireBytes != sb.m.StoredSize || st.Bytes != sb.m.DataBytes() || st.WireBytes >= st.Bytes {
		t.Fatalf("origin served %d, wire %d, data %d; stored size %d, data %d", o.bytes, st.WireBytes, st.Bytes, sb.m.StoredSize, sb.m.DataBytes())
	}
}

// TestHostileStoredOrigin: an origin that sends a decompression bomb, another chunk's frame, a
// damaged frame or a frame needing a dictionary in place of a chunk's stored bytes gets a
// verification failure naming the chunk; nothing is stored, and the next read after the
// origin recovers succeeds.
func TestHostileStoredOrigin(t *testing.T) {
	sb := newStoredBlob(t, 4)
	target := sb.m.Chunks[2] // text: a zstd frame
	if target.Codec != chunk.CodecZstd {
		t.Fatal("chunk 2 did not compress")
	}
	plain, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	bomb := plain.EncodeAll(make([]byte, 2<<20), nil) // 32 times the chunk
	other := plain.EncodeAll(bytes.Repeat([]byte("other bytes "), int(target.Length)/12+1)[:target.Length], nil)
	dw, err := zstd.NewWriter(nil, zstd.WithEncoderDictRaw(77, []byte("a dictionary the decoder does not have")))
	if err != nil {
		t.Fatal(err)
	}
	withDict := dw.EncodeAll(sb.data[target.Offset:target.Offset+4096], nil)
	damaged := append([]byte(nil), sb.stored[target.StoredOffset:target.StoredOffset+target.StoredLength]...)
	damaged[len(damaged)/2] ^= 0xa5
	cases := []struct {
		name, want string
		bytes      []byte
	}{
		{"bomb", "decodes to more than", padFrame(t, bomb, target.StoredLength)},
		{"wrong content", "hash to", padFrame(t, other, target.StoredLength)},
		{"damaged frame", "from origin", damaged}, // caught by the decoder or, without a frame checksum, by the CID
		{"dictionary", "zstd", padFrame(t, withDict, target.StoredLength)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hostile := append([]byte(nil), sb.stored...)
			if int64(len(tc.bytes)) != target.StoredLength {
				t.Fatalf("%d bytes for a %d-byte stored range", len(tc.bytes), target.StoredLength)
			}
			copy(hostile[target.StoredOffset:], tc.bytes)
			r, s, o := ensureHostile(t, sb, target, hostile, tc.want)
			if o.calls != DefaultConfig().CorruptAttempts {
				t.Errorf("origin asked %d times, want %d (CorruptAttempts)", o.calls, DefaultConfig().CorruptAttempts)
			}
			// Other chunks are unharmed, and the origin recovering heals the read.
			o.mu.Lock()
			o.stored = sb.stored
			o.mu.Unlock()
			if err := r.Ensure(context.Background(), sb.m.Blob, target.Offset, 100); err != nil {
				t.Fatal(err)
			}
			if got := readBacking(t, s, sb.m.Blob, target.Offset, target.Length); !bytes.Equal(got, sb.data[target.Offset:target.End()]) {
				t.Fatal("chunk differs after recovery")
			}
		})
	}
}

// ensureHostile reads target through a resolver whose origin serves hostile as sb's stored blob,
// and checks that the read fails as corrupt, naming the chunk and saying want, and that nothing
// was marked present. It returns the resolver (closed when the test ends), its store and the
// origin, which the caller can heal.
func ensureHostile(t *testing.T, sb storedBlob, target chunk.Chunk, hostile []byte, want string) (*Resolver, *chunkstore.Store, *rangeOrigin) {
	t.Helper()
	s := openStore(t)
	if err := s.AddBlob(context.Background(), sb.m); err != nil {
		t.Fatal(err)
	}
	r, err := New(s, nil, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	o := &rangeOrigin{stored: hostile}
	r.AddBlob(sb.m, StoredOrigin(o, sb.m))
	err = r.Ensure(context.Background(), sb.m.Blob, target.Offset, 100)
	if !errors.Is(err, chunk.ErrCorrupt) || !strings.Contains(err.Error(), target.CID.String()) || !strings.Contains(err.Error(), want) {
		t.Fatalf("err %v: want ErrCorrupt naming chunk %s and saying %q", err, target.CID, want)
	}
	if storetest.Has(t, s, sb.m.Blob, target) {
		t.Fatal("hostile chunk marked present")
	}
	return r, s, o
}

// newDictStoredBlob is newStoredBlob with its text chunks compressed with a dictionary trained
// on them (chunk.CodecZstdDict).
func newDictStoredBlob(t testing.TB, chunks int) storedBlob {
	t.Helper()
	sb := newStoredBlob(t, chunks)
	var samples [][]byte
	for _, c := range sb.m.Chunks {
		samples = append(samples, sb.data[c.Offset:c.End()])
	}
	d, err := zchunk.Train(samples, zchunk.MinDictSize, zchunk.DefaultLevel)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := zchunk.NewEncoder(zchunk.DefaultLevel)
	if err != nil {
		t.Fatal(err)
	}
	if enc, err = enc.WithDict(d); err != nil {
		t.Fatal(err)
	}
	plain := *sb.m
	plain.SchemaVersion, plain.StoredSize = chunk.ManifestSchemaVersion, 0
	plain.Chunks = nil
	for _, c := range sb.m.Chunks {
		c.StoredOffset, c.StoredLength, c.Codec = 0, 0, chunk.CodecNone
		plain.Chunks = append(plain.Chunks, c)
	}
	return encodeStoredBlob(t, &plain, sb.data, enc)
}

// TestHostileStoredOriginDict: a blob whose chunks use the image's dictionary reads from the
// origin byte-identical; an origin that sends, for such a chunk, a frame made with another
// dictionary, a frame without one, or a frame naming the dictionary's ID but made with other
// bytes is refused as corrupt (naming the chunk), nothing is stored, and the read succeeds once
// the origin sends the right bytes.
func TestHostileStoredOriginDict(t *testing.T) {
	sb := newDictStoredBlob(t, 4)
	target := sb.m.Chunks[2]
	if target.Codec != chunk.CodecZstdDict || len(sb.m.Dict) == 0 {
		t.Fatalf("chunk 2's codec %q, dictionary of %d bytes", target.Codec, len(sb.m.Dict))
	}
	want := sb.data[target.Offset:target.End()]
	d, err := zchunk.ParseDict(sb.m.Dict)
	if err != nil {
		t.Fatal(err)
	}
	otherDict, err := zstd.NewWriter(nil, zstd.WithEncoderDictRaw(d.ID()+1, want), zstd.WithEncoderCRC(false))
	if err != nil {
		t.Fatal(err)
	}
	near := append([]byte(nil), want...)
	near[len(near)/2] ^= 1
	sameID, err := zstd.NewWriter(nil, zstd.WithEncoderDictRaw(d.ID(), near), zstd.WithEncoderCRC(false))
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := zstd.NewWriter(nil, zstd.WithEncoderCRC(false))
	cases := []struct {
		name, want string
		frame      []byte
	}{
		{"another dictionary", "names dictionary", otherDict.EncodeAll(want, nil)},
		{"no dictionary", "names dictionary 0", plain.EncodeAll(want[:target.StoredLength/2], nil)},
		{"same ID, other bytes", "from origin", sameID.EncodeAll(want, nil)}, // the decoder or the CID
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hostile := append([]byte(nil), sb.stored...)
			copy(hostile[target.StoredOffset:], padFrame(t, tc.frame, target.StoredLength))
			r, s, o := ensureHostile(t, sb, target, hostile, tc.want)
			o.mu.Lock()
			o.stored = sb.stored
			o.mu.Unlock()
			if err := r.Ensure(context.Background(), sb.m.Blob, 0, sb.m.BlobSize); err != nil {
				t.Fatal(err)
			}
			for _, c := range sb.m.Chunks {
				if got := readBacking(t, s, sb.m.Blob, c.Offset, c.Length); !bytes.Equal(got, sb.data[c.Offset:c.End()]) {
					t.Fatalf("chunk at %d differs after recovery", c.Offset)
				}
			}
		})
	}
}
