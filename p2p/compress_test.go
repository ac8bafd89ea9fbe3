package p2p

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/klauspost/compress/zstd"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
)

// makeMixedImage returns a blob of n chunks of size bytes whose manifest stores every fourth
// chunk raw (random bytes: the image build found compression does not pay) and the others
// zstd-compressed (text-like bytes, about 3:1), as a schema-2 image built with
// --compression zstd would.
func makeMixedImage(t testing.TB, n int, size int64, seed uint64) (*chunk.Manifest, *countingOrigin) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 2))
	words := []string{"func", "return", "err", "nil", "if", "for", "range", "chunk", "peer", "shoal", "ctx", "data", "{", "}", "\n\t", ":=", "()"}
	blob := make([]byte, 0, int64(n)*size)
	for i := range n {
		end := int64(len(blob)) + size
		if i%4 == 3 {
			for int64(len(blob)) < end {
				blob = append(blob, byte(r.Uint32()))
			}
			continue
		}
		for int64(len(blob)) < end {
			w := words[r.IntN(len(words))]
			if rem := end - int64(len(blob)); int64(len(w)) > rem {
				w = w[:rem]
			}
			blob = append(blob, w...)
			if int64(len(blob)) < end {
				blob = append(blob, ' ')
			}
		}
	}
	m, err := chunk.FixedManifest(bytes.NewReader(blob), digest.FromBytes(blob), int64(len(blob)), size)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := zchunk.NewEncoder(zchunk.DefaultLevel)
	if err != nil {
		t.Fatal(err)
	}
	o := &countingOrigin{chunks: map[cid.Cid][]byte{}}
	for i := range m.Chunks {
		c := &m.Chunks[i]
		data := blob[c.Offset:c.End()]
		o.chunks[c.CID] = data
		_, c.Codec = enc.Encode(nil, data)
		if want := i%4 != 3; (c.Codec == chunk.CodecZstd) != want {
			t.Fatalf("chunk %d: codec %q, want compressed %v", i, c.Codec, want)
		}
	}
	return m, o
}

// seed stores every chunk of m in n.
func seed(t testing.TB, n *testNode, m *chunk.Manifest, o *countingOrigin) {
	t.Helper()
	for _, c := range m.Chunks {
		if err := n.store.PutChunk(t.Context(), m.Blob, c, mustVerify(t, c, o.chunks[c.CID])); err != nil {
			t.Fatal(err)
		}
	}
}

// fetchAll fetches every chunk of m through n from its peers (never the origin), stores it, and
// returns the wire bytes of the compressed (zstd in the manifest) and raw chunks.
func fetchAll(t testing.TB, n *testNode, m *chunk.Manifest) (zwire, zdata, rawWire, rawData int64) {
	t.Helper()
	for i, c := range m.Chunks {
		data, src, wire, err := n.FetchWire(t.Context(), m.Blob, c, func(context.Context) ([]byte, error) {
			return nil, fmt.Errorf("chunk %d went to the origin", i)
		})
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		if src != chunk.SourcePeer || !data.CID().Equals(c.CID) || data.Len() != c.Length {
			t.Fatalf("chunk %d: source %s, %d bytes verified as %s", i, src, data.Len(), data.CID())
		}
		if err := n.store.PutChunk(t.Context(), m.Blob, c, data); err != nil {
			t.Fatal(err)
		}
		if c.Codec == chunk.CodecZstd {
			zwire, zdata = zwire+wire, zdata+c.Length
		} else {
			rawWire, rawData = rawWire+wire, rawData+c.Length
		}
	}
	return
}

