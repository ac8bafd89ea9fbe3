package mirror

import (
	"context"
	"io"
	"os"
	"sync"

	"github.com/opencontainers/go-digest"
)

// Streaming through the owner: while this host downloads a blob from the upstream (for its own
// clients or for peers that asked it as the blob's rendezvous owner), peers may read the bytes
// as they land in the temporary file instead of waiting for the whole blob (OpenGrowing). The
// reader is not a shortcut around verification: the p2p exchange hashes what it sends and holds
// the last slice back until the whole copy matched the digest, and the asker hashes all it
// received before its own store keeps it, so no unverified byte reaches containerd on either
// host. A download that fails or does not match ends every reader with an error, and the asker
// goes to its upstream.

// growing is one upstream download in progress.
type growing struct {
	tmp      string // the temporary file ingest writes
	size     int64  // from the upstream's Content-Length
	upstream string // host/repository it is fetched from

	mu      sync.Mutex
	written int64
	done    bool
	err     error
	changed chan struct{} // closed and replaced on every write and at the end
}

func (g *growing) wrote(n int) {
	g.mu.Lock()
	g.written += int64(n)
	close(g.changed)
	g.changed = make(chan struct{})
	g.mu.Unlock()
}

func (g *growing) end(err error) {
	g.mu.Lock()
	g.done, g.err = true, err
	close(g.changed)
	g.changed = make(chan struct{})
	g.mu.Unlock()
}

// growingWriter passes writes to the temporary file's writer and tells readers.
type growingWriter struct {
	w io.Writer
	g *growing
}

func (gw growingWriter) Write(p []byte) (int, error) {
	n, err := gw.w.Write(p)
	if n > 0 {
		gw.g.wrote(n)
	}
	return n, err
}

// growingReader reads a growing blob from its own descriptor of the temporary file (which
// outlives the file's rename into the store, or its removal), waiting for bytes not written yet.
type growingReader struct {
	ctx context.Context
	g   *growing
	f   *os.File
	off int64
}

func (r *growingReader) Read(p []byte) (int, error) {
	for {
		r.g.mu.Lock()
		avail, done, err, ch := r.g.written-r.off, r.g.done, r.g.err, r.g.changed
		r.g.mu.Unlock()
		if avail > 0 {
			n, rerr := r.f.ReadAt(p[:min(int64(len(p)), avail)], r.off)
			r.off += int64(n)
			if n > 0 {
				return n, nil
			}
			if rerr != nil {
				return 0, rerr
			}
			continue
		}
		if done {
			if err != nil {
				return 0, err
			}
			if r.off < r.g.size {
				return 0, io.ErrUnexpectedEOF
			}
			return 0, io.EOF
		}
		select {
		case <-ch:
		case <-r.ctx.Done(): // the reader's own end (the p2p node closing)
			return 0, context.Cause(r.ctx)
		}
	}
}

func (r *growingReader) Close() error { return r.f.Close() }

// OpenGrowing returns a reader of blob d while this host downloads it from the upstream, its
// size, and the host/repository it comes from; ok false when no download of d with a known
// size is running. The reader blocks for bytes still to come and fails if the download does.
func (m *Mirror) OpenGrowing(ctx context.Context, d digest.Digest) (rc io.ReadCloser, size int64, upstream string, ok bool) {
	m.mu.Lock()
	g := m.growing[d]
	m.mu.Unlock()
	if g == nil {
		return nil, 0, "", false
	}
	f, err := os.Open(g.tmp)
	if err != nil {
		return nil, 0, "", false // just renamed into the store (or removed): OpenBlob has it
	}
	return &growingReader{ctx: ctx, g: g, f: f}, g.size, g.upstream, true
}

// sizer is the optional Size of origin's blob reader: the upstream's Content-Length.
type sizer interface{ Size() int64 }
