package e2e

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/md5"
	"fmt"
	"io"
	"math/rand"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // the bench registry's storage
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"

	"github.com/shoal-p2p/shoal/convert/converttest"
	"github.com/shoal-p2p/shoal/origin"
)

// The container start-time benchmark (scripts/bench-start.sh, figures in BENCHMARKS.md): from
// the start of the pull to the entrypoint's first output, for an image of more than 500 MiB
// whose entrypoint reads about 6% of it (the share Slacker, FAST '16, measured), on three hosts
// of one machine, each a real containerd 1.6 + runc + shoal daemon + shoal snapshotter (the
// e2e stacks). On each host, side by side: containerd's default (`ctr images pull`: fetch every
// layer, gunzip and unpack into the overlayfs snapshotter, then `ctr run`) against Shoal (CRI
// PullImage as kubelet pulls, then `ctr run --snapshotter shoal`: no layer is downloaded, the
// entrypoint's reads are fetched on demand). Host 1 takes Shoal's bytes from the origin (the
// registry), hosts 2 and 3 from their peers. Only SHOAL_BENCH_START=1 runs it: it moves a few
// GiB and takes minutes, and its figures are a benchmark's, not a test's.

const (
	benchDataFiles = 8
	benchFileBytes = 60 << 20 // never read
	benchAppBytes  = 32 << 20 // read by the entrypoint: 6.2% of the image
)

// benchData is compressible about 2:1 (as image layers are): 32 KiB of random bytes, then 32 KiB
// of text, over and over.
func benchData(seed int64, n int) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewSource(seed))
	line := []byte(fmt.Sprintf("shoal start benchmark filler line, seed %d\n", seed))
	for off := 0; off < n; off += 64 << 10 {
		end := min(off+32<<10, n)
		rng.Read(b[off:end])
		for i := end; i < min(off+64<<10, n); i++ {
			b[i] = line[(i-end)%len(line)]
		}
	}
	return b
}

