package bootstrap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/chunk"
)

// makeRichTree adds to makeTree what only a root-run writer can show: 255-byte names, owners
// past 16 bits, setuid/setgid/sticky bits, security and trusted xattrs, odd mtimes, a directory of
// many blocks, a 4000-byte symlink target.
func makeRichTree(t *testing.T, dir string, chunkSize int) {
	makeTree(t, dir, chunkSize)
	writeFile(t, filepath.Join(dir, "names", strings.Repeat("M", 255)), []byte("255"))
	writeFile(t, filepath.Join(dir, "names", strings.Repeat("é", 127)), []byte("254 bytes of utf-8"))
	must(t, os.Symlink(strings.Repeat("x/", 2000), filepath.Join(dir, "verylonglink")))
	writeFile(t, filepath.Join(dir, "suid"), []byte("#!/bin/true\n"))
	must(t, os.Chmod(filepath.Join(dir, "suid"), 0o4755|os.ModeSetuid))
	must(t, os.Mkdir(filepath.Join(dir, "sticky"), 0o755))
	must(t, os.Chmod(filepath.Join(dir, "sticky"), 0o1777|os.ModeSticky))
	must(t, os.Chmod(filepath.Join(dir, "sticky"), 0o777|os.ModeSticky|os.ModeSetgid))
	writeFile(t, filepath.Join(dir, "bigowner"), []byte("owned"))
	must(t, os.Lchown(filepath.Join(dir, "bigowner"), 100000, 200000))
	must(t, os.Lchown(filepath.Join(dir, "link"), 7, 8))
	must(t, unix.Setxattr(filepath.Join(dir, "suid"), "security.capability", []byte{1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0))
	must(t, unix.Setxattr(filepath.Join(dir, "sticky"), "trusted.overlay.opaque", []byte("y"), 0))
	must(t, unix.Setxattr(filepath.Join(dir, "block"), "user.big", bytes.Repeat([]byte{0xab}, 3000), 0))
	for i := range 700 { // a directory of many blocks, its tail inline
		writeFile(t, filepath.Join(dir, "many", fmt.Sprintf("%03d-%s", i, strings.Repeat("n", 40))), nil)
	}
	ts := []int64{0, 1, 1 << 33, 1700000000}
	i := 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			sec := ts[i%len(ts)]
			i++
			tv := []unix.Timespec{{Sec: sec, Nsec: int64(i * 1000)}, {Sec: sec, Nsec: int64(i * 1000)}}
			return unix.UtimesNanoAt(unix.AT_FDCWD, p, tv, unix.AT_SYMLINK_NOFOLLOW)
		}
		return err
	})
}

type entryInfo struct {
	Type       fs.FileMode
	Mode       uint32
	UID, GID   uint32
	Size       int64
	Mtime      [2]int64
	Rdev       uint64
	Target     string
	Xattrs     map[string]string
	Content    string // sha-like digest for files
	LinkGroup  string // the first path of the hard-link group
	dev, inode uint64
}

