package bootstrap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/shoal-p2p/shoal/chunk"

	"golang.org/x/sys/unix"
)

// seedImages returns real bootstraps: the committed ones in testdata (so the fuzz corpus works
// without erofs-utils) and, where mkfs.erofs exists, fresh ones.
func seedImages(t testing.TB) [][]byte {
	t.Helper()
	var out [][]byte
	paths, _ := filepath.Glob("testdata/*.erofs")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		must(t, err)
		out = append(out, b)
	}
	if len(out) == 0 {
		t.Fatal("no testdata/*.erofs seed images")
	}
	return out
}

// fixCRC recomputes the superblock checksum after a test or the fuzzer edited the image, so
// that the edit reaches the structures behind the checksum.
func fixCRC(img []byte) {
	if len(img) < superOffset+superSize {
		return
	}
	bits := img[superOffset+12]
	if bits < 9 || bits > 16 {
		return
	}
	n := int64(1) << bits
	if n > superOffset {
		n -= superOffset
	}
	if int64(len(img)) < superOffset+n {
		return
	}
	blk := append([]byte(nil), img[superOffset:superOffset+n]...)
	binary.LittleEndian.PutUint32(blk[4:], 0)
	binary.LittleEndian.PutUint32(img[superOffset+4:], ^crc32.Checksum(blk, castagnoli))
}

// exercise runs every reader entry point over an image; it must return, with or without error,
// and never panic.
func exercise(img []byte) error {
	f, err := Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		return err
	}
	err = f.Walk(func(p string, in *Inode) error {
		switch {
		case in.Mode.IsDir():
			_, err := f.ReadDir(in)
			return err
		case in.Mode.Type() == fs.ModeSymlink:
			_, err := f.ReadLink(in)
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := f.WalkExtents(func(string, *Inode, Extent) error { return nil }); err != nil {
		return err
	}
	sizes := make([]int64, len(f.Devices()))
	for i := range sizes {
		sizes[i] = 1 << 30
	}
	return f.Check(sizes)
}

func TestSeedImagesRead(t *testing.T) {
	for _, img := range seedImages(t) {
		if err := exercise(img); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMalformedImages(t *testing.T) {
	good := seedImages(t)[0]
	f, err := Open(bytes.NewReader(good), int64(len(good)))
	must(t, err)
	root := mustInode(t, f, f.RootNid())
	put16 := func(off int, v uint16) func([]byte) {
		return func(b []byte) { binary.LittleEndian.PutUint16(b[off:], v) }
	}
	put32 := func(off int, v uint32) func([]byte) {
		return func(b []byte) { binary.LittleEndian.PutUint32(b[off:], v) }
	}
	cases := []struct {
		name  string
		edit  func([]byte) []byte
		fix   bool // recompute the checksum after the edit
		where string
	}{
		{"truncated", func(b []byte) []byte { return b[:1100] }, false, "superblock"},
		{"bad magic", func(b []byte) []byte { put32(superOffset, 0x12345678)(b); return b }, true, "superblock"},
		{"bad checksum", func(b []byte) []byte { b[superOffset+64] ^= 1; return b }, false, "superblock"},
		{"block size bits", func(b []byte) []byte { b[superOffset+12] = 40; return b }, false, "superblock"},
		{"compressed", func(b []byte) []byte { put32(superOffset+80, 0x2|0x4)(b); return b }, true, "superblock"},
		{"device table past end", func(b []byte) []byte { put16(superOffset+88, 0xFFF0)(b); return b }, true, "device table"},
		{"root nid past end", func(b []byte) []byte { put16(superOffset+14, 0xFFFF)(b); return b }, true, "inode"},
		{"root not a dir", func(b []byte) []byte { put16(int(root.off)+4, 0x81a4)(b); return b }, true, "root inode"},
		{"root unknown layout", func(b []byte) []byte { put16(int(root.off), 7<<1)(b); return b }, true, "inode"},
		{"root dir size huge", func(b []byte) []byte { put32(int(root.off)+8, 0xFFFFFFF0)(b); return b }, true, "directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := c.edit(append([]byte(nil), good...))
			if c.fix {
				fixCRC(img)
			}
			err := exercise(img)
			var fe *FormatError
			if !errors.As(err, &fe) || !errors.Is(err, ErrFormat) {
				t.Fatalf("want a FormatError, got %v", err)
			}
			if !bytes.Contains([]byte(fe.Struct), []byte(c.where)) {
				t.Fatalf("error %q does not name %q", err, c.where)
			}
		})
	}
}

// TestDirectoryLoop makes a subdirectory's entry point back at the root: Walk must stop with an
// error instead of recursing forever.
func TestDirectoryLoop(t *testing.T) {
	needTool(t, "mkfs.erofs")
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "sub", "f"), []byte("x"))
	bi := buildImage(t, src, 0)
	img, err := os.ReadFile(bi.boot.Name())
	must(t, err)
	sub, err := bi.fs.Lookup("/sub")
	must(t, err)
	ext, err := bi.fs.Extents(sub)
	must(t, err)
	// The first dirent of /sub is "."; point the last one ("f") at the root instead.
	blk := img[ext[0].DeviceOffset:]
	n := int(binary.LittleEndian.Uint16(blk[8:])) / direntSize
	binary.LittleEndian.PutUint64(blk[(n-1)*direntSize:], bi.fs.RootNid())
	blk[(n-1)*direntSize+10] = 2
	fixCRC(img)
	if err := exercise(img); !errors.Is(err, ErrFormat) {
		t.Fatalf("loop: %v", err)
	}
}

func TestXattrsSkipped(t *testing.T) {
	needTool(t, "mkfs.erofs")
	src := t.TempDir()
	data := randBytes(t, 3*chunk.BlockSize+5)
	writeFile(t, filepath.Join(src, "f"), data)
	if err := unix.Setxattr(filepath.Join(src, "f"), "user.big", bytes.Repeat([]byte("x"), 500), 0); err != nil {
		t.Skipf("the temp directory's filesystem takes no user xattrs: %v", err)
	}
	bi := buildImage(t, src, 0)
	in, err := bi.fs.Lookup("/f")
	must(t, err)
	if in.xattrSize == 0 {
		t.Fatal("mkfs.erofs stored no xattrs: the test checks nothing")
	}
	got, err := bi.fs.ReadFile(in, bi.devices(), 1<<20)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("content behind xattrs: %v", err)
	}
}

func FuzzImage(f *testing.F) {
	for _, img := range seedImages(f) {
		f.Add(img, true)
	}
	f.Fuzz(func(t *testing.T, img []byte, fix bool) {
		if len(img) > 1<<20 {
			return
		}
		if fix {
			fixCRC(img)
		}
		_ = exercise(img) // must not panic or hang
	})
}
