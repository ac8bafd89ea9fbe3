package daemon

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestObjectSweep: kept objects and bootstraps no image uses go once unused for the retention;
// those in use, those a tag names, recent ones, unknown files and fresh temp files stay, and a
// file in use has its clock reset so it outlives its image's removal by the retention.
func TestObjectSweep(t *testing.T) {
	dir := t.TempDir()
	o, err := openObjectStore(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(o.boots, 0o700); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	old := now.Add(-48 * time.Hour)
	obj := func(dir, content string, mtime time.Time) (digest.Digest, string) {
		d := digest.SHA256.FromString(content)
		p := filepath.Join(dir, d.Encoded())
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		return d, p
	}
	used, usedPath := obj(o.dir, "manifest in use", old)
	usedBoot, usedBootPath := obj(o.boots, "bootstrap in use", old)
	tagged, taggedPath := obj(o.dir, "manifest a tag names", old)
	_, goneObj := obj(o.dir, "manifest of a removed image", old)
	_, goneBoot := obj(o.boots, "bootstrap of a removed image", old)
	_, recent := obj(o.dir, "manifest removed an hour ago", now.Add(-time.Hour))
	other := filepath.Join(o.dir, "README")
	staleTemp := filepath.Join(o.boots, ".fetch-123")
	freshTemp := filepath.Join(o.boots, ".fetch-456")
	for _, p := range []string{other, staleTemp, freshTemp} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{other, staleTemp} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	o.setTag("127.0.0.1:5000/img:latest", tagged)

	files, _ := o.sweep(map[digest.Digest]bool{used: true, usedBoot: true}, 24*time.Hour, now)
	if files != 3 {
		t.Errorf("sweep removed %d files, want 3 (two unused objects, one stale temp file)", files)
	}
	for _, p := range []string{goneObj, goneBoot, staleTemp} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s: still there after the sweep (err %v)", p, err)
		}
	}
	for _, p := range []string{usedPath, usedBootPath, taggedPath, recent, other, freshTemp, o.tagsPath()} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v, want it kept", p, err)
		}
	}
	// In use: its clock was reset, so once its image is gone it stays another retention.
	st, err := os.Stat(usedPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.ModTime().Before(now.Add(-time.Minute)) {
		t.Errorf("object in use has mtime %v, want about now", st.ModTime())
	}
	if files, _ := o.sweep(map[digest.Digest]bool{}, 24*time.Hour, now.Add(30*time.Minute)); files != 0 {
		t.Errorf("half an hour after its image went, %d files removed, want 0", files)
	}
	if files, _ := o.sweep(map[digest.Digest]bool{}, 24*time.Hour, now.Add(25*time.Hour)); files != 4 {
		t.Errorf("a day after its image went, %d files removed, want 4 (the manifest, the bootstrap, the hour-old one, the temp file, stale now)", files)
	}
	if _, ok := o.get(used, 1<<20); ok {
		t.Error("get found a swept object")
	}
	// Retention 0 keeps everything.
	_, p := obj(o.dir, "kept forever", old)
	if files, _ := o.sweep(map[digest.Digest]bool{}, 0, now.Add(1000*time.Hour)); files != 0 {
		t.Errorf("retention 0 removed %d files", files)
	}
	if _, err := os.Stat(p); err != nil {
		t.Error(err)
	}
}
