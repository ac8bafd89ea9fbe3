package convert

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
	"github.com/shoal-p2p/shoal/convert/converttest"
	"github.com/shoal-p2p/shoal/origin"
)

func testConfig(hosts ...string) origin.Config {
	c := origin.DefaultConfig()
	c.Insecure = hosts
	c.DockerConfig = "-"
	c.RetryBase = 5 * time.Millisecond
	c.RetryMax = 100 * time.Millisecond
	c.Retries = 1
	c.Timeout = 5 * time.Second
	return c
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func layoutSource(t testing.TB, dir string) Source {
	t.Helper()
	l, err := origin.NewLayout(dir, "", testConfig())
	must(t, err)
	return l
}

var runConfig = ocispec.ImageConfig{
	User: "1000:1000", Entrypoint: []string{"/bin/tool"}, Cmd: []string{"--serve"}, Env: []string{"PATH=/bin", "A=b"},
	WorkingDir: "/home/user", Labels: map[string]string{"org.example": "yes"},
	ExposedPorts: map[string]struct{}{"8080/tcp": {}}, Volumes: map[string]struct{}{"/var": {}},
}

// converted is a converted image opened for checking.
type converted struct {
	res    *Result
	out    string
	image  *bootstrap.Image
	boot   string
	blobs  []string
	config map[string]json.RawMessage
}

func convertLayout(t *testing.T, src Source, opts Options) *converted {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	res, err := Convert(context.Background(), src, out, opts)
	if err != nil {
		t.Fatalf("Convert: %v", err)
	}
	return openConverted(t, res, out, "")
}

func openConverted(t *testing.T, res *Result, out, ref string) *converted {
	t.Helper()
	lay := bootstrap.Layout{Dir: out}
	im, mb, err := lay.ReadImage(ref)
	must(t, err)
	c := &converted{res: res, out: out, image: im, boot: lay.BlobPath(im.Bootstrap.Digest)}
	for _, b := range im.Blobs {
		c.blobs = append(c.blobs, lay.BlobPath(b.Digest))
	}
	var m ocispec.Manifest
	must(t, json.Unmarshal(mb, &m))
	cb, err := lay.Fetch(m.Config)
	must(t, err)
	must(t, json.Unmarshal(cb, &c.config))
	if m.Config.MediaType != ocispec.MediaTypeImageConfig {
		t.Errorf("config media type %s", m.Config.MediaType)
	}
	var rootfs ocispec.RootFS
	must(t, json.Unmarshal(c.config["rootfs"], &rootfs))
	if len(rootfs.DiffIDs) != len(m.Layers) {
		t.Errorf("%d diff_ids for %d layers", len(rootfs.DiffIDs), len(m.Layers))
	}
	for i, l := range m.Layers {
		if rootfs.DiffIDs[i] != l.Digest || l.Annotations[bootstrap.AnnotationSnapshotBootstrap] != im.Bootstrap.Digest.String() {
			t.Errorf("layer %d: diff_id %s, annotations %v", i, rootfs.DiffIDs[i], l.Annotations)
		}
	}
	if last := m.Layers[len(m.Layers)-1]; last.MediaType != bootstrap.MediaTypeBootstrap || last.Annotations[bootstrap.AnnotationSnapshotRole] != bootstrap.RoleBootstrap {
		t.Errorf("last layer %+v is not the bootstrap", last)
	}
	f, err := os.Open(c.boot)
	must(t, err)
	defer f.Close()
	efs, err := bootstrap.Open(f, im.Bootstrap.Size)
	must(t, err)
	var sizes []int64
	for _, b := range im.Blobs {
		sizes = append(sizes, b.Manifest.BlobSize)
	}
	must(t, efs.Check(sizes))
	return c
}

// devices are files holding the image's devices as the kernel reads them: the layout's blobs
// when uncompressed, else their chunks decoded (bootstrap.DeviceReader) into temporary files.
func (c *converted) devices(t *testing.T) []string {
	t.Helper()
	var out []string
	for i, b := range c.image.Blobs {
		if b.Manifest.SchemaVersion != chunk.ManifestSchemaStored {
			out = append(out, c.blobs[i])
			continue
		}
		in, err := os.Open(c.blobs[i])
		must(t, err)
		p := filepath.Join(t.TempDir(), "device")
		f, err := os.Create(p)
		must(t, err)
		_, err = io.Copy(f, io.NewSectionReader(bootstrap.DeviceReader(in, b.Manifest), 0, b.Manifest.BlobSize))
		must(t, err)
		must(t, f.Close())
		must(t, in.Close())
		out = append(out, p)
	}
	return out
}

// mount mounts the converted image file-backed through the real kernel.
func (c *converted) mount(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	mp := t.TempDir()
	var opts []string
	for _, b := range c.devices(t) {
		opts = append(opts, "device="+b)
	}
	if err := unix.Mount(c.boot, mp, "erofs", unix.MS_RDONLY, strings.Join(opts, ",")); err != nil {
		t.Skipf("file-backed EROFS mount not available here: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mp, unix.MNT_DETACH) })
	return mp
}

func reference(t *testing.T, layers []converttest.Layer) map[string]converttest.Info {
	t.Helper()
	ref := t.TempDir()
	var tars [][]byte
	for _, l := range layers {
		tars = append(tars, l.Tar)
	}
	converttest.ApplyOCI(t, ref, tars)
	return converttest.Snapshot(t, ref)
}

// TestConvertMatchesOCIApply: an image using every feature of the layer format (three layers,
// gzip, zstd and plain), OCI and Docker flavoured, converted and mounted by the kernel, is file
// for file the tree the image-spec's rules give (converttest.ApplyOCI on a real directory).
func TestConvertMatchesOCIApply(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the reference extraction and the mount need root")
	}
	layers := converttest.FeatureLayers(t, 1)
	want := reference(t, layers)
	for _, tc := range []struct {
		name        string
		docker      bool
		compression string
		dict        int
	}{{"oci", false, "", 0}, {"docker", true, "", 0}, {"oci-zstd", false, bootstrap.CompressionZstd, 0}, {"oci-zstd-dict", false, bootstrap.CompressionZstd, zchunk.MinDictSize}} {
		docker := tc.docker
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			w := converttest.NewWriter(t, dir)
			w.Index([]ocispec.Descriptor{w.Put(converttest.Image{Platform: origin.HostPlatform(), Layers: layers, Docker: docker, Config: runConfig})}, false)
			var progress bytes.Buffer
			c := convertLayout(t, layoutSource(t, dir), Options{ChunkSize: 64 << 10, Progress: &progress, Compression: tc.compression, DictSize: tc.dict})
			dicts := 0
			for _, b := range c.image.Blobs {
				if zstd := b.Manifest.SchemaVersion == chunk.ManifestSchemaStored; zstd != (tc.compression != "") {
					t.Errorf("blob %s: schema %d with compression %q", b.Digest, b.Manifest.SchemaVersion, tc.compression)
				}
				if len(b.Manifest.Dict) > 0 {
					dicts++
				}
			}
			if (dicts > 0) != (tc.dict > 0) {
				t.Errorf("%d blobs with a dictionary, asked for one of %d bytes", dicts, tc.dict)
			}
			got := converttest.Snapshot(t, c.mount(t))
			if d := converttest.Diff(want, got, 15); len(d) > 0 {
				t.Errorf("converted image differs from the OCI reference:\n%s", strings.Join(d, "\n"))
			}
			if len(c.image.Blobs) != 3 {
				t.Errorf("%d blobs, want one per layer with data (3)", len(c.image.Blobs))
			}
			var rc ocispec.ImageConfig
			must(t, json.Unmarshal(c.config["config"], &rc))
			if rc.User != runConfig.User || rc.WorkingDir != runConfig.WorkingDir || strings.Join(rc.Entrypoint, " ") != "/bin/tool" ||
				strings.Join(rc.Env, ",") != "PATH=/bin,A=b" || rc.Labels["org.example"] != "yes" || len(rc.ExposedPorts) != 1 || len(rc.Volumes) != 1 || rc.Cmd[0] != "--serve" {
				t.Errorf("runtime config not carried over: %+v", rc)
			}
			var hist []ocispec.History
			must(t, json.Unmarshal(c.config["history"], &hist))
			if len(hist) < 4 || hist[0].CreatedBy != "test layer" || !hist[0].EmptyLayer {
				t.Errorf("history: %+v", hist)
			}
			if !strings.Contains(progress.String(), "layers 3/3") {
				t.Errorf("progress: %q", progress.String())
			}
		})
	}
}

