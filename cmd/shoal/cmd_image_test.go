package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
)

func TestImageBuildInspect(t *testing.T) {
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs not installed (erofs-utils)")
	}
	src := t.TempDir()
	data := make([]byte, 200_000)
	rand.Read(data)
	os.WriteFile(filepath.Join(src, "a.bin"), data, 0o644)
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", "b.bin"), data, 0o644)
	out := filepath.Join(t.TempDir(), "img")

	stdout, stderr, code := shoal(t, "image", "build", src, out, "--chunk-size", "64K")
	if code != 0 {
		t.Fatalf("build: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{"files      2", "chunks     4 of 64.0 KiB", "dedup      196.0 KiB saved" /* the second copy: 200000 bytes rounded to 49 blocks */} {
		if !strings.Contains(stdout, want) {
			t.Errorf("build summary lacks %q:\n%s", want, stdout)
		}
	}
	stdout, stderr, code = shoal(t, "image", "inspect", out, "--json")
	if code != 0 {
		t.Fatalf("inspect: exit %d\n%s", code, stderr)
	}
	var doc struct {
		Manifest  string `json:"manifest"`
		Bootstrap struct {
			Digest string `json:"digest"`
			Size   int64  `json:"size"`
		} `json:"bootstrap"`
		Blobs []struct {
			Digest string        `json:"digest"`
			Size   int64         `json:"size"`
			Chunks []chunk.Chunk `json:"chunks"`
		} `json:"blobs"`
	}
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, stdout)
	}
	if !strings.HasPrefix(doc.Manifest, "sha256:") || !strings.HasPrefix(doc.Bootstrap.Digest, "sha256:") || doc.Bootstrap.Size == 0 || len(doc.Blobs) != 1 {
		t.Fatalf("inspect --json fields: %+v", doc)
	}
	blob, err := os.ReadFile(filepath.Join(out, "blobs", "sha256", strings.TrimPrefix(doc.Blobs[0].Digest, "sha256:")))
	if err != nil {
		t.Fatal(err)
	}
	if len(doc.Blobs[0].Chunks) != 4 {
		t.Fatalf("want 4 chunks (the duplicate file shares them), got %d", len(doc.Blobs[0].Chunks))
	}
	for _, c := range doc.Blobs[0].Chunks {
		// Compressed by default: each chunk is at its stored range, a zstd frame or raw.
		s := c.Stored()
		if s.End() > int64(len(blob)) {
			t.Fatalf("chunk %s stored at [%d,%d) of a %d-byte blob", c.CID, s.Offset, s.End(), len(blob))
		}
		if _, err := zchunk.DecodeVerified(c, blob[s.Offset:s.End()]); err != nil {
			t.Error(err)
		}
	}
	// Human form.
	stdout, _, code = shoal(t, "image", "inspect", out)
	if code != 0 || !strings.Contains(stdout, "erofs-chunk-index") || !strings.Contains(stdout, doc.Manifest) {
		t.Fatalf("inspect:\n%s", stdout)
	}
}

func TestImageCLIErrors(t *testing.T) {
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"image", "build", "only-one-arg"}, 2, "Usage: shoal image build"},
		{[]string{"image", "build", t.TempDir(), t.TempDir()}, 1, "already exists"},
		{[]string{"image", "build", "/nonexistent", filepath.Join(t.TempDir(), "o")}, 1, "no such file"},
		{[]string{"image", "build", t.TempDir(), filepath.Join(t.TempDir(), "o"), "--chunk-size", "3M"}, 1, "power of two"},
		{[]string{"image", "build", t.TempDir(), filepath.Join(t.TempDir(), "o"), "--chunk-size", "lots"}, 1, "not a size"},
		{[]string{"image", "inspect", t.TempDir()}, 1, "index.json"},
		{[]string{"image", "build", t.TempDir(), filepath.Join(t.TempDir(), "o"), "--compression", "lz4"}, 1, "compression \"lz4\""},
		{[]string{"image", "build", t.TempDir(), filepath.Join(t.TempDir(), "o"), "--compression-level", "30"}, 1, "zstd level 30"},
		{[]string{"no-such-command"}, 1, "unknown command"},
	}
	for _, c := range cases {
		_, stderr, code := shoal(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("shoal %v: exit %d, stderr %q; want exit %d mentioning %q", c.args, code, stderr, c.code, c.want)
		}
	}
	stdout, _, code := shoal(t, "help")
	if code != 0 || !bytes.Contains([]byte(stdout), []byte("image build")) {
		t.Errorf("help: %d %s", code, stdout)
	}
}
