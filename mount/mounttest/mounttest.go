// Package mounttest builds real Shoal images with mkfs.erofs and serves their blobs through the
// real chunk store, for the integration tests of the kernel frontends (demand/fanotify,
// demand/fusefs) and package mount. It is test support: nothing in the daemon imports it.
package mounttest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/chunkstore"
)

// RequireRoot skips tests that mount things when not run as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount(2), fanotify_init, FUSE DirectMount)")
	}
}

// Image is a Shoal image built from a tree of random files.
type Image struct {
	Src       string // the source tree
	Layout    bootstrap.Layout
	Image     *bootstrap.Image
	Bootstrap string            // path of the bootstrap file (a local file)
	Files     map[string][]byte // relative path → content
}

// BlobPath is the layout file holding blob i's bytes (the "origin").
func (im *Image) BlobPath(i int) string { return im.Layout.BlobPath(im.Image.Blobs[i].Digest) }

// Sizes of the files of the test image: block boundaries, chunk boundaries and odd sizes.
var Sizes = []int{0, 1, 100, 4095, 4096, 4097, 65535, 65536, 65537, 200_003, 1<<20 + 3, 3<<20 - 7}

// BuildImage writes files of Sizes (random content, plus a duplicate and a nested directory)
// under dir/src and builds them with mkfs.erofs (64 KiB chunks) into the layout dir/image.
func BuildImage(t testing.TB, dir string, seed uint64) *Image {
	t.Helper()
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs not installed (erofs-utils)")
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	src := filepath.Join(dir, "src")
	files := map[string][]byte{}
	for i, n := range Sizes {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		name := fmt.Sprintf("f%02d-%d", i, n)
		if i%3 == 0 {
			name = filepath.Join("sub", "deeper", name)
		}
		files[name] = b
	}
	files["dup-of-large"] = files["f10-1048579"]
	for name, b := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "image")
	res, err := bootstrap.Build(context.Background(), src, out, bootstrap.BuildOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatalf("bootstrap.Build: %v", err)
	}
	l := bootstrap.Layout{Dir: out}
	return &Image{Src: src, Layout: l, Image: res.Image, Bootstrap: l.BlobPath(res.Image.Bootstrap.Digest), Files: files}
}

