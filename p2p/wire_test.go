package p2p

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
)

var testCID = chunk.CID([]byte("hello"))

func TestRequestBytes(t *testing.T) {
	req := Request{Flags: FlagFetchThrough, Blob: "sha256:ab", CID: testCID, Offset: 4096, Length: 300}
	b, err := AppendRequest(nil, req)
	if err != nil {
		t.Fatal(err)
	}
	cb := testCID.Bytes() // 36 bytes: v1, raw, sha2-256, 32
	want := []byte{byte(1 + 1 + 9 + 1 + len(cb) + 2 + 2), 0x01, 9}
	want = append(want, "sha256:ab"...)
	want = append(want, byte(len(cb)))
	want = append(want, cb...)
	want = append(want, 0x80, 0x20, 0xac, 0x02) // 4096, 300 as uvarints
	if !bytes.Equal(b, want) {
		t.Fatalf("encoding\n got %s\nwant %s", hex.EncodeToString(b), hex.EncodeToString(want))
	}
	got, err := ReadRequest(bufio.NewReader(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	if got.Flags != req.Flags || got.Blob != req.Blob || !got.CID.Equals(req.CID) || got.Offset != req.Offset || got.Length != req.Length {
		t.Fatalf("round trip: got %+v want %+v", got, req)
	}
}

func TestResponseBytes(t *testing.T) {
	data := []byte("hello")
	b := append(AppendResponseHeader(nil, StatusOK, len(data), ""), data...)
	if want := []byte{0, 5, 'h', 'e', 'l', 'l', 'o'}; !bytes.Equal(b, want) {
		t.Fatalf("ok response % x, want % x", b, want)
	}
	st, got, _, err := ReadResponse(bufio.NewReader(bytes.NewReader(b)), 5)
	if err != nil || st != StatusOK || string(got) != "hello" {
		t.Fatalf("read ok: %v %q %v", st, got, err)
	}
	b = AppendResponseHeader(nil, StatusBusy, 0, "slow")
	if want := []byte{2, 4, 's', 'l', 'o', 'w'}; !bytes.Equal(b, want) {
		t.Fatalf("busy response % x, want % x", b, want)
	}
	st, _, msg, err := ReadResponse(bufio.NewReader(bytes.NewReader(b)), 5)
	if err != nil || st != StatusBusy || msg != "slow" {
		t.Fatalf("read busy: %v %q %v", st, msg, err)
	}
}

func TestResponseV2Bytes(t *testing.T) {
	data := []byte("hello")
	b := append(AppendResponseHeaderV2(nil, StatusOK, 300, len(data), ""), data...)
	if want := []byte{0, 0xac, 0x02, 5, 'h', 'e', 'l', 'l', 'o'}; !bytes.Equal(b, want) {
		t.Fatalf("ok response % x, want % x", b, want)
	}
	st, load, got, _, err := ReadResponseV2(bufio.NewReader(bytes.NewReader(b)), 5)
	if err != nil || st != StatusOK || load != 300 || string(got) != "hello" {
		t.Fatalf("read ok: %v %d %q %v", st, load, got, err)
	}
	b = AppendResponseHeaderV2(nil, StatusBusy, 1, 0, "served")
	if want := []byte{2, 1, 6, 's', 'e', 'r', 'v', 'e', 'd'}; !bytes.Equal(b, want) {
		t.Fatalf("busy response % x, want % x", b, want)
	}
	st, load, _, msg, err := ReadResponseV2(bufio.NewReader(bytes.NewReader(b)), 5)
	if err != nil || st != StatusBusy || load != 1 || msg != "served" {
		t.Fatalf("read busy: %v %d %q %v", st, load, msg, err)
	}
	if b := AppendResponseHeaderV2(nil, StatusOK, 1<<30, 1, ""); !bytes.Equal(b[:5], []byte{0, 0x80, 0x80, 0x40, 1}) {
		t.Fatalf("load over the cap encodes as % x, want it capped at MaxLoad", b)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		err  error
	}{
		{"load over the cap", []byte{0, 0x81, 0x80, 0x40, 5, 'h', 'e', 'l', 'l', 'o'}, ErrMalformed},
		{"load cut", []byte{0, 0x80}, io.ErrUnexpectedEOF},
		{"data cut", []byte{0, 0, 5, 'h'}, io.ErrUnexpectedEOF},
		{"other length", []byte{0, 0, 4, 'h', 'e', 'l', 'l'}, ErrMalformed},
	} {
		if _, _, _, _, err := ReadResponseV2(bufio.NewReader(bytes.NewReader(tc.in)), 5); !errors.Is(err, tc.err) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.err)
		}
	}
}

func TestResponseRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want int64
		err  error
	}{
		{"truncated data", []byte{0, 5, 'h', 'e'}, 5, io.ErrUnexpectedEOF},
		{"other length", []byte{0, 6, 'h', 'e', 'l', 'l', 'o', '!'}, 5, ErrMalformed},
		{"over the cap", []byte{0, 0x80, 0x80, 0x80, 0x10}, 1 << 25, ErrMalformed},
		{"huge length", []byte{0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, 5, ErrMalformed},
		{"long message", append([]byte{1, 0x80, 0x10}, make([]byte, 2048)...), 5, ErrMalformed},
		{"header cut", []byte{0}, 5, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := ReadResponse(bufio.NewReader(bytes.NewReader(tc.in)), tc.want)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
		})
	}
}

func TestPresenceBytes(t *testing.T) {
	p := Presence{Flags: PresenceCanFetch, Seq: 300, Blob: "sha256:ab", NChunks: 10, Bitmap: []byte{0x05, 0x02}}
	b, err := AppendPresence(nil, p)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{1 + 2 + 10 + 1 + 2, 0x01, 0xac, 0x02, 9}
	want = append(want, "sha256:ab"...)
	want = append(want, 10, 0x05, 0x02)
	if !bytes.Equal(b, want) {
		t.Fatalf("encoding % x, want % x", b, want)
	}
	got, err := ReadPresence(bufio.NewReader(bytes.NewReader(b)))
	if err != nil || got.Flags != p.Flags || got.Seq != p.Seq || got.Blob != p.Blob || got.NChunks != 10 || !bytes.Equal(got.Bitmap, p.Bitmap) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	rb := remoteBlob{n: got.NChunks, bits: got.Bitmap}
	for i, w := range []bool{true, false, true, false, false, false, false, false, false, true} {
		if rb.has(i) != w {
			t.Errorf("bit %d = %v, want %v", i, rb.has(i), w)
		}
	}
	if rb.has(10) || rb.has(-1) {
		t.Error("bits outside the blob are set")
	}
	// A bitmap of the wrong size is refused on both sides.
	if _, err := AppendPresence(nil, Presence{Blob: "sha256:ab", NChunks: 9, Bitmap: []byte{1}}); !errors.Is(err, ErrMalformed) {
		t.Errorf("encode short bitmap: %v", err)
	}
	bad := append([]byte(nil), b...)
	bad[0]--
	if _, err := ReadPresence(bufio.NewReader(bytes.NewReader(bad[:len(bad)-1]))); !errors.Is(err, ErrMalformed) {
		t.Errorf("decode short bitmap: %v", err)
	}
	// A frame length over the cap is refused before reading (or allocating) it.
	if _, err := ReadPresence(bufio.NewReader(bytes.NewReader([]byte{0xff, 0xff, 0xff, 0xff, 0x0f}))); !errors.Is(err, ErrMalformed) {
		t.Errorf("decode huge frame: %v", err)
	}
}