// bigImage pushes the benchmark image (static busybox, benchDataFiles untouched files and the
// file the entrypoint reads) as a gzip layer, converts it, and returns the plain and the Shoal
// references, the image's size and what the entrypoint prints.
func bigImage(t *testing.T, host string) (plain, shoal string, size int64, want string) {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("no static busybox (apt-get install busybox-static)")
	}
	app := benchData(1000, benchAppBytes)
	entries := []converttest.Entry{
		{Name: "bin/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "bin/busybox", Type: tar.TypeReg, Mode: 0o755, Data: bb},
		{Name: "bin/sh", Type: tar.TypeSymlink, Link: "busybox"},
		{Name: "bin/md5sum", Type: tar.TypeSymlink, Link: "busybox"},
		{Name: "data/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "data/app.bin", Type: tar.TypeReg, Mode: 0o644, Data: app},
		{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
	}
	size = int64(len(bb) + len(app))
	for i := range benchDataFiles {
		d := benchData(int64(i), benchFileBytes)
		entries = append(entries, converttest.Entry{Name: fmt.Sprintf("data/big-%d.bin", i), Type: tar.TypeReg, Mode: 0o644, Data: d})
		size += int64(len(d))
	}
	ld := t.TempDir()
	w := converttest.NewWriter(t, ld)
	w.Index([]ocispec.Descriptor{w.Put(converttest.Image{Platform: origin.HostPlatform(),
		Layers: []converttest.Layer{{Compression: "gzip", Tar: converttest.Tar(t, entries)}},
		Config: ocispec.ImageConfig{Cmd: []string{"/bin/md5sum", "/data/app.bin"}, Env: []string{"PATH=/bin"}}})}, false)
	cfg := origin.DefaultConfig()
	cfg.Insecure, cfg.DockerConfig = []string{host}, "-"
	plain = host + "/big:v1"
	start := time.Now()
	if _, err := origin.PushIndex(context.Background(), ld, plain, nil, cfg, origin.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("pushed %s (%d MiB) in %v", plain, size>>20, time.Since(start).Round(time.Millisecond))
	shoal = host + "/big:shoal"
	start = time.Now()
	run(t, "image", "convert", plain, shoal, "--insecure", host, "--docker-config", "-")
	t.Logf("converted to %s in %v", shoal, time.Since(start).Round(time.Millisecond))
	return plain, shoal, size, fmt.Sprintf("%x  /data/app.bin", md5.Sum(app))
}

// benchRun runs a container with ctr and returns when its first line of output came and what
// it was; it waits for the container to exit.
func benchRun(t *testing.T, s *stack, args ...string) (time.Time, string) {
	t.Helper()
	cmd := exec.Command(s.ctr, append([]string{"-a", s.sock, "-n", s.ns, "run", "--rm"}, args...)...)
	cmd.Env = append(os.Environ(), s.pathEnv...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	at := time.Now()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("ctr run %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return at, strings.TrimSpace(line)
}

// diskRegistry runs the distribution registry on 127.0.0.1 with its blobs on disk:
// converttest.StartRegistry keeps them in memory, whose driver takes minutes to store a blob of
// a few hundred MiB.
func diskRegistry(t *testing.T) string {
	t.Helper()
	logrus.SetOutput(io.Discard)
	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{
		"filesystem":  configuration.Parameters{"rootdirectory": t.TempDir()},
		"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
	}
	cfg.HTTP.Secret = "shoal-bench-secret"
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv := httptest.NewServer(handlers.NewApp(ctx, cfg))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

type startFigure struct {
	pull, total time.Duration
	origin      int64 // bytes from the origin (Shoal) or the layer bytes (containerd)
	peers       int64
	mode        string // Shoal's mount mode
}

func (f startFigure) String() string {
	return fmt.Sprintf("pull %6.2fs  start %6.2fs  (pull %3.0f%%)", f.pull.Seconds(), f.total.Seconds(), 100*f.pull.Seconds()/f.total.Seconds())
}

func TestStartBench(t *testing.T) {
	if os.Getenv("SHOAL_BENCH_START") != "1" {
		t.Skip("the container start-time benchmark: SHOAL_BENCH_START=1 (scripts/bench-start.sh)")
	}
	containerd16Skips(t)
	hosts := 3
	if n, err := strconv.Atoi(os.Getenv("SHOAL_BENCH_START_HOSTS")); err == nil && n >= 2 {
		hosts = n
	}
	host := diskRegistry(t)
	plain, shoal, size, want := bigImage(t, host)

	var stacks []*stack
	var peers []string
	for i := range hosts {
		s := newStack(t, host, "", "")
		if i > 0 {
			// The stacks' daemons know nothing of each other: start this one again with the
			// earlier hosts as its peers (same data, same socket; the snapshotter reconnects).
			s.stopDaemon()
			s.daemon = s.cluster.startDaemon(1, peers)
		}
		peers = append(peers, s.daemon.addr)
		stacks = append(stacks, s)
	}

	var shoalF, ctrdF []startFigure
	for i, s := range stacks {
		// Shoal: CRI pulls (no layer data moves), ctr runs on the shoal snapshotter.
		before := s.cluster.stats(s.daemon)
		start := time.Now()
		s.criPull(shoal)
		pulled := time.Now()
		at, line := benchRun(t, s, "--snapshotter", "shoal", shoal, fmt.Sprintf("bench-shoal-%d", i))
		if line != want {
			t.Fatalf("host %d: the Shoal container printed %q, want %q", i+1, line, want)
		}
		st := s.cluster.stats(s.daemon)
		f := startFigure{pull: pulled.Sub(start), total: at.Sub(start),
			origin: st.Bytes.Origin - before.Bytes.Origin, peers: st.Bytes.Peers - before.Bytes.Peers}
		for _, im := range st.Images {
			for _, m := range im.Mounts {
				f.mode = m
			}
		}
		shoalF = append(shoalF, f)
		if i > 0 && f.peers < f.origin {
			t.Errorf("host %d took %d bytes from the origin and %d from peers: want most from peers", i+1, f.origin, f.peers)
		}

		// containerd's default: ctr pulls every layer into the overlayfs snapshotter, then runs.
		start = time.Now()
		s.mustCtr("images", "pull", "--plain-http", plain)
		pulled = time.Now()
		at, line = benchRun(t, s, plain, fmt.Sprintf("bench-overlayfs-%d", i))
		if line != want {
			t.Fatalf("host %d: the overlayfs container printed %q, want %q", i+1, line, want)
		}
		ctrdF = append(ctrdF, startFigure{pull: pulled.Sub(start), total: at.Sub(start)})
	}

	fmt.Printf("container start time: pull start -> entrypoint's first output; image %d MiB (gzip layer), entrypoint reads %d MiB (%.1f%%); %d hosts on one machine (loopback)\n",
		size>>20, benchAppBytes>>20, 100*float64(benchAppBytes)/float64(size), hosts)
	fmt.Printf("%-6s | %-44s | %-44s | %s\n", "host", "containerd default (overlayfs, full pull)", "Shoal (lazy)", "Shoal bytes: origin / peers")
	for i := range stacks {
		src := "origin"
		if i > 0 {
			src = "peers"
		}
		fmt.Printf("%-6s | %-44s | %-44s | %d / %d MiB (%s, %s mode)  speed-up %.1fx\n", strconv.Itoa(i+1), ctrdF[i], shoalF[i],
			shoalF[i].origin>>20, shoalF[i].peers>>20, src, shoalF[i].mode, ctrdF[i].total.Seconds()/shoalF[i].total.Seconds())
	}
}