// snapshot records everything a runtime cares about for each path under root.
func snapshot(t *testing.T, root string) map[string]entryInfo {
	t.Helper()
	out := map[string]entryInfo{}
	groups := map[[2]uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := entryInfo{Type: d.Type(), Mode: st.Mode, UID: st.Uid, GID: st.Gid, Xattrs: map[string]string{}}
		names, err := listXattrs(p)
		if err != nil {
			return err
		}
		for _, n := range names {
			v, err := getXattr(p, n)
			if err != nil {
				return err
			}
			e.Xattrs[n] = string(v)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			e.Size = st.Size
			e.Mtime = [2]int64{st.Mtim.Sec, st.Mtim.Nsec}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.Content = fmt.Sprintf("%x", chunk.CID(b).Hash())
			key := [2]uint64{st.Dev, st.Ino}
			if g, ok := groups[key]; ok {
				e.LinkGroup = g
			} else {
				groups[key] = rel
				e.LinkGroup = rel
			}
		case unix.S_IFLNK:
			e.Target, _ = os.Readlink(p)
		case unix.S_IFCHR, unix.S_IFBLK:
			e.Rdev = st.Rdev
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// mountFileBacked mounts an EROFS image file-backed (mount(2) with the image path as source and
// one device= per blob), as the daemon's fanotify and FUSE modes do. It skips where the kernel
// cannot.
func mountFileBacked(t *testing.T, boot string, blobs []string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	if b, _ := os.ReadFile("/proc/filesystems"); !bytes.Contains(b, []byte("erofs")) {
		t.Skip("kernel has no erofs")
	}
	mp := t.TempDir()
	var opts []string
	for _, b := range blobs {
		opts = append(opts, "device="+b)
	}
	if err := unix.Mount(boot, mp, "erofs", unix.MS_RDONLY, strings.Join(opts, ",")); err != nil {
		if errors.Is(err, unix.ENOTBLK) {
			t.Skipf("kernel cannot mount erofs file-backed: %v", err)
		}
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mp, unix.MNT_DETACH) })
	return mp
}

// TestWriterKernelMount: an image written by WriteEROFS (through Build), mounted by the real
// kernel, shows the source tree exactly: types, modes, owners, sizes, mtimes, xattrs, contents,
// link targets, device numbers and hard-link groups.
func TestWriterKernelMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown, trusted xattrs, mount)")
	}
	const chunkSize = 64 << 10
	src := t.TempDir()
	makeRichTree(t, src, chunkSize)
	bi := buildImage(t, src, chunkSize)
	mp := mountFileBacked(t, bi.boot.Name(), []string{bi.devicePath(t, 0)})
	want, got := snapshot(t, src), snapshot(t, mp)
	// The mount point's own root differs only in what the test directory is: compare the rest.
	delete(want, ".")
	delete(got, ".")
	if len(want) != len(got) {
		t.Errorf("source has %d entries, mount %d", len(want), len(got))
	}
	var keys []string
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	bad := 0
	for _, k := range keys {
		w, g := want[k], got[k]
		w.dev, w.inode, g.dev, g.inode = 0, 0, 0, 0
		if !reflect.DeepEqual(w, g) && bad < 10 {
			bad++
			t.Errorf("%s:\nsource %+v\nmount  %+v", k, w, g)
		}
	}
	// The comparison saw what it is meant to.
	if g := got["suid"]; g.Xattrs["security.capability"] == "" || g.Mode&unix.S_ISUID == 0 {
		t.Errorf("suid: %+v", g)
	}
	if g := got["sticky"]; g.Xattrs["trusted.overlay.opaque"] != "y" || g.Mode&unix.S_ISVTX == 0 {
		t.Errorf("sticky: %+v", g)
	}
	if g := got["bigowner"]; g.UID != 100000 || g.GID != 200000 {
		t.Errorf("bigowner: %+v", g)
	}
	if got["hardlink"].LinkGroup != got["one"].LinkGroup || got["null"].Rdev == 0 || len(got[filepath.Join("names", strings.Repeat("M", 255))].Content) == 0 {
		t.Errorf("hard link, device or 255-byte name missing: %+v %+v %+v", got["hardlink"], got["one"], got["null"])
	}
	// The writer's chunk manifest is exactly what the reader derives from the image.
	ms, err := ChunkManifests(bi.fs, []BlobData{{Digest: bi.res.Image.Blobs[0].Digest, Size: bi.res.Image.Blobs[0].Size, R: bi.blobs[0]}}, chunkSize)
	must(t, err)
	if !reflect.DeepEqual(ms[0], bi.res.Image.Blobs[0].Manifest) {
		t.Errorf("ChunkManifests of the image differs from the writer's manifest")
	}
	checkCoverage(t, bi)
}

