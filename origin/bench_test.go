package origin

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// bigLayout writes a layout whose one layer is size random bytes.
func bigLayout(b *testing.B, size int) (string, digest.Digest) {
	b.Helper()
	dir := b.TempDir()
	data := make([]byte, size)
	_, _ = rand.Read(data)
	put := func(p []byte) digest.Digest {
		d := digest.SHA256.FromBytes(p)
		path := filepath.Join(dir, "blobs", "sha256", d.Encoded())
		_ = os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, p, 0o644); err != nil {
			b.Fatal(err)
		}
		return d
	}
	blob := put(data)
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ArtifactType,
		Config: ocispec.Descriptor{MediaType: ArtifactType, Digest: put([]byte("{}")), Size: 2},
		Layers: []ocispec.Descriptor{{MediaType: "application/vnd.shoal.erofs.blob.v1", Digest: blob, Size: int64(size)}}}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	idx := ocispec.Index{Manifests: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageManifest, Digest: put(mb), Size: int64(len(mb))}}}
	idx.SchemaVersion = 2
	ib, _ := json.Marshal(idx)
	_ = os.WriteFile(filepath.Join(dir, "index.json"), ib, 0o644)
	_ = os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	return dir, blob
}

// BenchmarkServerRate measures how closely `--rate` holds: 8 clients read 1 MiB ranges from an
// embedded server capped at 1, 8 and 64 MiB/s, for 10 seconds each. It reports the rate the
// server sent at and its deviation from the cap. Run with -benchtime=1x (each iteration is a
// 10 s transfer).
func BenchmarkServerRate(b *testing.B) {
	const (
		duration = 10 * time.Second
		clients  = 8
		chunk    = 1 << 20
	)
	dir, blob := bigLayout(b, 64<<20)
	for _, capBps := range []int64{1 << 20, 8 << 20, 64 << 20} {
		b.Run(fmt.Sprintf("cap=%dMiB", capBps>>20), func(b *testing.B) {
			s, host := startServer(b, map[string]string{"img": dir}, ServerConfig{Rate: capBps})
			src, err := Open(host+"/img", testConfig(host))
			if err != nil {
				b.Fatal(err)
			}
			for range b.N {
				before := s.Stats().BytesServed
				var got atomic.Int64
				ctx, cancel := context.WithTimeout(context.Background(), duration)
				start := time.Now()
				var wg sync.WaitGroup
				for c := range clients {
					wg.Go(func() {
						for i := c; ctx.Err() == nil; i += clients {
							off := int64(i%64) * chunk
							if p, err := src.ReadRange(ctx, blob, off, chunk); err == nil {
								got.Add(int64(len(p)))
							}
						}
					})
				}
				wg.Wait()
				elapsed := time.Since(start)
				cancel()
				// What the server sent, partial responses at the deadline included.
				sent := s.Stats().BytesServed - before
				bps := float64(sent) / elapsed.Seconds()
				b.ReportMetric(bps/(1<<20), "MiB/s")
				b.ReportMetric(100*(bps-float64(capBps))/float64(capBps), "dev%")
				b.ReportMetric(float64(got.Load())/elapsed.Seconds()/(1<<20), "complete-MiB/s")
			}
		})
	}
}

// BenchmarkRangeRead is the uncapped cost of a 1 MiB ReadRange through the registry client and
// the embedded server over loopback.
func BenchmarkRangeRead(b *testing.B) {
	dir, blob := bigLayout(b, 16<<20)
	_, host := startServer(b, map[string]string{"img": dir}, DefaultServerConfig())
	src, err := Open(host+"/img", testConfig(host))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(1 << 20)
	b.ResetTimer()
	for i := range b.N {
		if _, err := src.ReadRange(context.Background(), blob, int64(i%16)<<20, 1<<20); err != nil {
			b.Fatal(err)
		}
	}
}
