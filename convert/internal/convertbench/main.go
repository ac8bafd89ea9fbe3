// Command convertbench measures `shoal image convert` (BENCHMARKS.md, "convert"): it generates
// two images that share a three-layer base (files of assorted sizes, half text, half random,
// gzip layers, at least 500 MiB of file data in the first), converts both in-process, and side
// by side decompresses and untars the same layers to disk (GNU tar, and Go's gzip + archive/tar
// writing the files). It then reports how much of the second image's chunk data the first
// already holds.
package main

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/convert"
	"github.com/shoal-p2p/shoal/origin"
)

func main() {
	size := flag.Int64("size", 600<<20, "file bytes of the first image (base + its own layer)")
	dir := flag.String("dir", os.Getenv("SHOAL_BENCH_DIR"), "work directory (default the temp dir)")
	prof := flag.String("cpuprofile", "", "write a CPU profile of the first conversion here")
	flag.Parse()
	cpuProfile = *prof
	if err := run(*size, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "convertbench:", err)
		os.Exit(1)
	}
}

var words = strings.Fields(`the of and to in is that for it as with was on be by at this from or an
which are not have had one all but were their there been has more can will would if its about into
than other some could only time these two may then do first any like now my such make over our even
most after also made many before must through back years where much your way well down should because
each just those people how too little state good very make world still own see men work long get here
between both life being under never day same another know while last might us great old year off come
since against go came right used take three func return err nil package import struct type var const`)

type gen struct{ rng *rand.Rand }

// size returns a file size shaped like a distribution image's: mostly small files (averaging
// some 60 KiB), one in a hundred of several MiB.
func (g *gen) size() int64 {
	switch r := g.rng.IntN(100); {
	case r < 85:
		return 200 + g.rng.Int64N(8<<10)
	case r < 99:
		return 8<<10 + g.rng.Int64N(256<<10)
	default:
		return 256<<10 + g.rng.Int64N(8<<20)
	}
}

func (g *gen) fill(b []byte, text bool) {
	if !text {
		for i := 0; i+8 <= len(b); i += 8 {
			v := g.rng.Uint64()
			for k := range 8 {
				b[i+k] = byte(v >> (8 * k))
			}
		}
		return
	}
	i := 0
	for i < len(b) {
		w := words[g.rng.IntN(len(words))]
		i += copy(b[i:], w)
		if i < len(b) {
			b[i] = " \n"[g.rng.IntN(12)/11]
			i++
		}
	}
}

type layer struct {
	path   string
	desc   ocispec.Descriptor
	diffID digest.Digest
	files  int
	bytes  int64
}

// writeLayer writes a gzip tar of about target file bytes into the layout's blobs.
func writeLayer(layout string, seed uint64, prefix string, target int64) (*layer, error) {
	tmp, err := os.CreateTemp(layout, "layer-")
	if err != nil {
		return nil, err
	}
	defer tmp.Close()
	ch := sha256.New()
	gz, _ := gzip.NewWriterLevel(io.MultiWriter(tmp, ch), gzip.DefaultCompression)
	uh := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(gz, uh))
	g := &gen{rng: rand.New(rand.NewPCG(seed, seed*31+7))}
	l := &layer{}
	buf := make([]byte, 16<<20)
	for l.bytes < target {
		n := min(g.size(), target-l.bytes+512)
		name := fmt.Sprintf("%s/d%02d/f%06d", prefix, l.files%50, l.files)
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: n, Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}); err != nil {
			return nil, err
		}
		g.fill(buf[:n], g.rng.IntN(2) == 0)
		if _, err := tw.Write(buf[:n]); err != nil {
			return nil, err
		}
		l.files++
		l.bytes += n
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	st, _ := tmp.Stat()
	d := digest.NewDigest(digest.SHA256, ch)
	l.path = filepath.Join(layout, "blobs", "sha256", d.Encoded())
	if err := os.Rename(tmp.Name(), l.path); err != nil {
		return nil, err
	}
	l.desc = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: d, Size: st.Size()}
	l.diffID = digest.NewDigest(digest.SHA256, uh)
	return l, nil
}

func putJSON(layout string, v any, mt string) (ocispec.Descriptor, error) {
	b, _ := json.Marshal(v)
	d := digest.FromBytes(b)
	return ocispec.Descriptor{MediaType: mt, Digest: d, Size: int64(len(b))}, os.WriteFile(filepath.Join(layout, "blobs", "sha256", d.Encoded()), b, 0o644)
}