// TestWriterMatchesMkfsChunks: the same tree built by mkfs.erofs and by the Go writer gives the
// same CID for every chunk of file data (mkfs.erofs stores all-zero chunks, the writer makes them
// holes): images of either engine share chunks.
func TestWriterMatchesMkfsChunks(t *testing.T) {
	needTool(t, "mkfs.erofs")
	const chunkSize = 64 << 10
	src := t.TempDir()
	makeTree(t, src, chunkSize)
	ctx := context.Background()
	build := func(engine string) *builtImage {
		out := filepath.Join(t.TempDir(), "img")
		res, err := Build(ctx, src, out, BuildOptions{ChunkSize: chunkSize, Engine: engine})
		must(t, err)
		lay := Layout{out}
		bi := &builtImage{res: res, out: out}
		bi.boot, err = os.Open(lay.BlobPath(res.Image.Bootstrap.Digest))
		must(t, err)
		t.Cleanup(func() { bi.boot.Close() })
		bi.fs, err = Open(bi.boot, res.Image.Bootstrap.Size)
		must(t, err)
		return bi
	}
	g, m := build(EngineGo), build(EngineMkfs)
	type ref struct {
		cid    string
		length int64
	}
	cids := func(bi *builtImage) map[string][]ref {
		out := map[string][]ref{}
		man := bi.res.Image.Blobs[0].Manifest
		must(t, bi.fs.WalkExtents(func(p string, in *Inode, e Extent) error {
			r := ref{cid: "hole"}
			if !e.Hole {
				cs := man.ChunksIn(e.DeviceOffset, 1)
				if len(cs) != 1 || cs[0].Offset != e.DeviceOffset {
					return fmt.Errorf("%s: extent %+v has no chunk of its own", p, e)
				}
				r = ref{cs[0].CID.String(), cs[0].Length}
			}
			out[p] = append(out[p], r)
			return nil
		}))
		return out
	}
	cg, cm := cids(g), cids(m)
	if len(cg) != len(cm) {
		t.Errorf("go image has %d files with data, mkfs %d", len(cg), len(cm))
	}
	for p, list := range cm {
		if len(cg[p]) != len(list) {
			t.Fatalf("%s: go image has %d chunks, mkfs %d", p, len(cg[p]), len(list))
		}
		for i, c := range list {
			zero := chunk.CID(make([]byte, c.length)).String()
			if cg[p][i].cid != c.cid && !(cg[p][i].cid == "hole" && c.cid == zero) {
				t.Errorf("%s chunk %d: go %s, mkfs %s", p, i, cg[p][i].cid, c.cid)
			}
		}
	}
	if g.res.Image.Blobs[0].Manifest.DataBytes() > m.res.Image.Blobs[0].Manifest.DataBytes() {
		t.Errorf("go writer stores %d bytes, mkfs.erofs %d", g.res.Image.Blobs[0].Manifest.DataBytes(), m.res.Image.Blobs[0].Manifest.DataBytes())
	}
}