// OpenStore opens a real chunk store in dir and registers every blob of im.
func OpenStore(t testing.TB, dir string, im *Image) *chunkstore.Store {
	t.Helper()
	cfg := chunkstore.DefaultConfig()
	cfg.Logger = slog.New(slog.DiscardHandler)
	s, err := chunkstore.Open(dir, cfg)
	if err != nil {
		t.Fatalf("chunkstore.Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	for _, b := range im.Image.Blobs {
		if err := s.AddBlob(context.Background(), b.Manifest); err != nil {
			t.Fatalf("AddBlob %s: %v", b.Digest, err)
		}
	}
	return s
}

// StoreResolver is the demand path of the tests: for every chunk of the range the store lacks, it
// reads the chunk's bytes from the image's layout blob (standing in for peers and the origin) and
// writes them through the real chunkstore.Store.WriteChunk (verify, pwrite, fdatasync, index).
type StoreResolver struct {
	Store *chunkstore.Store
	Image *Image
	// Calls counts Ensure calls; Fetched counts chunks written.
	Calls, Fetched atomic.Int64
}

// Ensure makes [off, off+length) of blob present in the store.
func (r *StoreResolver) Ensure(ctx context.Context, blob digest.Digest, off, length int64) error {
	r.Calls.Add(1)
	for i, b := range r.Image.Image.Blobs {
		if b.Digest != blob {
			continue
		}
		missing, err := r.Store.Missing(blob, off, length)
		if err != nil {
			return err
		}
		if len(missing) == 0 {
			return nil
		}
		f, err := os.Open(r.Image.BlobPath(i))
		if err != nil {
			return err
		}
		defer f.Close()
		for _, c := range missing {
			if err := ctx.Err(); err != nil {
				return err
			}
			buf := make([]byte, c.Length)
			if _, err := f.ReadAt(buf, c.Offset); err != nil {
				return fmt.Errorf("origin read of chunk at %d: %w", c.Offset, err)
			}
			if err := r.Store.WriteChunk(ctx, blob, c, buf); err != nil {
				return err
			}
			r.Fetched.Add(1)
		}
		return nil
	}
	return fmt.Errorf("unknown blob %s", blob)
}

// SlowResolver makes every Ensure that has something to fetch take Delay first, as a fetch over
// the network does, and gives up if its context ends meanwhile (as the real resolver's waiting
// readers do): a frontend that passes a reader's interruptible context down turns signals into
// failed reads.
type SlowResolver struct {
	*StoreResolver
	Delay time.Duration
}

// Ensure waits Delay (unless the range is present), then fetches like StoreResolver.
func (r *SlowResolver) Ensure(ctx context.Context, blob digest.Digest, off, length int64) error {
	if missing, err := r.Store.Missing(blob, off, length); err == nil && len(missing) > 0 {
		select {
		case <-time.After(r.Delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return r.StoreResolver.Ensure(ctx, blob, off, length)
}

// FailingResolver fails every Ensure, like a blob no peer or origin can serve.
type FailingResolver struct{ Calls atomic.Int64 }

// Ensure fails.
func (r *FailingResolver) Ensure(ctx context.Context, blob digest.Digest, off, length int64) error {
	r.Calls.Add(1)
	return fmt.Errorf("blob %s [%d,+%d): no source has it (test)", blob, off, length)
}

// CleanupMount registers a lazy unmount of target (a no-op if it is not mounted) so a failed test
// leaves nothing mounted.
func CleanupMount(t testing.TB, target string) {
	t.Helper()
	t.Cleanup(func() {
		if err := unix.Unmount(target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			t.Errorf("cleanup: unmount %s: %v", target, err)
		}
	})
}

// AssertNothingLeft fails the test if any mount or loop device refers to a path under dir.
func AssertNothingLeft(t testing.TB, dir string) {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		if strings.Contains(line, dir) {
			t.Errorf("mount left behind: %s", line)
		}
	}
	if out, err := exec.Command("losetup", "-a").CombinedOutput(); err == nil && bytes.Contains(out, []byte(dir)) {
		t.Errorf("loop device left behind: %s", out)
	}
}

// ReadReq asks the reader process to read Len bytes (-1: the whole file) at Off of Path.
type ReadReq struct {
	Path string
	Off  int64
	Len  int64
}

// ReadResp is the answer to one ReadReq: the sha256 of what was read, or the error.
type ReadResp struct {
	SHA256 string
	N      int64
	Err    string
}

const readerEnv = "SHOAL_MOUNTTEST_READER"

// ReaderMain turns the test binary into the reader process when ChildRead started it; call it
// first in TestMain. Reads must come from another process in fanotify mode: the listener lets its
// own process's accesses through at once (its own pwrites raise events too).
func ReaderMain() {
	if os.Getenv(readerEnv) != "1" {
		return
	}
	var reqs []ReadReq
	if err := json.NewDecoder(os.Stdin).Decode(&reqs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	out := make([]ReadResp, len(reqs))
	for i, r := range reqs {
		out[i] = readOne(r)
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
	os.Exit(0)
}

func readOne(r ReadReq) ReadResp {
	f, err := os.Open(r.Path)
	if err != nil {
		return ReadResp{Err: err.Error()}
	}
	defer f.Close()
	h := sha256.New()
	var n int64
	if r.Len < 0 {
		n, err = io.Copy(h, f)
	} else {
		b := make([]byte, r.Len)
		var k int
		k, err = f.ReadAt(b, r.Off)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		h.Write(b[:k])
		n = int64(k)
	}
	if err != nil {
		return ReadResp{Err: err.Error()}
	}
	return ReadResp{SHA256: hex.EncodeToString(h.Sum(nil)), N: n}
}

// ChildRead runs reqs in a child process (the test binary in reader mode, see ReaderMain) and
// returns its answers. ctx bounds it: a hung read is killed and reported as an error.
func ChildRead(ctx context.Context, reqs []ReadReq) ([]ReadResp, error) {
	in, err := json.Marshal(reqs)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), readerEnv+"=1")
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("reader process: %w (ctx: %v): %s", err, ctx.Err(), stderr.String())
	}
	var out []ReadResp
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		return nil, fmt.Errorf("reader process output: %w: %q", err, stdout.String())
	}
	return out, nil
}

// ChildReadSignalled is ChildRead with the child signalled all the time it reads: SIGURG every
// interval, the signal the Go runtime sends itself to preempt goroutines (so every Go program in a
// container takes it while it reads). A frontend must not turn an interrupted read into EIO for a
// fetch that would have succeeded. It returns the answers and how many signals were sent.
func ChildReadSignalled(ctx context.Context, reqs []ReadReq, interval time.Duration) ([]ReadResp, int, error) {
	in, err := json.Marshal(reqs)
	if err != nil {
		return nil, 0, err
	}
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), readerEnv+"=1")
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return nil, 0, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	sent := 0
	for {
		select {
		case err := <-done:
			if err != nil {
				return nil, sent, fmt.Errorf("reader process: %w (ctx: %v): %s", err, ctx.Err(), stderr.String())
			}
			var out []ReadResp
			if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
				return nil, sent, fmt.Errorf("reader process output: %w: %q", err, stdout.String())
			}
			return out, sent, nil
		case <-tick.C:
			if cmd.Process.Signal(unix.SIGURG) == nil {
				sent++
			}
		}
	}
}