func writeImage(layout string, layers []*layer) error {
	cfg := ocispec.Image{Platform: origin.HostPlatform(), RootFS: ocispec.RootFS{Type: "layers"}}
	var descs []ocispec.Descriptor
	for _, l := range layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.diffID)
		descs = append(descs, l.desc)
	}
	cd, err := putJSON(layout, cfg, ocispec.MediaTypeImageConfig)
	if err != nil {
		return err
	}
	md, err := putJSON(layout, ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cd, Layers: descs}, ocispec.MediaTypeImageManifest)
	if err != nil {
		return err
	}
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, Manifests: []ocispec.Descriptor{md}}
	b, _ := json.Marshal(idx)
	return os.WriteFile(filepath.Join(layout, "index.json"), b, 0o644)
}

var cpuProfile string

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func run(size int64, dir string) error {
	work, err := os.MkdirTemp(dir, "shoal-convertbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	ctx := context.Background()
	layouts := map[string]string{"a": filepath.Join(work, "a"), "b": filepath.Join(work, "b")}
	for _, l := range layouts {
		if err := os.MkdirAll(filepath.Join(l, "blobs", "sha256"), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(l, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
			return err
		}
	}
	t0 := time.Now()
	baseEach := size * 28 / 100
	var base []*layer
	for i := range 3 {
		l, err := writeLayer(layouts["a"], uint64(i+1), fmt.Sprintf("base%d", i), baseEach)
		if err != nil {
			return err
		}
		base = append(base, l)
	}
	topA, err := writeLayer(layouts["a"], 100, "app", size-3*baseEach)
	if err != nil {
		return err
	}
	topB, err := writeLayer(layouts["b"], 200, "app", size-3*baseEach)
	if err != nil {
		return err
	}
	for _, l := range base { // the same base blobs in b's layout
		if err := os.Link(l.path, filepath.Join(layouts["b"], "blobs", "sha256", l.desc.Digest.Encoded())); err != nil {
			return err
		}
	}
	if err := writeImage(layouts["a"], append(base, topA)); err != nil {
		return err
	}
	if err := writeImage(layouts["b"], append(base, topB)); err != nil {
		return err
	}
	layersA := append(base, topA)
	var fileBytes, gzBytes int64
	files := 0
	for _, l := range layersA {
		fileBytes += l.bytes
		gzBytes += l.desc.Size
		files += l.files
	}
	fmt.Printf("generated in %v: image a: 4 gzip layers, %d files, %.0f MiB of file data, %.0f MiB compressed; image b shares the 3 base layers\n",
		time.Since(t0).Round(time.Second), files, mib(fileBytes), mib(gzBytes))
	fmt.Printf("GOMAXPROCS %d\n\n", runtime.GOMAXPROCS(0))

	dropCaches := func() { _ = exec.Command("sync").Run() }
	type result struct {
		name string
		took time.Duration
		cpu  time.Duration
	}
	var results []result
	// 1. shoal convert, in-process, from the layout.
	convertOne := func(name string) (*convert.Result, string, time.Duration, error) {
		src, err := origin.NewLayout(layouts[name], "", origin.DefaultConfig())
		if err != nil {
			return nil, "", 0, err
		}
		out := filepath.Join(work, "out-"+name)
		dropCaches()
		if cpuProfile != "" && name == "a" {
			f, err := os.Create(cpuProfile)
			if err != nil {
				return nil, "", 0, err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				return nil, "", 0, err
			}
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
		start := time.Now()
		res, err := convert.Convert(ctx, src, out, convert.Options{})
		return res, out, time.Since(start), err
	}
	c0 := selfCPU()
	_, outA, took, err := convertOne("a")
	if err != nil {
		return err
	}
	results = append(results, result{"shoal image convert (in-process, gzip → per-layer blobs + bootstrap)", took, selfCPU() - c0})
	// 2. GNU tar -xzf of the same layers.
	ext := filepath.Join(work, "tar-x")
	if err := os.MkdirAll(ext, 0o755); err != nil {
		return err
	}
	dropCaches()
	start := time.Now()
	c0 = childCPU()
	for _, l := range layersA {
		if out, err := exec.Command("tar", "-xzf", l.path, "-C", ext).CombinedOutput(); err != nil {
			return fmt.Errorf("tar: %v: %s", err, out)
		}
	}
	_ = exec.Command("sync").Run()
	results = append(results, result{"tar -xzf each layer (GNU tar + gzip), then sync", time.Since(start), childCPU() - c0})
	// shoal image build of the extracted tree, by each engine (a later issue wants the Go writer
	// within 1.2x of mkfs.erofs).
	var builds []string
	for _, engine := range []string{bootstrap.EngineGo, bootstrap.EngineMkfs} {
		if _, err := exec.LookPath("mkfs.erofs"); err != nil && engine == bootstrap.EngineMkfs {
			continue
		}
		dropCaches()
		c0 := selfCPU() + childCPU()
		start := time.Now()
		res, err := bootstrap.Build(ctx, ext, filepath.Join(work, "build-"+engine), bootstrap.BuildOptions{Engine: engine})
		if err != nil {
			return err
		}
		took := time.Since(start)
		builds = append(builds, fmt.Sprintf("| shoal image build --engine %s (the tree tar extracted) | %.2f s | %.0f | %.2f s |",
			engine, took.Seconds(), mib(res.FileBytes)/took.Seconds(), (selfCPU()+childCPU()-c0).Seconds()))
		os.RemoveAll(filepath.Join(work, "build-"+engine))
	}
	os.RemoveAll(ext)
	// 3. Go: gzip + archive/tar, writing every file.
	ext = filepath.Join(work, "go-x")
	dropCaches()
	start = time.Now()
	c0 = selfCPU()
	for _, l := range layersA {
		if err := untar(l.path, ext); err != nil {
			return err
		}
	}
	_ = exec.Command("sync").Run()
	results = append(results, result{"Go: klauspost gzip + archive/tar, write each file, then sync", time.Since(start), selfCPU() - c0})
	os.RemoveAll(ext)
	// 4. Go: decompress only.
	dropCaches()
	start = time.Now()
	c0 = selfCPU()
	for _, l := range layersA {
		if err := gunzipOnly(l.path); err != nil {
			return err
		}
	}
	results = append(results, result{"Go: klauspost gzip only (no tar, no writes)", time.Since(start), selfCPU() - c0})

	fmt.Printf("| what (%.0f MiB of file data in %d files, %.0f MiB gzip) | wall | file MiB/s | CPU (user+sys) |\n|---|---|---|---|\n", mib(fileBytes), files, mib(gzBytes))
	for _, r := range results {
		fmt.Printf("| %s | %.2f s | %.0f | %.2f s |\n", r.name, r.took.Seconds(), mib(fileBytes)/r.took.Seconds(), r.cpu.Seconds())
	}
	for _, b := range builds {
		fmt.Println(b)
	}

	// Sharing: what of b's chunk data a host holding a already has.
	_, outB, tookB, err := convertOne("b")
	if err != nil {
		return err
	}
	ia, _, err := bootstrap.Layout{Dir: outA}.ReadImage("")
	if err != nil {
		return err
	}
	ib, _, err := bootstrap.Layout{Dir: outB}.ReadImage("")
	if err != nil {
		return err
	}
	haveBlob, haveCID := map[digest.Digest]bool{}, map[string]bool{}
	for _, b := range ia.Blobs {
		haveBlob[b.Digest] = true
		for _, c := range b.Manifest.Chunks {
			haveCID[c.CID.String()] = true
		}
	}
	var total, sameBlob, sameCID int64
	for _, b := range ib.Blobs {
		for _, c := range b.Manifest.Chunks {
			total += c.Length
			if haveBlob[b.Digest] {
				sameBlob += c.Length
			}
			if haveCID[c.CID.String()] {
				sameCID += c.Length
			}
		}
	}
	fmt.Printf("\nsecond image (converted in %.2f s): %.1f MiB of chunk data; already local after the first: %.1f MiB in shared blobs (%.1f%%), %.1f MiB by CID (%.1f%%); to fetch: %.1f MiB\n",
		tookB.Seconds(), mib(total), mib(sameBlob), 100*float64(sameBlob)/float64(total), mib(sameCID), 100*float64(sameCID)/float64(total), mib(total-sameCID))
	return nil
}

func untar(path, dst string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dst, h.Name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		out, err := os.Create(p)
		if err != nil {
			return err
		}
		_, err = io.Copy(out, tr)
		out.Close()
		if err != nil {
			return err
		}
	}
}

func gunzipOnly(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, zr)
	return err
}

func rusage(who int) time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(who, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func selfCPU() time.Duration  { return rusage(syscall.RUSAGE_SELF) }
func childCPU() time.Duration { return rusage(syscall.RUSAGE_CHILDREN) }