// TestConvertSharesBase: two images on the same base layer give the same blob and chunk manifest
// for it, so a registry and a chunk store hold it once; the chunks of a file both images have
// in different layers have the same CIDs.
func TestConvertSharesBase(t *testing.T) {
	base := converttest.FeatureLayers(t, 1)[0]
	var imgs []*converted
	for i, top := range []string{"one", "two"} {
		dir := t.TempDir()
		w := converttest.NewWriter(t, dir)
		big := make([]byte, 1<<20)
		copy(big, top)
		l := converttest.Layer{Tar: converttest.Tar(t, []converttest.Entry{
			{Name: "app/" + top, Type: tar.TypeReg, Mode: 0o644, Data: big},
			{Name: "app/shared", Type: tar.TypeReg, Mode: 0o644, Data: bytes.Repeat([]byte("shared file!"), 100_000)},
		}), Compression: []string{"gzip", "zstd"}[i]}
		w.Index([]ocispec.Descriptor{w.Put(converttest.Image{Platform: origin.HostPlatform(), Layers: []converttest.Layer{base, l}})}, false)
		imgs = append(imgs, convertLayout(t, layoutSource(t, dir), Options{}))
	}
	a, b := imgs[0].image, imgs[1].image
	if a.Blobs[0].Digest != b.Blobs[0].Digest || a.Blobs[0].ManifestDigest != b.Blobs[0].ManifestDigest {
		t.Fatalf("base layer blobs differ: %s/%s vs %s/%s", a.Blobs[0].Digest, a.Blobs[0].ManifestDigest, b.Blobs[0].Digest, b.Blobs[0].ManifestDigest)
	}
	if a.Blobs[1].Digest == b.Blobs[1].Digest {
		t.Fatal("top layers gave the same blob")
	}
	cids := map[string]bool{}
	for _, c := range a.Blobs[1].Manifest.Chunks {
		cids[c.CID.String()] = true
	}
	shared := 0
	for _, c := range b.Blobs[1].Manifest.Chunks {
		if cids[c.CID.String()] {
			shared++
		}
	}
	if shared < 1 {
		t.Errorf("the file both top layers hold shares no chunk")
	}
}

