package e2e

import (
	"archive/tar"
	"context"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-p2p/shoal/convert/converttest"
	"github.com/shoal-p2p/shoal/origin"
)

// TestConvertAndMount: ordinary OCI images (every feature of the layer format) in the real
// distribution registry are converted by `shoal image convert` (one into its own tag's index,
// one to a new tag), mounted by a daemon from the registry, and compared file by file (bytes,
// type, mode, owner, xattrs, link targets, hard-link groups) with what applying the source
// layers by the image-spec's rules gives on a real directory (converttest.ApplyOCI). The second
// image shares the first's base layer: the daemon fetches only the rest. A conversion of a
// broken image fails and pushes nothing.
func TestConvertAndMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the reference extraction and the mounts need root")
	}
	ctx := context.Background()
	host := converttest.StartRegistry(t)
	cfg := origin.DefaultConfig()
	cfg.Insecure, cfg.DockerConfig = []string{host}, "-"
	dir := t.TempDir()

	base := converttest.FeatureLayers(t, 11)
	top := func(name string, n int) converttest.Layer {
		data := make([]byte, n)
		rng := rand.New(rand.NewSource(int64(len(name)) + int64(name[0])))
		rng.Read(data)
		return converttest.Layer{Compression: "gzip", Tar: converttest.Tar(t, []converttest.Entry{
			{Name: "srv/" + name + ".bin", Type: tar.TypeReg, Mode: 0o644, Data: data},
			{Name: ".wh.gone", Type: tar.TypeReg},
		})}
	}
	layersA := append(append([]converttest.Layer{}, base...), top("a", 3<<20))
	layersB := append(append([]converttest.Layer{}, base...), top("b", 2<<20))
	push := func(name string, layers []converttest.Layer, index bool) string {
		ld := filepath.Join(dir, "src-"+name)
		w := converttest.NewWriter(t, ld)
		ms := []ocispec.Descriptor{w.Put(converttest.Image{Platform: origin.HostPlatform(), Layers: layers,
			Config: ocispec.ImageConfig{Entrypoint: []string{"/bin/tool"}}})}
		if index {
			ms = append(ms, w.Put(converttest.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "s390x"}, Layers: layers[:1]}))
		}
		w.Index(ms, false)
		ref := host + "/" + name + ":v1"
		if _, err := origin.PushIndex(ctx, ld, ref, nil, cfg, origin.PushOptions{}); err != nil {
			t.Fatal(err)
		}
		return ref
	}
	refA, refB := push("a", layersA, true), push("b", layersB, false)

	out := run(t, "image", "convert", refA, "--into-index", "--insecure", host, "--docker-config", "-", "--chunk-size", "256K")
	if !strings.Contains(out, "pushed index") {
		t.Fatalf("convert --into-index: %s", out)
	}
	refBShoal := host + "/b:shoal"
	out = run(t, "image", "convert", refB, refBShoal, "--insecure", host, "--docker-config", "-", "--chunk-size", "256K")
	if !strings.Contains(out, "pushed manifest") {
		t.Fatalf("convert: %s", out)
	}
	// Converting the same image again pushes no blob: the registry has them all.
	cmd := exec.Command(shoalBin, "image", "convert", refB, refBShoal, "--insecure", host, "--docker-config", "-", "--chunk-size", "256K")
	again, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(again), " uploaded ") || !strings.Contains(string(again), " exists ") {
		t.Errorf("second conversion (%v): want every blob to exist already:\n%s", err, again)
	}

	// A broken image: the conversion fails with a clear error and no tag appears.
	bad := filepath.Join(dir, "src-bad")
	bw := converttest.NewWriter(t, bad)
	gz := converttest.Compress(t, base[0].Tar, "gzip")
	bw.Index([]ocispec.Descriptor{bw.Put(converttest.Image{Platform: origin.HostPlatform(),
		Layers: []converttest.Layer{{Tar: base[0].Tar, Blob: gz[:len(gz)*2/3]}}})}, false)
	if _, err := origin.PushIndex(ctx, bad, host+"/bad:v1", nil, cfg, origin.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	badOut, err := exec.Command(shoalBin, "image", "convert", host+"/bad:v1", host+"/bad:shoal", "--insecure", host, "--docker-config", "-").CombinedOutput()
	if err == nil || !strings.Contains(string(badOut), "layer 1") {
		t.Errorf("converting a truncated layer: %v\n%s", err, badOut)
	}
	if resp, err := http.Head("http://" + host + "/v2/bad/manifests/shoal"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("a failed conversion left a tag: %v %v", err, resp)
	}

	// Mount both from the registry on one daemon and compare with the OCI reference.
	c := &cluster{t: t, dir: dir, origin: host}
	d := c.startDaemon(1, nil)
	reference := func(layers []converttest.Layer) map[string]converttest.Info {
		ref := filepath.Join(t.TempDir(), "ref")
		os.MkdirAll(ref, 0o755)
		var tars [][]byte
		for _, l := range layers {
			tars = append(tars, l.Tar)
		}
		converttest.ApplyOCI(t, ref, tars)
		return converttest.Snapshot(t, ref)
	}
	mountAndCompare := func(ref, name string, layers []converttest.Layer) {
		mp := filepath.Join(dir, "mnt-"+name)
		os.MkdirAll(mp, 0o755)
		t.Cleanup(func() { exec.Command("umount", "-l", mp).Run() })
		run(t, "mount", ref, mp, "--api", d.sock)
		got := converttest.Snapshot(t, mp)
		want := reference(layers)
		// The mount point's own inode is the daemon's: compare the image's root by its content.
		delete(got, ".")
		delete(want, ".")
		if diff := converttest.Diff(want, got, 15); len(diff) > 0 {
			t.Errorf("%s mounted differs from the OCI reference:\n%s", name, strings.Join(diff, "\n"))
		}
	}
	mountAndCompare(refA, "a", layersA)
	afterA := c.stats(d).Bytes.Origin
	mountAndCompare(refBShoal, "b", layersB)
	s := c.stats(d)
	fromOriginB := s.Bytes.Origin - afterA
	var imageB, presentB int64
	for _, im := range s.Images {
		if im.Ref == refBShoal {
			imageB, presentB = im.Bytes, im.BytesPresent
		}
	}
	t.Logf("image a took %d bytes from the origin; image b (%d bytes) took %d more", afterA, imageB, fromOriginB)
	// b's own layer holds 2 MiB of file data; everything else is the base a already fetched.
	// What is not present is the chunks of base files later layers delete or replace (a few
	// small files here), which no read reaches.
	if imageB == 0 || imageB-presentB > 64<<10 || fromOriginB > 2<<20+256<<10 || fromOriginB < 2<<20-256<<10 {
		t.Errorf("second image: %d of %d bytes present, %d from the origin: want only its own layer (about 2 MiB)", presentB, imageB, fromOriginB)
	}
	for _, name := range []string{"a", "b"} {
		run(t, "umount", filepath.Join(dir, "mnt-"+name), "--api", d.sock)
	}
	if left := shoalMounts(t, dir); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}
