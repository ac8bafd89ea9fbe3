package cachefiles

// This file runs INSIDE the test VM (scripts/kernel/kernel-test.sh boots it; kernel_test.go starts
// that from the host). It needs a kernel with CONFIG_CACHEFILES_ONDEMAND and CONFIG_EROFS_FS_ONDEMAND,
// root, /dev/cachefiles and a cache dir on ext4, so it skips unless SHOAL_IN_VM=1.
//
// TestKernelInVM is the supervisor: it opens and binds the device and keeps it while workers come
// and go. TestKernelWorker is the worker it re-executes (this same binary): it takes the device over
// with Handover, writes "restore" and serves blobs from files in SHOAL_VM_DATA.
//
// Every check prints one "SHOAL-VM: PASS <name>: ..." or "SHOAL-VM: FAIL <name>: ..." line.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/chunkstore/layout"
	"github.com/shoal-p2p/shoal/mount"
)

const (
	vmSocket    = "/run/shoal-cachefiles.sock"
	vmReadLog   = "/tmp/shoal-reads.log" // one line per ReadRange the worker served
	vmBlock     = "/tmp/shoal-block"     // while it exists, a worker blocks after serving vmFastSteps
	vmFastSteps = 3
	vmStepSize  = 128 << 10               // bytes per ReadRange (a "READ step")
	vmOverlap   = "/tmp/shoal-overlap"    // while it exists, ReadRange waits (up to 10s) until two overlap
	vmSlow      = "/tmp/shoal-slow"       // while it exists, each ReadRange takes 5 ms more
	vmWorkLog   = "/tmp/shoal-worker.log" // worker stdout and stderr
)

func vmReport(t *testing.T, ok bool, name, format string, args ...any) {
	t.Helper()
	status := "PASS"
	if !ok {
		status = "FAIL"
		t.Errorf("%s: "+format, append([]any{name}, args...)...)
	}
	fmt.Printf("SHOAL-VM: %s %s: %s\n", status, name, fmt.Sprintf(format, args...))
}

// fileDigest returns "sha256:<hex>" of a file.
func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// vmImage is one EROFS image made by kernel-test.sh: <name>.boot.img, <name>.blob.img and
// <name>.sums (sha256sum of the source tree).
type vmImage struct {
	name, boot, blob string // digests of bootstrap and blob
	sums             map[string]string
}

func loadVMImage(t *testing.T, dir, name string) vmImage {
	t.Helper()
	img := vmImage{name: name, sums: map[string]string{}}
	var err error
	if img.boot, err = fileDigest(filepath.Join(dir, name+".boot.img")); err != nil {
		t.Fatal(err)
	}
	if img.blob, err = fileDigest(filepath.Join(dir, name+".blob.img")); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, name+".sums"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, path, ok := strings.Cut(sc.Text(), "  ")
		if ok {
			img.sums[strings.TrimPrefix(path, "./")] = sum
		}
	}
	return img
}

func (img vmImage) mount(mnt string) error {
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return err
	}
	opts, err := mount.FscacheOptions(img.boot, layout.DefaultDomain, []string{img.blob})
	if err != nil {
		return err
	}
	if err := unix.Mount("none", mnt, "erofs", unix.MS_RDONLY, opts); err != nil {
		return fmt.Errorf("mount %s (%s): %w", mnt, opts, err)
	}
	return nil
}

func sha256File(path string) (string, error) {
	d, err := fileDigest(path)
	return strings.TrimPrefix(d, "sha256:"), err
}

// verifyTree hashes every file of img under mnt and returns how many matched and the mismatches.
func verifyTree(img vmImage, mnt string) (int, []string) {
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		bad []string
		n   int
	)
	// All files at once: several READs are in flight together.
	for path, want := range img.sums {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := sha256File(filepath.Join(mnt, path))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				bad = append(bad, fmt.Sprintf("%s: %v", path, err))
			case got != want:
				bad = append(bad, fmt.Sprintf("%s: sha256 %s, want %s", path, got, want))
			default:
				n++
			}
		}()
	}
	wg.Wait()
	return n, bad
}

// maxInflight is the largest number of ReadRange calls a worker had in flight at once.
func maxInflight() int {
	b, _ := os.ReadFile(vmReadLog)
	m := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 5 {
			if v, err := strconv.Atoi(f[4]); err == nil && v > m {
				m = v
			}
		}
	}
	return m
}

