package p2p

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// growStore plays a mirror that downloads a blob slowly: its download (FetchBlobFor) gives the
// first half at once and the rest only when the test closes release; OpenGrowing reads it as it
// lands (GrowingBlobs). rot flips the last byte of what the download brings.
type growStore struct {
	*blobStore
	blob    []byte
	d       digest.Digest
	release chan struct{}
	rot     bool
	opened  chan struct{} // closed at the first OpenGrowing
	once    sync.Once
}

func (s *growStore) data() []byte {
	b := bytes.Clone(s.blob)
	if s.rot {
		b[len(b)-1] ^= 1
	}
	return b
}

func (s *growStore) FetchBlobFor(ctx context.Context, d digest.Digest, _ bool, _, _ string, _ int64) error {
	select {
	case <-s.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	if s.rot {
		return errors.New("the download does not match its digest")
	}
	s.blobStore.mu.Lock()
	s.blobs[d] = s.blob
	s.blobStore.mu.Unlock()
	return nil
}

func (s *growStore) OpenGrowing(ctx context.Context, d digest.Digest) (io.ReadCloser, int64, bool) {
	if d != s.d {
		return nil, 0, false
	}
	s.once.Do(func() { close(s.opened) })
	b := s.data()
	half := len(b) / 2
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write(b[:half])
		select {
		case <-s.release:
		case <-ctx.Done():
			pw.CloseWithError(ctx.Err())
			return
		}
		_, _ = pw.Write(b[half:])
		pw.Close()
	}()
	return pr, int64(len(b)), true
}

// halfWriter collects what it is given and closes half once it has n bytes.
type halfWriter struct {
	bytes.Buffer
	n    int
	half chan struct{}
	once sync.Once
}

func (w *halfWriter) Write(p []byte) (int, error) {
	n, err := w.Buffer.Write(p)
	if w.Len() >= w.n {
		w.once.Do(func() { close(w.half) })
	}
	return n, err
}

// TestBlobThroughStreams: real libp2p hosts. The owner of a blob answers a blob-through
// request while its download is still running, and the asker receives the first half of the
// blob before the owner's download has the rest (the test holds it back); the whole blob then
// arrives, verified. When the download turns out wrong (its last byte), the asker gets an
// error and nothing it could use: the owner holds the last slice back until the whole copy
// matched, and the asker checks the digest. Fails with the owner answering only once the
// download ended (the asker then sees no byte before release).
func TestBlobThroughStreams(t *testing.T) {
	for _, rot := range []bool{false, true} {
		name := map[bool]string{false: "good", true: "wrong bytes"}[rot]
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, 8))
			blob := make([]byte, 6<<20)
			for i := range blob {
				blob[i] = byte(rng.Uint32())
			}
			d := digest.FromBytes(blob)
			gs := &growStore{blobStore: &blobStore{memStore: newMemStore(), blobs: map[digest.Digest][]byte{}},
				blob: blob, d: d, release: make(chan struct{}), rot: rot, opened: make(chan struct{})}
			cfg := testConfig()
			cfg.BlobThrough = true
			owner, err := New(cfg, gs)
			if err != nil {
				t.Fatal(err)
			}
			gs.node = owner
			go func() { _ = owner.Run(t.Context()) }()
			<-owner.Ready()
			t.Cleanup(func() { _ = owner.Close() })
			acfg := testConfig()
			acfg.StaticPeers = []string{owner.Addrs()[0].String()}
			asker := startNode(t, acfg)
			waitFor(t, 10*time.Second, "the asker sees the owner", func() bool { o, _ := asker.BlobOwner(d); return o == owner.ID() })

			// The owner holds back one slice until it has read the next: the asker has half the
			// blob less a slice while the download waits for the rest.
			w := &halfWriter{n: len(blob)/2 - blobSlice, half: make(chan struct{})}
			res := make(chan error, 1)
			go func() {
				_, _, err := asker.FetchBlobThrough(t.Context(), d, false, "registry.test:5000", "team/app", 1<<30, w)
				res <- err
			}()
			select {
			case <-w.half:
			case err := <-res:
				close(gs.release)
				t.Fatalf("the fetch through the owner ended (%v) before the owner's download did", err)
			case <-time.After(30 * time.Second):
				close(gs.release)
				t.Fatal("the asker received no half of the blob while the owner was still downloading it")
			}
			close(gs.release)
			err = <-res
			switch {
			case !rot && err != nil:
				t.Fatalf("fetch through the owner: %v", err)
			case !rot && !bytes.Equal(w.Bytes(), blob):
				t.Fatalf("the asker got %d bytes that differ from the blob", w.Len())
			case rot && err == nil:
				t.Fatal("the asker accepted a blob that does not match its digest")
			case rot && w.Len() >= len(blob):
				t.Fatalf("the asker was handed all %d bytes of a wrong blob", w.Len())
			}
		})
	}
}