func FuzzRequest(f *testing.F) {
	b, _ := AppendRequest(nil, Request{Flags: 1, Blob: digest.FromString("x"), CID: testCID, Offset: 1 << 20, Length: 1 << 16})
	f.Add(b)
	f.Add([]byte{0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, in []byte) {
		req, err := ReadRequest(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		out, err := AppendRequest(nil, req)
		if err != nil {
			t.Fatalf("decoded request does not encode: %+v: %v", req, err)
		}
		again, err := ReadRequest(bufio.NewReader(bytes.NewReader(out)))
		if err != nil || again.Flags != req.Flags || again.Blob != req.Blob || !again.CID.Equals(req.CID) || again.Offset != req.Offset || again.Length != req.Length {
			t.Fatalf("re-decode: %+v %v, want %+v", again, err, req)
		}
	})
}

func FuzzPresence(f *testing.F) {
	b, _ := AppendPresence(nil, Presence{Flags: 1, Seq: 7, Blob: "sha256:ab", NChunks: 10, Bitmap: []byte{1, 2}})
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := ReadPresence(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		out, err := AppendPresence(nil, p)
		if err != nil {
			t.Fatalf("decoded presence does not encode: %v", err)
		}
		// Overlong varints decode, so compare meaning rather than bytes.
		again, err := ReadPresence(bufio.NewReader(bytes.NewReader(out)))
		if err != nil || again.Flags != p.Flags || again.Seq != p.Seq || again.Blob != p.Blob || again.NChunks != p.NChunks || !bytes.Equal(again.Bitmap, p.Bitmap) {
			t.Fatalf("re-decode: %+v %v, want %+v", again, err, p)
		}
	})
}

func FuzzResponse(f *testing.F) {
	f.Add([]byte{0, 5, 'h', 'e', 'l', 'l', 'o'}, int64(5))
	f.Add([]byte{2, 1, 'x'}, int64(5))
	f.Fuzz(func(t *testing.T, in []byte, want int64) {
		st, data, _, err := ReadResponse(bufio.NewReader(bytes.NewReader(in)), want)
		if err == nil && st == StatusOK && int64(len(data)) != want {
			t.Fatalf("ok response of %d bytes, want %d", len(data), want)
		}
	})
}

func FuzzResponseV2(f *testing.F) {
	f.Add([]byte{0, 3, 5, 'h', 'e', 'l', 'l', 'o'}, int64(5))
	f.Add([]byte{2, 0, 1, 'x'}, int64(5))
	f.Fuzz(func(t *testing.T, in []byte, want int64) {
		st, load, data, _, err := ReadResponseV2(bufio.NewReader(bytes.NewReader(in)), want)
		if err == nil && (st == StatusOK && int64(len(data)) != want || load < 0 || load > MaxLoad) {
			t.Fatalf("ok response of %d bytes (want %d), load %d", len(data), want, load)
		}
	})
}

