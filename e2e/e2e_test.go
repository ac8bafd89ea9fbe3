// Package e2e runs Shoal end to end with real processes: `shoal origin serve` over an image built
// by the real mkfs.erofs, three `shoal daemon`s peered over 127.0.0.1, images mounted through the
// real kernel. It checks what a user would: file contents, where the bytes came from, and that
// nothing is left behind.
package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-p2p/shoal/origin"
)

var shoalBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "shoal-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shoalBin = filepath.Join(dir, "shoal")
	out, err := exec.Command("go", "build", "-o", shoalBin, "../cmd/shoal").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building shoal: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// run runs the CLI and fails the test on error.
func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(shoalBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("shoal %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// makeTree writes a tree of files with assorted sizes and returns their sha256 by relative path.
func makeTree(t testing.TB, dir string, seed int64, n int) map[string][32]byte {
	rng := rand.New(rand.NewSource(seed))
	sums := map[string][32]byte{}
	for i := range n {
		size := []int{0, 1, 4095, 4097, 100_000, 1 << 20, 1<<20 + 1, 3_000_000}[i%8] + rng.Intn(1000)*(i%3)
		data := make([]byte, size)
		rng.Read(data)
		rel := filepath.Join(fmt.Sprintf("d%d", i%5), fmt.Sprintf("file-%03d.bin", i))
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sums[rel] = sha256.Sum256(data)
	}
	os.Symlink("d0/file-000.bin", filepath.Join(dir, "link"))
	return sums
}

type cluster struct {
	t        testing.TB
	prefetch bool     // start daemons with background prefetch (the default); tests mostly turn it off
	extra    []string // more daemon flags
	dir      string
	origin   string    // host:port
	originP  *exec.Cmd // the `shoal origin serve` process
	ref      string
	daemons  []*daemonProc
	src      string
	sums     map[string][32]byte
	image    int64  // chunk data bytes of the image
	listenIP string // the loopback address daemons listen on ("": 127.0.0.1)
}

// syncBuffer collects a daemon's output; tests read it while the daemon writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

type daemonProc struct {
	n    int
	sock string
	cmd  *exec.Cmd
	log  *syncBuffer
	addr string
}

func newCluster(t *testing.T, hosts int) *cluster { return newClusterPrefetch(t, hosts, false) }

func newClusterPrefetch(t *testing.T, hosts int, prefetch bool, extra ...string) *cluster {
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs not installed (erofs-utils)")
	}
	c := &cluster{t: t, dir: t.TempDir(), prefetch: prefetch, extra: extra}
	c.src = filepath.Join(c.dir, "src")
	c.sums = makeTree(t, c.src, 42, 24)
	img := filepath.Join(c.dir, "img")
	run(t, "image", "build", c.src, img, "--quiet")
	var inspect struct {
		DataBytes int64 `json:"dataBytes"`
	}
	json.Unmarshal([]byte(run(t, "image", "inspect", img, "--json")), &inspect)
	c.image = inspect.DataBytes

	c.origin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c.ref = c.origin + "/img:latest"
	o := exec.Command(shoalBin, "origin", "serve", img, "--listen", c.origin)
	if err := o.Start(); err != nil {
		t.Fatal(err)
	}
	c.originP = o
	t.Cleanup(func() { o.Process.Kill(); o.Wait() })
	waitHTTP(t, "http://"+c.origin+"/v2/")

	for i := range hosts {
		var peers []string
		for _, d := range c.daemons {
			peers = append(peers, d.addr)
		}
		c.daemons = append(c.daemons, c.startDaemon(i+1, peers))
	}
	return c
}

func waitHTTP(t testing.TB, url string) {
	for range 100 {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never answered", url)
}

func (c *cluster) startDaemon(n int, peers []string) *daemonProc {
	t := c.t
	d := &daemonProc{n: n, sock: filepath.Join(c.dir, fmt.Sprintf("d%d.sock", n)), log: &syncBuffer{}}
	ip := c.listenIP
	if ip == "" {
		ip = "127.0.0.1"
	}
	args := []string{"daemon", "--data", filepath.Join(c.dir, fmt.Sprintf("d%d", n)), "--api", d.sock,
		"--listen", fmt.Sprintf("/ip4/%s/tcp/%d", ip, freePort(t)), "--insecure-registry", c.origin, fmt.Sprintf("--prefetch=%v", c.prefetch)}
	for _, p := range peers {
		args = append(args, "--peer", p)
	}
	args = append(args, c.extra...)
	d.cmd = exec.Command(shoalBin, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			d.cmd.Process.Kill()
			<-done
			t.Errorf("daemon %d did not stop on SIGINT within 15s", n)
		}
		if t.Failed() {
			t.Logf("daemon %d log:\n%s", n, d.log.String())
		}
	})
	for range 100 {
		out, err := exec.Command(shoalBin, "peers", "--self", "--api", d.sock).Output()
		if err == nil && len(out) > 0 {
			d.addr = strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
			if !strings.Contains(d.addr, "/p2p/") {
				t.Fatalf("peers --self printed %q, want a multiaddr with /p2p/", d.addr)
			}
			return d
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("daemon %d did not come up:\n%s", n, d.log.String())
	return nil
}

type stats struct {
	Bytes struct {
		Local, Dedup, Peers, Origin, ServedToPeers int64
	} `json:"bytes"`
	// WireBytes is what moved over the network for those bytes: the origin serves compressed
	// chunks in their stored (compressed) form.
	WireBytes struct {
		Peers, Origin int64
	} `json:"wireBytes"`
	VerifyFailures int64 `json:"verifyFailures"`
	Images         []struct {
		Ref           string            `json:"ref"`
		Mounts        map[string]string `json:"mounts"`
		Bytes         int64             `json:"bytes"`
		BytesPresent  int64             `json:"bytesPresent"`
		ChunksPresent int               `json:"chunksPresent"`
		Chunks        int               `json:"chunks"`
	} `json:"images"`
	Peers []struct {
		ID        string `json:"id"`
		BytesDown int64  `json:"bytesDown"`
		Blobs     int    `json:"blobs"`
	} `json:"peers"`
}

func (c *cluster) stats(d *daemonProc) stats {
	var s stats
	if err := json.Unmarshal([]byte(run(c.t, "stats", "--json", "--api", d.sock)), &s); err != nil {
		c.t.Fatal(err)
	}
	return s
}

func (c *cluster) originBytes() int64 { return c.originStats().BytesServed }

// originStats is the embedded origin's counters (GET /shoal/stats).
func (c *cluster) originStats() origin.Stats {
	resp, err := http.Get("http://" + c.origin + origin.StatsPath)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var s origin.Stats
	json.NewDecoder(resp.Body).Decode(&s)
	return s
}

// checkTree compares every file under root with the source and reads random odd ranges.
func (c *cluster) checkTree(root string) {
	t := c.t
	seen := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		want, ok := c.sums[rel]
		if !ok {
			return fmt.Errorf("unexpected file %s", rel)
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, bufio.NewReaderSize(f, 1<<20)); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if [32]byte(h.Sum(nil)) != want {
			return fmt.Errorf("%s: sha256 differs from the source", rel)
		}
		seen++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != len(c.sums) {
		t.Fatalf("saw %d files, source has %d", seen, len(c.sums))
	}
	if target, err := os.Readlink(filepath.Join(root, "link")); err != nil || target != "d0/file-000.bin" {
		t.Fatalf("symlink: %q %v", target, err)
	}
}

// randomReads reads odd ranges of the biggest files and compares them with the source.
func (c *cluster) randomReads(root string, seed int64) {
	t := c.t
	rng := rand.New(rand.NewSource(seed))
	for rel := range c.sums {
		src, _ := os.ReadFile(filepath.Join(c.src, rel))
		if len(src) < 10_000 {
			continue
		}
		f, err := os.Open(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			off := rng.Int63n(int64(len(src)))
			n := 1 + rng.Intn(300_000)
			got := make([]byte, n)
			k, err := f.ReadAt(got, off)
			if err != nil && err != io.EOF {
				t.Fatalf("%s at %d+%d: %v", rel, off, n, err)
			}
			if !bytes.Equal(got[:k], src[off:min(int(off)+n, len(src))]) {
				t.Fatalf("%s at %d+%d: bytes differ", rel, off, n)
			}
		}
		f.Close()
	}
}

// TestPrefetchCluster: three hosts warm their caches through `shoal prefetch` (no mount, no
// root); the first from the origin, the other two at the same time from peers.
func TestPrefetchCluster(t *testing.T) {
	c := newCluster(t, 3)
	run(t, "prefetch", c.ref, "--wait", "--api", c.daemons[0].sock)
	var wg sync.WaitGroup
	for _, d := range c.daemons[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := exec.Command(shoalBin, "prefetch", c.ref, "--wait", "--api", d.sock).CombinedOutput()
			if err != nil {
				t.Errorf("prefetch on host %d: %v\n%s", d.n, err, out)
			}
		}()
	}
	wg.Wait()
	var peerBytes int64
	for _, d := range c.daemons {
		s := c.stats(d)
		if len(s.Images) != 1 || s.Images[0].BytesPresent != c.image || s.VerifyFailures != 0 {
			t.Fatalf("host %d: %+v", d.n, s)
		}
		if d.n > 1 && s.Bytes.Origin > c.image/10 {
			t.Errorf("host %d took %d of %d bytes from the origin, want most from peers", d.n, s.Bytes.Origin, c.image)
		}
		peerBytes += s.Bytes.Peers
	}
	ob := c.originBytes()
	t.Logf("image %d bytes; origin served %d (%.2fx); peers moved %d", c.image, ob, float64(ob)/float64(c.image), peerBytes)
	if ob > c.image*13/10 {
		t.Errorf("origin served %d bytes for a %d-byte image read by 3 hosts: want about one image", ob, c.image)
	}
	// The stats the daemons report match the bytes that moved:
	//  - each host accounts for every byte of the image exactly once (peers, origin or dedup);
	//  - what the hosts say they moved from the origin (wire bytes: compressed chunks travel
	//    compressed) is what the origin served, but for the manifests and bootstraps (metadata,
	//    well under 1 MiB here);
	//  - peers served at least what hosts took from peers (a hedged request can be served twice
	//    and used once).
	var served, fromOrigin int64
	for _, d := range c.daemons {
		s := c.stats(d)
		served += s.Bytes.ServedToPeers
		fromOrigin += s.WireBytes.Origin
		if got := s.Bytes.Peers + s.Bytes.Origin + s.Bytes.Dedup; got != c.image {
			t.Errorf("host %d accounts for %d bytes (peers %d, origin %d, dedup %d) of a %d-byte image",
				d.n, got, s.Bytes.Peers, s.Bytes.Origin, s.Bytes.Dedup, c.image)
		}
	}
	if meta := ob - fromOrigin; meta < 0 || meta > 1<<20 {
		t.Errorf("origin served %d bytes, hosts report %d from the origin: %d unaccounted for", ob, fromOrigin, meta)
	}
	if served < peerBytes {
		t.Errorf("peers report serving %d bytes, hosts report receiving %d from peers", served, peerBytes)
	}
}

// TestCLIAgainstDaemon covers the CLI's answers to mistakes, with a live daemon.
func TestCLIAgainstDaemon(t *testing.T) {
	c := newCluster(t, 1)
	d := c.daemons[0]
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"mount", c.ref, filepath.Join(c.dir, "nodir"), "--api", d.sock}, "not a directory"},
		{[]string{"umount", c.dir, "--api", d.sock}, "not mounted by this daemon"},
		{[]string{"prefetch", c.origin + "/nosuch:latest", "--api", d.sock}, "nosuch"},
		{[]string{"stats", "--api", filepath.Join(c.dir, "none.sock")}, "not running"},
	} {
		out, err := exec.Command(shoalBin, tc.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("shoal %v: err %v, output %q; want an error mentioning %q", tc.args, err, out, tc.want)
		}
	}
	out := run(t, "images", "--api", d.sock)
	if !strings.Contains(out, "no images") {
		t.Errorf("images on a fresh daemon: %q", out)
	}
	// --watch redraws in place until interrupted.
	watch := exec.Command(shoalBin, "stats", "--watch", "--interval", "100ms", "--api", d.sock)
	var wout bytes.Buffer
	watch.Stdout = &wout
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	watch.Process.Signal(os.Interrupt)
	if err := watch.Wait(); err != nil {
		t.Errorf("stats --watch ended with %v on SIGINT", err)
	}
	if n := strings.Count(wout.String(), "\033[H\033[2J"); n < 2 || strings.Count(wout.String(), "SOURCE") != n {
		t.Errorf("stats --watch drew %d screens (%d tables)", n, strings.Count(wout.String(), "SOURCE"))
	}
	// The control socket is root-only: another user is told so.
	if os.Geteuid() == 0 {
		os.Chmod(filepath.Dir(shoalBin), 0o755)
		cmd := exec.Command(shoalBin, "stats", "--api", d.sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "permission denied") {
			t.Errorf("stats as an unprivileged user: err %v, output %q; want permission denied", err, out)
		}
	}
}

