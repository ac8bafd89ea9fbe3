package fusetree

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/bootstrap"
)

// zeroBlobs stands in for the resolver and the store: every blob range is present, all zeros.
type zeroBlobs struct{}

func (zeroBlobs) Ensure(ctx context.Context, blob digest.Digest, off, length int64) error {
	return nil
}

func (zeroBlobs) ReadAt(blob digest.Digest, p []byte, off int64) (int, error) {
	clear(p)
	return len(p), nil
}

// exercise answers every FUSE request the kernel could send for every node reachable from the
// root of img, as the kernel would send them (node IDs only from earlier answers), directly
// on the server's methods: no mount, so a hostile bootstrap can only make them return errors.
func exercise(t testing.TB, img []byte, seed uint64) {
	f, err := bootstrap.Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		return
	}
	blobs := make([]digest.Digest, len(f.Devices()))
	for i := range blobs {
		blobs[i] = digest.FromBytes([]byte{byte(i)})
	}
	s, err := newServer(img, blobs, zeroBlobs{}, zeroBlobs{}, Config{ReadTimeout: time.Second, MaxRead: 1 << 20, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return
	}
	defer s.scope.Close()
	rng := rand.New(rand.NewPCG(seed, 2))
	cancel := make(chan struct{})
	hdr := func(node uint64) *fuse.InHeader { return &fuse.InHeader{NodeId: node} }
	queue := []uint64{rootNodeID}
	seen := map[uint64]bool{}
	small, big := make([]byte, 3), make([]byte, 64<<10)
	for len(queue) > 0 && len(seen) < 3000 {
		node := queue[0]
		queue = queue[1:]
		if seen[node] {
			continue
		}
		seen[node] = true
		var ao fuse.AttrOut
		if st := s.GetAttr(cancel, &fuse.GetAttrIn{InHeader: *hdr(node)}, &ao); !st.Ok() {
			continue
		}
		s.Readlink(cancel, hdr(node))
		s.ListXAttr(cancel, hdr(node), small)
		s.ListXAttr(cancel, hdr(node), big)
		for _, name := range []string{"security.capability", "trusted.overlay.opaque", "user.x", "system.posix_acl_access"} {
			s.GetXAttr(cancel, hdr(node), name, small)
			s.GetXAttr(cancel, hdr(node), name, big)
		}
		var sf fuse.StatfsOut
		s.StatFs(cancel, hdr(node), &sf)

		var oo fuse.OpenOut
		if st := s.Open(cancel, &fuse.OpenIn{InHeader: *hdr(node)}, &oo); st.Ok() {
			size := int64(ao.Size)
			for range 3 {
				off := rng.Int64N(size + 10)
				buf := make([]byte, 1+rng.IntN(300_000))
				if res, st := s.Read(cancel, &fuse.ReadIn{InHeader: *hdr(node), Offset: uint64(off), Size: uint32(len(buf))}, buf); st.Ok() {
					if b, _ := res.Bytes(nil); int64(len(b)) > max(size-off, 0) {
						t.Fatalf("node %d: read at %d of a %d-byte file returned %d bytes", node, off, size, len(b))
					}
				}
			}
		}
		if st := s.OpenDir(cancel, &fuse.OpenIn{InHeader: *hdr(node)}, &oo); !st.Ok() {
			continue
		}
		ents, _ := s.dirHandle(oo.Fh)
		for _, off := range []uint64{0, uint64(len(ents) / 2), uint64(len(ents) + 3)} {
			s.ReadDirPlus(cancel, &fuse.ReadIn{InHeader: *hdr(node), Fh: oo.Fh, Offset: off}, fuse.NewDirEntryList(make([]byte, 8192), off))
			s.ReadDir(cancel, &fuse.ReadIn{InHeader: *hdr(node), Fh: oo.Fh, Offset: off}, fuse.NewDirEntryList(make([]byte, 4096), off))
		}
		for _, d := range ents {
			if d.Name == "." || d.Name == ".." {
				continue
			}
			var eo fuse.EntryOut
			if st := s.Lookup(cancel, hdr(node), d.Name, &eo); st.Ok() {
				if eo.NodeId == 0 || eo.Attr.Ino == 0 {
					t.Fatalf("lookup of %q answered node %d ino %d", d.Name, eo.NodeId, eo.Attr.Ino)
				}
				queue = append(queue, eo.NodeId)
			}
		}
		var eo fuse.EntryOut
		s.Lookup(cancel, hdr(node), "no such name", &eo)
		s.ReleaseDir(&fuse.ReleaseIn{InHeader: *hdr(node), Fh: oo.Fh})
	}
	if n := len(s.dirs); n != 0 {
		t.Fatalf("%d directory handles left open", n)
	}
}

