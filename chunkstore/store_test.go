package chunkstore_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"

	"github.com/shoal-p2p/shoal/chunkstore/layout"

	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunkstore"
	"github.com/shoal-p2p/shoal/chunkstore/storetest"
)

var quiet = slog.New(slog.DiscardHandler)

func testConfig() chunkstore.Config {
	cfg := chunkstore.DefaultConfig()
	cfg.Logger = quiet
	return cfg
}

func open(t testing.TB, dir string, cfg chunkstore.Config) *chunkstore.Store {
	t.Helper()
	s, err := chunkstore.Open(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeAll(t testing.TB, s *chunkstore.Store, b storetest.Blob) {
	t.Helper()
	for _, c := range b.Manifest.Chunks {
		if err := s.WriteChunk(context.Background(), b.Digest(), c, b.Bytes(c)); err != nil {
			t.Fatalf("WriteChunk at %d: %v", c.Offset, err)
		}
	}
}

func TestOnDiskLayout(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, testConfig())
	defer s.Close()
	b := storetest.NewBlob(t, 1, 3*4096+5, 4096)
	if err := s.AddBlob(context.Background(), b.Manifest); err != nil {
		t.Fatal(err)
	}
	want, _ := layout.BackingPath(dir, "shoal", b.Digest())
	if got := s.BackingPath(b.Digest()); got != want {
		t.Fatalf("BackingPath = %s, want %s", got, want)
	}
	fi, err := os.Stat(want)
	if err != nil || fi.Size() != b.Manifest.BlobSize {
		t.Fatalf("backing file: %v, size %d want %d", err, fi.Size(), b.Manifest.BlobSize)
	}
	var st unix.Stat_t
	if err := unix.Stat(want, &st); err != nil || st.Blocks != 0 {
		blocks := st.Blocks
		t.Fatalf("new backing file uses %d blocks, want sparse", blocks)
	}
	buf := make([]byte, 64)
	n, err := unix.Getxattr(want, layout.XattrName, buf)
	if err != nil || !bytes.Equal(buf[:n], layout.DataXattr(b.Manifest.BlobSize)) {
		t.Fatalf("data file xattr % x, %v", buf[:n], err)
	}
	n, err = unix.Getxattr(layout.VolumeDir(dir, "shoal"), layout.XattrName, buf)
	if err != nil || !bytes.Equal(buf[:n], []byte{0, 0, 0, 0}) {
		t.Fatalf("volume dir xattr % x, %v", buf[:n], err)
	}
	writeAll(t, s, b)
	got, err := os.ReadFile(want)
	if err != nil || !bytes.Equal(got[:len(b.Data)], b.Data) || len(got) > len(b.Data)+4095 {
		t.Fatalf("backing file content differs (%d bytes, %v)", len(got), err)
	}
}

func TestEvictionLRUAndPins(t *testing.T) {
	cfg := testConfig()
	cfg.MaxBytes = 8 * 4096
	cfg.LowWatermark = 1
	cfg.PinnedOverflow = false // a hard cap: TestPinnedOverflow covers the default
	s := open(t, t.TempDir(), cfg)
	defer s.Close()
	ctx := context.Background()
	pinned := storetest.NewBlob(t, 1, 4*4096, 4096)
	old := storetest.NewBlob(t, 2, 4*4096, 4096)
	fresh := storetest.NewBlob(t, 3, 4*4096, 4096)
	for _, b := range []storetest.Blob{pinned, old, fresh} {
		if err := s.AddBlob(ctx, b.Manifest); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Pin(pinned.Digest(), "image-a"); err != nil {
		t.Fatal(err)
	}
	writeAll(t, s, pinned)
	writeAll(t, s, old)
	var mu sync.Mutex
	var evicted []chunkstore.Event
	defer s.Subscribe(func(e chunkstore.Event) {
		if e.Kind == chunkstore.ChunkEvicted {
			mu.Lock()
			evicted = append(evicted, e)
			mu.Unlock()
		}
	})()
	writeAll(t, s, fresh)
	mu.Lock()
	if len(evicted) != 4 {
		t.Fatalf("%d evictions, want 4", len(evicted))
	}
	for _, e := range evicted {
		if e.Blob != old.Digest() {
			t.Fatalf("evicted a chunk of %s, want only the unpinned least recently used blob", e.Blob)
		}
	}
	mu.Unlock()
	for _, c := range pinned.Manifest.Chunks {
		if !storetest.Has(t, s, pinned.Digest(), c) {
			t.Fatal("pinned chunk evicted")
		}
	}
	for _, c := range old.Manifest.Chunks {
		if storetest.Has(t, s, old.Digest(), c) || storetest.HasCID(t, s, c.CID) {
			t.Fatal("evicted chunk still present")
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(s.BackingPath(old.Digest()), &st); err != nil || st.Blocks != 0 {
		t.Fatalf("evicted blob's file still uses %d blocks (%v): holes not punched", st.Blocks, err)
	}
	if got := s.Stats(); got.ChunksEvicted != 4 || got.PresentBytes != 8*4096 {
		t.Fatalf("stats %+v", got)
	}
	// Everything left is pinned: the next write cannot make room.
	if err := s.Pin(fresh.Digest(), "image-b"); err != nil {
		t.Fatal(err)
	}
	c := old.Manifest.Chunks[0]
	if err := s.WriteChunk(ctx, old.Digest(), c, old.Bytes(c)); !errors.Is(err, chunkstore.ErrNoSpace) {
		t.Fatalf("write into a full, pinned cache: %v, want ErrNoSpace", err)
	}
	if storetest.Has(t, s, old.Digest(), c) {
		t.Fatal("failed write left the chunk present")
	}
	if err := s.Unpin(fresh.Digest(), "image-b"); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteChunk(ctx, old.Digest(), c, old.Bytes(c)); err != nil {
		t.Fatalf("write after unpin: %v", err)
	}
}

// TestPinnedOverflow: by default a full cache holding only pinned data (mounted images) lets a
// write through past MaxBytes rather than failing a mounted image's read.
func TestPinnedOverflow(t *testing.T) {
	cfg := testConfig()
	cfg.MaxBytes = 4 * 4096
	s := open(t, t.TempDir(), cfg)
	defer s.Close()
	ctx := context.Background()
	a := storetest.NewBlob(t, 1, 4*4096, 4096)
	b := storetest.NewBlob(t, 2, 4*4096, 4096)
	for _, x := range []storetest.Blob{a, b} {
		if err := s.AddBlob(ctx, x.Manifest); err != nil {
			t.Fatal(err)
		}
		if err := s.Pin(x.Digest(), "image"); err != nil {
			t.Fatal(err)
		}
	}
	writeAll(t, s, a)
	writeAll(t, s, b) // past the cap: nothing evictable, the writes go through
	for _, x := range []storetest.Blob{a, b} {
		for _, c := range x.Manifest.Chunks {
			if !storetest.Has(t, s, x.Digest(), c) {
				t.Fatal("pinned chunk missing")
			}
		}
	}
	if got := s.Stats(); got.PresentBytes != 8*4096 || got.ChunksEvicted != 0 {
		t.Fatalf("stats %+v", got)
	}
}

func TestReopenAndReconcile(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := open(t, dir, testConfig())
	b := storetest.NewBlob(t, 7, 8*4096, 2*4096)
	if err := s.AddBlob(ctx, b.Manifest); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin(b.Digest(), "img"); err != nil {
		t.Fatal(err)
	}
	writeAll(t, s, b)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, testConfig())
	ch := b.Manifest.Chunks
	for _, c := range ch {
		if !storetest.Has(t, s, b.Digest(), c) {
			t.Fatalf("chunk at %d lost across a clean reopen", c.Offset)
		}
	}
	if st := s.Stats(); st.ChunksWritten != 4 || st.BytesWritten != 8*4096 || st.PresentChunks != 4 {
		t.Fatalf("counters not persisted: %+v", st)
	}
	if p := s.Pins(b.Digest()); len(p) != 1 || p[0] != "img" {
		t.Fatalf("pins not persisted: %v", p)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Behind the store's back: punch chunk 1, truncate away chunk 3.
	path, _ := layout.BackingPath(dir, "shoal", b.Digest())
	fd, err := unix.Open(path, unix.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, ch[1].Offset, ch[1].Length); err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, ch[3].Offset); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	s = open(t, dir, testConfig())
	defer s.Close()
	for i, want := range []bool{true, false, true, false} {
		if got := storetest.Has(t, s, b.Digest(), ch[i]); got != want {
			t.Errorf("after reconcile chunk %d present = %v, want %v", i, got, want)
		}
	}
	if st := s.Stats(); st.PresentBytes != 2*2*4096 {
		t.Errorf("present bytes %d after reconcile, want %d", st.PresentBytes, 4*4096)
	}

}

func TestSyncFailureMarksNothing(t *testing.T) {
	for _, tt := range []struct {
		errno    unix.Errno
		sentinel error
	}{{unix.EIO, chunkstore.ErrIO}, {unix.ENOSPC, chunkstore.ErrNoSpace}, {unix.EDQUOT, chunkstore.ErrNoSpace}} {
		t.Run(tt.errno.Error(), func(t *testing.T) {
			s := open(t, t.TempDir(), testConfig())
			defer s.Close()
			b := storetest.NewBlob(t, 8, 2*4096, 4096)
			if err := s.AddBlob(context.Background(), b.Manifest); err != nil {
				t.Fatal(err)
			}
			// Real ENOSPC cannot be reached on purpose any more (the store stops short of a full
			// disk), so the kernel's error is injected where a delayed allocation reports it.
			restore := chunkstore.SetSyncData(func(int) error { return tt.errno })
			c := b.Manifest.Chunks[0]
			err := s.WriteChunk(context.Background(), b.Digest(), c, b.Bytes(c))
			restore()
			if !errors.Is(err, tt.sentinel) || !errors.Is(err, tt.errno) {
				t.Fatalf("WriteChunk with fdatasync failing with %v: %v, want %v", tt.errno, err, tt.sentinel)
			}
			if storetest.Has(t, s, b.Digest(), c) || storetest.HasCID(t, s, c.CID) {
				t.Fatal("chunk marked present although its data was not durable")
			}
			if err := s.WriteChunk(context.Background(), b.Digest(), c, b.Bytes(c)); err != nil {
				t.Fatalf("retry after the disk recovered: %v", err)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*chunkstore.Config)
		ok   bool
	}{
		{"default", func(*chunkstore.Config) {}, true},
		{"empty domain", func(c *chunkstore.Config) { c.Domain = "" }, false},
		{"comma in domain", func(c *chunkstore.Config) { c.Domain = "a,b" }, false},
		{"slash in domain", func(c *chunkstore.Config) { c.Domain = "a/b" }, false},
		{"negative max", func(c *chunkstore.Config) { c.MaxBytes = -1 }, false},
		{"few files", func(c *chunkstore.Config) { c.MaxOpenFiles = 1 }, false},
		{"watermark", func(c *chunkstore.Config) { c.LowWatermark = 1.5 }, false},
		{"tiny reserve", func(c *chunkstore.Config) { c.ReserveBytes = 4096 }, false},
		{"automatic reserve", func(c *chunkstore.Config) { c.ReserveBytes = 0 }, true},
	}
	for _, tt := range tests {
		cfg := chunkstore.DefaultConfig()
		tt.mod(&cfg)
		if err := cfg.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v", tt.name, err)
		}
	}
}

var _ = chunk.BlockSize