// TestCompressedChunkTransfer: a chunk its manifest stores compressed crosses between two real
// hosts as a zstd frame (a third of its bytes here), one stored raw crosses raw; the receiver
// keeps the frames while they are hot and passes them on to a third host without compressing
// anything itself. Wire and data bytes are counted apart on both sides.
func TestCompressedChunkTransfer(t *testing.T) {
	m, o := makeMixedImage(t, 16, 64<<10, 3)
	nodes := startCluster(t, 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		if err := n.RegisterBlob(m, o.fetch); err != nil {
			t.Fatal(err)
		}
	}
	seed(t, a, m, o)
	waitFor(t, 10*time.Second, "b to see a's chunks", func() bool { return len(b.Lookup(m.Chunks[len(m.Chunks)-1].CID)) == 1 })

	zwire, zdata, rawWire, rawData := fetchAll(t, b, m)
	t.Logf("a -> b: compressible %d bytes in %d on the wire, raw %d in %d", zdata, zwire, rawData, rawWire)
	if zwire*2 > zdata {
		t.Errorf("compressible chunks took %d wire bytes for %d: want less than half", zwire, zdata)
	}
	if rawWire != rawData {
		t.Errorf("chunks stored raw took %d wire bytes for %d: want them sent as they are", rawWire, rawData)
	}
	// a counts a chunk served once its answer is written, which can be a moment after b has
	// read it: wait for the counts to settle before comparing them.
	var served, servedWire float64
	settled := func() bool {
		served, servedWire = testutil.ToFloat64(a.met.servedBytes), testutil.ToFloat64(a.met.servedWireBytes)
		return served == float64(zdata+rawData) && servedWire == float64(zwire+rawWire)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !settled() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if served != float64(zdata+rawData) || servedWire != float64(zwire+rawWire) {
		t.Errorf("a counted %v bytes served in %v on the wire, want %d in %d", served, servedWire, zdata+rawData, zwire+rawWire)
	}
	if got := testutil.ToFloat64(b.met.fetchWireBytes.WithLabelValues(string(chunk.SourcePeer))); got != float64(zwire+rawWire) {
		t.Errorf("b counted %v wire bytes fetched, want %d", got, zwire+rawWire)
	}
	if testutil.ToFloat64(a.met.compressSeconds) <= 0 {
		t.Error("a compressed nothing")
	}

	// c asks b only: b sends on the frames it received, without compressing again.
	for _, ch := range m.Chunks {
		if err := a.store.evict(m.Blob, ch); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "c to see only b", func() bool {
		h := c.Lookup(m.Chunks[0].CID)
		return len(h) == 1 && h[0] == b.ID()
	})
	zwire2, _, rawWire2, _ := fetchAll(t, c, m)
	if zwire2 != zwire || rawWire2 != rawWire {
		t.Errorf("b -> c took %d+%d wire bytes, a -> b %d+%d: want the same frames passed on", zwire2, rawWire2, zwire, rawWire)
	}
	if s := testutil.ToFloat64(b.met.compressSeconds); s != 0 {
		t.Errorf("b spent %vs compressing chunks it received compressed", s)
	}
}

// TestMixedClusterOldPeer: a real node that speaks only ChunkProtocolV2 (the previous release)
// and a current one exchange chunks both ways, raw, while two current nodes of the same cluster
// exchange them compressed.
func TestMixedClusterOldPeer(t *testing.T) {
	m, o := makeMixedImage(t, 8, 32<<10, 5)
	nodes := startCluster(t, 3, func(i int, cfg *Config) {
		if i == 0 {
			cfg.chunkVersion = 2
		}
	})
	old, cur, cur2 := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		if err := n.RegisterBlob(m, o.fetch); err != nil {
			t.Fatal(err)
		}
	}
	half := len(m.Chunks) / 2
	oldHalf := &chunk.Manifest{Blob: m.Blob, ChunkSize: m.ChunkSize, Chunks: m.Chunks[:half]}
	curHalf := &chunk.Manifest{Blob: m.Blob, ChunkSize: m.ChunkSize, Chunks: m.Chunks[half:]}
	seed(t, old, oldHalf, o)
	seed(t, cur, curHalf, o)
	waitFor(t, 10*time.Second, "presence both ways", func() bool {
		return len(cur.Lookup(m.Chunks[0].CID)) == 1 && len(old.Lookup(m.Chunks[half].CID)) == 1 && len(cur2.Lookup(m.Chunks[0].CID)) == 1
	})

	// Old to new: the new host asks in V3, falls back to V2, gets raw bytes.
	zw, zd, rw, rd := fetchAll(t, cur, oldHalf)
	if zw != zd || rw != rd {
		t.Errorf("from the V2 host: %d+%d wire bytes for %d+%d: want raw", zw, rw, zd, rd)
	}
	// New to old: the old host asks in V2 and gets raw bytes from a host that speaks V3.
	zw, zd, rw, rd = fetchAll(t, old, curHalf)
	if zw != zd || rw != rd {
		t.Errorf("to the V2 host: %d+%d wire bytes for %d+%d: want raw", zw, rw, zd, rd)
	}
	// New to new in the same cluster: compressed.
	for _, c := range m.Chunks {
		if err := old.store.evict(m.Blob, c); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "cur2 to see only cur", func() bool { return len(cur2.Lookup(m.Chunks[0].CID)) == 1 })
	zw, zd, _, _ = fetchAll(t, cur2, m)
	if zw*2 > zd {
		t.Errorf("between V3 hosts: %d wire bytes for %d compressible: want compressed", zw, zd)
	}
	for _, st := range cur.Peers() {
		if st.Corrupt != 0 || st.Banned {
			t.Errorf("peer %s: %d corrupt, banned %v in a mixed cluster", st.ID, st.Corrupt, st.Banned)
		}
	}
}

