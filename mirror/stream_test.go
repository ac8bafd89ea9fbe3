package mirror

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestGrowingReader: a reader of a download in progress gets the bytes as they are written to
// the temporary file, waits for the rest, ends at the size; it fails when the download fails
// and when its own context ends, and the file's rename into the store does not disturb it.
func TestGrowingReader(t *testing.T) {
	dir := t.TempDir()
	blob := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	d := digest.FromBytes(blob)
	start := func(t *testing.T) (*Mirror, *os.File, *growing) {
		tmp, err := os.Create(filepath.Join(dir, t.Name()[len("TestGrowingReader/"):]))
		if err != nil {
			t.Fatal(err)
		}
		g := &growing{tmp: tmp.Name(), size: int64(len(blob)), upstream: "reg/app", changed: make(chan struct{})}
		m := &Mirror{growing: map[digest.Digest]*growing{d: g}}
		return m, tmp, g
	}
	t.Run("whole", func(t *testing.T) {
		m, tmp, g := start(t)
		rc, size, from, ok := m.OpenGrowing(t.Context(), d)
		if !ok || size != int64(len(blob)) || from != "reg/app" {
			t.Fatalf("OpenGrowing: ok %v size %d from %q", ok, size, from)
		}
		defer rc.Close()
		w := growingWriter{w: tmp, g: g}
		if _, err := w.Write(blob[:100_000]); err != nil {
			t.Fatal(err)
		}
		first := make([]byte, 200_000)
		n, err := rc.Read(first)
		if err != nil || n != 100_000 || !bytes.Equal(first[:n], blob[:n]) {
			t.Fatalf("first read: %d bytes, %v; want the 100000 written so far", n, err)
		}
		done := make(chan []byte)
		go func() { rest, _ := io.ReadAll(rc); done <- rest }()
		for off := 100_000; off < len(blob); off += 300_000 { // the reader waits between writes
			if _, err := w.Write(blob[off:min(off+300_000, len(blob))]); err != nil {
				t.Fatal(err)
			}
		}
		tmp.Close()
		if err := os.Rename(tmp.Name(), tmp.Name()+".kept"); err != nil {
			t.Fatal(err)
		}
		g.end(nil)
		if rest := <-done; !bytes.Equal(append(first[:n:n], rest...), blob) {
			t.Fatalf("read %d bytes in all, not the blob", n+len(rest))
		}
	})
	t.Run("download fails", func(t *testing.T) {
		m, tmp, g := start(t)
		rc, _, _, _ := m.OpenGrowing(t.Context(), d)
		defer rc.Close()
		_, _ = growingWriter{w: tmp, g: g}.Write(blob[:10])
		bad := errors.New("upstream broke off")
		go g.end(bad)
		if _, err := io.ReadAll(rc); !errors.Is(err, bad) {
			t.Fatalf("read of a failed download: %v, want %v", err, bad)
		}
	})
	t.Run("context ends", func(t *testing.T) {
		m, _, _ := start(t)
		ctx, cancel := context.WithCancel(t.Context())
		rc, _, _, _ := m.OpenGrowing(ctx, d)
		defer rc.Close()
		cancel()
		if _, err := rc.Read(make([]byte, 10)); !errors.Is(err, context.Canceled) {
			t.Fatalf("read after the context ended: %v", err)
		}
	})
	if _, _, _, ok := (&Mirror{growing: map[digest.Digest]*growing{}}).OpenGrowing(t.Context(), d); ok {
		t.Error("OpenGrowing of no download said ok")
	}
}
