// Package converttest makes source images for the tests of `shoal image convert` (tar layers with
// every feature the OCI layer format has, gzip/zstd/plain, OCI layouts with manifests or indexes),
// runs a real distribution registry in the test process, and holds an independent reference:
// ApplyOCI extracts layers onto a real directory with real system calls, following the
// image-spec's layer.md text (not Shoal's converter), and Snapshot records a tree for comparison.
// It is test support: nothing in Shoal imports it.
package converttest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory" // the registry's storage
)

// Entry is one tar entry of a test layer.
type Entry struct {
	Name     string
	Type     byte // tar.TypeReg, TypeDir, TypeSymlink, TypeLink, TypeChar, TypeBlock, TypeFifo
	Mode     int64
	UID, GID int
	Data     []byte
	Link     string // symlink target or hard-link target
	Xattrs   map[string]string
	Major    int64
	Minor    int64
	ModTime  time.Time
}

// Tar writes entries as an uncompressed tar (PAX where needed).
func Tar(t testing.TB, entries []Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		mt := e.ModTime
		if mt.IsZero() {
			mt = time.Unix(1700000000, 0)
		}
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Mode: e.Mode, Uid: e.UID, Gid: e.GID, Linkname: e.Link,
			Devmajor: e.Major, Devminor: e.Minor, ModTime: mt, Format: tar.FormatPAX}
		if e.Type == tar.TypeReg {
			h.Size = int64(len(e.Data))
		}
		if len(e.Xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.Xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", e.Name, err)
		}
		if h.Size > 0 {
			if _, err := tw.Write(e.Data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Compress compresses a tar: "gzip", "zstd" or "none".
func Compress(t testing.TB, b []byte, how string) []byte {
	t.Helper()
	var buf bytes.Buffer
	switch how {
	case "gzip":
		w := gzip.NewWriter(&buf)
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	case "zstd":
		w, err := zstd.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	case "none":
		return b
	default:
		t.Fatalf("compression %q", how)
	}
	return buf.Bytes()
}

// Layer is one layer of a test image: its uncompressed tar and how it is stored.
type Layer struct {
	Tar         []byte
	Compression string // "gzip", "zstd", "none"
	// Blob, when set, is stored instead of Compress(Tar) (to make corrupt layers); DiffID is
	// still the tar's.
	Blob []byte
	// Digest, when set, is written in the manifest instead of the blob's (a digest mismatch).
	Digest digest.Digest
}

// Image is a test image.
type Image struct {
	Platform ocispec.Platform
	Layers   []Layer
	Docker   bool // Docker schema 2 media types
	Config   ocispec.ImageConfig
}

// Writer puts test images into an OCI layout directory.
type Writer struct {
	t   testing.TB
	Dir string
	// ListMediaType, when set, is the media type of the index Index(…, true) writes (a Docker
	// manifest list: application/vnd.docker.distribution.manifest.list.v2+json).
	ListMediaType string
}

// NewWriter creates an OCI layout at dir.
func NewWriter(t testing.TB, dir string) *Writer {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644))
	return &Writer{t: t, Dir: dir}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (w *Writer) put(b []byte) digest.Digest {
	d := digest.FromBytes(b)
	must(w.t, os.WriteFile(filepath.Join(w.Dir, "blobs", "sha256", d.Encoded()), b, 0o644))
	return d
}

// Put stores an image's blobs, config and manifest and returns the manifest's descriptor (with
// the platform).
func (w *Writer) Put(im Image) ocispec.Descriptor {
	lt, mt, ct := ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig
	if im.Docker {
		lt, mt, ct = "application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.container.image.v1+json"
	}
	var layers []ocispec.Descriptor
	var diffIDs []digest.Digest
	for _, l := range im.Layers {
		blob := l.Blob
		if blob == nil {
			blob = Compress(w.t, l.Tar, l.Compression)
		}
		d := w.put(blob)
		if l.Digest != "" {
			d = l.Digest
		}
		mediaType := lt
		if !im.Docker {
			switch l.Compression {
			case "zstd":
				mediaType = ocispec.MediaTypeImageLayerZstd
			case "none":
				mediaType = ocispec.MediaTypeImageLayer
			}
		}
		layers = append(layers, ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(blob))})
		diffIDs = append(diffIDs, digest.FromBytes(l.Tar))
	}
	created := time.Unix(1700000000, 0).UTC()
	var history []ocispec.History
	for range im.Layers {
		history = append(history, ocispec.History{Created: &created, CreatedBy: "test layer"})
	}
	history = append(history, ocispec.History{Created: &created, CreatedBy: "ENV", EmptyLayer: true})
	cfg := ocispec.Image{Created: &created, Platform: im.Platform, Config: im.Config,
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: diffIDs}, History: history}
	cb, _ := json.Marshal(cfg)
	cd := ocispec.Descriptor{MediaType: ct, Digest: w.put(cb), Size: int64(len(cb))}
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: mt, Config: cd, Layers: layers}
	mb, _ := json.Marshal(m)
	p := im.Platform
	return ocispec.Descriptor{MediaType: mt, Digest: w.put(mb), Size: int64(len(mb)), Platform: &p}
}

