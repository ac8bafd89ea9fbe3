package daemon

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/internal/registrytest"
	"github.com/shoal-p2p/shoal/origin"
)

// switchProber answers Public as a test sets it.
type switchProber struct {
	mu     sync.Mutex
	public bool
}

func (p *switchProber) Public(context.Context, string) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.public, nil
}

// TestReloadMarksIndex: an image resolved through an index (the real distribution registry,
// a Shoal image built and pushed under a tag as an index) is loaded while its repository is
// public; the repository is made private and the daemon restarts. The reload (from the state's
// manifest) marks every kept object private again, the index the tag named included: none of
// them keeps the public standing of the earlier run.
func TestReloadMarksIndex(t *testing.T) {
	reg := registrytest.Start(t)
	src := t.TempDir()
	for i, name := range []string{"a.txt", "b.txt"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte{byte(i), 'x', 'y'}, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "img")
	ctx := t.Context()
	if _, err := bootstrap.Build(ctx, src, out, bootstrap.BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := origin.DefaultConfig()
	cfg.Insecure, cfg.DockerConfig = []string{reg.Host}, "-"
	cfg.Username, cfg.Password = reg.Admin()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ref := reg.Host + "/team/app:v1"
	repo := reg.Host + "/team/app"
	idx, err := origin.PushIndex(ctx, out, ref, nil, cfg, origin.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}

	data := t.TempDir()
	prober := &switchProber{public: true}
	start := func() (originLoader, map[digest.Digest][]string) {
		objects, err := openObjectStore(data, cfg.Logger)
		if err != nil {
			t.Fatal(err)
		}
		marks := map[digest.Digest][]string{}
		objects.attach(func(d digest.Digest, repos ...string) { marks[d] = repos })
		return originLoader{cfg: cfg, dir: filepath.Join(data, "bootstraps"), objects: objects, rights: prober, log: cfg.Logger}, marks
	}
	l, marks := start()
	im, err := l.Load(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if len(marks[idx.Digest]) != 0 || len(marks[im.Image.Digest]) != 0 {
		t.Fatalf("a public repository's objects marked private: %v", marks)
	}
	if _, ok := l.objects.get(idx.Digest, 1<<20); !ok || idx.Digest == im.Image.Digest {
		t.Fatalf("the index %s was not kept apart from the manifest %s", idx.Digest, im.Image.Digest)
	}

	prober.mu.Lock()
	prober.public = false
	prober.mu.Unlock()
	l, marks = start() // the restart: marks from private.json, then the reload
	if _, err := l.Reload(ctx, ref, im.Manifest); err != nil {
		t.Fatal(err)
	}
	want := []digest.Digest{idx.Digest, im.Image.Digest, im.Image.Bootstrap.Digest}
	for _, b := range im.Image.Blobs {
		want = append(want, b.ManifestDigest)
	}
	for _, d := range want {
		if !slices.Equal(marks[d], []string{repo}) {
			t.Errorf("after the reload, object %s is marked %v, want private to %s (index %s)", d, marks[d], repo, idx.Digest)
		}
	}
}
