package bootstrap

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-p2p/shoal/chunk"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestParseImageRejects(t *testing.T) {
	needTool(t, "mkfs.erofs")
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "f"), randBytes(t, 10000))
	bi := buildImage(t, src, 0)
	lay := Layout{bi.out}
	im, mb, err := lay.ReadImage("")
	must(t, err)
	if im.Digest != bi.res.Image.Digest {
		t.Fatal("ReadImage and Build disagree on the manifest digest")
	}
	if _, _, err := lay.ReadImage("latest"); err != nil {
		t.Fatalf("by ref: %v", err)
	}
	if _, _, err := lay.ReadImage("nope"); err == nil {
		t.Fatal("unknown ref accepted")
	}
	var m ocispec.Manifest
	must(t, json.Unmarshal(mb, &m))
	// Layers: blob, its chunk manifest, compressed forms (if they pay), bootstrap.
	at := map[string]int{}
	for i, l := range m.Layers {
		at[l.MediaType] = i
	}
	blob, chunks, boot := at[MediaTypeBlob], at[MediaTypeChunks], at[MediaTypeBootstrap]
	edits := map[string]func(m *ocispec.Manifest){
		"not shoal":          func(m *ocispec.Manifest) { m.ArtifactType = "application/x" },
		"two bootstraps":     func(m *ocispec.Manifest) { m.Layers = append(m.Layers, m.Layers[boot]) },
		"no chunk manifest":  func(m *ocispec.Manifest) { m.Layers = []ocispec.Descriptor{m.Layers[blob], m.Layers[boot]} },
		"bad device":         func(m *ocispec.Manifest) { m.Layers[blob].Annotations[AnnotationDevice] = "x" },
		"wrong blob size":    func(m *ocispec.Manifest) { m.Layers[blob].Size++ },
		"chunk digest wrong": func(m *ocispec.Manifest) { m.Layers[chunks].Digest = m.Layers[boot].Digest },
	}
	for name, edit := range edits {
		var c ocispec.Manifest
		must(t, json.Unmarshal(mb, &c))
		edit(&c)
		b, _ := json.Marshal(c)
		if _, err := ParseImage(b, lay.Fetch); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A corrupted chunk manifest in the layout is caught by its digest (once its compressed
	// form, which a reader takes first, is gone too).
	if z := im.Blobs[0].ManifestZstd; z != "" {
		must(t, os.Remove(lay.BlobPath(z)))
	}
	cm := lay.BlobPath(im.Blobs[0].ManifestDigest)
	data, _ := os.ReadFile(cm)
	must(t, os.WriteFile(cm, bytes.Replace(data, []byte(`"offset":0`), []byte(`"offset":4096`), 1), 0o644))
	if _, _, err := lay.ReadImage(""); !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("tampered chunk manifest: %v", err)
	}
}

func FuzzParseImage(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"artifactType":"application/vnd.shoal.image.v1","layers":[{"mediaType":"application/vnd.shoal.erofs.bootstrap.v1","digest":"sha256:` + strings.Repeat("a", 64) + `","size":4096}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseImage(b, func(d ocispec.Descriptor) ([]byte, error) { return nil, errors.New("no content") })
	})
}
