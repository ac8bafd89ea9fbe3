package mount

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestBindReadOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("bind mounts need root")
	}
	src, dst := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("shoal"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Bind(src, dst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dst, unix.MNT_DETACH) })
	if b, err := os.ReadFile(filepath.Join(dst, "f")); err != nil || string(b) != "shoal" {
		t.Fatalf("read through the bind mount: %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(dst, "g"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Fatalf("write through the bind mount: %v, want EROFS", err)
	}
	if err := Unmount(dst); err != nil {
		t.Fatal(err)
	}
	if err := Unmount(dst); !errors.Is(err, ErrNotMounted) {
		t.Fatalf("second unmount: %v", err)
	}
}
