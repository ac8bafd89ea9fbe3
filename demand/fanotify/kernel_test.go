package fanotify_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-p2p/shoal/demand/fanotify"
	"github.com/shoal-p2p/shoal/mount"
	"github.com/shoal-p2p/shoal/mount/mounttest"
)

func TestMain(m *testing.M) {
	mounttest.ReaderMain()
	os.Exit(m.Run())
}

var quiet = slog.New(slog.DiscardHandler)

// fanotifyFDs counts this process's fanotify groups.
func fanotifyFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.Contains(l, "fanotify") {
			n++
		}
	}
	return n
}

type fixture struct {
	dir    string
	im     *mounttest.Image
	l      *fanotify.Listener
	target string
	paths  []string
}

// setup builds an image, registers it in a real store, watches its backing files with a listener
// serving res, and mounts it file-backed on them.
func setup(t *testing.T, newRes func(*mounttest.Image, *fixture) fanotify.Resolver) *fixture {
	t.Helper()
	mounttest.RequireRoot(t)
	dir := t.TempDir()
	if err := fanotify.Probe(dir); err != nil {
		t.Skipf("this machine cannot run the fanotify frontend: %v", err)
	}
	fx := &fixture{dir: dir}
	fx.im = mounttest.BuildImage(t, dir, 1)
	res := newRes(fx.im, fx)
	cfg := fanotify.DefaultConfig()
	cfg.Workers = 4
	cfg.EnsureTimeout = 20 * time.Second
	cfg.Logger = quiet
	groupsBefore := fanotifyFDs(t)
	l, err := fanotify.New(res, cfg)
	if err != nil {
		t.Fatal(err)
	}
	fx.l = l
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if n := fanotifyFDs(t); n != groupsBefore {
			t.Errorf("%d fanotify groups open after Close, want %d", n, groupsBefore)
		}
		mounttest.AssertNothingLeft(t, dir)
	})
	return fx
}

func (fx *fixture) mount(t *testing.T, paths []string) {
	t.Helper()
	for i, b := range fx.im.Image.Blobs {
		if err := fx.l.Watch(b.Digest, paths[i]); err != nil {
			t.Fatal(err)
		}
	}
	fx.paths = paths
	fx.target = filepath.Join(fx.dir, "mnt")
	if err := os.Mkdir(fx.target, 0o755); err != nil {
		t.Fatal(err)
	}
	mounttest.CleanupMount(t, fx.target)
	if err := mount.MountFileBacked(fx.im.Bootstrap, paths, fx.target, mount.FileBackedOptions{DirectIO: true}); err != nil {
		t.Fatal(err)
	}
}

func TestDemandReadsThroughStore(t *testing.T) {
	var res *mounttest.StoreResolver
	var paths []string
	fx := setup(t, func(im *mounttest.Image, fx *fixture) fanotify.Resolver {
		store := mounttest.OpenStore(t, filepath.Join(fx.dir, "cache"), im)
		for _, b := range im.Image.Blobs {
			paths = append(paths, store.BackingPath(b.Digest))
		}
		res = &mounttest.StoreResolver{Store: store, Image: im}
		return res
	})
	fx.mount(t, paths)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()

	// Readers in several processes at once hit the same chunks: every one gets the right bytes.
	if err := fx.im.VerifyConcurrently(ctx, fx.target, 3, 10); err != nil {
		t.Fatal(err)
	}

	// Every file whole, then random reads at odd offsets and lengths, from another process.
	fx.im.Check(t, ctx, fx.target, fx.im.Requests(fx.target, 150, 2))
	if res.Fetched.Load() == 0 || res.Calls.Load() == 0 {
		t.Fatalf("resolver saw %d calls and fetched %d chunks: reads did not go through fanotify", res.Calls.Load(), res.Fetched.Load())
	}
	t.Logf("%d Ensure calls, %d chunks fetched", res.Calls.Load(), res.Fetched.Load())

	// Complete the blob, drop the mark: reads are still right and no longer reach the daemon.
	b := fx.im.Image.Blobs[0]
	if err := res.Ensure(ctx, b.Digest, 0, b.Size); err != nil {
		t.Fatal(err)
	}
	if err := fx.l.Unwatch(b.Digest); err != nil {
		t.Fatal(err)
	}
	if fx.l.Watched(b.Digest) {
		t.Fatal("still watched after Unwatch")
	}
	calls := res.Calls.Load()
	fx.im.Check(t, ctx, fx.target, fx.im.Requests(fx.target, 30, 3))
	if got := res.Calls.Load(); got != calls {
		t.Errorf("%d Ensure calls after Unwatch, want none", got-calls)
	}
	if err := mount.Unmount(fx.target); err != nil {
		t.Fatal(err)
	}
}

func TestFailingResolverGivesEIO(t *testing.T) {
	res := &mounttest.FailingResolver{}
	var paths []string
	fx := setup(t, func(im *mounttest.Image, fx *fixture) fanotify.Resolver {
		store := mounttest.OpenStore(t, filepath.Join(fx.dir, "cache"), im)
		for _, b := range im.Image.Blobs {
			paths = append(paths, store.BackingPath(b.Digest))
		}
		return res
	})
	fx.mount(t, paths)
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
	// An empty file needs no blob data and still reads.
	got, err = mounttest.ChildRead(ctx, []mounttest.ReadReq{{Path: filepath.Join(fx.target, "sub/deeper/f00-0"), Len: -1}})
	if err != nil || got[0].Err != "" || got[0].N != 0 {
		t.Fatalf("empty file: %+v, %v", got, err)
	}
}

// TestSignalledReaderGetsData reads cold data from a reader that takes a signal every
// millisecond (SIGURG, as the Go runtime sends itself): every read returns the right bytes.
func TestSignalledReaderGetsData(t *testing.T) {
	var res *mounttest.SlowResolver
	var paths []string
	fx := setup(t, func(im *mounttest.Image, fx *fixture) fanotify.Resolver {
		store := mounttest.OpenStore(t, filepath.Join(fx.dir, "cache"), im)
		for _, b := range im.Image.Blobs {
			paths = append(paths, store.BackingPath(b.Digest))
		}
		res = &mounttest.SlowResolver{StoreResolver: &mounttest.StoreResolver{Store: store, Image: im}, Delay: 15 * time.Millisecond}
		return res
	})
	fx.mount(t, paths)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var reqs []mounttest.ReadReq
	for rel := range fx.im.Files {
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
