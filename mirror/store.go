package mirror

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// store keeps verified blobs and manifests under dir/blobs/<sha256 hex>, each written to
// dir/tmp first while its digest is computed and renamed into place only once the whole
// content matched: a file under blobs/ is verified content, and nothing else is ever served.
// Over maxBytes, the least recently used files are removed (a reader that has one open keeps
// reading it: the inode lives until closed).
type store struct {
	dir      string
	maxBytes int64 // 0: no cap

	mu    sync.Mutex
	files map[digest.Digest]*storeEntry
	total int64
}

type storeEntry struct {
	size int64
	used time.Time
}

func openStore(dir string, maxBytes int64) (*store, error) {
	s := &store{dir: dir, maxBytes: maxBytes, files: map[digest.Digest]*storeEntry{}}
	// Partial writes of a previous run are never content.
	if err := os.RemoveAll(filepath.Join(dir, "tmp")); err != nil {
		return nil, fmt.Errorf("mirror store %s: %w", dir, err)
	}
	for _, d := range []string{"blobs", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("mirror store: %w", err)
		}
	}
	ents, err := os.ReadDir(filepath.Join(dir, "blobs"))
	if err != nil {
		return nil, fmt.Errorf("mirror store: %w", err)
	}
	for _, e := range ents {
		d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		info, err := e.Info()
		if d.Validate() != nil || err != nil || !info.Mode().IsRegular() {
			continue
		}
		s.files[d] = &storeEntry{size: info.Size(), used: info.ModTime()}
		s.total += info.Size()
	}
	s.mu.Lock()
	s.evictLocked("")
	s.mu.Unlock()
	return s, nil
}

func (s *store) path(d digest.Digest) string { return filepath.Join(s.dir, "blobs", d.Encoded()) }

// open returns the kept file of d, or ok false.
func (s *store) open(d digest.Digest) (f *os.File, size int64, ok bool, err error) {
	s.mu.Lock()
	e := s.files[d]
	if e != nil {
		e.used = time.Now()
	}
	s.mu.Unlock()
	if e == nil {
		return nil, 0, false, nil
	}
	f, err = os.Open(s.path(d))
	if errors.Is(err, fs.ErrNotExist) {
		s.forget(d)
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, fmt.Errorf("mirror store: blob %s: %w", d, err)
	}
	return f, e.size, true, nil
}

// has reports whether d is kept.
func (s *store) has(d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.files[d] != nil
}

func (s *store) forget(d digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.files[d]; e != nil {
		s.total -= e.size
		delete(s.files, d)
	}
}

// errTooLarge: content over the size allowed for it.
var errTooLarge = errors.New("larger than allowed")

// ingest runs fill with a writer into a temporary file, at most max bytes, and keeps the
// content as d only if fill succeeded and the bytes hash to d. It returns the number of bytes
// fill wrote. The temporary file is removed on every failure.
func (s *store) ingest(d digest.Digest, max int64, fill func(w io.Writer) error) (int64, error) {
	return s.ingestNamed(d, max, func(w io.Writer, _ string) error { return fill(w) })
}

// ingestNamed is ingest, telling fill the temporary file's path (readers of a growing blob
// open it).
func (s *store) ingestNamed(d digest.Digest, max int64, fill func(w io.Writer, tmp string) error) (int64, error) {
	tmp, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), d.Encoded()+".*")
	if err != nil {
		return 0, fmt.Errorf("mirror store: blob %s: %w", d, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	v := d.Verifier()
	w := &limitWriter{w: io.MultiWriter(tmp, v), left: max}
	ferr := fill(w, tmp.Name())
	cerr := tmp.Close()
	switch {
	case ferr != nil:
		return w.n, ferr
	case w.over:
		return w.n, fmt.Errorf("blob %s: more than %d bytes: %w", d, max, errTooLarge)
	case cerr != nil:
		return w.n, fmt.Errorf("mirror store: blob %s: %w", d, cerr)
	case !v.Verified():
		return w.n, fmt.Errorf("blob %s: %d bytes that do not hash to it: %w", d, w.n, ErrCorrupt)
	}
	if err := os.Rename(tmp.Name(), s.path(d)); err != nil {
		return w.n, fmt.Errorf("mirror store: blob %s: %w", d, err)
	}
	s.mu.Lock()
	if old := s.files[d]; old != nil {
		s.total -= old.size
	}
	s.files[d] = &storeEntry{size: w.n, used: time.Now()}
	s.total += w.n
	s.evictLocked(d)
	s.mu.Unlock()
	return w.n, nil
}

// evictLocked removes least recently used files until the total is within the cap, sparing keep
// (the file just written, which its requester is about to read).
func (s *store) evictLocked(keep digest.Digest) {
	if s.maxBytes <= 0 || s.total <= s.maxBytes {
		return
	}
	type cand struct {
		d    digest.Digest
		used time.Time
	}
	var cs []cand
	for d, e := range s.files {
		if d != keep {
			cs = append(cs, cand{d, e.used})
		}
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].used.Before(cs[j].used) })
	for _, c := range cs {
		if s.total <= s.maxBytes {
			break
		}
		if err := os.Remove(s.path(c.d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		s.total -= s.files[c.d].size
		delete(s.files, c.d)
	}
}

// usage returns the bytes and files kept.
func (s *store) usage() (bytes int64, files int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total, len(s.files)
}

// limitWriter passes at most left bytes on and remembers an overflow.
type limitWriter struct {
	w    io.Writer
	left int64
	n    int64
	over bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		l.over = true
		return 0, errTooLarge
	}
	n, err := l.w.Write(p)
	l.n += int64(n)
	l.left -= int64(n)
	return n, err
}
