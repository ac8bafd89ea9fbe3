package chunkstore_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunkstore"
	"github.com/shoal-p2p/shoal/chunkstore/storetest"
)

// smallExt4 mounts a fresh 8 MiB ext4 filesystem (loop device) and returns its mount point; the
// mount and loop device are removed by name at cleanup. It skips when it cannot.
func smallExt4(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small ext4 image")
	}
	for _, tool := range []string{"mkfs.ext4", "losetup", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (e2fsprogs, util-linux): %v", tool, err)
		}
	}
	tmp := t.TempDir()
	img := filepath.Join(tmp, "fs.img")
	mnt := filepath.Join(tmp, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img, "8M").CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v: %s", err, out)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("losetup (no loop devices in this environment?): %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	if out, err := exec.Command("mount", "-t", "ext4", dev, mnt).CombinedOutput(); err != nil {
		t.Skipf("mount %s: %v: %s", dev, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

func TestENOSPC(t *testing.T) {
	mnt := smallExt4(t)
	cfg := testConfig()
	cfg.IndexDir = t.TempDir() // the index lives elsewhere: this test is about backing files
	s := open(t, mnt, cfg)
	b := storetest.NewBlob(t, 9, 16<<20, 256<<10) // twice the filesystem
	ctx := context.Background()
	if err := s.AddBlob(ctx, b.Manifest); err != nil {
		t.Fatal(err)
	}
	var full error
	for _, c := range b.Manifest.Chunks {
		err := s.WriteChunk(ctx, b.Digest(), c, b.Bytes(c))
		if err != nil {
			full = err
			if storetest.Has(t, s, b.Digest(), c) {
				t.Fatalf("chunk at %d marked present after a failed write", c.Offset)
			}
			break
		}
	}
	if !errors.Is(full, chunkstore.ErrNoSpace) || !errors.Is(full, unix.ENOSPC) {
		t.Fatalf("writing past the filesystem's size: %v, want ErrNoSpace wrapping ENOSPC", full)
	}
	if !strings.Contains(full.Error(), string(b.Digest())) {
		t.Errorf("error does not name the blob: %v", full)
	}
	// Everything marked present is intact.
	checkPresent(t, s, b)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, mnt, cfg)
	defer s.Close()
	checkPresent(t, s, b)
}

func checkPresent(t *testing.T, s *chunkstore.Store, b storetest.Blob) {
	t.Helper()
	n := 0
	for _, c := range b.Manifest.Chunks {
		if !storetest.Has(t, s, b.Digest(), c) {
			continue
		}
		n++
		buf := make([]byte, c.Length)
		if _, err := s.ReadAt(b.Digest(), buf, c.Offset); err != nil {
			t.Fatal(err)
		}
		if _, err := chunk.Verify(c.CID, buf); err != nil {
			t.Fatalf("present chunk at %d: %v", c.Offset, err)
		}
	}
	if n == 0 {
		t.Fatal("nothing was written before the disk filled")
	}
}
