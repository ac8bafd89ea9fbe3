package origin

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestLayoutSource(t *testing.T) {
	im := makeLayout(t, t.TempDir(), 1, "v1")
	src, err := Open(im.dir, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := src.(*Layout); !ok {
		t.Fatalf("Open(%q) = %T, want a layout", im.dir, src)
	}
	testSource(t, src, im)
}

func TestLayoutCorruptBlob(t *testing.T) {
	im := makeLayout(t, t.TempDir(), 2, "")
	big := im.biggest()
	p := filepath.Join(im.dir, "blobs", "sha256", big.Digest.Encoded())
	b := append([]byte(nil), im.blobs[big.Digest]...)
	b[len(b)/2] ^= 1
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := NewLayout(im.dir, "", testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readAll(context.Background(), src, big.Digest); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("reading a corrupted blob: %v, want ErrCorrupt", err)
	}
	// The manifest too.
	if err := os.WriteFile(filepath.Join(im.dir, "blobs", "sha256", im.desc.Digest.Encoded()), append(im.manifest, ' '), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := src.Resolve(context.Background()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("resolving a corrupted manifest: %v, want ErrCorrupt", err)
	}
}

func TestOpenReferenceForms(t *testing.T) {
	dir := t.TempDir()
	im := makeLayout(t, dir, 3, "v1")
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ref    string
		layout bool
	}{
		{dir, true},
		{"oci:" + dir, true},
		{"oci:" + dir + ":v1", true},
		{"./" + rel, true},
		{"127.0.0.1:5000/img:latest", false},
		{"registry.example/a/b@" + im.desc.Digest.String(), false},
	} {
		src, err := Open(tc.ref, testConfig())
		if err != nil {
			t.Fatalf("Open(%q): %v", tc.ref, err)
		}
		if _, isLayout := src.(*Layout); isLayout != tc.layout {
			t.Fatalf("Open(%q) = %T", tc.ref, src)
		}
		if tc.layout {
			if d, _, err := src.Resolve(context.Background()); err != nil || d.Digest != im.desc.Digest {
				t.Fatalf("Open(%q).Resolve = %v, %v", tc.ref, d.Digest, err)
			}
		}
	}
	if _, err := Open("oci:"+dir+":nope", testConfig()); err != nil {
		t.Fatal(err)
	} else if src, _ := Open("oci:"+dir+":nope", testConfig()); src != nil {
		if _, _, err := src.Resolve(context.Background()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown ref name: %v, want ErrNotFound", err)
		}
	}
	for _, bad := range []string{"", "img:latest", "/no/such/dir", "Host/x"} {
		if _, err := Open(bad, testConfig()); err == nil {
			t.Fatalf("Open(%q) succeeded", bad)
		}
	}
}