// startHostileV3 is a raw libp2p host that speaks ChunkProtocolV3, claims every chunk of m, and
// answers each request with a bad frame of kind:
//   - bomb: a small zstd frame of 16 MiB of zeros, for a chunk of a few KiB
//   - truncated: the chunk's own frame, cut in half (the header announces the cut length)
//   - wrongcodec: the chunk's raw bytes labelled as a zstd frame
//   - unknowncodec: a codec byte no release defines
//   - otherchunk: a valid frame, of another chunk
func startHostileV3(t *testing.T, kind string, m *chunk.Manifest, o *countingOrigin, victim *testNode) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	plain, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	bomb := plain.EncodeAll(make([]byte, 16<<20), nil)
	enc, err := zchunk.NewEncoder(1)
	if err != nil {
		t.Fatal(err)
	}
	h.SetStreamHandler(ChunkProtocolV3, func(s network.Stream) {
		req, err := ReadRequest(bufio.NewReader(s))
		if err != nil {
			_ = s.Reset()
			return
		}
		data := o.chunks[req.CID]
		frame, _ := enc.Encode(nil, data)
		codec, body := WireZstd, frame
		switch kind {
		case "bomb":
			body = bomb
		case "truncated":
			body = frame[:len(frame)/2]
		case "wrongcodec":
			body = data
		case "unknowncodec":
			codec = 9
		case "otherchunk":
			for id, other := range o.chunks {
				if !id.Equals(req.CID) && len(other) == len(data) {
					body, _ = enc.Encode(nil, other)
					break
				}
			}
		}
		_, _ = s.Write(AppendResponseHeaderV3(nil, StatusOK, 0, codec, len(data), len(body), ""))
		_, _ = s.Write(body)
		_ = s.Close()
	})
	claimAll(t, h, m, victim)
	return h
}

// claimAll connects h to victim and sends a presence map claiming every chunk of m.
func claimAll(t *testing.T, h host.Host, m *chunk.Manifest, victim *testNode) {
	t.Helper()
	ctx := t.Context()
	if err := h.Connect(ctx, peer.AddrInfo{ID: victim.ID(), Addrs: victim.Addrs()}); err != nil {
		t.Fatal(err)
	}
	bits := make([]byte, (len(m.Chunks)+7)/8)
	for i := range m.Chunks {
		bits[i/8] |= 1 << (i % 8)
	}
	s, err := h.NewStream(ctx, victim.ID(), PresenceProtocol)
	if err != nil {
		t.Fatal(err)
	}
	b, err := AppendPresence(nil, Presence{Seq: 1, Blob: m.Blob, NChunks: len(m.Chunks), Bitmap: bits})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(b); err != nil {
		t.Fatal(err)
	}
}

// TestHostileCompressedFrames: peers that answer in V3 with a decompression bomb, a truncated
// frame, raw bytes labelled zstd, an unknown codec or another chunk's frame are struck and
// banned like peers that send corrupt bytes, and the reader still gets every chunk, verified,
// from the honest peer.
func TestHostileCompressedFrames(t *testing.T) {
	m, o := makeMixedImage(t, 32, 16<<10, 9)
	for i := range m.Chunks {
		m.Chunks[i].Codec = chunk.CodecZstd // the hostiles answer every chunk compressed
	}
	honest := startNode(t, testConfig())
	if err := honest.RegisterBlob(m, o.fetch); err != nil {
		t.Fatal(err)
	}
	seed(t, honest, m, o)
	cfg := testConfig()
	cfg.StaticPeers = []string{honest.Addrs()[0].String()}
	cfg.BanAfter = 2
	cfg.MaxAttempts = 7
	cfg.HedgeDelay = 100 * time.Millisecond
	reader := startNode(t, cfg)
	if err := reader.RegisterBlob(m, o.fetch); err != nil {
		t.Fatal(err)
	}
	kinds := []string{"bomb", "truncated", "wrongcodec", "unknowncodec", "otherchunk"}
	hostiles := map[string]host.Host{}
	for _, kind := range kinds {
		hostiles[kind] = startHostileV3(t, kind, m, o, reader)
	}
	waitFor(t, 30*time.Second, "the reader to see every claimed holder", func() bool {
		return len(reader.Lookup(m.Chunks[0].CID)) == len(kinds)+1
	})
	srcs, err := readImage(t.Context(), reader, m, o, 2)
	if err != nil {
		t.Fatalf("read with hostile peers: %v", err) // readImage checks every chunk's CID
	}
	if o.requests.Load() != 0 {
		t.Errorf("%d origin requests: the honest peer holds every chunk", o.requests.Load())
	}
	t.Logf("sources %v", srcs)
	stats := map[peer.ID]PeerStats{}
	for _, st := range reader.Peers() {
		stats[st.ID] = st
	}
	for _, kind := range kinds {
		st := stats[hostiles[kind].ID()]
		if !st.Banned || st.Corrupt < 2 || st.BytesDown != 0 {
			t.Errorf("%s peer: banned %v after %d bad responses, %d bytes taken from it; want banned after 2, nothing taken", kind, st.Banned, st.Corrupt, st.BytesDown)
		}
	}
	if st := stats[honest.ID()]; st.Banned || st.Corrupt != 0 {
		t.Errorf("honest peer: banned %v, %d corrupt", st.Banned, st.Corrupt)
	}
}

