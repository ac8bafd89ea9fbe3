package fusetree_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/demand/fusetree"
	"github.com/shoal-p2p/shoal/mount"
	"github.com/shoal-p2p/shoal/mount/mounttest"
)

func TestMain(m *testing.M) {
	mounttest.ReaderMain()
	os.Exit(m.Run())
}

var quiet = slog.New(slog.DiscardHandler)

// makeTree writes a tree with every kind of file an image can hold: regular files of sizes
// around block and chunk boundaries, holes, hard links, symlinks (short, long, dangling),
// character and block devices, a FIFO, a socket, setuid/setgid/sticky bits, owners past 16 bits,
// nanosecond mtimes, user/trusted/security xattrs (the same ones on many files, which mkfs.erofs
// stores as shared xattrs), overlay whiteouts and opaque directories, a directory of many
// blocks and a deep path.
func makeTree(t *testing.T, dir string, chunk int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	write := func(rel string, b []byte, mode os.FileMode) {
		p := filepath.Join(dir, rel)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, b, mode))
		must(t, os.Chmod(p, mode))
	}
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	for _, n := range []int{0, 1, 100, 4095, 4096, 4097, chunk - 1, chunk, chunk + 1, 3*chunk + 12345} {
		write(fmt.Sprintf("files/f-%d", n), random(n), 0o644)
	}
	big := random(5*chunk + 777)
	write("files/big", big, 0o640)
	write("files/copy-of-big", big, 0o600)
	write("files/zeros", make([]byte, 2*chunk+5), 0o644)
	must(t, os.Link(filepath.Join(dir, "files/f-100"), filepath.Join(dir, "files/hard-1")))
	must(t, os.Link(filepath.Join(dir, "files/f-100"), filepath.Join(dir, "hard-2")))
	must(t, os.Symlink("files/f-1", filepath.Join(dir, "link")))
	must(t, os.Symlink(strings.Repeat("../", 400)+"x", filepath.Join(dir, "longlink")))
	must(t, os.Symlink("/nowhere/at/all", filepath.Join(dir, "dangling")))
	must(t, unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(t, unix.Mknod(filepath.Join(dir, "bigdev"), unix.S_IFCHR|0o600, int(unix.Mkdev(300, 70000))))
	must(t, unix.Mknod(filepath.Join(dir, "loop"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 0))))
	must(t, syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o620))
	if l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "sock"), Net: "unix"}); err == nil {
		l.SetUnlinkOnClose(false)
		l.Close()
	}
	write("suid", []byte("#!/bin/true\n"), 0o755)
	must(t, os.Chmod(filepath.Join(dir, "suid"), 0o755|os.ModeSetuid|os.ModeSetgid))
	must(t, os.Mkdir(filepath.Join(dir, "sticky"), 0o777))
	must(t, os.Chmod(filepath.Join(dir, "sticky"), 0o777|os.ModeSticky))
	write("owned", []byte("owned"), 0o400)
	must(t, os.Lchown(filepath.Join(dir, "owned"), 100000, 200000))
	must(t, os.Lchown(filepath.Join(dir, "link"), 7, 8))
	must(t, unix.Setxattr(filepath.Join(dir, "suid"), "security.capability", []byte{1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0))
	must(t, unix.Setxattr(filepath.Join(dir, "files/f-4096"), "user.big", bytes.Repeat([]byte{0xab}, 3000), 0))
	for i := range 6 { // the same xattr on many inodes: shared
		p := filepath.Join(dir, "shared", fmt.Sprintf("s%d", i))
		write(filepath.Join("shared", fmt.Sprintf("s%d", i)), []byte{byte(i)}, 0o644)
		must(t, unix.Setxattr(p, "user.shared", []byte("one value for all"), 0))
		must(t, unix.Setxattr(p, "trusted.shared", []byte("another"), 0))
		must(t, unix.Setxattr(p, "user.own", []byte(fmt.Sprint(i)), 0))
	}
	// Overlay metadata, as a layer built for overlayfs carries it.
	must(t, os.MkdirAll(filepath.Join(dir, "ovl/opaque/inside"), 0o755))
	write("ovl/opaque/inside/kept", []byte("kept"), 0o644)
	must(t, unix.Setxattr(filepath.Join(dir, "ovl/opaque"), "trusted.overlay.opaque", []byte("y"), 0))
	must(t, unix.Mknod(filepath.Join(dir, "ovl/whiteout"), unix.S_IFCHR, 0)) // mode 0, device 0: a whiteout
	for i := range 600 {                                                     // several directory blocks
		write(filepath.Join("wide", fmt.Sprintf("%04d-%s", i, strings.Repeat("w", i%60))), []byte(fmt.Sprint(i)), 0o644)
	}
	deep := "deep"
	for i := range 30 {
		deep = filepath.Join(deep, fmt.Sprintf("d%d", i))
	}
	write(filepath.Join(deep, "leaf"), []byte("leaf\n"), 0o644)
	i := 0
	must(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		i++
		ts := []unix.Timespec{{Sec: 1700000000 + int64(i), Nsec: int64(i) * 1001}, {Sec: 1700000000 + int64(i), Nsec: int64(i) * 1001}}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	}))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// entry is everything a runtime sees of one path.
