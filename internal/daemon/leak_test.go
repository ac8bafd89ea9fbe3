package daemon

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-p2p/shoal/bootstrap"
)

// TestDaemonStopLeavesNoGoroutine runs a real daemon in this process (no root: images are only
// prefetched, not mounted): two images from local OCI layouts, prefetched slowly (a bandwidth
// cap) while the API is polled, then the daemon is stopped in the middle of it. Run must return
// with every goroutine of Shoal's ended: prefetches, the API server's handlers, the node's and
// the store's. Goroutines of libraries that outlive their owner on purpose (none of Shoal's) are
// not counted.
func TestDaemonStopLeavesNoGoroutine(t *testing.T) {
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs not installed (erofs-utils; make test installs it)")
	}
	before := goroutineIDs()
	dir := t.TempDir()
	var layouts []string
	for i := range 2 {
		src := filepath.Join(dir, fmt.Sprintf("src%d", i))
		rng := rand.New(rand.NewSource(int64(i)))
		for j := range 6 {
			data := make([]byte, 300_000+rng.Intn(200_000))
			rng.Read(data)
			p := filepath.Join(src, fmt.Sprintf("d%d/f%d", j%2, j))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		out := filepath.Join(dir, fmt.Sprintf("img%d", i))
		if _, err := bootstrap.Build(context.Background(), src, out, bootstrap.BuildOptions{ChunkSize: 64 << 10}); err != nil {
			t.Fatal(err)
		}
		layouts = append(layouts, out)
	}

	cfg := DefaultConfig()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.APISocket = filepath.Join(dir, "api.sock")
	cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.DHT = false
	cfg.Prefetch = false
	cfg.PrefetchBW = "64K" // a chunk a second: still running when the daemon stops
	cfg.Workers = 4
	d, err := New(cfg, slogDiscard())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- d.Run(ctx) }()

	c := NewClient(cfg.APISocket)
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if err := c.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	for _, l := range layouts {
		if _, err := c.Prefetch(wctx, l); err != nil {
			t.Fatal(err)
		}
	}
	// Load: clients polling the API until the daemon is gone.
	var pollers sync.WaitGroup
	stopPolling := make(chan struct{})
	for range 4 {
		pollers.Add(1)
		go func() {
			defer pollers.Done()
			for {
				select {
				case <-stopPolling:
					return
				default:
				}
				_, _ = c.Stats(ctx)
				_, _ = c.Prefetch(ctx, layouts[0]) // a no-op while it runs
			}
		}()
	}
	for {
		st, err := c.Stats(wctx)
		if err != nil {
			t.Fatal(err)
		}
		running := 0
		for _, im := range st.Images {
			if im.Prefetch == prefetchRunning && im.BytesPresent > 0 && im.BytesPresent < im.Bytes {
				running++
			}
		}
		if running == 2 {
			break
		}
		if wctx.Err() != nil {
			t.Fatalf("prefetches never ran together: %+v", st.Images)
		}
		time.Sleep(20 * time.Millisecond)
	}

	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of its context ending")
	}
	close(stopPolling)
	pollers.Wait()

	// Run's return is the end of every goroutine it owns: the grace is for one that has said it
	// is done (a WaitGroup's Done) and not yet returned, not for one still winding down.
	deadline := time.Now().Add(250 * time.Millisecond)
	for {
		left := shoalGoroutines(before)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines of Shoal's left after Run returned:\n\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := os.Stat(cfg.APISocket); !os.IsNotExist(err) {
		t.Errorf("control socket left behind: %v", err)
	}
}

// goroutineIDs returns the IDs of the goroutines running now.
func goroutineIDs() map[string]bool {
	ids := map[string]bool{}
	for _, g := range allGoroutines() {
		ids[goroutineID(g)] = true
	}
	return ids
}

// shoalGoroutines returns the stacks of goroutines not in before that run Shoal's code, but for
// this test's own.
func shoalGoroutines(before map[string]bool) []string {
	var out []string
	for _, g := range allGoroutines() {
		if before[goroutineID(g)] || !strings.Contains(g, "github.com/shoal-p2p/shoal/") {
			continue
		}
		if strings.Contains(g, "daemon.TestDaemonStopLeavesNoGoroutine") || strings.Contains(g, "daemon.shoalGoroutines") {
			continue
		}
		out = append(out, g)
	}
	return out
}

func allGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Split(string(bytes.TrimSpace(buf[:n])), "\n\n")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// goroutineID is the "goroutine N" of a stack dump's first line.
func goroutineID(stack string) string {
	first, _, _ := strings.Cut(stack, "\n")
	f := strings.Fields(first)
	if len(f) < 2 {
		return first
	}
	return f[1]
}

// TestAPISocketDirectoryNotCreated: an --api path in a directory that does not exist is an error
// at start, not a directory made by a typo.
func TestAPISocketDirectoryNotCreated(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.APISocket = filepath.Join(dir, "no", "such", "dir", "api.sock")
	cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.DHT = false
	d, err := New(cfg, slogDiscard())
	if err != nil {
		t.Fatal(err)
	}
	err = d.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Run with --api in a missing directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "no")); !os.IsNotExist(err) {
		t.Fatalf("the missing directory was created: %v", err)
	}
}
