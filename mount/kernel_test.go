package mount_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/demand/fanotify"
	"github.com/shoal-p2p/shoal/demand/fusefs"
	"github.com/shoal-p2p/shoal/mount"
	"github.com/shoal-p2p/shoal/mount/mounttest"
)

const crashEnv = "SHOAL_MOUNT_CRASH_CHILD"

// crashSpec tells the crash child what to mount.
type crashSpec struct {
	Root      string
	Bootstrap string
	Blob      digest.Digest
	BlobSize  int64
	BlobPath  string // the layout blob: the child's FUSE server reads it directly
	Backing   string // a full copy of the blob, watched in fanotify mode
	Fanotify  bool
}

func TestMain(m *testing.M) {
	mounttest.ReaderMain()
	if spec := os.Getenv(crashEnv); spec != "" {
		crashChild(spec)
	}
	os.Exit(m.Run())
}

// allowAll is a FAKE resolver for the crash child: its blob files already hold every byte.
type allowAll struct{}

func (allowAll) Ensure(context.Context, digest.Digest, int64, int64) error { return nil }

// fileReader is a FAKE BlobReader for the crash child: it reads the layout's blob file itself.
type fileReader struct{ f *os.File }

func (r fileReader) ReadAt(_ digest.Digest, p []byte, off int64) (int, error) {
	return r.f.ReadAt(p, off)
}

// crashChild mounts an image in FUSE mode and (if asked) in fanotify mode like a daemon would,
// says "ready" and waits to be killed with SIGKILL.
func crashChild(specJSON string) {
	fail := func(err error) { fmt.Println("error:", err); os.Exit(1) }
	var sp crashSpec
	if err := json.Unmarshal([]byte(specJSON), &sp); err != nil {
		fail(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	f, err := os.Open(sp.BlobPath)
	if err != nil {
		fail(err)
	}
	cfg := fusefs.DefaultConfig()
	cfg.Logger = quiet
	srv, err := fusefs.Mount(filepath.Join(sp.Root, "fuse"), allowAll{}, fileReader{f}, cfg)
	if err != nil {
		fail(err)
	}
	if err := srv.AddBlob(context.Background(), sp.Blob, sp.BlobSize); err != nil {
		fail(err)
	}
	if err := mount.MountFileBacked(sp.Bootstrap, []string{srv.Path(sp.Blob)}, filepath.Join(sp.Root, "mnt-fuse"), mount.FileBackedOptions{DirectIO: true}); err != nil {
		fail(err)
	}
	if sp.Fanotify {
		fcfg := fanotify.DefaultConfig()
		fcfg.Logger = quiet
		l, err := fanotify.New(allowAll{}, fcfg)
		if err != nil {
			fail(err)
		}
		go l.Run(context.Background())
		if err := l.Watch(sp.Blob, sp.Backing); err != nil {
			fail(err)
		}
		if err := mount.MountFileBacked(sp.Bootstrap, []string{sp.Backing}, filepath.Join(sp.Root, "mnt-fan"), mount.FileBackedOptions{DirectIO: true}); err != nil {
			fail(err)
		}
	}
	fmt.Println("ready")
	select {}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// A daemon killed with SIGKILL leaves its mounts behind (the FUSE one dead, the fanotify one
// reading holes as zeros); Cleanup removes them so the next start is not blocked.
func TestCleanupAfterSIGKILL(t *testing.T) {
	mounttest.RequireRoot(t)
	root := t.TempDir()
	im := mounttest.BuildImage(t, root, 7)
	withFan := fanotify.Probe(root) == nil
	for _, d := range []string{"fuse", "mnt-fuse", "mnt-fan"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { mounttest.AssertNothingLeft(t, root) })
	// Safety net, in unmount order (cleanups run last-registered first).
	mounttest.CleanupMount(t, filepath.Join(root, "fuse"))
	mounttest.CleanupMount(t, filepath.Join(root, "mnt-fuse"))
	mounttest.CleanupMount(t, filepath.Join(root, "mnt-fan"))

	b := im.Image.Blobs[0]
	sp := crashSpec{Root: root, Bootstrap: im.Bootstrap, Blob: b.Digest, BlobSize: b.Size, BlobPath: im.BlobPath(0),
		Backing: filepath.Join(root, "backing"), Fanotify: withFan}
	copyFile(t, sp.BlobPath, sp.Backing)
	js, _ := json.Marshal(sp)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnv+"="+string(js))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		t.Fatalf("crash child: %q, %v", line, err)
	}
	mnts := []string{filepath.Join(root, "mnt-fuse")}
	if withFan {
		mnts = append(mnts, filepath.Join(root, "mnt-fan"))
	} else {
		t.Log("fanotify mode not probed here: checking FUSE mode only")
	}
	for _, m := range mnts {
		im.Check(t, ctx, m, im.Requests(m, 5, 8))
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed = true

	left, err := mount.List(root)
	if err != nil {
		t.Fatal(err)
	}
	want := len(mnts) + 1
	if len(left) != want {
		t.Fatalf("List after SIGKILL: %d mounts %+v, want %d", len(left), left, want)
	}
	if !left[0].IsErofs() || !left[len(left)-1].IsShoalFUSE() {
		t.Fatalf("List order: %+v, want EROFS before FUSE", left)
	}
	done, err := mount.Cleanup(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != want {
		t.Fatalf("Cleanup unmounted %d, want %d", len(done), want)
	}
	if left, _ := mount.List(root); len(left) != 0 {
		t.Fatalf("mounts left after Cleanup: %+v", left)
	}
	mounttest.AssertNothingLeft(t, root)

	// The next start mounts at the same places.
	cfg := fusefs.DefaultConfig()
	cfg.Logger = slog.New(slog.DiscardHandler)
	f, err := os.Open(sp.BlobPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	srv, err := fusefs.Mount(filepath.Join(root, "fuse"), allowAll{}, fileReader{f}, cfg)
	if err != nil {
		t.Fatalf("FUSE mount after Cleanup: %v", err)
	}
	if err := srv.AddBlob(t.Context(), b.Digest, b.Size); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(root, "mnt-fuse")
	if err := mount.MountFileBacked(im.Bootstrap, []string{srv.Path(b.Digest)}, target, mount.FileBackedOptions{DirectIO: true}); err != nil {
		t.Fatalf("EROFS mount after Cleanup: %v", err)
	}
	im.Check(t, ctx, target, im.Requests(target, 5, 9))
	if err := mount.Unmount(target); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
}