type entry struct {
	Mode, UID, GID, Nlink uint32
	Size                  int64
	Rdev                  uint64
	Mtime                 [2]int64
	Target                string
	Xattrs                string
	Content               string
	Group                 string // the first path (in walk order) with the same st_ino
}

func snapshot(t *testing.T, root string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	groups := map[uint64]string{}
	must(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := entry{Mode: st.Mode, UID: st.Uid, GID: st.Gid, Nlink: uint32(st.Nlink), Mtime: [2]int64{st.Mtim.Sec, st.Mtim.Nsec}}
		if g, ok := groups[st.Ino]; ok {
			e.Group = g
		} else {
			groups[st.Ino] = rel
			e.Group = rel
		}
		var names []string
		buf := make([]byte, 64<<10)
		n, err := unix.Llistxattr(p, buf)
		if err != nil {
			return fmt.Errorf("listxattr %s: %w", p, err)
		}
		for _, name := range strings.Split(string(buf[:n]), "\x00") {
			if name == "" {
				continue
			}
			v := make([]byte, 64<<10)
			k, err := unix.Lgetxattr(p, name, v)
			if err != nil {
				return fmt.Errorf("getxattr %s %s: %w", p, name, err)
			}
			names = append(names, fmt.Sprintf("%s=%x", name, v[:k]))
		}
		slices.Sort(names)
		e.Xattrs = strings.Join(names, ";")
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			e.Size = st.Size
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.Content = fmt.Sprintf("%x", sha256.Sum256(b))
		case unix.S_IFLNK:
			e.Size = st.Size
			e.Target, err = os.Readlink(p)
			if err != nil {
				return err
			}
		case unix.S_IFCHR, unix.S_IFBLK:
			e.Rdev = st.Rdev
		}
		out[rel] = e
		return nil
	}))
	return out
}

type fixture struct {
	dir    string
	im     *mounttest.Image
	srv    *fusetree.Server
	target string
}

// buildTree builds a tree of every file kind with engine (bootstrap.EngineGo or EngineMkfs).
func buildTree(t *testing.T, dir, engine string) *mounttest.Image {
	t.Helper()
	if engine == bootstrap.EngineMkfs {
		if _, err := os.Stat("/usr/bin/mkfs.erofs"); err != nil {
			if _, err := os.Stat("/usr/sbin/mkfs.erofs"); err != nil {
				t.Skip("mkfs.erofs not installed (erofs-utils)")
			}
		}
	}
	src := filepath.Join(dir, "src")
	makeTree(t, src, 64<<10)
	out := filepath.Join(dir, "image")
	res, err := bootstrap.Build(context.Background(), src, out, bootstrap.BuildOptions{ChunkSize: 64 << 10, Engine: engine})
	if err != nil {
		t.Fatalf("bootstrap.Build (%s): %v", engine, err)
	}
	l := bootstrap.Layout{Dir: out}
	return &mounttest.Image{Src: src, Layout: l, Image: res.Image, Bootstrap: l.BlobPath(res.Image.Bootstrap.Digest)}
}