// TestRecentDrains: the recent buffer keeps chunks and frames while they are hot and lets all of
// them go once idle for recentMaxAge, its memory included; a frame added for a chunk already
// held completes its entry.
func TestRecentDrains(t *testing.T) {
	var r recentChunks
	data := bytes.Repeat([]byte("recent "), 1<<14)
	id := chunk.CID(data)
	v, err := chunk.Verify(id, data)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	r.put(id, recentChunk{data: v, src: chunk.SourcePeer}, t0)
	if _, _, known := r.wire(id); known {
		t.Fatal("wire form known before any was added")
	}
	r.put(id, recentChunk{frame: []byte("frame")}, t0.Add(time.Second))
	if frame, raw, known := r.wire(id); !known || raw || string(frame) != "frame" {
		t.Fatalf("wire form %q raw %v known %v, want the frame added", frame, raw, known)
	}
	other := chunk.CID([]byte("other"))
	r.put(other, recentChunk{raw: true}, t0.Add(5*time.Second))
	if n, b := r.size(); n != 2 || b != len(data)+len("frame") {
		t.Fatalf("%d entries of %d bytes, want 2 of %d", n, b, len(data)+5)
	}
	if n := r.expire(t0.Add(recentMaxAge-time.Millisecond), recentMaxAge); n != 2 {
		t.Fatalf("%d entries left before any aged out, want 2", n)
	}
	if n := r.expire(t0.Add(recentMaxAge), recentMaxAge); n != 1 {
		t.Fatalf("%d entries left after the first aged out, want 1", n)
	}
	if got, _ := r.get(id); !got.IsZero() {
		t.Fatal("an aged-out chunk is still served")
	}
	if n := r.expire(t0.Add(recentMaxAge+5*time.Second), recentMaxAge); n != 0 {
		t.Fatalf("%d entries left when idle, want none", n)
	}
	if r.data != nil || r.order != nil || r.bytes != 0 {
		t.Fatalf("an empty buffer still holds a map (%v), a queue (cap %d) or %d bytes", r.data != nil, cap(r.order), r.bytes)
	}
}

// BenchmarkWireCompress is the sender's cost of ChunkProtocolV3 on real source text: zstd at
// WireCompression's default level (1) and at the build's default (3), per 1 MiB chunk of the Go
// tree's files (GOROOT/src, skipped without it), and the receiver's decode, beside the sha256
// of the same chunks. MB/s is of chunk data; BENCHMARKS.md records the figures.
func BenchmarkWireCompress(b *testing.B) {
	var tree []byte
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		b.Skipf("go env GOROOT: %v", err)
	}
	root := filepath.Join(strings.TrimSpace(string(goroot)), "src")
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || len(tree) >= 32<<20 {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			if data, err := os.ReadFile(p); err == nil {
				tree = append(tree, data...)
			}
		}
		return nil
	})
	if len(tree) < 8<<20 {
		b.Skipf("no Go tree at %s to read", root)
	}
	chunks := make([][]byte, 0, len(tree)>>20)
	for off := 0; off+1<<20 <= len(tree); off += 1 << 20 {
		chunks = append(chunks, tree[off:off+1<<20])
	}
	// The yardstick, in the same run: the sha256 every received chunk costs anyway.
	b.Run("sha256", func(b *testing.B) {
		b.SetBytes(1 << 20)
		for i := range b.N {
			chunk.CID(chunks[i%len(chunks)])
		}
	})
	for _, level := range []int{1, 3} {
		enc, err := zchunk.NewEncoder(level)
		if err != nil {
			b.Fatal(err)
		}
		var frames [][]byte
		b.Run(fmt.Sprintf("encode-level-%d", level), func(b *testing.B) {
			b.SetBytes(1 << 20)
			var stored int
			for i := range b.N {
				z, _ := enc.Encode(nil, chunks[i%len(chunks)])
				stored += len(z)
				if len(frames) < len(chunks) {
					frames = append(frames, z)
				}
			}
			b.ReportMetric(float64(stored)/float64(b.N<<20), "wire/data")
		})
		b.Run(fmt.Sprintf("decode-level-%d", level), func(b *testing.B) {
			b.SetBytes(1 << 20)
			for i := range b.N {
				j := i % len(frames)
				c := chunk.Chunk{CID: testCID, Length: 1 << 20, Codec: chunk.CodecZstd}
				if _, err := zchunk.Decode(c, frames[j]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
