package bootstrap

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/shoal-p2p/shoal/chunk"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"
)

// These tests drive the real mkfs.erofs, fsck.erofs and dump.erofs (Debian's erofs-utils, which
// `make test` installs) and compare what they say with what the reader says.

func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (erofs-utils): %v", name, err)
	}
	return p
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// makeTree writes a tree with the shapes that break readers: sizes at and around chunk
// boundaries, duplicates, zeros, deep and wide directories, long and UTF-8 names, links, special
// files and xattrs. chunkSize is the chunk size the image will use.
func makeTree(t testing.TB, dir string, chunkSize int) {
	t.Helper()
	writeFile(t, filepath.Join(dir, "empty"), nil)
	writeFile(t, filepath.Join(dir, "one"), []byte{'x'})
	writeFile(t, filepath.Join(dir, "block"), randBytes(t, chunk.BlockSize))
	writeFile(t, filepath.Join(dir, "block+1"), randBytes(t, chunk.BlockSize+1))
	exact := randBytes(t, chunkSize)
	writeFile(t, filepath.Join(dir, "chunk"), exact)
	writeFile(t, filepath.Join(dir, "chunk+1"), randBytes(t, chunkSize+1))
	writeFile(t, filepath.Join(dir, "chunk-1"), randBytes(t, chunkSize-1))
	writeFile(t, filepath.Join(dir, "multi"), randBytes(t, 5*chunkSize+12345))
	writeFile(t, filepath.Join(dir, "dup", "copy-of-chunk"), exact)
	writeFile(t, filepath.Join(dir, "zeros"), make([]byte, 3*chunkSize+100))
	deep := dir
	for i := range 40 {
		deep = filepath.Join(deep, fmt.Sprintf("d%d", i))
	}
	writeFile(t, filepath.Join(deep, "leaf"), []byte("deep leaf\n"))
	for i := range 300 { // several directory blocks
		writeFile(t, filepath.Join(dir, "wide", fmt.Sprintf("file-%04d-%s", i, strings.Repeat("w", i%50))), []byte(strconv.Itoa(i)))
	}
	// 254, not EROFS's 255: mkfs.erofs 1.5 fails on 255-byte names ("Could not format the
	// device"); Build adds a hint to that error.
	writeFile(t, filepath.Join(dir, "names", strings.Repeat("L", 254)), []byte("long name"))
	writeFile(t, filepath.Join(dir, "names", "ünïcödé-名前-🐟"), []byte("utf-8"))
	must(t, os.Symlink("chunk", filepath.Join(dir, "link")))
	must(t, os.Symlink(strings.Repeat("../", 300)+"target", filepath.Join(dir, "longlink")))
	must(t, os.Symlink("/nowhere", filepath.Join(dir, "dangling")))
	must(t, os.Link(filepath.Join(dir, "one"), filepath.Join(dir, "hardlink")))
	must(t, syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600))
	if os.Geteuid() == 0 {
		must(t, unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(t, unix.Mknod(filepath.Join(dir, "loop"), unix.S_IFBLK|0o600, int(unix.Mkdev(7, 0))))
	}
	// Xattrs push chunkSize indexes and inline data further into the inode's slot; they must be
	// skipped exactly. Filesystems without user xattrs (some tmpfs) just don't get them.
	_ = unix.Setxattr(filepath.Join(dir, "chunk+1"), "user.shoal.test", bytes.Repeat([]byte("v"), 100), 0)
	_ = unix.Setxattr(filepath.Join(dir, "wide"), "user.shoal.dir", []byte("d"), 0)
	_ = unix.Setxattr(filepath.Join(dir, "one"), "user.a", []byte("1"), 0)
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type builtImage struct {
	res   *BuildResult
	out   string
	fs    *FS
	boot  *os.File
	blobs []io.ReaderAt // the devices, decoded from the stored blobs
	paths []string      // the stored blobs' files
}

// devicePath is a file holding device i uncompressed, for tools that read it (fsck.erofs).
func (bi *builtImage) devicePath(t testing.TB, i int) string {
	t.Helper()
	m := bi.res.Image.Blobs[i].Manifest
	if m.SchemaVersion != chunk.ManifestSchemaStored {
		return bi.paths[i]
	}
	p := filepath.Join(t.TempDir(), "device")
	f, err := os.Create(p)
	must(t, err)
	defer f.Close()
	_, err = io.Copy(f, io.NewSectionReader(bi.blobs[i], 0, m.BlobSize))
	must(t, err)
	return p
}

func buildImage(t testing.TB, src string, chunkSize int64) *builtImage {
	t.Helper()
	needTool(t, "mkfs.erofs")
	return buildImageOpts(t, src, BuildOptions{ChunkSize: chunkSize})
}

func buildImageOpts(t testing.TB, src string, opts BuildOptions) *builtImage {
	t.Helper()
	out := filepath.Join(t.TempDir(), "image")
	res, err := Build(context.Background(), src, out, opts)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	lay := Layout{out}
	bi := &builtImage{res: res, out: out}
	bi.boot, err = os.Open(lay.BlobPath(res.Image.Bootstrap.Digest))
	must(t, err)
	t.Cleanup(func() { bi.boot.Close() })
	bi.fs, err = Open(bi.boot, res.Image.Bootstrap.Size)
	must(t, err)
	for _, b := range res.Image.Blobs {
		f, err := os.Open(lay.BlobPath(b.Digest))
		must(t, err)
		t.Cleanup(func() { f.Close() })
		bi.blobs = append(bi.blobs, DeviceReader(f, b.Manifest))
		bi.paths = append(bi.paths, f.Name())
	}
	return bi
}

func (bi *builtImage) devices() []io.ReaderAt { return bi.blobs }

func TestBuildMatchesSourceTree(t *testing.T) {
	for _, chunkSize := range []int{64 << 10, 1 << 20} {
		t.Run(fmt.Sprintf("chunk=%d", chunkSize), func(t *testing.T) {
			src := t.TempDir()
			makeTree(t, src, chunkSize)
			bi := buildImage(t, src, int64(chunkSize))
			im := bi.res.Image
			if len(im.Blobs) != 1 || im.Blobs[0].Manifest.Chunking != chunk.ChunkingEROFS {
				t.Fatalf("want one chunk-indexed blob, got %+v", im.Blobs)
			}
			seen := map[string]bool{}
			nids := map[uint64]string{}
			err := bi.fs.Walk(func(p string, in *Inode) error {
				seen[p] = true
				srcPath := filepath.Join(src, p)
				st, err := os.Lstat(srcPath)
				if err != nil {
					return fmt.Errorf("image has %s, source does not: %v", p, err)
				}
				if st.Mode().Type() != in.Mode.Type() || st.Mode().Perm() != in.Mode.Perm() {
					return fmt.Errorf("%s: mode %v in image, %v in source", p, in.Mode, st.Mode())
				}
				switch {
				case in.Mode.IsRegular():
					if in.Size != st.Size() {
						return fmt.Errorf("%s: size %d, source %d", p, in.Size, st.Size())
					}
					if prev, ok := nids[in.Nid]; ok && !sameFile(t, filepath.Join(src, prev), srcPath) {
						return fmt.Errorf("%s shares inode %d with %s but they are not hard links", p, in.Nid, prev)
					}
					nids[in.Nid] = p
					got, err := bi.fs.ReadFile(in, bi.devices(), 1<<30)
					if err != nil {
						return err
					}
					want, _ := os.ReadFile(srcPath)
					if !bytes.Equal(got, want) {
						return fmt.Errorf("%s: content differs", p)
					}
				case in.Mode.Type() == fs.ModeSymlink:
					want, _ := os.Readlink(srcPath)
					got, err := bi.fs.ReadLink(in)
					if err != nil || got != want {
						return fmt.Errorf("%s: link %q (%v), source %q", p, got, err, want)
					}
				case in.Mode.Type()&fs.ModeDevice != 0:
					rdev := st.Sys().(*syscall.Stat_t).Rdev
					major, minor := unix.Major(rdev), unix.Minor(rdev)
					want := minor&0xff | major<<8 | (minor&^0xff)<<12 // the kernel's new_encode_dev
					if in.Rdev != want {
						return fmt.Errorf("%s: rdev %#x, source %#x", p, in.Rdev, want)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			// Every source path is in the image.
			err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
				rel, _ := filepath.Rel(src, p)
				if !seen[filepath.Join("/", rel)] {
					t.Errorf("source has %s, image does not", rel)
				}
				return err
			})
			must(t, err)
			// The hard links share an inode.
			a, err1 := bi.fs.Lookup("/one")
			b, err2 := bi.fs.Lookup("hardlink")
			if err1 != nil || err2 != nil || a.Nid != b.Nid {
				t.Errorf("hard links: %v %v %+v %+v", err1, err2, a, b)
			}
			if _, err := bi.fs.Lookup("/no/such"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Lookup of a missing path: %v", err)
			}
			checkCoverage(t, bi)
			checkAgainstFsck(t, bi, src)
			checkAgainstDump(t, bi, []string{"/chunk+1", "/multi", "/zeros", "/one", "/dup/copy-of-chunk", "/empty"})
		})
	}
}

func sameFile(t testing.TB, a, b string) bool {
	sa, err1 := os.Lstat(a)
	sb, err2 := os.Lstat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// checkCoverage: every byte a file read can touch falls in a chunk of the manifest, and every
// chunk's CID verifies against the blob.
func checkCoverage(t *testing.T, bi *builtImage) {
	t.Helper()
	for i, b := range bi.res.Image.Blobs {
		m := b.Manifest
		if err := m.Validate(); err != nil {
			t.Fatal(err)
		}
		for _, c := range m.Chunks {
			buf := make([]byte, c.Length)
			if _, err := bi.blobs[i].ReadAt(buf, c.Offset); err != nil {
				t.Fatalf("chunk at %d: %v", c.Offset, err)
			}
			if _, err := chunk.Verify(c.CID, buf); err != nil {
				t.Fatal(err)
			}
		}
	}
	err := bi.fs.Walk(func(p string, in *Inode) error {
		if !in.Mode.IsRegular() {
			return nil
		}
		ext, err := bi.fs.Extents(in)
		if err != nil {
			return err
		}
		for _, e := range ext {
			if e.Hole || e.Device == 0 {
				continue
			}
			m := bi.res.Image.Blobs[e.Device-1].Manifest
			pos, end := e.DeviceOffset, e.DeviceOffset+roundUp(e.Length, chunk.BlockSize)
			for _, c := range m.ChunksIn(pos, end-pos) {
				if c.Offset > pos {
					return fmt.Errorf("%s: blob bytes [%d,%d) in no chunk", p, pos, c.Offset)
				}
				pos = c.End()
			}
			if pos < min(end, m.BlobSize) {
				return fmt.Errorf("%s: blob bytes [%d,%d) in no chunk", p, pos, end)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// checkAgainstFsck extracts the image with fsck.erofs and compares it with the source tree.
func checkAgainstFsck(t *testing.T, bi *builtImage, src string) {
	fsck := needTool(t, "fsck.erofs")
	x := filepath.Join(t.TempDir(), "x")
	cmd := exec.Command(fsck, "--device="+bi.devicePath(t, 0), "--extract="+x, bi.boot.Name())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs: %v\n%s", err, out)
	}
	err := filepath.WalkDir(x, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(x, p)
		in, err := bi.fs.Lookup(rel)
		if err != nil {
			return fmt.Errorf("fsck extracted %s, reader cannot find it: %w", rel, err)
		}
		st, _ := os.Lstat(p)
		if st.Mode().Type() != in.Mode.Type() {
			return fmt.Errorf("%s: fsck type %v, reader %v", rel, st.Mode().Type(), in.Mode.Type())
		}
		if d.Type().IsRegular() {
			want, _ := os.ReadFile(p)
			got, err := bi.fs.ReadFile(in, bi.devices(), 1<<30)
			// fsck.erofs 1.5 extracts a file that ends in holes (chunks with no block) short: it
			// writes the data it finds and never extends the file to its size. Those bytes are
			// zeros (the kernel mount test checks them).
			if len(want) < len(got) && !bytes.ContainsFunc(got[len(want):], func(r rune) bool { return r != 0 }) {
				want = append(want, make([]byte, len(got)-len(want))...)
			}
			if err != nil || !bytes.Equal(got, want) {
				return fmt.Errorf("%s: reader content differs from fsck.erofs's (%v)", rel, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

var dumpExtent = regexp.MustCompile(`^\s*\d+:\s+(\d+)\.\.\s*(\d+)\s*\|\s*(\d+)\s*:\s*(\d+)\.\.\s*(\d+)\s*\|\s*(\d+)\s*(?:#\s*device\s*(\d+))?`)

// checkAgainstDump compares the reader's extents with dump.erofs -e.
func checkAgainstDump(t *testing.T, bi *builtImage, paths []string) {
	dump := needTool(t, "dump.erofs")
	for _, p := range paths {
		out, err := exec.Command(dump, "--device="+bi.devicePath(t, 0), "-e", "--path="+p, bi.boot.Name()).CombinedOutput()
		if err != nil {
			t.Fatalf("dump.erofs %s: %v\n%s", p, err, out)
		}
		in, err := bi.fs.Lookup(p)
		must(t, err)
		ext, err := bi.fs.Extents(in)
		must(t, err)
		var got []string
		for _, e := range ext {
			got = append(got, fmt.Sprintf("%d+%d@%d:%d", e.FileOffset, roundUp(e.Length, chunk.BlockSize), e.Device, e.DeviceOffset))
		}
		var want []string
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			m := dumpExtent.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			dev := m[7]
			if dev == "" {
				dev = "0"
			}
			want = append(want, fmt.Sprintf("%s+%s@%s:%s", m[1], m[3], dev, m[4]))
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: reader extents %v, dump.erofs %v\n%s", p, got, want, out)
		}
	}
}

func TestSharedFilesShareChunks(t *testing.T) {
	const chunkSize = 64 << 10
	shared := randBytes(t, 3*chunkSize+777)
	a, b := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(a, "x", "shared.bin"), shared)
	writeFile(t, filepath.Join(a, "only-a"), randBytes(t, 2*chunkSize))
	writeFile(t, filepath.Join(b, "only-b"), randBytes(t, chunkSize+5))
	writeFile(t, filepath.Join(b, "elsewhere", "renamed.bin"), shared)
	ia, ib := buildImage(t, a, chunkSize), buildImage(t, b, chunkSize)
	cidsOf := func(bi *builtImage, p string) []cid.Cid {
		in, err := bi.fs.Lookup(p)
		must(t, err)
		ext, err := bi.fs.Extents(in)
		must(t, err)
		var out []cid.Cid
		for _, e := range ext {
			cs := bi.res.Image.Blobs[0].Manifest.ChunksIn(e.DeviceOffset, e.Length)
			if len(cs) != 1 || cs[0].Offset != e.DeviceOffset {
				t.Fatalf("%s: extent %+v maps to chunks %v", p, e, cs)
			}
			out = append(out, cs[0].CID)
		}
		return out
	}
	ca, cb := cidsOf(ia, "/x/shared.bin"), cidsOf(ib, "/elsewhere/renamed.bin")
	if len(ca) != 4 || fmt.Sprint(ca) != fmt.Sprint(cb) {
		t.Fatalf("shared file chunks differ:\n%v\n%v", ca, cb)
	}
	if ia.res.Image.Blobs[0].Digest == ib.res.Image.Blobs[0].Digest {
		t.Fatal("different trees gave the same blob")
	}
}

func TestBuildErrors(t *testing.T) {
	needTool(t, "mkfs.erofs")
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "f"), []byte("x"))
	existing := t.TempDir()
	ctx := context.Background()
	cases := []struct {
		name string
		src  string
		out  string
		opts BuildOptions
		want string
	}{
		{"output exists", src, existing, BuildOptions{}, "already exists"},
		{"missing source", filepath.Join(src, "nope"), filepath.Join(t.TempDir(), "o"), BuildOptions{}, "no such file"},
		{"source is a file", filepath.Join(src, "f"), filepath.Join(t.TempDir(), "o"), BuildOptions{}, "not a directory"},
		{"chunk size not a power of two", src, filepath.Join(t.TempDir(), "o"), BuildOptions{ChunkSize: 3 << 20}, "power of two"},
		{"chunk size too small", src, filepath.Join(t.TempDir(), "o"), BuildOptions{ChunkSize: 512}, "power of two"},
		{"no mkfs", src, filepath.Join(t.TempDir(), "o"), BuildOptions{Engine: EngineMkfs, Mkfs: "/nonexistent/mkfs.erofs"}, "mkfs.erofs failed"},
		{"unknown engine", src, filepath.Join(t.TempDir(), "o"), BuildOptions{Engine: "x"}, "engine"},
	}
	if os.Geteuid() != 0 { // root reads everything; only others can see an unreadable source
		unreadable := filepath.Join(src, "secret")
		writeFile(t, unreadable, []byte("s"))
		must(t, os.Chmod(unreadable, 0))
		cases = append(cases, struct {
			name string
			src  string
			out  string
			opts BuildOptions
			want string
		}{"unreadable", src, filepath.Join(t.TempDir(), "o"), BuildOptions{}, "permission denied"})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Build(ctx, c.src, c.out, c.opts)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
			if c.out != existing {
				if _, err := os.Stat(c.out); err == nil {
					t.Fatal("failed build left output behind")
				}
			}
			left, _ := filepath.Glob(filepath.Join(filepath.Dir(c.out), ".*building*"))
			if len(left) > 0 {
				t.Fatalf("staging left behind: %v", left)
			}
		})
	}
	t.Setenv("PATH", t.TempDir())
	if _, err := Build(ctx, src, filepath.Join(t.TempDir(), "o"), BuildOptions{Engine: EngineMkfs}); !errors.Is(err, ErrNoMkfs) {
		t.Fatalf("without mkfs.erofs in PATH: %v", err)
	}
}

func TestEmptyTree(t *testing.T) {
	bi := buildImage(t, t.TempDir(), 0)
	if n := len(bi.res.Image.Blobs[0].Manifest.Chunks); n != 0 {
		t.Fatalf("empty tree has %d chunks", n)
	}
	ents, err := bi.fs.ReadDir(mustInode(t, bi.fs, bi.fs.RootNid()))
	must(t, err)
	if len(ents) != 2 {
		t.Fatalf("root of empty tree lists %v", ents)
	}
}

func mustInode(t testing.TB, f *FS, nid uint64) *Inode {
	in, err := f.Inode(nid)
	must(t, err)
	return in
}

func TestCheck(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src, 64<<10)
	bi := buildImage(t, src, 64<<10)
	size := bi.res.Image.Blobs[0].Size
	must(t, bi.fs.Check([]int64{size}))
	if err := bi.fs.Check(nil); !errors.Is(err, ErrFormat) {
		t.Errorf("no blobs for a one-device image: %v", err)
	}
	if err := bi.fs.Check([]int64{size / 2}); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "past the end of device 1") {
		t.Errorf("blob shorter than its data: %v", err)
	}
}