func seeds(t testing.TB) [][]byte {
	paths, _ := filepath.Glob("../../bootstrap/testdata/*.erofs")
	var out [][]byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	if len(out) == 0 {
		t.Fatal("no bootstrap/testdata/*.erofs seed images")
	}
	return out
}

// FuzzServer: malformed bootstraps that pass (or nearly pass) the parser must make the server
// answer errors, never panic, hang or hand out a node ID it cannot resolve.
func FuzzServer(f *testing.F) {
	for _, img := range seeds(f) {
		f.Add(img, uint64(1))
	}
	f.Fuzz(func(t *testing.T, img []byte, seed uint64) {
		if len(img) > 1<<20 {
			return
		}
		exercise(t, img, seed)
	})
}

// TestServerOnSeedImages: the exercise reaches every inode of the seed images and finds them
// well-formed.
func TestServerOnSeedImages(t *testing.T) {
	for _, img := range seeds(t) {
		f, err := bootstrap.Open(bytes.NewReader(img), int64(len(img)))
		if err != nil {
			t.Fatal(err)
		}
		inodes := map[uint64]bool{}
		if err := f.Walk(func(p string, in *bootstrap.Inode) error { inodes[in.Nid] = true; return nil }); err != nil {
			t.Fatal(err)
		}
		exercise(t, img, 7)
		blobs := make([]digest.Digest, len(f.Devices()))
		s, err := newServer(img, blobs, zeroBlobs{}, zeroBlobs{}, Config{ReadTimeout: time.Second, MaxRead: 4096, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		for nid := range inodes {
			var ao fuse.AttrOut
			if st := s.GetAttr(nil, &fuse.GetAttrIn{InHeader: fuse.InHeader{NodeId: s.nodeID(nid)}}, &ao); !st.Ok() || ao.Ino != nid+1 {
				t.Errorf("nid %d: GetAttr %v ino %d", nid, st, ao.Ino)
			}
		}
		if s.formErr.Load() != 0 {
			t.Errorf("%d malformed-structure answers on a well-formed image", s.formErr.Load())
		}
		s.scope.Close()
	}
}

// TestServerOnMutatedImages runs the exercise on seed images with random bytes overwritten
// (superblock checksum fixed up, so most pass the parser and reach the server): what the fuzz
// target does, a few hundred times in every test run.
func TestServerOnMutatedImages(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	n := 150
	if testing.Short() {
		n = 30
	}
	opened := 0
	for i := range n {
		for _, seed := range seeds(t) {
			img := bytes.Clone(seed)
			for range 1 + rng.IntN(8) {
				img[rng.IntN(len(img))] = byte(rng.Uint32())
			}
			fixSuperblockCRC(img)
			if _, err := bootstrap.Open(bytes.NewReader(img), int64(len(img))); err == nil {
				opened++
			}
			exercise(t, img, uint64(i))
		}
	}
	if opened < n/4 {
		t.Fatalf("only %d of %d mutated images passed the parser: the server was barely exercised", opened, 2*n)
	}
}

// fixSuperblockCRC recomputes the superblock checksum (crc32c of the superblock's block from
// byte 1024, checksum zeroed, not inverted) so a mutated image still opens.
func fixSuperblockCRC(img []byte) {
	const off = 1024
	if len(img) < off+128 || img[off+8]&1 == 0 {
		return
	}
	bits := img[off+12]
	if bits < 9 || bits > 16 {
		return
	}
	n := 1 << bits
	if n > off {
		n -= off
	}
	if len(img) < off+n {
		return
	}
	b := bytes.Clone(img[off : off+n])
	clear(b[4:8])
	binary.LittleEndian.PutUint32(img[off+4:], ^crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
}