// Expect is the ReadResp a correct read of req gives on the image's source files, with root the
// mountpoint the request paths are under.
func (im *Image) Expect(root string, req ReadReq) (ReadResp, error) {
	rel, err := filepath.Rel(root, req.Path)
	if err != nil {
		return ReadResp{}, err
	}
	b, ok := im.Files[rel]
	if !ok {
		return ReadResp{}, fmt.Errorf("%s is not a file of the image", rel)
	}
	if req.Len >= 0 {
		end := min(req.Off+req.Len, int64(len(b)))
		b = b[min(req.Off, int64(len(b))):end]
	}
	sum := sha256.Sum256(b)
	return ReadResp{SHA256: hex.EncodeToString(sum[:]), N: int64(len(b))}, nil
}

// Requests returns a whole-file read of every file and n random reads at odd offsets and
// lengths, all under root.
func (im *Image) Requests(root string, n int, seed uint64) []ReadReq {
	rng := rand.New(rand.NewPCG(seed, 77))
	var reqs []ReadReq
	var names []string
	for name := range im.Files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		reqs = append(reqs, ReadReq{Path: filepath.Join(root, name), Len: -1})
	}
	for range n {
		name := names[rng.IntN(len(names))]
		size := int64(len(im.Files[name]))
		off := rng.Int64N(size + 2)
		reqs = append(reqs, ReadReq{Path: filepath.Join(root, name), Off: off, Len: 1 + rng.Int64N(300_000)})
	}
	return reqs
}

// Check runs reqs in a child process and compares every answer with the source files.
func (im *Image) Check(t testing.TB, ctx context.Context, root string, reqs []ReadReq) {
	t.Helper()
	if err := im.Verify(ctx, root, reqs); err != nil {
		t.Fatal(err)
	}
}

// VerifyConcurrently runs readers reader processes at once, each with its own 40 random reads
// (seeds seed, seed+1, ...), all hitting the same chunks: every one must get the right bytes.
func (im *Image) VerifyConcurrently(ctx context.Context, root string, readers int, seed uint64) error {
	var wg sync.WaitGroup
	errs := make([]error, readers)
	for i := range errs {
		wg.Go(func() { errs[i] = im.Verify(ctx, root, im.Requests(root, 40, seed+uint64(i))) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Verify is Check for goroutines: it returns what went wrong instead of failing the test.
func (im *Image) Verify(ctx context.Context, root string, reqs []ReadReq) error {
	got, err := ChildRead(ctx, reqs)
	if err != nil {
		return err
	}
	return im.compare(root, reqs, got)
}

// VerifySignalled is Verify with the reader signalled every interval all the while it reads
// (ChildReadSignalled). It returns how many signals the reader took.
func (im *Image) VerifySignalled(ctx context.Context, root string, reqs []ReadReq, interval time.Duration) (int, error) {
	got, sent, err := ChildReadSignalled(ctx, reqs, interval)
	if err != nil {
		return sent, err
	}
	return sent, im.compare(root, reqs, got)
}

func (im *Image) compare(root string, reqs []ReadReq, got []ReadResp) error {
	if len(got) != len(reqs) {
		return fmt.Errorf("reader answered %d of %d requests", len(got), len(reqs))
	}
	var errs []error
	for i, r := range reqs {
		want, err := im.Expect(root, r)
		if err != nil {
			return err
		}
		if got[i] != want {
			errs = append(errs, fmt.Errorf("read %s at %d len %d: got %+v, want %+v", r.Path, r.Off, r.Len, got[i], want))
		}
	}
	if len(errs) > 5 {
		errs = append(errs[:5], fmt.Errorf("... %d of %d reads wrong", len(errs), len(reqs)))
	}
	return errors.Join(errs...)
}