func serve(t *testing.T, dir string, im *mounttest.Image, res fusetree.Resolver, rd fusetree.BlobReader) *fixture {
	t.Helper()
	fx := &fixture{dir: dir, im: im, target: filepath.Join(dir, "tree")}
	must(t, os.Mkdir(fx.target, 0o755))
	t.Cleanup(func() { mounttest.AssertNothingLeft(t, dir) })
	mounttest.CleanupMount(t, fx.target)
	cfg := fusetree.DefaultConfig()
	cfg.ReadTimeout = 20 * time.Second
	cfg.Logger = quiet
	var blobs []digest.Digest
	for _, b := range im.Image.Blobs {
		blobs = append(blobs, b.Digest)
	}
	srv, err := fusetree.Mount(fx.target, fusetree.Image{Bootstrap: im.Bootstrap, Blobs: blobs}, res, rd, cfg)
	if err != nil {
		if _, e := os.Stat("/dev/fuse"); e != nil {
			t.Skipf("no FUSE on this machine: %v", e)
		}
		t.Fatal(err)
	}
	fx.srv = srv
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return fx
}

// mountKernel mounts the same image with the kernel's EROFS (file-backed, the layout's blob
// files as devices): the reference the tree server must match.
func mountKernel(t *testing.T, dir string, im *mounttest.Image) string {
	t.Helper()
	if err := mount.ProbeFileBacked(); err != nil {
		t.Skipf("no kernel EROFS to compare with: %v", err)
	}
	mp := filepath.Join(dir, "erofs")
	must(t, os.Mkdir(mp, 0o755))
	mounttest.CleanupMount(t, mp)
	var devs []string
	for i := range im.Image.Blobs {
		devs = append(devs, im.BlobPath(i))
	}
	must(t, mount.MountFileBacked(im.Bootstrap, devs, mp, mount.FileBackedOptions{}))
	t.Cleanup(func() { _ = mount.Unmount(mp) })
	return mp
}

