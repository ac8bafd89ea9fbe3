package p2p

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
)

func TestRequestV4Bytes(t *testing.T) {
	req := Request{Flags: FlagHaveOthers, Blob: "sha256:ab", CID: testCID, Offset: 4096, Length: 1 << 20, SubSize: 64 << 10, First: 3, Count: 2}
	b, err := AppendRequestV4(nil, req)
	if err != nil {
		t.Fatal(err)
	}
	cb := testCID.Bytes()
	body := []byte{0x02, 9}
	body = append(body, "sha256:ab"...)
	body = append(body, byte(len(cb)))
	body = append(body, cb...)
	body = append(body, 0x80, 0x20, 0x80, 0x80, 0x40) // 4096, 1 MiB
	body = append(body, 0x80, 0x80, 0x04, 3, 2)       // 64 KiB, 3, 2
	want := append([]byte{byte(len(body))}, body...)
	if !bytes.Equal(b, want) {
		t.Fatalf("encoding\n got % x\nwant % x", b, want)
	}
	got, err := ReadRequestV4(bufio.NewReader(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	if got.Flags != req.Flags || got.Blob != req.Blob || !got.CID.Equals(req.CID) || got.Offset != req.Offset || got.Length != req.Length ||
		got.SubSize != req.SubSize || got.First != req.First || got.Count != req.Count {
		t.Fatalf("round trip: got %+v want %+v", got, req)
	}
	// A V1 request is not a V4 one, and the sub-block run must fit the chunk.
	v1, _ := AppendRequest(nil, req)
	if _, err := ReadRequestV4(bufio.NewReader(bytes.NewReader(v1))); !errors.Is(err, ErrMalformed) {
		t.Errorf("V1 frame read as V4: %v", err)
	}
	for _, bad := range []Request{
		{CID: testCID, Length: 1 << 20, First: 1, Count: 1},                            // a run without a size
		{CID: testCID, Length: 1 << 20, SubSize: 1000, Count: 1},                       // not block-sized
		{CID: testCID, Length: 1 << 20, SubSize: 64 << 10, First: 15, Count: 2},        // past the chunk
		{CID: testCID, Length: 1 << 20, SubSize: chunk.BlockSize, Count: 1},            // 256 sub-blocks: fine...
		{CID: testCID, Length: 16 << 20, SubSize: chunk.BlockSize, First: 0, Count: 1}, // ...4096 too, but 4097 not
	} {
		_, err := AppendRequestV4(nil, bad)
		ok := bad.SubSize == chunk.BlockSize && bad.Length == 1<<20 || bad.Length == 16<<20
		if ok != (err == nil) {
			t.Errorf("request %+v: err %v", bad, err)
		}
		// The decoder refuses what the encoder refuses, written by hand.
		enc, _ := AppendRequest(nil, bad)
		_, n := binary.Uvarint(enc)
		body := binary.AppendUvarint(append([]byte(nil), enc[n:]...), uint64(bad.SubSize))
		body = binary.AppendUvarint(body, uint64(bad.First))
		body = binary.AppendUvarint(body, uint64(bad.Count))
		_, err = ReadRequestV4(bufio.NewReader(bytes.NewReader(append(binary.AppendUvarint(nil, uint64(len(body))), body...))))
		if ok != (err == nil) {
			t.Errorf("decoding request %+v: err %v", bad, err)
		}
	}
}

// v4Response builds a V4 OK response for a chunk of data cut into sub-blocks of sub: the given
// sub-blocks, then (frame not nil) a whole-chunk part, then the end.
func v4Response(data []byte, sub int64, subs []int, codec byte, whole []byte) []byte {
	b := AppendResponseHeaderV4(nil, StatusOK, 7, len(data), "")
	for _, i := range subs {
		if i >= chunk.NumSubBlocks(int64(len(data)), sub) { // a hostile index: any bytes
			b = append(AppendPartSub(b, i), make([]byte, sub)...)
			continue
		}
		r := chunk.SubBlock(int64(len(data)), sub, i)
		b = append(AppendPartSub(b, i), data[r.Offset:r.End()]...)
	}
	if whole != nil {
		b = append(AppendPartWhole(b, codec, len(whole)), whole...)
	}
	return append(b, PartEnd)
}

func TestResponseV4Bytes(t *testing.T) {
	const sb = chunk.BlockSize
	data := bytes.Repeat([]byte("0123456789abcdef"), (2*sb+16)/16) // 3 sub-blocks of a block, the last of 16 bytes
	b := v4Response(data, sb, []int{1}, WireRaw, data)
	want := []byte{0, 7, 0x90, 0x40, PartSub, 1} // OK, load 7, 8208 bytes; sub-block 1
	want = append(want, data[sb:2*sb]...)
	want = append(want, PartWhole, WireRaw, 0x90, 0x40)
	want = append(want, data...)
	want = append(want, PartEnd)
	if !bytes.Equal(b, want) {
		t.Fatalf("encoding\n got % x\nwant % x", b[:16], want[:16])
	}
	req := Request{CID: testCID, Length: int64(len(data)), SubSize: sb, First: 1, Count: 1}
	var seen []int
	onSub := func(i int, d []byte) error {
		seen = append(seen, i)
		if r := chunk.SubBlock(req.Length, sb, i); !bytes.Equal(d, data[r.Offset:r.End()]) {
			t.Errorf("sub-block %d: %d bytes differ: %q", i, len(d), d[:min(len(d), 40)])
		}
		return nil
	}
	read := func(b []byte, req Request) (Status, int, chunk.Codec, []byte, error) {
		st, load, codec, stored, _, err := ReadResponseV4(bufio.NewReader(bytes.NewReader(b)), req, onSub)
		return st, load, codec, stored, err
	}
	st, load, codec, stored, err := read(b, req)
	if err != nil || st != StatusOK || load != 7 || codec != chunk.CodecNone || !bytes.Equal(stored, data) || len(seen) != 1 || seen[0] != 1 {
		t.Fatalf("read: %v %d %q %d bytes %v, sub-blocks %v", st, load, codec, len(stored), err, seen)
	}
	// Every sub-block, in any order, and no whole part: assembled.
	seen = nil
	st, _, codec, stored, err = read(v4Response(data, sb, []int{2, 0, 1}, 0, nil), req)
	if err != nil || st != StatusOK || codec != chunk.CodecNone || !bytes.Equal(stored, data) || len(seen) != 3 {
		t.Fatalf("assembled read: %v %q %d bytes %v", st, codec, len(stored), err)
	}
	// A zstd whole part comes back as the frame.
	frame := []byte{1, 2, 3}
	_, _, codec, stored, err = read(v4Response(data, sb, []int{1}, WireZstd, frame), req)
	if err != nil || codec != chunk.CodecZstd || !bytes.Equal(stored, frame) {
		t.Fatalf("frame read: %q %q %v", codec, stored, err)
	}
	// An abort after the first sub-block: an error answer, not malformed.
	ab := v4Response(data, sb, []int{1}, 0, nil)
	ab[len(ab)-1] = PartAbort
	if st, _, _, _, msg, err := ReadResponseV4(bufio.NewReader(bytes.NewReader(ab)), req, nil); st != StatusError || err != nil || msg == "" {
		t.Fatalf("abort: %v %q %v", st, msg, err)
	}
	// A status answer.
	bb := AppendResponseHeaderV4(nil, StatusBusy, 2, 0, "full")
	if want := []byte{2, 2, 4, 'f', 'u', 'l', 'l'}; !bytes.Equal(bb, want) {
		t.Fatalf("busy % x, want % x", bb, want)
	}
	if st, load, _, _, msg, err := ReadResponseV4(bufio.NewReader(bytes.NewReader(bb)), req, nil); st != StatusBusy || load != 2 || msg != "full" || err != nil {
		t.Fatalf("busy read: %v %d %q %v", st, load, msg, err)
	}
	// Malformed: repeated or out-of-range sub-blocks, a sub-block without a size, an end
	// without the chunk, two whole parts, an unknown part or codec, lengths that lie.
	twoWholes := v4Response(data, sb, nil, WireRaw, data)
	twoWholes = append(AppendPartWhole(twoWholes[:len(twoWholes)-1], WireRaw, len(data)), append(append([]byte(nil), data...), PartEnd)...)
	for name, tc := range map[string]struct {
		b   []byte
		req Request
	}{
		"repeated":      {v4Response(data, sb, []int{1, 1}, WireRaw, data), req},
		"out of range":  {v4Response(data, sb, []int{3}, WireRaw, data), req},
		"no size":       {v4Response(data, sb, []int{0}, WireRaw, data), Request{CID: testCID, Length: req.Length}},
		"incomplete":    {v4Response(data, sb, []int{0, 1}, 0, nil), req},
		"two wholes":    {twoWholes, req},
		"unknown part":  {append(AppendResponseHeaderV4(nil, StatusOK, 0, len(data), ""), 9), req},
		"unknown codec": {v4Response(data, sb, nil, 9, data), req},
		"long frame":    {v4Response(data, sb, nil, WireZstd, append(append([]byte(nil), data...), 0)), req},
		"other length":  {v4Response(data[:2*sb], sb, nil, WireRaw, data[:2*sb]), req},
	} {
		if _, _, _, _, err := read(tc.b, tc.req); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	for i := range len(b) - 1 {
		if _, _, _, _, err := read(b[:i], req); err == nil {
			t.Errorf("response cut at %d read without error", i)
		}
	}
	// onSub's verdict ends the read.
	boom := errors.New("sub-block does not match")
	if _, _, _, _, _, err := ReadResponseV4(bufio.NewReader(bytes.NewReader(b)), req, func(int, []byte) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("onSub error: %v", err)
	}
}

func FuzzRequestV4(f *testing.F) {
	b, _ := AppendRequestV4(nil, Request{Blob: "sha256:ab", CID: testCID, Length: 1 << 20, SubSize: 64 << 10, First: 3, Count: 2})
	f.Add(b)
	f.Fuzz(func(t *testing.T, in []byte) {
		req, err := ReadRequestV4(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		// What decodes is valid and encodes again to what decodes the same.
		again, err := AppendRequestV4(nil, req)
		if err != nil {
			t.Fatalf("decoded request %+v does not encode: %v", req, err)
		}
		back, err := ReadRequestV4(bufio.NewReader(bytes.NewReader(again)))
		if err != nil || back.SubSize != req.SubSize || back.First != req.First || back.Count != req.Count || back.Length != req.Length {
			t.Fatalf("round trip %+v -> %+v (%v)", req, back, err)
		}
	})
}

func FuzzResponseV4(f *testing.F) {
	data := bytes.Repeat([]byte("abcdefgh"), 4*chunk.BlockSize/8)
	f.Add(v4Response(data, chunk.BlockSize, []int{1, 0, 2, 3}, 0, nil), int64(len(data)), int64(chunk.BlockSize), uint8(1), uint8(1))
	f.Add(v4Response(data, chunk.BlockSize, []int{2}, WireZstd, data[:9]), int64(len(data)), int64(chunk.BlockSize), uint8(2), uint8(1))
	f.Fuzz(func(t *testing.T, in []byte, length, sub int64, first, count uint8) {
		req := Request{CID: testCID, Length: length, SubSize: sub, First: int(first), Count: int(count)}
		st, _, codec, stored, _, err := ReadResponseV4(bufio.NewReader(bytes.NewReader(in)), req, func(i int, d []byte) error {
			if r := chunk.SubBlock(length, sub, i); int64(len(d)) != r.Length {
				t.Fatalf("sub-block %d of %d bytes, want %d", i, len(d), r.Length)
			}
			return nil
		})
		if err != nil || st != StatusOK {
			return
		}
		// Whatever is accepted is at most the chunk, and exactly it when raw.
		if int64(len(stored)) > length || codec == chunk.CodecNone && int64(len(stored)) != length {
			t.Fatalf("accepted %d %q bytes for a chunk of %d", len(stored), codec, length)
		}
	})
}

// subImage is makeImage with sub-block digests of sub bytes.
func subImage(t testing.TB, n int, size, sub int64, seed uint64) (*chunk.Manifest, *countingOrigin) {
	t.Helper()
	m, o := makeImage(t, n, size, seed)
	var blob []byte
	for _, c := range m.Chunks {
		blob = append(blob, o.chunks[c.CID]...)
	}
	if err := m.SetSubHashes(bytes.NewReader(blob), sub); err != nil {
		t.Fatal(err)
	}
	return m, o
}

// TestServeV4Order: a real node answers a V4 request with the wanted sub-blocks first, then the
// rest: raw chunks as the other sub-blocks, compressible ones as one zstd frame.
func TestServeV4Order(t *testing.T) {
	const size, sub = 256 << 10, 16 << 10
	m, o := subImage(t, 2, size, sub, 3)
	holder := startNode(t, testConfig())
	text := bytes.Repeat([]byte("first bytes first, "), size/19+1)[:size]
	zc := chunk.Chunk{Offset: 2 * size, Length: size, CID: chunk.CID(text), Codec: chunk.CodecZstd, SubHashes: chunk.SubHashes(text, sub)}
	m.Chunks = append(m.Chunks, zc)
	m.BlobSize += size
	o.chunks[zc.CID] = text
	if err := holder.RegisterBlob(m, o.fetch); err != nil {
		t.Fatal(err)
	}
	seed(t, holder, m, o)
	client, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	claimAll(t, client, m, holder)
	for _, c := range []chunk.Chunk{m.Chunks[1], zc} {
		req := Request{Blob: m.Blob, CID: c.CID, Offset: c.Offset, Length: c.Length, SubSize: sub, First: 5, Count: 2}
		s, err := client.NewStream(t.Context(), holder.ID(), ChunkProtocolV4)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := AppendRequestV4(nil, req)
		if _, err := s.Write(b); err != nil {
			t.Fatal(err)
		}
		_ = s.CloseWrite()
		var order []int
		data := o.chunks[c.CID]
		_, _, codec, stored, _, err := ReadResponseV4(bufio.NewReader(s), req, func(i int, d []byte) error {
			order = append(order, i)
			return chunk.VerifySubBlock(c, sub, i, d)
		})
		_ = s.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(order) < 2 || order[0] != 5 || order[1] != 6 {
			t.Fatalf("chunk %s: sub-blocks in order %v, want 5 and 6 first", c.CID, order)
		}
		v, err := zchunk.DecodeVerified(chunk.Chunk{CID: c.CID, Length: c.Length, Codec: codec}, stored)
		if err != nil || !bytes.Equal(v.Bytes(), data) {
			t.Fatalf("chunk %s: whole chunk (%q): %v", c.CID, codec, err)
		}
		wantRaw := c.Codec == chunk.CodecNone
		if wantRaw != (codec == chunk.CodecNone) || wantRaw && len(order) != size/sub || !wantRaw && len(order) != 2 {
			t.Fatalf("chunk %s (manifest codec %q): rest as %q after %d sub-blocks", c.CID, c.Codec, codec, len(order))
		}
	}
}

// startStallingV4 is a raw libp2p host speaking ChunkProtocolV4 that sends the wanted sub-blocks
// of each request at once (kind "good"), or wrong ones (kind "wrong"), and then the rest of the
// chunk only when release is closed.
func startStallingV4(t *testing.T, kind string, m *chunk.Manifest, o *countingOrigin, victim *testNode, release chan struct{}) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	h.SetStreamHandler(ChunkProtocolV4, func(s network.Stream) {
		req, err := ReadRequestV4(bufio.NewReader(s))
		if err != nil || req.SubSize == 0 {
			_ = s.Reset()
			return
		}
		data := o.chunks[req.CID]
		head := AppendResponseHeaderV4(nil, StatusOK, 0, len(data), "")
		sent := map[int]bool{}
		for i := req.First; i < req.First+req.Count; i++ {
			r := chunk.SubBlock(req.Length, req.SubSize, i)
			d := bytes.Clone(data[r.Offset:r.End()])
			if kind == "wrong" {
				d[len(d)/2] ^= 0xff
			}
			_, _ = s.Write(append(AppendPartSub(head, i), d...))
			head = nil
			sent[i] = true
		}
		select {
		case <-release:
		case <-t.Context().Done():
			_ = s.Reset()
			return
		}
		for i := range chunk.NumSubBlocks(req.Length, req.SubSize) {
			if !sent[i] {
				r := chunk.SubBlock(req.Length, req.SubSize, i)
				_, _ = s.Write(append(AppendPartSub(nil, i), data[r.Offset:r.End()]...))
			}
		}
		_, _ = s.Write([]byte{PartEnd})
		_ = s.Close()
	})
	claimAll(t, h, m, victim)
	return h
}

// TestFirstBytesBeforeChunk: a reader's Progress has the bytes it wants, verified, while the
// rest of the chunk is still on its way; the whole chunk is then verified and returned.
func TestFirstBytesBeforeChunk(t *testing.T) {
	const size, sub = 1 << 20, 64 << 10
	m, o := subImage(t, 2, size, sub, 5)
	reader := startNode(t, testConfig())
	if err := reader.RegisterBlob(m, o.fetch); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	startStallingV4(t, "good", m, o, reader, release)
	c := m.Chunks[1]
	waitFor(t, 10*time.Second, "the reader to see the holder", func() bool { return len(reader.Lookup(c.CID)) == 1 })
	want := chunk.Range{Offset: 5*sub + 1000, Length: 4096}
	prog := chunk.NewProgress(c, m.SubBlockSize, want)
	type result struct {
		v   chunk.Verified
		src chunk.Source
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, src, _, err := reader.FetchProgressive(t.Context(), m.Blob, c, prog, nil)
		done <- result{v, src, err}
	}()
	got := make([]byte, want.Length)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := prog.ReadAt(ctx, got, want.Offset); err != nil {
		t.Fatalf("first bytes: %v", err)
	}
	select {
	case r := <-done:
		t.Fatalf("the fetch ended before the rest was sent: %v", r.err)
	default:
	}
	if !bytes.Equal(got, o.chunks[c.CID][want.Offset:want.End()]) {
		t.Fatal("first bytes differ from the chunk's")
	}
	close(release)
	r := <-done
	if r.err != nil || r.src != chunk.SourcePeer || !bytes.Equal(r.v.Bytes(), o.chunks[c.CID]) {
		t.Fatalf("whole chunk: source %v, err %v", r.src, r.err)
	}
	if o.requests.Load() != 0 {
		t.Fatalf("%d origin requests", o.requests.Load())
	}
}

// TestHostileSubBlocks: a peer that sends wrong sub-blocks first is struck for each and banned,
// no wrong byte reaches a reader, and every read succeeds from the honest holder.
func TestHostileSubBlocks(t *testing.T) {
	const size, sub = 256 << 10, 16 << 10
	m, o := subImage(t, 8, size, sub, 11)
	honest := startNode(t, testConfig())
	if err := honest.RegisterBlob(m, o.fetch); err != nil {
		t.Fatal(err)
	}
	seed(t, honest, m, o)
	cfg := testConfig()
	cfg.StaticPeers = []string{honest.Addrs()[0].String()}
	cfg.BanAfter = 2
	cfg.HedgeDelay = 2 * time.Second // the hostile answers its first bytes at once: no hedge needed
	reader := startNode(t, cfg)
	if err := reader.RegisterBlob(m, o.fetch); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	bad := startStallingV4(t, "wrong", m, o, reader, release)
	waitFor(t, 10*time.Second, "the reader to see both holders", func() bool { return len(reader.Lookup(m.Chunks[0].CID)) == 2 })
	for i, c := range m.Chunks {
		want := chunk.Range{Offset: int64(i%5) * 3 * sub, Length: 100}
		prog := chunk.NewProgress(c, m.SubBlockSize, want)
		v, src, _, err := reader.FetchProgressive(t.Context(), m.Blob, c, prog, nil)
		if err != nil || src != chunk.SourcePeer || !bytes.Equal(v.Bytes(), o.chunks[c.CID]) {
			t.Fatalf("chunk %d: source %v, err %v", i, src, err)
		}
		got := make([]byte, want.Length)
		if ok, _, err := prog.TryRead(got, want.Offset); !ok || err != nil || !bytes.Equal(got, o.chunks[c.CID][want.Offset:want.End()]) {
			t.Fatalf("chunk %d: reader's bytes: ok %v err %v", i, ok, err)
		}
	}
	var st PeerStats
	for _, p := range reader.Peers() {
		if p.ID == bad.ID() {
			st = p
		}
	}
	if !st.Banned || st.Corrupt < 2 {
		t.Fatalf("hostile peer: banned %v after %d corrupt answers, want banned after 2", st.Banned, st.Corrupt)
	}
	if o.requests.Load() != 0 {
		t.Fatalf("%d origin requests, want every chunk from the honest peer", o.requests.Load())
	}

}

// rawStore is a memStore with RawChunks that returns rotted copies of the chunks in rot (a
// flipped byte at the given chunk offset), as a disk might.
type rawStore struct {
	*memStore
	rot map[string]int64
}

func (s *rawStore) ReadChunkUnverified(_ context.Context, c cid.Cid) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.m[c]
	if !ok {
		return nil, errors.New("not found")
	}
	b = bytes.Clone(b)
	if at, ok := s.rot[c.KeyString()]; ok {
		b[at] ^= 0xff
	}
	return b, nil
}

// TestServeUnverifiedRot: a holder answering from its unverified copy sends the wanted
// sub-blocks at once; when its copy turns out rotten past them, it aborts the answer instead of
// sending bytes that do not match (it is not struck), the reader keeps the sub-blocks it got, and
// gets the chunk, verified, from the origin.
func TestServeUnverifiedRot(t *testing.T) {
	const size, sub = 256 << 10, 16 << 10
	m, o := subImage(t, 2, size, sub, 13)
	st := newMemStore()
	rs := &rawStore{memStore: st, rot: map[string]int64{m.Chunks[1].CID.KeyString(): 10 * sub}}
	holder, err := New(testConfig(), rs)
	if err != nil {
		t.Fatal(err)
	}
	st.node = holder
	go func() { _ = holder.Run(t.Context()) }()
	<-holder.Ready()
	t.Cleanup(func() { _ = holder.Close() })
	hn := &testNode{holder, st}
	if err := holder.RegisterBlob(m, o.fetch); err != nil {
		t.Fatal(err)
	}
	seed(t, hn, m, o)
	cfg := testConfig()
	cfg.StaticPeers = []string{holder.Addrs()[0].String()}
	reader := startNode(t, cfg)
	if err := reader.RegisterBlob(m, o.fetch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the reader to see the holder", func() bool { return len(reader.Lookup(m.Chunks[1].CID)) == 1 })
	for i, c := range m.Chunks {
		want := chunk.Range{Offset: 2 * sub, Length: 4096}
		prog := chunk.NewProgress(c, m.SubBlockSize, want)
		v, src, _, err := reader.FetchProgressive(t.Context(), m.Blob, c, prog, nil)
		if err != nil || !bytes.Equal(v.Bytes(), o.chunks[c.CID]) {
			t.Fatalf("chunk %d: %v", i, err)
		}
		switch {
		case i != 1 && src != chunk.SourcePeer:
			t.Fatalf("chunk %d from %v, want %v", i, src, chunk.SourcePeer)
		case i == 1 && src != chunk.SourceOrigin && src != chunk.SourceCoalesced:
			// The holder aborted: the chunk comes from the origin, this host's own or, when the
			// holder is the chunk's rendezvous owner (by the peer IDs' hashes: about every
			// other run), through the holder, which drops its rotten copy and fetches it anew.
			t.Fatalf("chunk %d from %v, want %v or %v", i, src, chunk.SourceOrigin, chunk.SourceCoalesced)
		}
		got := make([]byte, want.Length)
		if ok, _, _ := prog.TryRead(got, want.Offset); !ok || !bytes.Equal(got, o.chunks[c.CID][want.Offset:want.End()]) {
			t.Fatalf("chunk %d: the reader's bytes are missing or wrong", i)
		}
	}
	for _, p := range reader.Peers() {
		if p.ID == holder.ID() && (p.Corrupt != 0 || p.Banned) {
			t.Fatalf("holder struck for its own rot (%d corrupt, banned %v): it aborted before sending it", p.Corrupt, p.Banned)
		}
	}
}
