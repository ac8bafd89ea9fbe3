package fusetree_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/mount/mounttest"
)

// TestOverlayOnTree stacks overlayfs on the tree mount, as a container runtime does with an
// image layer, and on a kernel EROFS mount of the same image, over a second lower layer below
// it: the image's whiteout (a 0/0 character device) must hide the lower file of its name, its
// opaque directory (trusted.overlay.opaque=y) the lower directory's entries, on both alike;
// a write copies the file up with its xattrs.
func TestOverlayOnTree(t *testing.T) {
	mounttest.RequireRoot(t)
	if b, _ := os.ReadFile("/proc/filesystems"); !strings.Contains(string(b), "overlay") {
		t.Skip("no overlayfs in this kernel")
	}
	dir := t.TempDir()
	im := buildTree(t, dir, bootstrap.EngineGo)
	store := mounttest.OpenStore(t, filepath.Join(dir, "cache"), im)
	fx := serve(t, dir, im, &mounttest.StoreResolver{Store: store, Image: im}, store)
	ref := mountKernel(t, dir, im)

	// The layer below the image: what its whiteout and opaque directory must hide.
	base := filepath.Join(dir, "base")
	for _, p := range []string{"ovl/whiteout", "ovl/opaque/hidden", "ovl/opaque/inside/also-hidden", "ovl/visible"} {
		must(t, os.MkdirAll(filepath.Dir(filepath.Join(base, p)), 0o755))
		must(t, os.WriteFile(filepath.Join(base, p), []byte("from below"), 0o644))
	}
	merged := func(name, lower string) string {
		d := filepath.Join(dir, name)
		for _, s := range []string{"upper", "work", "merged"} {
			must(t, os.MkdirAll(filepath.Join(d, s), 0o755))
		}
		mp := filepath.Join(d, "merged")
		opts := "lowerdir=" + lower + ":" + base + ",upperdir=" + filepath.Join(d, "upper") + ",workdir=" + filepath.Join(d, "work")
		if err := unix.Mount("overlay", mp, "overlay", 0, opts); err != nil {
			t.Fatalf("overlay on %s: %v", lower, err)
		}
		mounttest.CleanupMount(t, mp)
		t.Cleanup(func() { _ = unix.Unmount(mp, 0) })
		return mp
	}
	onTree, onErofs := merged("ovl-tree", fx.target), merged("ovl-erofs", ref)

	for _, mp := range []string{onErofs, onTree} {
		if _, err := os.Lstat(filepath.Join(mp, "ovl/whiteout")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: whiteout did not hide the lower file: %v", mp, err)
		}
		for _, p := range []string{"ovl/opaque/hidden", "ovl/opaque/inside/also-hidden"} {
			if _, err := os.Lstat(filepath.Join(mp, p)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s: opaque directory did not hide %s: %v", mp, p, err)
			}
		}
		for _, p := range []string{"ovl/visible", "ovl/opaque/inside/kept", "files/big", "suid"} {
			if _, err := os.Lstat(filepath.Join(mp, p)); err != nil {
				t.Errorf("%s: %s: %v", mp, p, err)
			}
		}
	}
	want, got := snapshot(t, onErofs), snapshot(t, onTree)
	for p, w := range want {
		// st_ino and so hard-link groups are overlay's own on each; the rest must agree.
		if p == "." {
			continue // the merged root is the upper directory, made at different times
		}
		g := got[p]
		g.Group, w.Group = "", ""
		if g != w {
			t.Errorf("%s:\n on tree  %+v\n on erofs %+v", p, g, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d paths on the tree's overlay, %d on EROFS's", len(got), len(want))
	}

	// A write copies the file up, xattrs included; so does a metadata change, which keeps
	// security.capability (a write drops it, as on any filesystem).
	f, err := os.OpenFile(filepath.Join(onTree, "files/f-4096"), os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.WriteString("# appended\n")
	must(t, errors.Join(err, f.Close()))
	buf := make([]byte, 4096)
	if n, err := unix.Lgetxattr(filepath.Join(dir, "ovl-tree/upper/files/f-4096"), "user.big", buf); err != nil || n != 3000 {
		t.Errorf("copied-up file's user.big: %d bytes, %v", n, err)
	}
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(onTree, "suid"), []unix.Timespec{{Sec: 5}, {Sec: 5}}, 0))
	if n, err := unix.Lgetxattr(filepath.Join(dir, "ovl-tree/upper/suid"), "security.capability", buf); err != nil || n != 20 {
		t.Errorf("copied-up file's security.capability: %d bytes, %v", n, err)
	}
	if b, err := os.ReadFile(filepath.Join(fx.target, "suid")); err != nil || strings.Contains(string(b), "appended") {
		t.Errorf("the image itself changed: %q %v", b, err)
	}
}
