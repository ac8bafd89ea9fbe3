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
	"testing"

	"golang.org/x/sys/unix"
)

// serveExercise drives what a filesystem server asks of the reader, for every inode a walk
// reaches: every directory entry looked up by name (and a name that is not there), xattrs,
// extents of random ranges. It returns the first error; it must never panic or hang.
func serveExercise(img []byte, seed uint64) error {
	f, err := Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	var errs []error
	n := 0
	err = f.Walk(func(p string, in *Inode) error {
		if n++; n > 5000 {
			return errors.New("enough")
		}
		if _, err := f.Xattrs(in); err != nil {
			errs = append(errs, err)
		}
		if in.Mode.IsDir() {
			ents, err := f.ReadDir(in)
			if err != nil {
				return err
			}
			for _, d := range ents {
				if _, _, err := f.LookupName(in, d.Name); err != nil {
					errs = append(errs, err)
				}
			}
			if _, _, err := f.LookupName(in, "\xffnot-there"); err != nil {
				errs = append(errs, err)
			}
		}
		for range 4 {
			off := rng.Int64N(max(in.Size, 1) + 10)
			if err := f.ExtentsAt(in, off, rng.Int64N(1<<22), func(Extent) error { return nil }); err != nil {
				errs = append(errs, err)
			}
		}
		return nil
	})
	return errors.Join(append(errs, err)...)
}

func FuzzServe(f *testing.F) {
	for _, img := range seedImages(f) {
		f.Add(img, true, uint64(1))
	}
	f.Fuzz(func(t *testing.T, img []byte, fix bool, seed uint64) {
		if len(img) > 1<<20 {
			return
		}
		if fix {
			fixCRC(img)
		}
		_ = serveExercise(img, seed) // must not panic or hang
	})
}

// TestLookupNameAgreesWithReadDir: binary search finds every entry a full listing shows, in
// directories of one block and of many, and nothing else.
func TestLookupNameAgreesWithReadDir(t *testing.T) {
	imgs := seedImages(t)
	built := false
	if _, err := os.Stat("/usr/bin/mkfs.erofs"); err == nil {
		src := t.TempDir()
		makeTree(t, src, 64<<10)
		for i := range 700 {
			writeFile(t, filepath.Join(src, "many", fmt.Sprintf("%03d-%s", i, "x")), nil)
		}
		bi := buildImage(t, src, 64<<10)
		b, err := os.ReadFile(bi.boot.Name())
		must(t, err)
		imgs = append(imgs, b)
		built = true
	}
	for i, img := range imgs {
		f, err := Open(bytes.NewReader(img), int64(len(img)))
		must(t, err)
		multi := false
		must(t, f.Walk(func(p string, in *Inode) error {
			if !in.Mode.IsDir() {
				return nil
			}
			multi = multi || in.Size > f.BlockSize()
			ents, err := f.ReadDir(in)
			if err != nil {
				return err
			}
			for _, d := range ents {
				got, ok, err := f.LookupName(in, d.Name)
				if err != nil || !ok || got != d {
					return fmt.Errorf("%s: LookupName(%q) = %+v %v %v, want %+v", p, d.Name, got, ok, err, d)
				}
				for _, miss := range []string{d.Name + "\x00", d.Name + "~", "\x01" + d.Name} {
					if _, ok, err := f.LookupName(in, miss); ok || err != nil {
						return fmt.Errorf("%s: LookupName(%q) found something (%v)", p, miss, err)
					}
				}
			}
			return nil
		}))
		if built && i == len(imgs)-1 && !multi {
			t.Error("the built image has no directory of several blocks: binary search was not tested")
		}
	}
}

// TestExtentsAtAgreesWithExtents: the extents of a range are exactly those of the whole file
// that overlap it.
func TestExtentsAtAgreesWithExtents(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, img := range seedImages(t) {
		f, err := Open(bytes.NewReader(img), int64(len(img)))
		must(t, err)
		must(t, f.WalkExtents(func(p string, in *Inode, _ Extent) error { return nil }))
		must(t, f.Walk(func(p string, in *Inode) error {
			if !in.Mode.IsRegular() || in.Size == 0 {
				return nil
			}
			all, err := f.Extents(in)
			if err != nil {
				return err
			}
			for range 20 {
				off := rng.Int64N(in.Size)
				n := 1 + rng.Int64N(in.Size-off+100)
				var want, got []Extent
				for _, e := range all {
					if e.FileOffset < off+n && e.FileOffset+e.Length > off {
						want = append(want, e)
					}
				}
				if err := f.ExtentsAt(in, off, n, func(e Extent) error { got = append(got, e); return nil }); err != nil {
					return err
				}
				if !reflect.DeepEqual(got, want) {
					return fmt.Errorf("%s [%d,+%d): ExtentsAt %+v, want %+v", p, off, n, got, want)
				}
			}
			return nil
		}))
	}
}

// TestXattrsFromMkfs: xattrs mkfs.erofs stores inline and shared (the same name and value on
// many inodes) read back as the source had them.
func TestXattrsFromMkfs(t *testing.T) {
	src := t.TempDir()
	want := map[string]map[string]string{}
	for i := range 6 {
		p := filepath.Join(src, fmt.Sprintf("f%d", i))
		writeFile(t, p, []byte{byte(i)})
		xs := map[string]string{"user.shared": "the same on every file", "user.own": fmt.Sprint(i)}
		if os.Geteuid() == 0 {
			xs["trusted.overlay.opaque"] = "y"
			xs["security.capability"] = string([]byte{1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
		}
		for k, v := range xs {
			if err := unix.Setxattr(p, k, []byte(v), 0); err != nil {
				t.Skipf("the temp directory takes no xattr %s: %v", k, err)
			}
		}
		want[fmt.Sprintf("/f%d", i)] = xs
	}
	needTool(t, "mkfs.erofs")
	out := filepath.Join(t.TempDir(), "image")
	res, err := Build(context.Background(), src, out, BuildOptions{Engine: EngineMkfs})
	must(t, err)
	boot, err := os.ReadFile(Layout{out}.BlobPath(res.Image.Bootstrap.Digest))
	must(t, err)
	bi := struct {
		fs   *FS
		boot *bytes.Reader
	}{boot: bytes.NewReader(boot)}
	bi.fs, err = Open(bi.boot, int64(len(boot)))
	must(t, err)
	sharedSeen := false
	for p, xs := range want {
		in, err := bi.fs.Lookup(p)
		must(t, err)
		var hdr [12]byte
		_, err = bi.boot.ReadAt(hdr[:], in.off+in.inodeSize)
		must(t, err)
		sharedSeen = sharedSeen || hdr[4] > 0
		got, err := bi.fs.Xattrs(in)
		must(t, err)
		m := map[string]string{}
		for _, x := range got {
			m[x.Name] = string(x.Value)
		}
		if !reflect.DeepEqual(m, xs) {
			t.Errorf("%s: xattrs %v, want %v", p, m, xs)
		}
	}
	if !sharedSeen {
		t.Error("mkfs.erofs stored no shared xattr: the test checks only inline ones")
	}
	root, err := bi.fs.Lookup("/")
	must(t, err)
	if x, err := bi.fs.Xattrs(root); err != nil || len(x) != 0 {
		t.Errorf("root xattrs %v %v, want none", x, err)
	}
	if in, _ := bi.fs.Lookup("/f0"); in.Mode.Type() != 0 || !in.Mode.IsRegular() || in.IsDevice() {
		t.Errorf("/f0 mode %v", in.Mode&fs.ModeType)
	}
}