// TestConvertRejects: bad input is a clear error and leaves nothing behind.
func TestConvertRejects(t *testing.T) {
	good := converttest.Tar(t, []converttest.Entry{{Name: "f", Type: tar.TypeReg, Mode: 0o644, Data: bytes.Repeat([]byte("data"), 50_000)}})
	gz := converttest.Compress(t, good, "gzip")
	zs := converttest.Compress(t, good, "zstd")
	flip := func(b []byte) []byte {
		c := append([]byte(nil), b...)
		for i := len(c) / 3; i < len(c)/3+16; i++ {
			c[i] ^= 0x5a
		}
		return c
	}
	tarOf := func(es ...converttest.Entry) []byte { return converttest.Tar(t, es) }
	reg := func(name string) converttest.Entry {
		return converttest.Entry{Name: name, Type: tar.TypeReg, Mode: 0o644, Data: []byte("x")}
	}
	cases := []struct {
		name  string
		layer converttest.Layer
		want  string
	}{
		{"truncated gzip", converttest.Layer{Tar: good, Blob: gz[:len(gz)/2]}, "unexpected EOF"},
		{"corrupt gzip", converttest.Layer{Tar: good, Blob: flip(gz)}, "layer 1"},
		{"truncated zstd", converttest.Layer{Tar: good, Blob: zs[:len(zs)/2]}, "layer 1"},
		{"corrupt zstd", converttest.Layer{Tar: good, Blob: flip(zs)}, "layer 1"},
		{"dotdot", converttest.Layer{Tar: tarOf(reg("a/../../etc/passwd")), Compression: "gzip"}, "'..'"},
		{"absolute", converttest.Layer{Tar: tarOf(reg("/etc/passwd")), Compression: "gzip"}, "absolute path"},
		{"link to nothing", converttest.Layer{Tar: tarOf(converttest.Entry{Name: "l", Type: tar.TypeLink, Link: "missing"}), Compression: "gzip"}, "does not exist"},
		{"name too long", converttest.Layer{Tar: tarOf(reg("d/" + strings.Repeat("x", 256))), Compression: "gzip"}, "more than 255"},
		{"parent is a file", converttest.Layer{Tar: tarOf(reg("a"), reg("a/b")), Compression: "none"}, "not a directory"},
		{"diff_id mismatch", converttest.Layer{Tar: good, Blob: converttest.Compress(t, tarOf(reg("other")), "gzip")}, "diff_id"},
		{"digest mismatch", converttest.Layer{Tar: good, Compression: "gzip", Digest: digest.FromString("something else")}, "layer 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			w := converttest.NewWriter(t, dir)
			l := c.layer
			if l.Digest != "" {
				// The manifest names a digest whose blob holds other bytes.
				blob := converttest.Compress(t, l.Tar, l.Compression)
				must(t, os.WriteFile(filepath.Join(dir, "blobs", "sha256", l.Digest.Encoded()), blob, 0o644))
			}
			w.Index([]ocispec.Descriptor{w.Put(converttest.Image{Platform: origin.HostPlatform(), Layers: []converttest.Layer{l}})}, false)
			outParent := t.TempDir()
			out := filepath.Join(outParent, "out")
			_, err := Convert(context.Background(), layoutSource(t, dir), out, Options{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
			if !errors.Is(err, ErrBadLayer) && !errors.Is(err, origin.ErrCorrupt) {
				t.Errorf("err = %v: want ErrBadLayer or origin.ErrCorrupt", err)
			}
			if left, _ := os.ReadDir(outParent); len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}
}

// TestConvertPlatforms: an index with two platforms converts the one asked for, the host's by
// default, or all; a platform the index lacks is an error naming what it has.
func TestConvertPlatforms(t *testing.T) {
	for _, docker := range []bool{false, true} {
		t.Run(map[bool]string{false: "oci-index", true: "docker-manifest-list"}[docker], func(t *testing.T) { testConvertPlatforms(t, docker) })
	}
}

func testConvertPlatforms(t *testing.T, docker bool) {
	dir := t.TempDir()
	w := converttest.NewWriter(t, dir)
	if docker {
		w.ListMediaType = "application/vnd.docker.distribution.manifest.list.v2+json"
	}
	layers := []converttest.Layer{{Tar: converttest.Tar(t, []converttest.Entry{{Name: "f", Type: tar.TypeReg, Mode: 0o644, Data: []byte("x")}}), Compression: "gzip"}}
	other := ocispec.Platform{OS: "linux", Architecture: "s390x"}
	if origin.HostPlatform().Architecture == "s390x" {
		other.Architecture = "ppc64le"
	}
	w.Index([]ocispec.Descriptor{
		w.Put(converttest.Image{Platform: origin.HostPlatform(), Layers: layers, Docker: docker}),
		w.Put(converttest.Image{Platform: other, Layers: layers, Docker: docker}),
	}, true)
	src := layoutSource(t, dir)
	c := convertLayout(t, src, Options{})
	if len(c.res.Images) != 1 || c.res.Images[0].Platform.Architecture != origin.HostPlatform().Architecture {
		t.Fatalf("default: %+v", c.res.Images)
	}
	out := filepath.Join(t.TempDir(), "all")
	res, err := Convert(context.Background(), src, out, Options{AllPlatforms: true})
	must(t, err)
	if len(res.Images) != 2 || len(res.SourceManifests) != 2 {
		t.Fatalf("all platforms: %d images, %d source manifests", len(res.Images), len(res.SourceManifests))
	}
	// The layout resolves to the host's Shoal image.
	l, err := origin.NewLayout(out, "", testConfig())
	must(t, err)
	_, mb, err := l.Resolve(context.Background())
	must(t, err)
	if digest.FromBytes(mb) != res.Images[0].Manifest.Digest {
		t.Errorf("layout resolved to %s, want the host's %s", digest.FromBytes(mb), res.Images[0].Manifest.Digest)
	}
	if im, _, err := (bootstrap.Layout{Dir: out}).ReadImage(""); err != nil || im.Digest != res.Images[0].Manifest.Digest {
		t.Errorf("bootstrap.Layout.ReadImage of a two-platform layout: %v", err)
	}
	// Another platform's image alone converts and pushes as a plain manifest.
	host := converttest.StartRegistry(t)
	outOther := filepath.Join(t.TempDir(), "other")
	resOther, err := Convert(context.Background(), src, outOther, Options{Platforms: []ocispec.Platform{other}})
	must(t, err)
	pushed, err := Push(context.Background(), resOther, outOther, "", host+"/other:v1", testConfig(host), PushOptions{})
	must(t, err)
	if len(resOther.Images) != 1 || pushed.Digest != resOther.Images[0].Manifest.Digest || resOther.Images[0].Platform.Architecture != other.Architecture {
		t.Errorf("pushing another platform's image: %+v, %+v", pushed, resOther.Images)
	}
	_, err = Convert(context.Background(), src, filepath.Join(t.TempDir(), "x"), Options{Platforms: []ocispec.Platform{{OS: "linux", Architecture: "mips"}}})
	if err == nil || !strings.Contains(err.Error(), other.Architecture) {
		t.Fatalf("missing platform: %v", err)
	}
}

// TestPushIntoIndex: the source index in a real registry; the conversion publishes the Shoal
// manifest in the same tag's index after the original entries, which stay as they were; a
// Shoal client resolves the tag to the Shoal image, a runtime taking the first match for its
// platform gets the original. A conversion that fails pushes nothing.
func TestPushIntoIndex(t *testing.T) {
	ctx := context.Background()
	host := converttest.StartRegistry(t)
	cfg := testConfig(host)
	dir := t.TempDir()
	w := converttest.NewWriter(t, dir)
	layers := converttest.FeatureLayers(t, 2)[:1]
	other := ocispec.Platform{OS: "linux", Architecture: "s390x"}
	w.Index([]ocispec.Descriptor{
		w.Put(converttest.Image{Platform: origin.HostPlatform(), Layers: layers}),
		w.Put(converttest.Image{Platform: other, Layers: layers}),
	}, false)
	ref := host + "/app:v1"
	srcIdx, err := origin.PushIndex(ctx, dir, ref, nil, cfg, origin.PushOptions{})
	must(t, err)

	reg, err := origin.Open(ref, cfg)
	must(t, err)
	src := reg.(Source)
	out := filepath.Join(t.TempDir(), "out")
	res, err := Convert(ctx, src, out, Options{})
	must(t, err)
	var states []origin.PushState
	desc, err := Push(ctx, res, out, ref, ref, cfg, PushOptions{IntoIndex: true, Progress: func(p origin.PushProgress) { states = append(states, p.State) }})
	must(t, err)
	if states[len(states)-1] != origin.PushManifest {
		t.Errorf("push states %v: the tag was not last", states)
	}
	_, ib, err := src.Root(ctx)
	must(t, err)
	if digest.FromBytes(ib) != desc.Digest {
		t.Fatal("tag does not name the pushed index")
	}
	idx, err := origin.ParseIndex(ib)
	must(t, err)
	if len(idx.Manifests) != 3 || idx.Manifests[2].Digest != res.Images[0].Manifest.Digest || !origin.IsShoalEntry(idx.Manifests[2]) ||
		origin.IsShoalEntry(idx.Manifests[0]) || origin.IsShoalEntry(idx.Manifests[1]) {
		t.Fatalf("index after --into-index: %+v", idx.Manifests)
	}
	_, before, err := reg.(origin.ManifestReader).Manifest(ctx, srcIdx.Digest)
	must(t, err)
	bidx, _ := origin.ParseIndex(before)
	if idx.Manifests[0].Digest != bidx.Manifests[0].Digest || idx.Manifests[1].Digest != bidx.Manifests[1].Digest {
		t.Errorf("original entries changed")
	}
	_, mb, err := reg.Resolve(ctx)
	must(t, err)
	im, err := bootstrap.ParseImage(mb, func(d ocispec.Descriptor) ([]byte, error) {
		return readBlob(ctx, src, d.Digest, bootstrap.MaxMetadataSize)
	})
	must(t, err)
	if im.Digest != res.Images[0].Manifest.Digest {
		t.Errorf("a Shoal client resolves %s to %s, want the Shoal image", ref, im.Digest)
	}
	// Converting again replaces the Shoal entry instead of adding one.
	out2 := filepath.Join(t.TempDir(), "out2")
	res2, err := Convert(ctx, src, out2, Options{})
	must(t, err)
	_, err = Push(ctx, res2, out2, ref, ref, cfg, PushOptions{IntoIndex: true})
	must(t, err)
	_, ib2, err := src.Root(ctx)
	must(t, err)
	if idx2, _ := origin.ParseIndex(ib2); len(idx2.Manifests) != 3 {
		t.Errorf("second conversion: %d entries", len(idx2.Manifests))
	}
	// Plain push to another tag; --into-index elsewhere is refused.
	if _, err := Push(ctx, res, out, ref, host+"/app:shoal", cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Push(ctx, res, out, ref, host+"/other:v1", cfg, PushOptions{IntoIndex: true}); err == nil {
		t.Error("--into-index into another repository accepted")
	}
}

// TestConvertCancelled: a cancelled conversion stops with the context's error and leaves nothing.
func TestConvertCancelled(t *testing.T) {
	dir := t.TempDir()
	w := converttest.NewWriter(t, dir)
	w.Index([]ocispec.Descriptor{w.Put(converttest.Image{Platform: origin.HostPlatform(), Layers: converttest.FeatureLayers(t, 3)})}, false)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	parent := t.TempDir()
	_, err := Convert(ctx, layoutSource(t, dir), filepath.Join(parent, "out"), Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if left, _ := os.ReadDir(parent); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestConvertFsck: erofs-utils' fsck.erofs checks the converted image with its several devices
// and extracts the same tree as the OCI reference: every path, its type, owner and contents
// (fsck.erofs 1.5 keeps neither hard links nor setuid bits when extracting, and writes files that
// end in holes short: those are left out of the comparison or zero-extended).
func TestConvertFsck(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the reference extraction needs root")
	}
	fsck, err := exec.LookPath("fsck.erofs")
	if err != nil {
		t.Skip("fsck.erofs not installed (erofs-utils)")
	}
	layers := converttest.FeatureLayers(t, 5)
	dir := t.TempDir()
	w := converttest.NewWriter(t, dir)
	w.Index([]ocispec.Descriptor{w.Put(converttest.Image{Platform: origin.HostPlatform(), Layers: layers})}, false)
	c := convertLayout(t, layoutSource(t, dir), Options{ChunkSize: 64 << 10})
	args := []string{}
	for _, b := range c.blobs {
		args = append(args, "--device="+b)
	}
	x := filepath.Join(t.TempDir(), "x")
	if out, err := exec.Command(fsck, append(args, "--extract="+x, c.boot)...).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs: %v\n%s", err, out)
	}
	refDir := t.TempDir()
	var tars [][]byte
	for _, l := range layers {
		tars = append(tars, l.Tar)
	}
	converttest.ApplyOCI(t, refDir, tars)
	want, got := converttest.Snapshot(t, refDir), converttest.Snapshot(t, x)
	if len(want) != len(got) {
		t.Errorf("reference has %d paths, fsck.erofs extracted %d", len(want), len(got))
	}
	for p, wi := range want {
		gi, ok := got[p]
		if !ok {
			t.Errorf("%s: not extracted", p)
			continue
		}
		if wi.Mode&unix.S_IFMT != gi.Mode&unix.S_IFMT || wi.UID != gi.UID || wi.GID != gi.GID || wi.Target != gi.Target || wi.Rdev != gi.Rdev {
			t.Errorf("%s: reference %+v, fsck.erofs %+v", p, wi, gi)
		}
		if wi.SHA256 != "" && wi.SHA256 != gi.SHA256 {
			// fsck.erofs 1.5 skips hole chunks without seeking: what it writes is the file
			// with its all-zero 64 KiB chunks taken out.
			ref, err := os.ReadFile(filepath.Join(refDir, p))
			must(t, err)
			var packed []byte
			for off := 0; off < len(ref); off += 64 << 10 {
				c := ref[off:min(off+64<<10, len(ref))]
				if !bytes.Equal(c, make([]byte, len(c))) {
					packed = append(packed, c...)
				}
			}
			data, _ := os.ReadFile(filepath.Join(x, p))
			if fmt.Sprintf("%x", sha256.Sum256(data)) != fmt.Sprintf("%x", sha256.Sum256(packed)) {
				t.Errorf("%s: content differs (%d bytes extracted, %d without holes)", p, len(data), len(packed))
			}
		}
	}
}
