package mirror

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

func put(t *testing.T, s *store, b []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(b)
	if _, err := s.ingest(d, 1<<20, func(w io.Writer) error { _, err := w.Write(b); return err }); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestStoreVerifiesCapsAndReopens: wrong bytes, oversized content and a failed fill leave
// nothing behind; past the cap the least recently used blob goes; a reopened store knows what
// is kept and drops partial writes.
func TestStoreVerifiesCapsAndReopens(t *testing.T) {
	dir := t.TempDir()
	s, err := openStore(dir, 250)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte("a"), 100)
	d := digest.FromBytes(want)
	if _, err := s.ingest(d, 1<<20, func(w io.Writer) error { _, err := w.Write(bytes.Repeat([]byte("b"), 100)); return err }); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("wrong bytes: %v", err)
	}
	if _, err := s.ingest(d, 50, func(w io.Writer) error { _, err := w.Write(want); return err }); !errors.Is(err, errTooLarge) {
		t.Fatalf("over max: %v", err)
	}
	boom := errors.New("peer went away")
	if _, err := s.ingest(d, 1<<20, func(w io.Writer) error { _, _ = w.Write(want[:10]); return boom }); !errors.Is(err, boom) {
		t.Fatalf("failed fill: %v", err)
	}
	if s.has(d) {
		t.Fatal("refused content kept")
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}

	a := put(t, s, want)
	b := put(t, s, bytes.Repeat([]byte("c"), 100))
	if f, _, ok, _ := s.open(a); ok { // a is now the more recently used
		f.Close()
	}
	c := put(t, s, bytes.Repeat([]byte("d"), 100))
	if !s.has(a) || s.has(b) || !s.has(c) {
		t.Fatalf("after passing the cap: a %v b %v c %v; want b (least recently used) gone", s.has(a), s.has(b), s.has(c))
	}
	if n, files := s.usage(); n != 200 || files != 2 {
		t.Fatalf("usage %d bytes in %d files", n, files)
	}

	if err := os.WriteFile(filepath.Join(dir, "tmp", "partial"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	s2, err := openStore(dir, 250)
	if err != nil {
		t.Fatal(err)
	}
	f, size, ok, err := s2.open(a)
	if err != nil || !ok || size != 100 {
		t.Fatalf("reopened: %v %v %d", ok, err, size)
	}
	got, _ := io.ReadAll(f)
	f.Close()
	if !bytes.Equal(got, want) {
		t.Fatal("reopened content differs")
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) != 0 {
		t.Fatalf("partial write survived a reopen: %v", left)
	}
}
