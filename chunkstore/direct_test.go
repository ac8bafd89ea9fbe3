package chunkstore_test

import (
	"bytes"
	"context"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunkstore/storetest"
)

// TestDirectWrites: with DirectWrites (the default) PutCold's chunks (a prefetch's) go to the
// disk around the page cache (the writer pays no page-cache copy and the fdatasync no
// writeback), yet read back exactly, through the store and through the file; Put's (a reader
// waits for them) and PutCold's without DirectWrites pass through the page cache. Skipped where the temporary directory's filesystem refuses O_DIRECT (tmpfs): the store
// writes through the page cache there.
func TestDirectWrites(t *testing.T) {
	probe, err := os.CreateTemp(t.TempDir(), "direct")
	if err != nil {
		t.Fatal(err)
	}
	if fd, err := unix.Open(probe.Name(), unix.O_WRONLY|unix.O_DIRECT, 0); err != nil {
		t.Skipf("the filesystem of %s refuses O_DIRECT: %v", probe.Name(), err)
	} else {
		unix.Close(fd)
	}
	probe.Close()
	for _, tc := range []struct {
		name         string
		directWrites bool
		cold         bool // PutCold, else Put
		wantCached   bool
	}{
		{"PutCold with DirectWrites", true, true, false},
		{"Put with DirectWrites", true, false, true},
		{"PutCold without DirectWrites", false, true, true},
	} {
		cfg := testConfig()
		cfg.DirectWrites = tc.directWrites
		s := open(t, t.TempDir(), cfg)
		b := storetest.NewBlob(t, 7, 8<<20+12345, 1<<20) // the last chunk is not a whole block
		if err := s.AddBlob(context.Background(), b.Manifest); err != nil {
			t.Fatal(err)
		}
		for _, c := range b.Manifest.Chunks {
			v, err := chunk.Verify(c.CID, b.Bytes(c))
			if err != nil {
				t.Fatal(err)
			}
			put := s.Put
			if tc.cold {
				put = s.PutCold
			}
			if err := put(context.Background(), b.Digest(), c, v); err != nil {
				t.Fatalf("%s: chunk at %d: %v", tc.name, c.Offset, err)
			}
		}
		cached := residentPages(t, s.BackingPath(b.Digest()), int64(len(b.Data)))
		switch {
		case !tc.wantCached && cached > 0:
			t.Errorf("%s: %d pages of the backing file in the page cache, want none", tc.name, cached)
		case tc.wantCached && cached == 0:
			t.Errorf("%s: no page of the backing file in the page cache", tc.name)
		}
		got := make([]byte, len(b.Data))
		if n, err := s.ReadAt(b.Digest(), got, 0); err != nil || n != len(got) || !bytes.Equal(got, b.Data) {
			t.Fatalf("%s: read back %d bytes, %v, equal %v", tc.name, n, err, bytes.Equal(got, b.Data))
		}
		for _, c := range b.Manifest.Chunks {
			v, err := s.ReadChunk(context.Background(), c.CID)
			if err != nil || !bytes.Equal(v.Bytes(), b.Bytes(c)) {
				t.Fatalf("%s: chunk at %d: %v", tc.name, c.Offset, err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// residentPages counts the pages of the file's first n bytes that are in the page cache.
func residentPages(t *testing.T, path string, n int64) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, int(n), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (n+int64(os.Getpagesize())-1)/int64(os.Getpagesize()))
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	k := 0
	for _, v := range vec {
		k += int(v & 1)
	}
	return k
}
