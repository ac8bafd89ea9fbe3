package chunkstore_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunkstore"
	"github.com/shoal-p2p/shoal/chunkstore/storetest"
)

// smallExt4 mounts a fresh ext4 filesystem of the given size (mkfs.ext4 syntax, e.g. "8M") on a
// loop device and returns its mount point; the mount and loop device are removed by name at
// cleanup. It skips when it cannot.
func smallExt4(t *testing.T, size string) string {
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
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img, size).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v: %s", err, out)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("losetup (no loop devices in this environment?): %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
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

func freeOn(t testing.TB, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		return int64(st.Bfree) * int64(st.Bsize) // as the store counts: root may use the reserved blocks
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// fillFS writes a file on dir's filesystem until the kernel says ENOSPC, as another process (or
// an older Shoal that wrote until ENOSPC) would. We are root, so it takes ext4's reserved blocks
// too: nothing is left.
func fillFS(t *testing.T, dir string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, "filler"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, bs := range []int{1 << 20, 4096} {
		buf := make([]byte, bs)
		for {
			if _, err := f.Write(buf); err != nil {
				if !errors.Is(err, unix.ENOSPC) {
					t.Fatal(err)
				}
				break
			}
		}
	}
	if err := f.Sync(); err != nil && !errors.Is(err, unix.ENOSPC) {
		t.Fatal(err)
	}
}

func TestENOSPC(t *testing.T) {
	mnt := smallExt4(t, "8M")
	cfg := testConfig()
	cfg.IndexDir = t.TempDir() // the index lives elsewhere: this test is about backing files
	cfg.ReserveBytes = 1 << 20
	s := open(t, mnt, cfg)
	b := storetest.NewBlob(t, 9, 16<<20, 256<<10) // twice the filesystem
	ctx := context.Background()
	if err := s.AddBlob(ctx, b.Manifest); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin(b.Digest(), "image"); err != nil {
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
	if !errors.Is(full, chunkstore.ErrNoSpace) {
		t.Fatalf("writing past the filesystem's size: %v, want ErrNoSpace", full)
	}
	if !strings.Contains(full.Error(), string(b.Digest())) || !strings.Contains(full.Error(), "nearly full") {
		t.Errorf("error does not name the blob and say the filesystem is full: %v", full)
	}
	if free := freeOn(t, mnt); free < cfg.ReserveBytes {
		t.Errorf("%d bytes left free, want at least ReserveBytes (%d)", free, cfg.ReserveBytes)
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

// TestFillsEvictUnpinnedBeforeFull: on a small disk without a cap, filling it with a second blob
// evicts the first (unpinned) one instead of failing, and the headroom stays free throughout.
func TestFillsEvictUnpinnedBeforeFull(t *testing.T) {
	mnt := smallExt4(t, "48M")
	cfg := fullDiskConfig()
	s := open(t, mnt, cfg)
	defer s.Close()
	ctx := context.Background()
	first := storetest.NewBlob(t, 30, 24<<20, 256<<10)
	second := storetest.NewBlob(t, 31, 24<<20, 256<<10)
	for _, b := range []storetest.Blob{first, second} {
		if err := s.AddBlob(ctx, b.Manifest); err != nil {
			t.Fatal(err)
		}
		for _, c := range b.Manifest.Chunks {
			if err := s.WriteChunk(ctx, b.Digest(), c, b.Bytes(c)); err != nil {
				t.Fatalf("write %s at %d: %v", b.Digest(), c.Offset, err)
			}
			if free := freeOn(t, mnt); free < cfg.ReserveBytes {
				t.Fatalf("%d bytes free after a write, want at least ReserveBytes (%d)", free, cfg.ReserveBytes)
			}
		}
	}
	if st := s.Stats(); st.ChunksEvicted == 0 {
		t.Fatalf("nothing evicted filling a 48 MiB disk with 48 MiB: %+v", st)
	}
	checkPresent(t, s, second)
}

func fullDiskConfig() chunkstore.Config {
	cfg := testConfig()
	cfg.ReserveBytes = 6 << 20 // the index lives on the same small filesystem
	return cfg
}

// The full-disk restart runs the store in child processes (this test binary re-executed): the
// failure it guards against is badger dying of SIGBUS, which would take the test binary with it.
const fullDiskEnv = "SHOAL_CHUNKSTORE_FULLDISK"

type fullDiskJob struct {
	Dir      string
	Mode     string // "fill": write until the store refuses, then wait to be killed or close; "reopen"
	Close    bool   // fill: close the store (else wait for SIGKILL)
	MaxBytes int64
	Pinned   []int // indexes into fullDiskBlobs that are pinned
}

type fullDiskReport struct {
	OpenErr  string
	FillErr  string
	Present  []int // present chunks per blob
	Verified int
	WriteErr string // reopen: writing a chunk that was missing
	Wrote    bool
	Free     int64
}

func fullDiskBlobs(t testing.TB) []storetest.Blob {
	return []storetest.Blob{
		storetest.NewBlob(t, 40, 8<<20, 256<<10),  // 0: an image's small layer
		storetest.NewBlob(t, 41, 64<<20, 256<<10), // 1: larger than the filesystem
	}
}

// TestFullDiskChild is the store process of TestFullDiskRestart; it only runs re-executed.
func TestFullDiskChild(t *testing.T) {
	env := os.Getenv(fullDiskEnv)
	if env == "" {
		t.Skip("helper process for TestFullDiskRestart")
	}
	var job fullDiskJob
	if err := json.Unmarshal([]byte(env), &job); err != nil {
		t.Fatal(err)
	}
	cfg := fullDiskConfig()
	cfg.MaxBytes = job.MaxBytes
	var rep fullDiskReport
	defer func() {
		js, _ := json.Marshal(rep)
		fmt.Printf("REPORT %s\n", js)
	}()
	s, err := chunkstore.Open(job.Dir, cfg)
	if err != nil {
		rep.OpenErr = err.Error()
		return
	}
	ctx := context.Background()
	blobs := fullDiskBlobs(t)
	if job.Mode == "fill" {
		for _, b := range blobs {
			if err := s.AddBlob(ctx, b.Manifest); err != nil {
				t.Fatal(err)
			}
		}
		for _, i := range job.Pinned {
			if err := s.Pin(blobs[i].Digest(), fmt.Sprint("image-", i)); err != nil {
				t.Fatal(err)
			}
		}
	fill:
		for _, b := range blobs {
			for _, c := range b.Manifest.Chunks {
				if err := s.WriteChunk(ctx, b.Digest(), c, b.Bytes(c)); err != nil {
					rep.FillErr = err.Error()
					if !errors.Is(err, chunkstore.ErrNoSpace) {
						t.Errorf("fill: %v, want ErrNoSpace", err)
					}
					break fill
				}
			}
		}
	}
	for _, b := range blobs {
		n := 0
		for _, c := range b.Manifest.Chunks {
			if !storetest.Has(t, s, b.Digest(), c) {
				continue
			}
			n++
			buf := make([]byte, c.Length)
			if _, err := s.ReadAt(b.Digest(), buf, c.Offset); err != nil {
				t.Errorf("read present chunk at %d of %s: %v", c.Offset, b.Digest(), err)
			} else if _, err := chunk.Verify(c.CID, buf); err != nil {
				t.Errorf("present chunk at %d of %s: %v", c.Offset, b.Digest(), err)
			} else {
				rep.Verified++
			}
		}
		rep.Present = append(rep.Present, n)
	}
	if job.Mode == "reopen" {
		b := blobs[1]
		for _, c := range b.Manifest.Chunks {
			if storetest.Has(t, s, b.Digest(), c) {
				continue
			}
			err := s.WriteChunk(ctx, b.Digest(), c, b.Bytes(c))
			rep.Wrote = err == nil
			if err != nil {
				rep.WriteErr = err.Error()
				if !errors.Is(err, chunkstore.ErrNoSpace) {
					t.Errorf("write after reopen: %v, want nil or ErrNoSpace", err)
				}
			}
			break
		}
	}
	rep.Free = freeOn(t, job.Dir)
	if job.Mode == "fill" && !job.Close {
		js, _ := json.Marshal(rep)
		fmt.Printf("REPORT %s\n", js)
		select {} // killed by the parent
	}
	if err := s.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}

// runFullDisk runs one child and returns its report. A child that dies of a signal other than
// the parent's SIGKILL (SIGBUS from a mapping of a file the full disk left short) fails the test.
func runFullDisk(t *testing.T, job fullDiskJob) fullDiskReport {
	t.Helper()
	js, _ := json.Marshal(job)
	cmd := exec.Command(os.Args[0], "-test.run=^TestFullDiskChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), fullDiskEnv+"="+string(js))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var rep fullDiskReport
	got := make(chan bool, 1)
	var log strings.Builder
	go func() {
		sc := bufio.NewScanner(out)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			log.WriteString(line + "\n")
			if r, ok := strings.CutPrefix(line, "REPORT "); ok && !sent {
				sent = json.Unmarshal([]byte(r), &rep) == nil
				got <- sent
			}
		}
		if !sent {
			got <- false
		}
	}()
	var ok bool
	select {
	case ok = <-got:
	case <-time.After(5 * time.Minute):
	}
	killed := false
	if job.Mode == "fill" && !job.Close && ok {
		killed = cmd.Process.Signal(syscall.SIGKILL) == nil
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case killed && errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL:
	default:
		t.Fatalf("%s child: %v\nstdout:\n%s\nstderr:\n%s", job.Mode, err, log.String(), stderr.String())
	}
	if !ok {
		t.Fatalf("%s child gave no report:\n%s\n%s", job.Mode, log.String(), stderr.String())
	}
	t.Logf("%s: %+v", job.Mode, rep)
	return rep
}

// TestFullDiskRestart fills a small ext4 filesystem that holds both the backing files and the
// index, then fills what the store left free with another file (as another process, or an older
// Shoal that wrote until ENOSPC, would), and restarts the store on the full filesystem. The store
// must open, serve every chunk it calls present, and either evict unpinned data to take new
// chunks or refuse them with a clear error: never crash (badger used to die of SIGBUS here).
func TestFullDiskRestart(t *testing.T) {
	if os.Getenv(fullDiskEnv) != "" {
		t.Skip("in child")
	}
	chunks := len(fullDiskBlobs(t)[0].Manifest.Chunks)
	tests := []struct {
		name      string
		pinned    []int
		close     bool
		noReserve bool // remove the reserve file, as a store made by an older Shoal has none
		maxBytes  int64
		// what the reopened store must do
		wantOpenErr bool
		wantWrote   bool
	}{
		{name: "killed, unpinned data evicted", pinned: []int{0}, wantWrote: true},
		{name: "closed, all pinned: writes refused", pinned: []int{0, 1}, close: true},
		{name: "no reserve file, unpinned data evicted before the index opens", pinned: []int{0}, close: true, noReserve: true, wantWrote: true},
		{name: "no reserve file, all pinned: clear error", pinned: []int{0, 1}, noReserve: true, wantOpenErr: true},
		{name: "pinned image past the cap", pinned: []int{0, 1}, maxBytes: 8 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mnt := smallExt4(t, "48M")
			dir := filepath.Join(mnt, "cache")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			fill := runFullDisk(t, fullDiskJob{Dir: dir, Mode: "fill", Close: tt.close, MaxBytes: tt.maxBytes, Pinned: tt.pinned})
			allPinned := len(tt.pinned) == 2
			if allPinned && !strings.Contains(fill.FillErr, "nearly full") {
				t.Fatalf("filling the disk with pinned data ended with %q, want the store's clear no-space error", fill.FillErr)
			}
			if !allPinned && fill.FillErr != "" {
				t.Fatalf("filling the disk with unpinned data: %s, want eviction to make room", fill.FillErr)
			}
			if fill.Free < fullDiskConfig().ReserveBytes {
				t.Fatalf("the store left %d bytes free, want at least ReserveBytes", fill.Free)
			}
			if fill.Present[0] != chunks {
				t.Fatalf("pinned blob: %d of %d chunks present", fill.Present[0], chunks)
			}
			if tt.maxBytes > 0 && int64(fill.Present[0]+fill.Present[1])*(256<<10) <= tt.maxBytes {
				t.Fatalf("pinned data did not pass the cap (%d bytes): %v", tt.maxBytes, fill.Present)
			}
			if tt.noReserve {
				if err := os.Remove(filepath.Join(dir, "index", "shoal-reserve")); err != nil {
					t.Fatalf("no reserve file to remove: %v", err)
				}
			}
			fillFS(t, mnt)
			// ext4 keeps about 1 MiB back even from root (reserved clusters); the index needs
			// 6 MiB to start.
			if free := freeOn(t, mnt); free > 2<<20 {
				t.Fatalf("%d bytes still free after filling", free)
			}
			re := runFullDisk(t, fullDiskJob{Dir: dir, Mode: "reopen", MaxBytes: tt.maxBytes})
			if tt.wantOpenErr {
				if !strings.Contains(re.OpenErr, "is full") || !strings.Contains(re.OpenErr, "unpin") {
					t.Fatalf("open on a full disk with everything pinned: %q, want a clear error", re.OpenErr)
				}
				return
			}
			if re.OpenErr != "" {
				t.Fatalf("open on a full disk: %s", re.OpenErr)
			}
			if re.Present[0] != chunks {
				t.Fatalf("pinned blob after restart: %d of %d chunks present", re.Present[0], chunks)
			}
			if re.Wrote != tt.wantWrote {
				t.Fatalf("write after restart: wrote %v (%s), want %v", re.Wrote, re.WriteErr, tt.wantWrote)
			}
			if !tt.wantWrote && !strings.Contains(re.WriteErr, "nothing unpinned") {
				t.Fatalf("write refused with %q, want a message saying nothing can be evicted", re.WriteErr)
			}
			if allPinned && re.Present[1] != fill.Present[1] {
				t.Fatalf("pinned blob lost chunks over the restart: %d, had %d", re.Present[1], fill.Present[1])
			}
			// And the store starts again after that.
			again := runFullDisk(t, fullDiskJob{Dir: dir, Mode: "reopen", MaxBytes: tt.maxBytes})
			if again.OpenErr != "" || again.Present[0] != chunks {
				t.Fatalf("third start: %+v", again)
			}
		})
	}
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