// TestMatchesKernelEROFS mounts one image both ways, through the tree server (data through the
// real chunk store, fetched on demand) and with the kernel's EROFS, and compares every path:
// lstat (mode, owner, size, nlink, rdev, mtime to the nanosecond), link targets, xattrs, bytes,
// and which paths share an inode.
func TestMatchesKernelEROFS(t *testing.T) {
	mounttest.RequireRoot(t)
	for _, engine := range []string{bootstrap.EngineGo, bootstrap.EngineMkfs} {
		t.Run(engine, func(t *testing.T) {
			dir := t.TempDir()
			im := buildTree(t, dir, engine)
			store := mounttest.OpenStore(t, filepath.Join(dir, "cache"), im)
			res := &mounttest.StoreResolver{Store: store, Image: im}
			fx := serve(t, dir, im, res, store)
			ref := mountKernel(t, dir, im)

			want, got := snapshot(t, ref), snapshot(t, fx.target)
			if len(want) < 600 {
				t.Fatalf("kernel mount shows %d paths: the tree was not built", len(want))
			}
			for p, w := range want {
				g, ok := got[p]
				switch {
				case !ok:
					t.Errorf("%s: missing from the tree mount", p)
				case g != w:
					t.Errorf("%s:\n tree   %+v\n kernel %+v", p, g, w)
				}
			}
			for p := range got {
				if _, ok := want[p]; !ok {
					t.Errorf("%s: in the tree mount only", p)
				}
			}
			// The comparison must have covered what it claims.
			if w := want["files/hard-1"]; w.Group != want["hard-2"].Group {
				t.Errorf("hard links not grouped on the kernel mount either: %+v", w)
			}
			if want["suid"].Xattrs == "" || want["shared/s3"].Xattrs == "" || !strings.Contains(want["ovl/opaque"].Xattrs, "trusted.overlay.opaque") {
				t.Error("the kernel mount shows no xattrs: the comparison checks nothing")
			}
			if res.Fetched.Load() == 0 {
				t.Error("no chunk fetched: file data did not go through the resolver")
			}

			var sf unix.Statfs_t
			must(t, unix.Statfs(fx.target, &sf))
			if sf.Blocks == 0 || sf.Files == 0 || sf.Namelen != 255 {
				t.Errorf("statfs: %+v", sf)
			}
			// Writes are refused as on any read-only mount.
			if err := os.WriteFile(filepath.Join(fx.target, "new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
				t.Errorf("creating a file: %v, want EROFS", err)
			}
			if _, err := os.OpenFile(filepath.Join(fx.target, "files/f-1"), os.O_WRONLY, 0); !errors.Is(err, syscall.EROFS) {
				t.Errorf("opening for write: %v, want EROFS", err)
			}
		})
	}
}

// TestRandomReads reads odd ranges of every file from another process and compares them with
// the source.
func TestRandomReads(t *testing.T) {
	mounttest.RequireRoot(t)
	dir := t.TempDir()
	im := mounttest.BuildImage(t, dir, 5)
	store := mounttest.OpenStore(t, filepath.Join(dir, "cache"), im)
	res := &mounttest.StoreResolver{Store: store, Image: im}
	fx := serve(t, dir, im, res, store)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := im.VerifyConcurrently(ctx, fx.target, 3, 30); err != nil {
		t.Fatal(err)
	}
	im.Check(t, ctx, fx.target, im.Requests(fx.target, 150, 7))
	if res.Fetched.Load() == 0 {
		t.Fatal("no chunk fetched")
	}
	// The store has backing files: whole-run requests were spliced from them, and the bytes
	// compared above include those.
	if fx.srv.SplicedBytes() == 0 {
		t.Error("no read answered by splice from a backing file")
	}
}

// TestSignalledReaderGetsData reads cold data from a reader that takes SIGURG every millisecond:
// the kernel interrupts the FUSE request each time, and the read must still return the right
// bytes, never EIO.
func TestSignalledReaderGetsData(t *testing.T) {
	mounttest.RequireRoot(t)
	dir := t.TempDir()
	im := mounttest.BuildImage(t, dir, 11)
	store := mounttest.OpenStore(t, filepath.Join(dir, "cache"), im)
	res := &mounttest.SlowResolver{StoreResolver: &mounttest.StoreResolver{Store: store, Image: im}, Delay: 15 * time.Millisecond}
	fx := serve(t, dir, im, res, store)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var reqs []mounttest.ReadReq
	for rel := range im.Files {
		reqs = append(reqs, mounttest.ReadReq{Path: filepath.Join(fx.target, rel), Len: -1})
	}
	sent, err := im.VerifySignalled(ctx, fx.target, reqs, time.Millisecond)
	if err != nil {
		t.Fatalf("after %d signals: %v", sent, err)
	}
	if res.Fetched.Load() == 0 || sent < 10 {
		t.Fatalf("%d chunks fetched, %d signals sent: the reads were not cold or not interrupted", res.Fetched.Load(), sent)
	}
	t.Logf("%d files read cold with %d signals, %d chunks fetched", len(reqs), sent, res.Fetched.Load())
}

// TestFailingResolverGivesEIO: data no source has fails the read with EIO, it does not hang.
func TestFailingResolverGivesEIO(t *testing.T) {
	mounttest.RequireRoot(t)
	dir := t.TempDir()
	im := mounttest.BuildImage(t, dir, 4)
	store := mounttest.OpenStore(t, filepath.Join(dir, "cache"), im)
	res := &mounttest.FailingResolver{}
	fx := serve(t, dir, im, res, store)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := mounttest.ChildRead(ctx, []mounttest.ReadReq{{Path: filepath.Join(fx.target, "f10-1048579"), Len: -1}})
	if err != nil {
		t.Fatalf("reader did not finish (a hang?): %v", err)
	}
	if !strings.Contains(got[0].Err, "input/output error") {
		t.Fatalf("read with a failing resolver: %+v, want EIO", got[0])
	}
	if res.Calls.Load() == 0 {
		t.Fatal("resolver never called")
	}
}

// TestCloseBusy: closing while a file of the image is open detaches the mount (it leaves the
// namespace at once, as a busy EROFS unmount does) and the open file still reads.
func TestCloseBusy(t *testing.T) {
	mounttest.RequireRoot(t)
	dir := t.TempDir()
	im := mounttest.BuildImage(t, dir, 6)
	store := mounttest.OpenStore(t, filepath.Join(dir, "cache"), im)
	fx := serve(t, dir, im, &mounttest.StoreResolver{Store: store, Image: im}, store)
	f, err := os.Open(filepath.Join(fx.target, "f10-1048579"))
	must(t, err)
	done := make(chan error, 1)
	go func() { done <- fx.srv.Close() }()
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("Close hung on a busy mount")
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), fx.target) {
		t.Error("busy mount still in the namespace after Close")
	}
	b := make([]byte, 1<<20)
	n, err := f.ReadAt(b, 1000)
	if (err != nil && !errors.Is(err, io.EOF)) || n != 1048579-1000 || !bytes.Equal(b[:n], im.Files["f10-1048579"][1000:]) {
		t.Errorf("reading the open file after the detach: %d bytes, %v", n, err)
	}
	must(t, f.Close())
}