func TestResponseV3Bytes(t *testing.T) {
	data := []byte("hello")
	b := append(AppendResponseHeaderV3(nil, StatusOK, 300, WireRaw, len(data), len(data), ""), data...)
	if want := []byte{0, 0xac, 0x02, 0, 5, 5, 'h', 'e', 'l', 'l', 'o'}; !bytes.Equal(b, want) {
		t.Fatalf("raw ok response % x, want % x", b, want)
	}
	st, load, codec, got, _, err := ReadResponseV3(bufio.NewReader(bytes.NewReader(b)), 5)
	if err != nil || st != StatusOK || load != 300 || codec != chunk.CodecNone || string(got) != "hello" {
		t.Fatalf("read raw ok: %v %d %q %q %v", st, load, codec, got, err)
	}
	b = append(AppendResponseHeaderV3(nil, StatusOK, 0, WireZstd, 4096, 3, ""), 'z', 'z', 'z')
	if want := []byte{0, 0, 1, 0x80, 0x20, 3, 'z', 'z', 'z'}; !bytes.Equal(b, want) {
		t.Fatalf("zstd ok response % x, want % x", b, want)
	}
	st, _, codec, got, _, err = ReadResponseV3(bufio.NewReader(bytes.NewReader(b)), 4096)
	if err != nil || st != StatusOK || codec != chunk.CodecZstd || string(got) != "zzz" {
		t.Fatalf("read zstd ok: %v %q %q %v", st, codec, got, err)
	}
	b = AppendResponseHeaderV3(nil, StatusBusy, 1, WireZstd, 0, 0, "served")
	if want := []byte{2, 1, 6, 's', 'e', 'r', 'v', 'e', 'd'}; !bytes.Equal(b, want) {
		t.Fatalf("busy response % x, want % x (as V2)", b, want)
	}
	st, load, _, _, msg, err := ReadResponseV3(bufio.NewReader(bytes.NewReader(b)), 5)
	if err != nil || st != StatusBusy || load != 1 || msg != "served" {
		t.Fatalf("read busy: %v %d %q %v", st, load, msg, err)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		err  error
	}{
		{"unknown codec", []byte{0, 0, 7, 5, 5, 'h', 'e', 'l', 'l', 'o'}, ErrMalformed},
		{"other chunk length", []byte{0, 0, 0, 4, 4, 'h', 'e', 'l', 'l'}, ErrMalformed},
		{"raw of another length", []byte{0, 0, 0, 5, 4, 'h', 'e', 'l', 'l'}, ErrMalformed},
		{"frame longer than the chunk", []byte{0, 0, 1, 5, 6, 'h', 'e', 'l', 'l', 'o', '!'}, ErrMalformed},
		{"empty frame", []byte{0, 0, 1, 5, 0}, ErrMalformed},
		{"huge stored length", []byte{0, 0, 1, 5, 0xff, 0xff, 0xff, 0xff, 0x0f}, ErrMalformed},
		{"load over the cap", []byte{0, 0x81, 0x80, 0x40, 0, 5, 5, 'h', 'e', 'l', 'l', 'o'}, ErrMalformed},
		{"codec cut", []byte{0, 0}, io.ErrUnexpectedEOF},
		{"lengths cut", []byte{0, 0, 1, 5}, io.ErrUnexpectedEOF},
		{"frame cut", []byte{0, 0, 1, 5, 3, 'z'}, io.ErrUnexpectedEOF},
	} {
		if _, _, _, _, _, err := ReadResponseV3(bufio.NewReader(bytes.NewReader(tc.in)), 5); !errors.Is(err, tc.err) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.err)
		}
	}
}

// FuzzResponseV3 reads a V3 response and decodes it as the requester does: whatever the bytes,
// no panic, nothing read or decoded past the length asked for, and an OK answer that decodes
// has exactly that length.
func FuzzResponseV3(f *testing.F) {
	f.Add([]byte{0, 3, 0, 5, 5, 'h', 'e', 'l', 'l', 'o'}, int64(5))
	f.Add([]byte{2, 0, 1, 'x'}, int64(5))
	enc, err := zchunk.NewEncoder(1)
	if err != nil {
		f.Fatal(err)
	}
	text := bytes.Repeat([]byte("shoal chunk "), 400)
	z, _ := enc.Encode(nil, text)
	f.Add(append(AppendResponseHeaderV3(nil, StatusOK, 0, WireZstd, len(text), len(z), ""), z...), int64(len(text)))
	f.Add(append(AppendResponseHeaderV3(nil, StatusOK, 0, WireZstd, len(text)/2, len(z), ""), z...), int64(len(text)/2))
	f.Fuzz(func(t *testing.T, in []byte, want int64) {
		st, load, codec, stored, _, err := ReadResponseV3(bufio.NewReader(bytes.NewReader(in)), want)
		if err != nil || st != StatusOK {
			return
		}
		if load < 0 || load > MaxLoad || int64(len(stored)) > want || codec == chunk.CodecNone && int64(len(stored)) != want {
			t.Fatalf("ok response: %d %s bytes for %d, load %d", len(stored), codec, want, load)
		}
		data, err := zchunk.Decode(chunk.Chunk{CID: testCID, Length: want, Codec: codec}, stored)
		if err == nil && int64(len(data)) != want {
			t.Fatalf("decoded %d bytes, want %d", len(data), want)
		}
		if err != nil && !errors.Is(err, chunk.ErrCorrupt) {
			t.Fatalf("decode error %v does not wrap chunk.ErrCorrupt", err)
		}
	})
}