func countLines(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "\n")
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func TestKernelInVM(t *testing.T) {
	if os.Getenv("SHOAL_IN_VM") != "1" {
		t.Skip("runs only inside the test VM (SHOAL_IN_VM=1); see TestKernel and scripts/kernel")
	}
	data := os.Getenv("SHOAL_VM_DATA")
	cacheDir := os.Getenv("SHOAL_VM_CACHE")
	a := loadVMImage(t, data, "a")
	b := loadVMImage(t, data, "b")
	defer func() {
		if t.Failed() {
			fmt.Printf("worker log tail:\n%s\n", tailFile(vmWorkLog, 30))
		}
	}()

	dev, err := OpenDevice("")
	if err != nil {
		vmReport(t, false, "open-device", "%v", err)
		t.FailNow()
	}
	defer dev.Close()
	err = dev.Bind(cacheDir, "shoal")
	vmReport(t, err == nil, "bind", "dir %s: %v", cacheDir, err)
	if err != nil {
		t.FailNow()
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	wlog, err := os.OpenFile(vmWorkLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer wlog.Close()
	sup, err := NewSupervisor(dev, SupervisorConfig{
		Socket: vmSocket,
		Worker: func(ctx context.Context) *exec.Cmd {
			cmd := exec.CommandContext(ctx, self, "-test.run=^TestKernelWorker$", "-test.v")
			cmd.Env = append(os.Environ(), "SHOAL_VM_WORKER=1")
			cmd.Stdout, cmd.Stderr = wlog, wlog
			return cmd
		},
		RestartDelay: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	supDone := make(chan error, 1)
	go func() { supDone <- sup.Run(ctx) }()
	defer func() { cancel(); <-supDone }()

	// 1. Mount A and read every file, all at once: the data comes through OPEN and READ, several
	// READs being served at the same time.
	err = a.mount("/mnt/a")
	vmReport(t, err == nil, "mount", "image a (bootstrap %s): %v", a.boot, err)
	if err != nil {
		t.FailNow()
	}
	if err := os.WriteFile(vmOverlap, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	n, bad := verifyTree(a, "/mnt/a")
	_ = os.Remove(vmOverlap)
	reads1 := countLines(vmReadLog)
	vmReport(t, len(bad) == 0 && n > 0 && reads1 > 0, "read-all", "%d files match their source, %d READ steps served, mismatches %v", n, reads1, bad)
	vmReport(t, maxInflight() >= 2, "concurrent-reads", "up to %d READ steps in flight at once", maxInflight())

	// 2. Read again: page cache hits, no READ reaches the daemon.
	n, bad = verifyTree(a, "/mnt/a")
	reads2 := countLines(vmReadLog)
	vmReport(t, len(bad) == 0 && reads2 == reads1, "reread-no-reads", "%d files match, READ steps %d -> %d", n, reads1, reads2)

	// 3. Unmount and mount again: the page cache is gone but the backing files on the cache dir
	// hold the data, so still no READ.
	err = unix.Unmount("/mnt/a", 0)
	if err == nil {
		err = a.mount("/mnt/a")
	}
	if err == nil {
		n, bad = verifyTree(a, "/mnt/a")
	}
	reads3 := countLines(vmReadLog)
	vmReport(t, err == nil && len(bad) == 0 && reads3 == reads1, "remount-cached", "%d files match, READ steps %d -> %d, err %v, mismatches %v", n, reads1, reads3, err, bad)

	// The kernel links a new backing file into the cache dir when the cookie is withdrawn
	// (umount); since step 3 they must be where BackingPath says.
	var missing []string
	for _, key := range []string{a.boot, a.blob} {
		p, err := layout.BackingPath(cacheDir, layout.DefaultDomain, digest.Digest(key))
		if st, serr := os.Stat(p); err != nil || serr != nil || st.Size() == 0 {
			missing = append(missing, fmt.Sprintf("%s: %v %v", p, err, serr))
		}
	}
	if len(missing) > 0 {
		_ = filepath.WalkDir(cacheDir, func(p string, _ os.DirEntry, _ error) error {
			fmt.Println("cache dir:", p)
			return nil
		})
	}
	vmReport(t, len(missing) == 0, "backing-files", "bootstrap and blob backing files at BackingPath; missing %v", missing)

	// 4. An unknown bootstrap: the worker answers copen -ENOENT and the mount fails cleanly.
	unknown := vmImage{boot: "sha256:" + strings.Repeat("0", 64), blob: a.blob}
	err = unknown.mount("/mnt/unknown")
	vmReport(t, err != nil, "unknown-bootstrap", "mount error: %v", err)

	// 5. Failover: kill the worker in the middle of a large read, the supervisor starts a new one,
	// which writes "restore"; the read completes with the right bytes.
	err = b.mount("/mnt/b")
	vmReport(t, err == nil, "mount-b", "image b: %v", err)
	if err != nil {
		t.FailNow()
	}
	signalledRead(t, b, "signalled-4M")
	restartDuringRead(t, sup, b, "big-16M", syscall.SIGKILL, "failover")

	// 6. Upgrade: stop the worker gracefully (SIGTERM) in the middle of a read; it leaves its READs
	// unanswered and closes its anonymous fds, and the next worker serves them after restore.
	restartDuringRead(t, sup, b, "upgrade-8M", syscall.SIGTERM, "upgrade")

	// 7. Clean up: unmounting sends CLOSE for every object.
	err1 := unix.Unmount("/mnt/a", 0)
	err2 := unix.Unmount("/mnt/b", 0)
	vmReport(t, err1 == nil && err2 == nil, "umount", "a: %v, b: %v", err1, err2)
}

// restartDuringRead reads file of img (mounted at /mnt/<name of img>) with vmBlock set, so the
// worker serves vmFastSteps steps and then blocks; it signals the worker while a READ is blocked,
// lets the Supervisor start a new one and checks that the read completes with the right bytes, the
// new worker having served again what the old one left unanswered.
func restartDuringRead(t *testing.T, sup *Supervisor, img vmImage, file string, sig syscall.Signal, name string) {
	t.Helper()
	want := img.sums[file]
	before := countLines(vmReadLog)
	if err := os.WriteFile(vmBlock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	type result struct {
		sum string
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := sha256File(filepath.Join("/mnt", img.name, file))
		done <- result{s, err}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for countLines(vmReadLog) < before+vmFastSteps+1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	old := sup.WorkerPID()
	select {
	case r := <-done:
		vmReport(t, false, name, "read of %s finished before the worker could be stopped (%v)", file, r.err)
		return
	default:
	}
	killErr := syscall.Kill(old, sig)
	// Unblock only once the old worker is gone: a worker stopping gracefully could otherwise see
	// the block lifted before its context ends and finish the READ itself, leaving nothing for
	// the next worker to serve again.
	for wait := time.Now().Add(60 * time.Second); killErr == nil && sup.WorkerPID() == old && time.Now().Before(wait); {
		time.Sleep(10 * time.Millisecond)
	}
	_ = os.Remove(vmBlock)
	stoppedAt := countLines(vmReadLog) - before
	var r result
	select {
	case r = <-done:
	case <-time.After(120 * time.Second):
		r.err = fmt.Errorf("read still hanging after 120s")
	}
	newPID := sup.WorkerPID()
	resent := resentRanges(img.blob, old)
	vmReport(t, killErr == nil && r.err == nil && r.sum == want && newPID != old && newPID != 0 && resent > 0, name,
		"sent %q to worker %d after %d READ steps of %s (err %v); new worker %d served %d of the old worker's unanswered ranges again after restore; read: %v; sha256 %s, want %s; %d READ steps in all",
		sig, old, stoppedAt, file, killErr, newPID, resent, r.err, r.sum, want, countLines(vmReadLog)-before)
}

// signalledRead reads a cold file while its reading thread takes SIGURG every millisecond (the
// signal the Go runtime preempts goroutines with) and the worker serves each READ step slowly:
// the read must return the right bytes. (The kernel's wait for a READ is killable only, so
// ordinary signals must neither fail the read nor reach the worker.)
func signalledRead(t *testing.T, img vmImage, file string) {
	t.Helper()
	if err := os.WriteFile(vmSlow, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(vmSlow)
	type result struct {
		sum string
		err error
	}
	tids := make(chan int, 1)
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // one thread does the whole read: the one the signals go to
		defer runtime.UnlockOSThread()
		tids <- unix.Gettid()
		s, err := sha256File(filepath.Join("/mnt", img.name, file))
		done <- result{s, err}
	}()
	tid := <-tids
	sent := 0
	var r result
loop:
	for {
		select {
		case r = <-done:
			break loop
		case <-time.After(time.Millisecond):
			if unix.Tgkill(os.Getpid(), tid, unix.SIGURG) == nil {
				sent++
			}
		}
	}
	want := img.sums[file]
	vmReport(t, r.err == nil && r.sum == want && sent > 10, "signalled-read",
		"%s read cold with %d signals to the reading thread: err %v, sha256 %s, want %s", file, sent, r.err, r.sum, want)
}

// resentRanges counts the ranges of blob that worker pid started to serve and another worker
// served again: READs the kernel resent after "restore".
func resentRanges(blob string, pid int) int {
	b, _ := os.ReadFile(vmReadLog)
	started := map[string]bool{}
	again := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line) // pid cookie off len inflight
		if len(f) != 5 || f[1] != blob {
			continue
		}
		key := f[2] + "+" + f[3]
		if f[0] == strconv.Itoa(pid) {
			started[key] = true
		} else if started[key] {
			again[key] = true
		}
	}
	return len(again)
}

// vmResolver serves blobs from the image files in SHOAL_VM_DATA, keyed by their digests, and logs
// every ReadRange so the supervisor can count READs.
type vmResolver struct {
	files      map[string]*os.File
	sizes      map[string]int64
	mu         sync.Mutex
	log        *os.File
	inflight   atomic.Int32
	overlapped atomic.Bool
	// blockSteps counts the steps served while vmBlock exists.
	blockSteps atomic.Int32
}

func (r *vmResolver) Lookup(volumeKey, cookieKey string) (int64, bool) {
	if volumeKey != layout.VolumeKey(layout.DefaultDomain) {
		return 0, false
	}
	size, ok := r.sizes[cookieKey]
	return size, ok
}

func (r *vmResolver) Fill(ctx context.Context, cookieKey string, off, length int64, write func([]byte, int64) error) error {
	return fillInSteps(ctx, cookieKey, off, length, r.sizes[cookieKey], vmStepSize, r.ReadRange, write)
}

func (r *vmResolver) ReadRange(ctx context.Context, cookieKey string, p []byte, off int64) error {
	f := r.files[cookieKey]
	if f == nil {
		return fmt.Errorf("no blob %s", cookieKey)
	}
	r.mu.Lock()
	inflight := r.inflight.Add(1)
	defer r.inflight.Add(-1)
	if inflight >= 2 {
		r.overlapped.Store(true)
	}
	fmt.Fprintf(r.log, "%d %s %d %d %d\n", os.Getpid(), cookieKey, off, len(p), inflight)
	r.mu.Unlock()
	if _, err := os.Stat(vmOverlap); err == nil {
		// Hold this READ until another one is being served too (once), so the check that READs
		// are served concurrently does not depend on timing; if the kernel never has two pending,
		// the wait ends after 10s and the check fails.
		for deadline := time.Now().Add(10 * time.Second); !r.overlapped.Load() && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}
	if _, err := os.Stat(vmSlow); err == nil {
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := os.Stat(vmBlock); err == nil && r.blockSteps.Add(1) > vmFastSteps {
		for {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if _, err := os.Stat(vmBlock); err != nil {
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	n, err := f.ReadAt(p, off)
	if err == io.EOF {
		clear(p[n:])
		err = nil
	}
	return err
}

func TestKernelWorker(t *testing.T) {
	if os.Getenv("SHOAL_VM_WORKER") != "1" {
		t.Skip("the worker process of TestKernelInVM, started by its supervisor inside the test VM")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	data := os.Getenv("SHOAL_VM_DATA")
	res := &vmResolver{files: map[string]*os.File{}, sizes: map[string]int64{}}
	imgs, _ := filepath.Glob(filepath.Join(data, "*.img"))
	for _, p := range imgs {
		d, err := fileDigest(p)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		res.files[d], res.sizes[d] = f, st.Size()
	}
	var err error
	if res.log, err = os.OpenFile(vmReadLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
		t.Fatal(err)
	}
	dev, err := Handover(ctx, vmSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	srv, err := NewServer(dev, res, Config{Workers: 4, StepSize: vmStepSize, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := srv.Run(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("stats: %+v", srv.Stats())
}