// Index writes index.json listing manifests (ref name "latest"). asIndex nests them in an image
// index blob that index.json names, as a registry's tag would name a multi-platform image.
func (w *Writer) Index(manifests []ocispec.Descriptor, asIndex bool) {
	list := manifests
	if asIndex {
		mt := ocispec.MediaTypeImageIndex
		if w.ListMediaType != "" {
			mt = w.ListMediaType
		}
		idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: mt, Manifests: manifests}
		ib, _ := json.Marshal(idx)
		list = []ocispec.Descriptor{{MediaType: mt, Digest: w.put(ib), Size: int64(len(ib))}}
	}
	for i := range list {
		list[i].Annotations = map[string]string{ocispec.AnnotationRefName: "latest"}
	}
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: list}
	ib, _ := json.Marshal(idx)
	must(w.t, os.WriteFile(filepath.Join(w.Dir, "index.json"), ib, 0o644))
}

// StartRegistry runs the distribution registry (in-memory storage, no auth) on 127.0.0.1 for
// the test's lifetime and returns host:port.
func StartRegistry(t testing.TB) string {
	t.Helper()
	logrus.SetOutput(io.Discard)
	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{
		"inmemory":    configuration.Parameters{},
		"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
	}
	cfg.HTTP.Secret = "shoal-test-secret"
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv := httptest.NewServer(handlers.NewApp(ctx, cfg))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// FeatureLayers returns three layers that use every feature of the layer format the converter
// must get right. Layer 1 (gzip) is a base: directories, an empty, a sparse-like (mostly zeros)
// and multi-chunk files, absolute and dangling symlinks, a hard-link group, device nodes and a
// FIFO, setuid/setgid/sticky bits, numeric owners past 16 bits, user/security/trusted xattrs,
// 255-byte and UTF-8 names, entries listed before their parent directory. Layer 2 (zstd)
// whites out a file and a directory, makes a directory opaque while adding to it, replaces a file
// by a directory and a directory by a file, whites out and re-adds a name in one layer, links to
// a lower file and changes a directory's metadata. Layer 3 (plain tar) turns the directory back
// into a file and replaces one name of a hard-link group.
func FeatureLayers(t testing.TB, seed int64) []Layer {
	rnd := func(n int, s int64) []byte {
		b := make([]byte, n)
		x := uint64(s*7919 + seed)
		for i := range b {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			b[i] = byte(x)
		}
		return b
	}
	sparse := make([]byte, 1<<20) // holes at 64 KiB and 1 MiB chunks
	copy(sparse[600<<10:], "data in the middle of zeros")
	capability := string([]byte{1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	l1 := []Entry{
		{Name: "./", Type: tar.TypeDir, Mode: 0o755},
		{Name: "bin/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "bin/tool", Type: tar.TypeReg, Mode: 0o4755, Data: rnd(100_000, 1), Xattrs: map[string]string{"security.capability": capability}},
		{Name: "bin/big", Type: tar.TypeReg, Mode: 0o755, Data: rnd(300_000+12345, 2)},
		{Name: "bin/sh", Type: tar.TypeSymlink, Mode: 0o777, Link: "/bin/tool"},
		{Name: "etc/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "etc/empty", Type: tar.TypeReg, Mode: 0o644},
		{Name: "etc/dangling", Type: tar.TypeSymlink, Mode: 0o777, Link: "../nowhere/at/all"},
		{Name: "etc/passwd", Type: tar.TypeReg, Mode: 0o644, Data: []byte("root:x:0:0::/root:/bin/sh\n"), Xattrs: map[string]string{"user.note": "hello", "trusted.overlay.x": "y"}},
		{Name: "var/sparse", Type: tar.TypeReg, Mode: 0o600, Data: sparse},
		{Name: "var/", Type: tar.TypeDir, Mode: 0o2755, UID: 100000, GID: 100001},
		{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
		{Name: "dev/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "dev/null", Type: tar.TypeChar, Mode: 0o666, Major: 1, Minor: 3},
		{Name: "dev/loop0", Type: tar.TypeBlock, Mode: 0o660, Major: 7, Minor: 0, GID: 6},
		{Name: "dev/big", Type: tar.TypeChar, Mode: 0o600, Major: 250, Minor: 300000},
		{Name: "dev/fifo", Type: tar.TypeFifo, Mode: 0o600},
		{Name: "home/user/", Type: tar.TypeDir, Mode: 0o700, UID: 1000, GID: 1000},
		{Name: "home/user/file", Type: tar.TypeReg, Mode: 0o640, UID: 1000, GID: 1000, Data: []byte("mine")},
		{Name: "links/a", Type: tar.TypeReg, Mode: 0o644, Data: rnd(5000, 3)},
		{Name: "links/b", Type: tar.TypeLink, Link: "links/a"},
		{Name: "links/c", Type: tar.TypeLink, Link: "./links/a"},
		{Name: "names/" + strings.Repeat("n", 255), Type: tar.TypeReg, Mode: 0o644, Data: []byte("255")},
		{Name: "names/ünïcödé-名前-🐟", Type: tar.TypeReg, Mode: 0o644, Data: []byte("utf-8")},
		{Name: "gone", Type: tar.TypeReg, Mode: 0o644, Data: []byte("to be whited out")},
		{Name: "gonedir/sub/x", Type: tar.TypeReg, Mode: 0o644, Data: []byte("x")},
		{Name: "opq/old", Type: tar.TypeReg, Mode: 0o644, Data: []byte("old")},
		{Name: "opq/olddir/y", Type: tar.TypeReg, Mode: 0o644, Data: []byte("y")},
		{Name: "file2dir", Type: tar.TypeReg, Mode: 0o644, Data: []byte("a file first")},
		{Name: "dir2file/inner", Type: tar.TypeReg, Mode: 0o644, Data: []byte("inner")},
		{Name: "readd", Type: tar.TypeReg, Mode: 0o644, Data: []byte("first")},
		{Name: "dup/copy", Type: tar.TypeReg, Mode: 0o644, Data: rnd(300_000+12345, 2)},
	}
	l2 := []Entry{
		{Name: "readd", Type: tar.TypeReg, Mode: 0o600, Data: []byte("second")},
		{Name: ".wh.readd", Type: tar.TypeReg},
		{Name: ".wh.gone", Type: tar.TypeReg},
		{Name: ".wh.gonedir", Type: tar.TypeReg},
		{Name: "opq/", Type: tar.TypeDir, Mode: 0o750},
		{Name: "opq/new", Type: tar.TypeReg, Mode: 0o644, Data: []byte("new")},
		{Name: "opq/.wh..wh..opq", Type: tar.TypeReg},
		{Name: "file2dir/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "file2dir/child", Type: tar.TypeReg, Mode: 0o644, Data: []byte("child")},
		{Name: "dir2file", Type: tar.TypeReg, Mode: 0o644, Data: []byte("now a file")},
		{Name: "links/lower", Type: tar.TypeLink, Link: "etc/passwd"},
		{Name: "etc/", Type: tar.TypeDir, Mode: 0o700, UID: 5, GID: 6, Xattrs: map[string]string{"user.dir": "d"}},
		{Name: "new/deep/file", Type: tar.TypeReg, Mode: 0o644, Data: rnd(70000, 4)},
	}
	l3 := []Entry{
		{Name: "file2dir", Type: tar.TypeReg, Mode: 0o600, Data: []byte("a file again")},
		{Name: "links/b", Type: tar.TypeReg, Mode: 0o644, Data: []byte("b broke away")},
		{Name: "tmp/.wh..wh..opq", Type: tar.TypeReg},
	}
	return []Layer{
		{Tar: Tar(t, l1), Compression: "gzip"},
		{Tar: Tar(t, l2), Compression: "zstd"},
		{Tar: Tar(t, l3), Compression: "none"},
	}
}

// ApplyOCI extracts uncompressed layer tars onto dst, in order, following the image-spec
// (layer.md): a whiteout ".wh.NAME" removes NAME and ".wh..wh..opq" removes a directory's
// children, from the lower layers only (so whiteouts are applied before the layer's other
// entries); an entry replaces what is at its path unless both are directories; hard links link
// to a path already extracted. It needs root (owners, device nodes, trusted xattrs).
func ApplyOCI(t testing.TB, dst string, tars [][]byte) {
	t.Helper()
	for li, tb := range tars {
		var hdrs []*tar.Header
		var datas [][]byte
		tr := tar.NewReader(bytes.NewReader(tb))
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			must(t, err)
			b, err := io.ReadAll(tr)
			must(t, err)
			hdrs, datas = append(hdrs, h), append(datas, b)
		}
		for _, h := range hdrs {
			name := filepath.Clean(h.Name)
			base := filepath.Base(name)
			switch {
			case base == ".wh..wh..opq":
				ents, _ := os.ReadDir(filepath.Join(dst, filepath.Dir(name)))
				for _, e := range ents {
					must(t, os.RemoveAll(filepath.Join(dst, filepath.Dir(name), e.Name())))
				}
			case strings.HasPrefix(base, ".wh."):
				must(t, os.RemoveAll(filepath.Join(dst, filepath.Dir(name), strings.TrimPrefix(base, ".wh."))))
			}
		}
		var dirTimes []func()
		for i, h := range hdrs {
			name := filepath.Clean(h.Name)
			if strings.HasPrefix(filepath.Base(name), ".wh.") {
				continue
			}
			p := filepath.Join(dst, name)
			must(t, os.MkdirAll(filepath.Dir(p), 0o755))
			if st, err := os.Lstat(p); err == nil && !(st.IsDir() && h.Typeflag == tar.TypeDir) {
				must(t, os.RemoveAll(p))
			}
			mode := uint32(h.Mode & 0o7777)
			switch h.Typeflag {
			case tar.TypeDir:
				if err := os.Mkdir(p, 0o700); err != nil && !os.IsExist(err) {
					t.Fatal(err)
				}
			case tar.TypeReg:
				must(t, os.WriteFile(p, datas[i], 0o600))
			case tar.TypeSymlink:
				must(t, os.Symlink(h.Linkname, p))
			case tar.TypeLink:
				must(t, os.Link(filepath.Join(dst, filepath.Clean(h.Linkname)), p))
				continue // a link shares its target's inode and attributes
			case tar.TypeChar:
				must(t, unix.Mknod(p, unix.S_IFCHR|mode, int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor)))))
			case tar.TypeBlock:
				must(t, unix.Mknod(p, unix.S_IFBLK|mode, int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor)))))
			case tar.TypeFifo:
				must(t, unix.Mkfifo(p, mode))
			default:
				t.Fatalf("layer %d: %s: type %c", li, h.Name, h.Typeflag)
			}
			must(t, os.Lchown(p, h.Uid, h.Gid))
			for k, v := range h.PAXRecords {
				if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
					must(t, unix.Lsetxattr(p, x, []byte(v), 0))
				}
			}
			if h.Typeflag != tar.TypeSymlink {
				must(t, unix.Chmod(p, mode)) // after chown, which clears setuid
			}
			ts := []unix.Timespec{unix.NsecToTimespec(h.ModTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
			if h.Typeflag == tar.TypeDir {
				dirTimes = append(dirTimes, func() { _ = unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW) })
			} else {
				must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
			}
		}
		for _, f := range dirTimes {
			f()
		}
	}
}

// Info is what Snapshot records of one path.
type Info struct {
	Mode      uint32 // st_mode: type and permission bits
	Nlink     uint64
	UID, GID  uint32
	Size      int64
	Mtime     int64 // regular files, nanoseconds
	Rdev      uint64
	Target    string
	Xattrs    string // sorted name=value list
	SHA256    string
	LinkGroup string // the first path (in walk order) of the file's hard-link group
}

// Snapshot records every path under root (root itself as "."): type, mode, owner, size, mtime of
// regular files, device number, link target, xattrs, content hash and hard-link group.
func Snapshot(t testing.TB, root string) map[string]Info {
	t.Helper()
	out := map[string]Info{}
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
		in := Info{Mode: st.Mode, Nlink: st.Nlink, UID: st.Uid, GID: st.Gid}
		buf := make([]byte, 64<<10)
		n, err := unix.Llistxattr(p, buf)
		if err != nil && err != unix.ENOTSUP {
			return err
		}
		var xs []string
		for _, name := range strings.Split(string(buf[:max(n, 0)]), "\x00") {
			if name == "" {
				continue
			}
			v := make([]byte, 64<<10)
			k, err := unix.Lgetxattr(p, name, v)
			if err != nil {
				return fmt.Errorf("%s: %s: %w", p, name, err)
			}
			xs = append(xs, fmt.Sprintf("%s=%q", name, v[:k]))
		}
		sort.Strings(xs)
		in.Xattrs = strings.Join(xs, " ")
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			in.Size = st.Size
			in.Mtime = st.Mtim.Nano()
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			in.SHA256 = fmt.Sprintf("%x", h.Sum(nil))
			key := [2]uint64{st.Dev, st.Ino}
			if g, ok := groups[key]; ok {
				in.LinkGroup = g
			} else {
				groups[key], in.LinkGroup = rel, rel
			}
		case unix.S_IFLNK:
			in.Target, _ = os.Readlink(p)
		case unix.S_IFCHR, unix.S_IFBLK:
			in.Rdev = st.Rdev
		}
		out[rel] = in
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Diff lists the differences between two snapshots (at most max of them).
func Diff(want, got map[string]Info, maxDiffs int) []string {
	var keys []string
	for k := range want {
		keys = append(keys, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out []string
	for _, k := range keys {
		w, wok := want[k]
		g, gok := got[k]
		switch {
		case !wok:
			out = append(out, fmt.Sprintf("%s: only in the converted image: %+v", k, g))
		case !gok:
			out = append(out, fmt.Sprintf("%s: missing from the converted image: %+v", k, w))
		case w != g:
			out = append(out, fmt.Sprintf("%s:\n  reference %+v\n  converted %+v", k, w, g))
		}
		if len(out) >= maxDiffs {
			break
		}
	}
	return out
}