func TestWriterRejects(t *testing.T) {
	reg := func(size int64, chunks ...ChunkRef) *Node {
		return &Node{Mode: ModeRegular | 0o644, Size: size, Chunks: chunks}
	}
	dev := []DeviceSpec{{Size: 1 << 20}}
	cases := []struct {
		name string
		tree func() *Tree
		devs []DeviceSpec
		want string
	}{
		{"long name", func() *Tree {
			tr := NewTree()
			tr.Root.Children[strings.Repeat("a", 256)] = reg(0)
			return tr
		}, nil, "more than 255"},
		{"dot name", func() *Tree { tr := NewTree(); tr.Root.Children[".."] = reg(0); return tr }, nil, "bad file name"},
		{"slash", func() *Tree { tr := NewTree(); tr.Root.Children["a/b"] = reg(0); return tr }, nil, "bad file name"},
		{"chunk count", func() *Tree { tr := NewTree(); tr.Root.Children["f"] = reg(70000, ChunkRef{Device: 1}); return tr }, dev, "need 2 chunks"},
		{"no device", func() *Tree { tr := NewTree(); tr.Root.Children["f"] = reg(10, ChunkRef{Device: 2}); return tr }, dev, "device 2"},
		{"past device", func() *Tree {
			tr := NewTree()
			tr.Root.Children["f"] = reg(10, ChunkRef{Device: 1, Offset: 1 << 20})
			return tr
		}, dev, "past device"},
		{"unaligned", func() *Tree {
			tr := NewTree()
			tr.Root.Children["f"] = reg(10, ChunkRef{Device: 1, Offset: 100})
			return tr
		}, dev, "block-aligned"},
		{"bad xattr", func() *Tree {
			tr := NewTree()
			tr.Root.Xattrs = map[string][]byte{"system.other": nil}
			return tr
		}, nil, "EROFS stores only"},
		{"dir twice", func() *Tree {
			tr := NewTree()
			d := NewDir(0o755)
			tr.Root.Children["a"], tr.Root.Children["b"] = d, d
			return tr
		}, nil, "linked twice"},
		{"empty symlink", func() *Tree { tr := NewTree(); tr.Root.Children["l"] = &Node{Mode: ModeSymlink | 0o777}; return tr }, nil, "symlink target"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := WriteEROFS(c.tree(), WriteOptions{ChunkSize: 64 << 10, Devices: c.devs})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}

// FuzzWriteEROFS: any tree the writer accepts reads back through Open, Walk and Check with the
// same entries, sizes and link targets.
func FuzzWriteEROFS(f *testing.F) {
	f.Add(uint64(1), uint8(10))
	f.Add(uint64(7), uint8(200))
	f.Fuzz(func(t *testing.T, seed uint64, n uint8) {
		rng := rand.New(rand.NewPCG(seed, 3))
		tr := NewTree()
		dirs := []*Node{tr.Root}
		var files []*Node
		devSize := int64(1 << 20)
		for i := range int(n) {
			parent := dirs[rng.IntN(len(dirs))]
			name := fmt.Sprintf("%s%d", strings.Repeat("n", rng.IntN(250)), i)
			var c *Node
			switch rng.IntN(5) {
			case 0:
				c = NewDir(uint32(rng.IntN(0o7777)))
				dirs = append(dirs, c)
			case 1:
				c = &Node{Mode: ModeSymlink | 0o777, Target: strings.Repeat("t", 1+rng.IntN(4095))}
			case 2:
				if len(files) > 0 {
					c = files[rng.IntN(len(files))]
					break
				}
				fallthrough
			default:
				size := rng.Int64N(300 << 10)
				c = &Node{Mode: ModeRegular | 0o644, Size: size, UID: rng.Uint32(), Mtime: rng.Int64N(1 << 40)}
				for range (size + 65535) / 65536 {
					c.Chunks = append(c.Chunks, ChunkRef{Device: 1, Offset: rng.Int64N(devSize/4096-16) * 4096, Hole: rng.IntN(4) == 0})
				}
				files = append(files, c)
			}
			if rng.IntN(3) == 0 {
				c.Xattrs = map[string][]byte{"user.k" + name[:min(len(name), 20)]: bytes.Repeat([]byte{1}, rng.IntN(500))}
			}
			parent.Children[name] = c
		}
		img, err := WriteEROFS(tr, WriteOptions{ChunkSize: 64 << 10, Devices: []DeviceSpec{{Size: devSize}}})
		if err != nil {
			t.Fatal(err)
		}
		efs, err := Open(bytes.NewReader(img), int64(len(img)))
		if err != nil {
			t.Fatal(err)
		}
		if err := efs.Check([]int64{devSize}); err != nil {
			t.Fatal(err)
		}
		count := 0
		err = efs.Walk(func(p string, in *Inode) error {
			count++
			nd := tr.Lookup(p)
			if nd == nil {
				return fmt.Errorf("%s: not in the tree", p)
			}
			if uint32(in.RawMode) != nd.Mode&0xFFFF {
				return fmt.Errorf("%s: mode %o, want %o", p, in.RawMode, nd.Mode)
			}
			if nd.IsRegular() && in.Size != nd.Size || nd.Mode&ModeTypeMask == ModeSymlink && in.Size != int64(len(nd.Target)) {
				return fmt.Errorf("%s: size %d", p, in.Size)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if count != int(n)+1 {
			t.Fatalf("walked %d entries, tree has %d", count, int(n)+1)
		}
	})
}