// TestColdReadsDirect reads every file with the store complete but none of its backing files in
// the page cache: the cold path (O_DIRECT from the backing file, spliced for whole pages and
// through an aligned buffer for a file's partial last page) must give the source's bytes, from
// another process, whole files and odd ranges, several readers at once.
func TestColdReadsDirect(t *testing.T) {
	mounttest.RequireRoot(t)
	dir := t.TempDir()
	im := mounttest.BuildImage(t, dir, 11)
	store := mounttest.OpenStore(t, filepath.Join(dir, "cache"), im)
	res := &mounttest.StoreResolver{Store: store, Image: im}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, b := range im.Image.Blobs {
		must(t, res.Ensure(ctx, b.Digest, 0, b.Manifest.BlobSize))
		// WriteChunk has fdatasync'ed every chunk: dropping the clean pages leaves the bytes on
		// disk only, as after a reboot or drop_caches.
		p := store.BackingPath(b.Digest)
		f, err := os.Open(p)
		must(t, err)
		must(t, unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED))
		f.Close()
		if fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECT, 0); err != nil {
			t.Skipf("the test directory's filesystem refuses O_DIRECT (%v): the cold path falls back to splicing there", err)
		} else {
			unix.Close(fd)
		}
	}
	fetched := res.Fetched.Load()
	fx := serve(t, dir, im, res, store)
	if err := im.VerifyConcurrently(ctx, fx.target, 3, 5); err != nil {
		t.Fatal(err)
	}
	im.Check(t, ctx, fx.target, im.Requests(fx.target, 100, 9))
	if n := res.Fetched.Load(); n != fetched {
		t.Errorf("%d chunks fetched while reading a complete store", n-fetched)
	}
	if fx.srv.DirectBytes() == 0 {
		t.Error("no read answered with O_DIRECT from a backing file")
	}
	t.Logf("direct %d bytes, spliced %d (of which the page cache held %d)", fx.srv.DirectBytes(), fx.srv.SplicedBytes(), fx.srv.CachedBytes())
}
