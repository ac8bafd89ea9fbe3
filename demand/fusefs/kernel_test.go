package fusefs_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-p2p/shoal/demand/fusefs"
	"github.com/shoal-p2p/shoal/mount"
	"github.com/shoal-p2p/shoal/mount/mounttest"
)

func TestMain(m *testing.M) {
	mounttest.ReaderMain()
	os.Exit(m.Run())
}

var quiet = slog.New(slog.DiscardHandler)

type fixture struct {
	dir    string
	im     *mounttest.Image
	srv    *fusefs.Server
	target string
}

func setup(t *testing.T, res fusefs.Resolver, rd fusefs.BlobReader, im *mounttest.Image, dir string) *fixture {
	t.Helper()
	fx := &fixture{dir: dir, im: im}
	fuseDir := filepath.Join(dir, "fuse")
	if err := os.Mkdir(fuseDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mounttest.AssertNothingLeft(t, dir) })
	mounttest.CleanupMount(t, fuseDir)
	cfg := fusefs.DefaultConfig()
	cfg.ReadTimeout = 20 * time.Second
	cfg.Logger = quiet
	srv, err := fusefs.Mount(fuseDir, res, rd, cfg)
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
	var paths []string
	for _, b := range im.Image.Blobs {
		if err := srv.AddBlob(t.Context(), b.Digest, b.Size); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, srv.Path(b.Digest))
	}
	fx.target = filepath.Join(dir, "mnt")
	if err := os.Mkdir(fx.target, 0o755); err != nil {
		t.Fatal(err)
	}
	mounttest.CleanupMount(t, fx.target)
	if err := mount.MountFileBacked(im.Bootstrap, paths, fx.target, mount.FileBackedOptions{DirectIO: true}); err != nil {
		t.Fatal(err)
	}
	return fx
}

func TestEROFSOnFUSEThroughStore(t *testing.T) {
	mounttest.RequireRoot(t)
	dir := t.TempDir()
	im := mounttest.BuildImage(t, dir, 4)
	store := mounttest.OpenStore(t, filepath.Join(dir, "cache"), im)
	res := &mounttest.StoreResolver{Store: store, Image: im}
	fx := setup(t, res, store, im, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()

	// Readers in several processes at once, then every file and odd ranges.
	if err := fx.im.VerifyConcurrently(ctx, fx.target, 3, 20); err != nil {
		t.Fatal(err)
	}
	fx.im.Check(t, ctx, fx.target, fx.im.Requests(fx.target, 150, 5))
	if res.Fetched.Load() == 0 {
		t.Fatal("no chunk fetched: reads did not go through the FUSE server")
	}
	t.Logf("%d Ensure calls, %d chunks fetched", res.Calls.Load(), res.Fetched.Load())

	// The blob file itself reads as the blob, at odd offsets too, in this process.
	b := im.Image.Blobs[0]
	want, err := os.ReadFile(im.BlobPath(0))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(fx.srv.Path(b.Digest))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // on failure; closed below, as an open file keeps the FUSE mount busy
	if st, err := f.Stat(); err != nil || st.Size() != b.Size || st.Mode().Perm() != 0o444 {
		t.Fatalf("blob file: %v, %v", st, err)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for range 50 {
		off := rng.Int64N(b.Size)
		buf := make([]byte, 1+rng.IntN(200_000))
		n, err := f.ReadAt(buf, off)
		end := min(off+int64(len(buf)), b.Size)
		if int64(n) != end-off || (err != nil && int64(n) == int64(len(buf))) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", off, len(buf), n, err)
		}
		if !bytes.Equal(buf[:n], want[off:end]) {
			t.Fatalf("blob bytes [%d,%d) differ from the origin", off, end)
		}
	}
	f.Close()

	// Blobs come and go while mounted: the mounted image keeps its open file.
	if err := fx.srv.RemoveBlob(b.Digest); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fx.srv.Path(b.Digest)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat of a removed blob: %v, want not-exist", err)
	}
	fx.im.Check(t, ctx, fx.target, fx.im.Requests(fx.target, 20, 6))
	if err := fx.srv.AddBlob(ctx, b.Digest, b.Size); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(fx.srv.Path(b.Digest)); err != nil || st.Size() != b.Size {
		t.Fatalf("stat after AddBlob: %v, %v", st, err)
	}
	if err := fx.srv.AddBlob(ctx, b.Digest, b.Size+1); err == nil {
		t.Fatal("AddBlob with another size succeeded")
	}

	if err := mount.Unmount(fx.target); err != nil {
		t.Fatal(err)
	}
	if err := fx.srv.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestFailingResolverGivesEIO(t *testing.T) {
	mounttest.RequireRoot(t)
	dir := t.TempDir()
	im := mounttest.BuildImage(t, dir, 4)
	store := mounttest.OpenStore(t, filepath.Join(dir, "cache"), im)
	res := &mounttest.FailingResolver{}
	fx := setup(t, res, store, im, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := "f10-1048579"
	got, err := mounttest.ChildRead(ctx, []mounttest.ReadReq{{Path: filepath.Join(fx.target, name), Len: -1}})
	if err != nil {
		t.Fatalf("reader did not finish (a hang?): %v", err)
	}
	if !strings.Contains(got[0].Err, "input/output error") {
		t.Fatalf("read of %s with a failing resolver: %+v, want EIO", name, got[0])
	}
	if res.Calls.Load() == 0 {
		t.Fatal("resolver never called")
	}
}

// TestSignalledReaderGetsData reads cold data from a reader that takes a signal every
// millisecond (SIGURG, as the Go runtime sends itself): the kernel interrupts the FUSE request
// each time, and the read must still return the right bytes, never EIO.
func TestSignalledReaderGetsData(t *testing.T) {
	mounttest.RequireRoot(t)
	dir := t.TempDir()
	im := mounttest.BuildImage(t, dir, 11)
	store := mounttest.OpenStore(t, filepath.Join(dir, "cache"), im)
	res := &mounttest.SlowResolver{StoreResolver: &mounttest.StoreResolver{Store: store, Image: im}, Delay: 15 * time.Millisecond}
	fx := setup(t, res, store, im, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var reqs []mounttest.ReadReq
	for rel := range im.Files {
		reqs = append(reqs, mounttest.ReadReq{Path: filepath.Join(fx.target, rel), Len: -1})
	}
	sent, err := fx.im.VerifySignalled(ctx, fx.target, reqs, time.Millisecond)
	if err != nil {
		t.Fatalf("after %d signals: %v", sent, err)
	}
	if res.Fetched.Load() == 0 || sent < 10 {
		t.Fatalf("%d chunks fetched, %d signals sent: the reads were not cold or not interrupted", res.Fetched.Load(), sent)
	}
	t.Logf("%d files read cold with %d signals, %d chunks fetched", len(reqs), sent, res.Fetched.Load())
	if err := mount.Unmount(fx.target); err != nil {
		t.Fatal(err)
	}
}
