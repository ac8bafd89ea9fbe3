package chunkstore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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

const crashEnv = "SHOAL_CHUNKSTORE_CRASH_DIR"

func crashBlobs(t testing.TB) []storetest.Blob {
	var out []storetest.Blob
	for i := range 4 {
		out = append(out, storetest.NewBlob(t, uint64(100+i), 48*16384, 16384))
	}
	return out
}

func crashConfig() chunkstore.Config {
	cfg := testConfig()
	cfg.MaxBytes = 2 << 20 // smaller than the blobs: eviction (index sync, then punch) runs all the time
	return cfg
}

// TestCrashChild is the writer the crash test kills; it only runs in the re-executed child.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnv)
	if dir == "" {
		t.Skip("helper process for TestCrashConsistency")
	}
	s, err := chunkstore.Open(dir, crashConfig())
	if err != nil {
		t.Fatal(err)
	}
	blobs := crashBlobs(t)
	ctx := context.Background()
	for _, b := range blobs {
		if err := s.AddBlob(ctx, b.Manifest); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "ready"), nil, 0o600)
	done := make(chan struct{})
	for w := range 4 {
		go func() {
			r := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for {
				b := blobs[r.IntN(len(blobs))]
				c := b.Manifest.Chunks[r.IntN(len(b.Manifest.Chunks))]
				if err := s.WriteChunk(ctx, b.Digest(), c, b.Bytes(c)); err != nil {
					fmt.Fprintln(os.Stderr, "write:", err)
				}
			}
		}()
	}
	<-done // killed by the parent
}

// TestCrashConsistency kills a writing process with SIGKILL at random moments, 20 times; after
// each kill, every chunk the reopened index calls present must verify against its CID.
func TestCrashConsistency(t *testing.T) {
	if os.Getenv(crashEnv) != "" {
		t.Skip("in child")
	}
	dir := t.TempDir()
	blobs := crashBlobs(t)
	rounds := 20
	if testing.Short() {
		rounds = 5
	}
	r := rand.New(rand.NewPCG(1, 2))
	var checked, present int
	for round := range rounds {
		os.Remove(filepath.Join(dir, "ready"))
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("round %d: child never became ready: %s", round, stderr.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(time.Duration(r.IntN(400)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child did not die by SIGKILL: %v\n%s", round, err, stderr.String())
		}
		if strings.Contains(stderr.String(), "write:") {
			t.Fatalf("round %d: child write failed:\n%s", round, stderr.String())
		}
		s := open(t, dir, crashConfig())
		for _, b := range blobs {
			path := s.BackingPath(b.Digest())
			fd, err := unix.Open(path, unix.O_RDONLY, 0)
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			for _, c := range b.Manifest.Chunks {
				checked++
				if !storetest.Has(t, s, b.Digest(), c) {
					continue
				}
				present++
				buf := make([]byte, c.Length)
				if _, err := unix.Pread(fd, buf, c.Offset); err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				if _, err := chunk.Verify(c.CID, buf); err != nil {
					t.Fatalf("round %d: chunk at %d of %s is present in the index but its bytes are wrong: %v", round, c.Offset, b.Digest(), err)
				}
			}
			unix.Close(fd)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d rounds: %d present chunks verified of %d checked", rounds, present, checked)
	if present == 0 {
		t.Fatal("no chunk was ever present: the child did not write")
	}
}
