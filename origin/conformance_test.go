package origin

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// testSource runs the Source contract against src, which must serve im. Every backend (layout,
// embedded server, distribution registry with each auth) passes the same suite.
func testSource(t *testing.T, src Source, im *testImage) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("Resolve", func(t *testing.T) {
		desc, body, err := src.Resolve(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if desc.Digest != im.desc.Digest || desc.Size != im.desc.Size || !bytes.Equal(body, im.manifest) {
			t.Fatalf("resolved %s (%d bytes), want %s (%d bytes)", desc.Digest, desc.Size, im.desc.Digest, im.desc.Size)
		}
		if desc.MediaType != im.desc.MediaType || desc.ArtifactType != ArtifactType {
			t.Fatalf("media type %q artifact type %q", desc.MediaType, desc.ArtifactType)
		}
	})

	big := im.biggest()
	data := im.blobs[big.Digest]
	size := int64(len(data))
	t.Run("ReadRange", func(t *testing.T) {
		for _, tc := range []struct {
			name        string
			off, length int64
		}{
			{"first block", 0, 4096},
			{"unaligned middle", 12345, 100000},
			{"last bytes", size - 10, 10},
			{"whole blob", 0, size},
			{"one byte", 777, 1},
			{"empty", 5, 0},
		} {
			got, err := src.ReadRange(ctx, big.Digest, tc.off, tc.length)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if !bytes.Equal(got, data[tc.off:tc.off+tc.length]) {
				t.Fatalf("%s: %d bytes differ from the blob's [%d,%d)", tc.name, len(got), tc.off, tc.off+tc.length)
			}
		}
	})
	t.Run("ReadRangeErrors", func(t *testing.T) {
		for _, tc := range []struct {
			name        string
			dgst        digest.Digest
			off, length int64
			want        error
		}{
			{"past the end", big.Digest, size - 10, 20, ErrRange},
			{"wholly outside", big.Digest, size + 100, 10, ErrRange},
			{"negative", big.Digest, -1, 10, ErrRange},
			{"unknown blob", digest.SHA256.FromString("no such blob"), 0, 10, ErrNotFound},
			{"bad digest", digest.Digest("sha256:../../etc/passwd"), 0, 10, ErrInvalidReference},
		} {
			got, err := src.ReadRange(ctx, tc.dgst, tc.off, tc.length)
			if !errors.Is(err, tc.want) {
				t.Fatalf("%s: got %d bytes, err %v; want %v", tc.name, len(got), err, tc.want)
			}
		}
	})
	t.Run("Open", func(t *testing.T) {
		for d, want := range im.blobs {
			if d == im.desc.Digest {
				continue // registries keep manifests apart from blobs
			}
			got, err := readAll(ctx, src, d)
			if err != nil {
				t.Fatalf("blob %s: %v", d, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("blob %s: %d bytes differ", d, len(got))
			}
		}
		if _, err := readAll(ctx, src, digest.SHA256.FromString("no such blob")); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown blob: %v, want ErrNotFound", err)
		}
	})
	t.Run("ConcurrentRanges", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for i := range 32 {
			wg.Go(func() {
				off := int64(i) * 4096 % (size - 8192)
				got, err := src.ReadRange(ctx, big.Digest, off, 8192)
				if err == nil && !bytes.Equal(got, data[off:off+8192]) {
					err = errors.New("bytes differ")
				}
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	})
}
