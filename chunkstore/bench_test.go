package chunkstore_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunkstore"
	"github.com/shoal-p2p/shoal/chunkstore/storetest"
)

// benchDir is where benchmarks put their files: SHOAL_BENCH_DIR or a temp dir (same disk as
// the plain-file baseline either way).
func benchDir(b *testing.B) string {
	if d := os.Getenv("SHOAL_BENCH_DIR"); d != "" {
		dir, err := os.MkdirTemp(d, "chunkstore-bench")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return b.TempDir()
}

const benchWriters = 4

// BenchmarkWrite writes 1 MiB chunks with 4 concurrent writers through the store (verify,
// pwrite, group fdatasync, index) and, in the same run, the same bytes with plain pwrite +
// fdatasync per chunk into a plain file on the same disk. Metrics: MB/s of each and their ratio.
func BenchmarkWrite(b *testing.B) {
	dir := benchDir(b)
	s := open(b, filepath.Join(dir, "store"), testConfig())
	defer s.Close()
	const chunk = 1 << 20
	blob := storetest.NewBlob(b, 42, int64(max(b.N, 1))*chunk, chunk)
	if err := s.AddBlob(context.Background(), blob.Manifest); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(chunk)
	b.ResetTimer()
	start := time.Now()
	parallel(b.N, func(i int) {
		c := blob.Manifest.Chunks[i]
		if err := s.WriteChunk(context.Background(), blob.Digest(), c, blob.Bytes(c)); err != nil {
			b.Error(err)
		}
	})
	storeDur := time.Since(start)
	b.StopTimer()
	fd, err := unix.Open(filepath.Join(dir, "plain"), unix.O_RDWR|unix.O_CREAT, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	start = time.Now()
	parallel(b.N, func(i int) {
		c := blob.Manifest.Chunks[i]
		if _, err := unix.Pwrite(fd, blob.Bytes(c), c.Offset); err != nil {
			b.Error(err)
		}
		if err := unix.Fdatasync(fd); err != nil {
			b.Error(err)
		}
	})
	plainDur := time.Since(start)
	mb := float64(b.N) * chunk / 1e6
	b.ReportMetric(mb/storeDur.Seconds(), "store-MB/s")
	b.ReportMetric(mb/plainDur.Seconds(), "plain-MB/s")
	b.ReportMetric(plainDur.Seconds()/storeDur.Seconds(), "store/plain")
}

func parallel(n int, fn func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range benchWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				fn(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// BenchmarkRead reads present 1 MiB chunks by CID (index lookup, pread, verify) and by range
// (ReadAt, no verify), against plain pread of the same bytes from the backing file.
func BenchmarkRead(b *testing.B) {
	dir := benchDir(b)
	s := open(b, dir, testConfig())
	defer s.Close()
	const chunk = 1 << 20
	blob := storetest.NewBlob(b, 43, 64*chunk, chunk)
	if err := s.AddBlob(context.Background(), blob.Manifest); err != nil {
		b.Fatal(err)
	}
	writeAll(b, s, blob)
	chunks := blob.Manifest.Chunks
	fd, err := unix.Open(s.BackingPath(blob.Digest()), unix.O_RDONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, chunk)
	measure := func(fn func(i int)) float64 {
		start := time.Now()
		for i := range b.N {
			fn(i)
		}
		return float64(b.N) * chunk / 1e6 / time.Since(start).Seconds()
	}
	b.SetBytes(chunk)
	b.ResetTimer()
	byCID := measure(func(i int) {
		if _, err := s.ReadChunk(context.Background(), chunks[i%len(chunks)].CID); err != nil {
			b.Error(err)
		}
	})
	b.StopTimer()
	byRange := measure(func(i int) {
		if _, err := s.ReadAt(blob.Digest(), buf, chunks[i%len(chunks)].Offset); err != nil {
			b.Error(err)
		}
	})
	plain := measure(func(i int) {
		if _, err := unix.Pread(fd, buf, chunks[i%len(chunks)].Offset); err != nil {
			b.Error(err)
		}
	})
	b.ReportMetric(byCID, "readchunk-MB/s")
	b.ReportMetric(byRange, "readat-MB/s")
	b.ReportMetric(plain, "plain-MB/s")
	b.ReportMetric(byCID/plain, "readchunk/plain")
	b.ReportMetric(byRange/plain, "readat/plain")
}

// BenchmarkIndexOps measures presence queries against an index of 100 blobs × 1000 chunks.
func BenchmarkIndexOps(b *testing.B) {
	s := open(b, benchDir(b), testConfig())
	defer s.Close()
	ms := buildIndex(b, s, 100, 1000)
	b.Run("HasChunk", func(b *testing.B) {
		for i := range b.N {
			m := ms[i%len(ms)]
			if !storetest.Has(b, s, m.Blob, m.Chunks[(i*7919)%len(m.Chunks)]) {
				b.Fatal("missing")
			}
		}
	})
	b.Run("HasCID", func(b *testing.B) {
		for i := range b.N {
			m := ms[i%len(ms)]
			if !storetest.HasCID(b, s, m.Chunks[(i*7919)%len(m.Chunks)].CID) {
				b.Fatal("missing")
			}
		}
	})
	b.Run("Missing64", func(b *testing.B) {
		for i := range b.N {
			m := ms[i%len(ms)]
			if miss, err := s.Missing(m.Blob, int64(i%900)*4096, 64*4096); err != nil || len(miss) != 0 {
				b.Fatal(err)
			}
		}
	})
}

// fakeManifest describes a blob of n 4 KiB chunks with distinct CIDs, without data.
func fakeManifest(seed, n int) *chunk.Manifest {
	m := &chunk.Manifest{SchemaVersion: chunk.ManifestSchemaVersion, Blob: digest.FromString(fmt.Sprint("blob", seed)),
		BlobSize: int64(n) * 4096, Chunking: chunk.ChunkingFixed, ChunkSize: 4096}
	var key [16]byte
	binary.LittleEndian.PutUint64(key[:], uint64(seed))
	for i := range n {
		binary.LittleEndian.PutUint64(key[8:], uint64(i))
		m.Chunks = append(m.Chunks, chunk.Chunk{Offset: int64(i) * 4096, Length: 4096, CID: chunk.CID(key[:])})
	}
	return m
}

func buildIndex(tb testing.TB, s *chunkstore.Store, blobs, perBlob int) []*chunk.Manifest {
	return buildIndexFrom(tb, s, 0, blobs, perBlob)
}

func buildIndexFrom(tb testing.TB, s *chunkstore.Store, first, blobs, perBlob int) []*chunk.Manifest {
	var ms []*chunk.Manifest
	for i := first; i < first+blobs; i++ {
		m := fakeManifest(i, perBlob)
		if err := s.AddBlob(context.Background(), m); err != nil {
			tb.Fatal(err)
		}
		if err := chunkstore.BulkMarkPresent(s, m); err != nil {
			tb.Fatal(err)
		}
		ms = append(ms, m)
	}
	return ms
}

// TestScaleIndex builds an index of SHOAL_CHUNKSTORE_SCALE chunk entries (1000 per blob), reopens
// it and reports open time, RSS and query rate, checking every lookup. By default it runs a small
// index (100 000 entries, 20 000 with -short); make bench runs 10 million (minutes):
//
//	SHOAL_CHUNKSTORE_SCALE=10000000 go test -run TestScaleIndex -v -timeout 60m ./chunkstore/
func TestScaleIndex(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SHOAL_CHUNKSTORE_SCALE"))
	if n <= 0 {
		n = 100000
		if testing.Short() {
			n = 20000
		}
	}
	dir := os.Getenv("SHOAL_BENCH_DIR")
	if dir == "" {
		dir = t.TempDir()
	} else {
		dir, _ = os.MkdirTemp(dir, "scale")
		defer os.RemoveAll(dir)
	}
	const perBlob = 1000
	blobs := max(n/perBlob, 1)
	s := open(t, dir, testConfig())
	start := time.Now()
	for i := range blobs {
		buildIndexFrom(t, s, i, 1, perBlob) // manifests are not kept: RSS is the store's
	}
	t.Logf("built %d blobs × %d chunks in %v; RSS %s", blobs, perBlob, time.Since(start), rss())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	debug.FreeOSMemory()
	start = time.Now()
	s = open(t, dir, testConfig())
	defer s.Close()
	t.Logf("reopen (clean, %d blobs) in %v; RSS %s", blobs, time.Since(start), rss())
	start = time.Now()
	q := min(200000, n*2)
	for i := range q {
		m := fakeManifest(i%blobs, 1) // chunk 0 of a blob: same CID as built
		if !storetest.Has(t, s, m.Blob, m.Chunks[0]) {
			t.Fatal("missing chunk")
		}
	}
	for i := range min(1000, q) { // and by CID, anywhere in a blob
		m := fakeManifest((i*7919)%blobs, perBlob)
		if !storetest.HasCID(t, s, m.Chunks[(i*104729)%perBlob].CID) {
			t.Fatalf("chunk %d of blob %d not found by CID", (i*104729)%perBlob, (i*7919)%blobs)
		}
	}
	el := time.Since(start)
	debug.FreeOSMemory()
	t.Logf("%d HasChunk in %v (%.0f/s); RSS %s; stats %+v", q, el, float64(q)/el.Seconds(), rss(), s.Stats())
	if p := os.Getenv("SHOAL_CHUNKSTORE_HEAPPROF"); p != "" { // where the anonymous memory is
		if f, err := os.Create(p); err == nil {
			_ = pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
}

func rss() string {
	b, _ := os.ReadFile("/proc/self/status")
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		// RssAnon is the process's own memory; RssFile is mmapped index files (badger maps its
		// tables), which the kernel can drop at will.
		if strings.HasPrefix(l, "VmRSS") || strings.HasPrefix(l, "VmHWM") || strings.HasPrefix(l, "RssAnon") || strings.HasPrefix(l, "RssFile") {
			out = append(out, strings.Join(strings.Fields(l), " "))
		}
	}
	return strings.Join(out, ", ")
}

// genBlob is a deterministic pseudo-random blob that is never held whole: chunk i is filled
// from a PRNG seeded with i, so any chunk can be made again on its own.
type genBlob struct{ size, chunkSize int64 }

func genChunk(i int64, p []byte) {
	r := rand.New(rand.NewPCG(uint64(i), 0x5eed))
	for j := 0; j+8 <= len(p); j += 8 {
		binary.LittleEndian.PutUint64(p[j:], r.Uint64())
	}
	for j := len(p) &^ 7; j < len(p); j++ {
		p[j] = byte(r.Uint32())
	}
}

func (g genBlob) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) && off < g.size {
		i := off / g.chunkSize
		buf := make([]byte, min(g.chunkSize, g.size-i*g.chunkSize))
		genChunk(i, buf)
		k := copy(p[n:], buf[off-i*g.chunkSize:])
		n += k
		off += int64(k)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// TestSteadyMemory writes an image of SHOAL_CHUNKSTORE_STEADY_MIB MiB (default 32; make bench:
// 256) in 1 MiB chunks with 4 writers, as a daemon does when an image becomes local, then
// reports the process's anonymous memory and Go heap with the store still open: the store's
// share of a daemon's steady-state memory (the test keeps no copy of the data).
func TestSteadyMemory(t *testing.T) {
	mib, _ := strconv.Atoi(os.Getenv("SHOAL_CHUNKSTORE_STEADY_MIB"))
	if mib <= 0 {
		mib = 32
	}
	const chunkSize = 1 << 20
	size := int64(mib) << 20
	h := sha256.New()
	g := genBlob{size: size, chunkSize: chunkSize}
	if _, err := io.Copy(h, io.NewSectionReader(g, 0, size)); err != nil {
		t.Fatal(err)
	}
	d := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil))
	m, err := chunk.FixedManifest(g, d, size, chunkSize)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if bd := os.Getenv("SHOAL_BENCH_DIR"); bd != "" {
		dir, _ = os.MkdirTemp(bd, "steady")
		defer os.RemoveAll(dir)
	}
	runtime.GC()
	debug.FreeOSMemory()
	before := rss()
	s := open(t, dir, testConfig())
	defer s.Close()
	ctx := context.Background()
	if err := s.AddBlob(ctx, m); err != nil {
		t.Fatal(err)
	}
	parallel(len(m.Chunks), func(i int) {
		c := m.Chunks[i]
		buf := make([]byte, c.Length)
		genChunk(int64(i), buf)
		if err := s.WriteChunk(ctx, m.Blob, c, buf); err != nil {
			t.Error(err)
		}
	})
	if st := s.Stats(); st.PresentBytes != size {
		t.Fatalf("present %d bytes, want %d", st.PresentBytes, size)
	}
	time.Sleep(2 * time.Second) // let badger's background flushes settle
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("%d MiB image written; before open: %s; after: %s; Go heap in use %.1f MiB",
		mib, before, rss(), float64(ms.HeapInuse)/(1<<20))
	if p := os.Getenv("SHOAL_CHUNKSTORE_HEAPPROF"); p != "" {
		if f, err := os.Create(p); err == nil {
			_ = pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
}