// mountOrSkip mounts the image on a host, skipping the test when this machine cannot run the
// mode (the daemon's probe says why).
func (c *cluster) mountOrSkip(d *daemonProc, mode, mp string) {
	t := c.t
	os.MkdirAll(mp, 0o755)
	out, err := exec.Command(shoalBin, "mount", c.ref, mp, "--mode", mode, "--api", d.sock).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not available here") {
			t.Skipf("%s mode unsupported on this machine: %s", mode, strings.TrimSpace(string(out)))
		}
		t.Fatalf("mount on host %d: %v\n%s", d.n, err, out)
	}
	if !strings.Contains(string(out), "("+mode+" mode") {
		t.Fatalf("mount said %q, want %s mode", out, mode)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mp).Run() }) // only if the test failed midway
}

// waitMarks waits until the fanotify groups of process pid hold want inode marks.
func waitMarks(t *testing.T, pid, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		marks := 0
		fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fdinfo/*", pid))
		for _, fd := range fds {
			b, _ := os.ReadFile(fd)
			marks += strings.Count(string(b), "fanotify ino:")
		}
		if marks == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d has %d fanotify marks, want %d", pid, marks, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shoalMounts lists erofs and Shoal FUSE mounts under dir.
func shoalMounts(t testing.TB, dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || !strings.HasPrefix(f[4], dir) {
			continue
		}
		for i, x := range f {
			if x == "-" && i+1 < len(f) && (f[i+1] == "erofs" || strings.HasPrefix(f[i+1], "fuse")) {
				out = append(out, f[4]+" ("+f[i+1]+")")
			}
		}
	}
	return out
}

// TestMountModes: the image mounted on three peered hosts, in each file-backed mode and in
// fusetree mode, read in full and at random offsets; hosts 2 and 3 take their chunks from
// peers; unmount and daemon stop leave nothing behind.
func TestMountModes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	for _, mode := range []string{"fanotify", "fuse", "fusetree"} {
		t.Run(mode, func(t *testing.T) {
			c := newCluster(t, 3)
			mps := make([]string, 3)
			for i := range mps {
				mps[i] = filepath.Join(c.dir, fmt.Sprintf("mnt%d", i+1))
			}
			c.mountOrSkip(c.daemons[0], mode, mps[0])
			if mode == "fanotify" {
				waitMarks(t, c.daemons[0].cmd.Process.Pid, 1) // the one blob, not yet local
			}
			c.checkTree(mps[0])
			if mode == "fanotify" {
				// Every chunk is local now: the blob's mark is dropped, so reads stop reaching
				// the daemon (the kernel lists a group's inode marks in its fdinfo).
				waitMarks(t, c.daemons[0].cmd.Process.Pid, 0)
			}
			var wg sync.WaitGroup
			for i, d := range c.daemons[1:] {
				c.mountOrSkip(d, mode, mps[i+1])
				wg.Add(1)
				go func() {
					defer wg.Done()
					c.randomReads(mps[i+1], int64(i))
					c.checkTree(mps[i+1])
				}()
			}
			wg.Wait()
			for _, d := range c.daemons[1:] {
				s := c.stats(d)
				if s.Bytes.Peers == 0 || s.Bytes.Origin > c.image/5 {
					t.Errorf("host %d: %d bytes from peers, %d from origin (image %d): want most from peers", d.n, s.Bytes.Peers, s.Bytes.Origin, c.image)
				}
				if len(s.Images) != 1 || s.Images[0].Mounts[mps[d.n-1]] != mode {
					t.Errorf("host %d images: %+v", d.n, s.Images)
				}
			}
			ob := c.originBytes()
			t.Logf("%s: image %d bytes, origin served %d (%.2fx)", mode, c.image, ob, float64(ob)/float64(c.image))
			if ob > c.image*13/10 {
				t.Errorf("origin served %d bytes for a %d-byte image", ob, c.image)
			}
			// Unmount on host 3 by command; stop the others with their images mounted.
			run(t, "umount", mps[2], "--api", c.daemons[2].sock)
			for _, d := range c.daemons {
				d.cmd.Process.Signal(os.Interrupt)
				d.cmd.Wait()
			}
			if left := shoalMounts(t, c.dir); len(left) > 0 {
				t.Fatalf("left behind after unmount and daemon stop: %v", left)
			}
			// The first run's read order was kept for later prefetches.
			orders, _ := filepath.Glob(filepath.Join(c.dir, "d1", "readorder", "*.json"))
			if len(orders) != 1 {
				t.Fatalf("read orders recorded: %v", orders)
			}
			if b, _ := os.ReadFile(orders[0]); !bytes.Contains(b, []byte(`"off"`)) {
				t.Fatalf("read order %s: %q", orders[0], b)
			}
		})
	}
}

// TestRestartRestoresMounts: a daemon killed with SIGKILL leaves its mount behind; the next
// start cleans it up, mounts the image again, and reads work.
func TestRestartRestoresMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	c := newCluster(t, 1)
	d := c.daemons[0]
	mp := filepath.Join(c.dir, "mnt")
	c.mountOrSkip(d, "fuse", mp)
	c.checkTree(mp)
	d.cmd.Process.Kill()
	d.cmd.Wait()

	args := d.cmd.Args[1:]
	d.cmd = exec.Command(shoalBin, args...)
	d.log.Reset()
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, err := exec.Command(shoalBin, "images", "--json", "--api", d.sock).Output()
		if err == nil && strings.Contains(string(s), mp) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mount not restored after restart:\n%s", d.log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.checkTree(mp)
	run(t, "umount", mp, "--api", d.sock)
	d.cmd.Process.Signal(os.Interrupt)
	d.cmd.Wait()
	if left := shoalMounts(t, c.dir); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}

// TestMountWithPrefetch: with background prefetch on (the default), demand reads and the
// prefetch of the rest run at once; every read is right, the prefetch completes, and in fanotify
// mode the blob's mark is dropped once it is whole.
func TestMountWithPrefetch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	c := newClusterPrefetch(t, 1, true)
	d := c.daemons[0]
	mp := filepath.Join(c.dir, "mnt")
	os.MkdirAll(mp, 0o755)
	out := run(t, "mount", c.ref, mp, "--api", d.sock) // auto: fanotify here, else FUSE
	c.randomReads(mp, 7)
	c.checkTree(mp)
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := c.stats(d)
		if len(s.Images) == 1 && s.Images[0].BytesPresent == c.image {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("prefetch did not complete: %+v", s.Images)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if strings.Contains(out, "(fanotify mode") {
		waitMarks(t, d.cmd.Process.Pid, 0)
	}
	if ob := c.originBytes(); ob > c.image*11/10 {
		t.Errorf("origin served %d bytes for a %d-byte image: demand and prefetch fetched chunks twice", ob, c.image)
	}
	if out, err := exec.Command(shoalBin, "images", "rm", c.ref, "--api", d.sock).CombinedOutput(); err == nil || !strings.Contains(string(out), "unmount it first") {
		t.Errorf("removing a mounted image: %v %q", err, out)
	}
	run(t, "umount", mp, "--api", d.sock)
	run(t, "images", "rm", c.ref, "--api", d.sock)
	if out := run(t, "images", "--api", d.sock); !strings.Contains(out, "no images") {
		t.Errorf("images after rm: %q", out)
	}
}

// TestMountedImageLargerThanCacheCap: a mounted image's data is pinned; with a cache cap smaller
// than the image, reads still work (the cap yields to mounted data, with a warning) and nothing
// of the mounted image is evicted.
func TestMountedImageLargerThanCacheCap(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	c := newClusterPrefetch(t, 1, false, "--cache-max", "4M")
	d := c.daemons[0]
	mp := filepath.Join(c.dir, "mnt")
	os.MkdirAll(mp, 0o755)
	run(t, "mount", c.ref, mp, "--api", d.sock)
	c.checkTree(mp)
	s := c.stats(d)
	if s.Images[0].BytesPresent != c.image || s.Images[0].BytesPresent <= 4<<20 {
		t.Fatalf("mounted image present %d of %d bytes under a 4 MiB cap", s.Images[0].BytesPresent, c.image)
	}
	if !strings.Contains(d.log.String(), "cache cap passed") {
		t.Error("no warning that the cap is too small for the mounted images")
	}
	run(t, "umount", mp, "--api", d.sock)
}
