package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"
)

// Resolver makes [off, off+length) of blob present in its backing file (chunk by chunk: local
// store, peers, origin). Ranges not covered by any chunk are not file data and read as zeros.
type Resolver interface {
	Ensure(ctx context.Context, blob digest.Digest, off, length int64) error
}

// EarlyResolver is an optional capability of a Resolver (*demand.Resolver): EnsureRead fills p
// with the blob's bytes at off as soon as they are verified, which can be before their chunk is
// complete and stored (filled true), or makes the range present for the BlobReader (filled
// false).
type EarlyResolver interface {
	EnsureRead(ctx context.Context, blob digest.Digest, p []byte, off int64) (filled bool, err error)
}

// BlobReader reads present bytes of a blob; *chunkstore.Store is one. Bytes of the range that no
// chunk covers must read as zeros; reading at or past the blob's end returns io.EOF.
type BlobReader interface {
	ReadAt(blob digest.Digest, p []byte, off int64) (int, error)
}

// Name is the FUSE filesystem name: mounts show type "fuse.shoal", source "shoal".
const Name = "shoal"

// Config holds the server's optional settings.
type Config struct {
	// ReadTimeout bounds one FUSE read (Ensure and the read): a read that cannot be served in
	// time fails with EIO instead of hanging.
	ReadTimeout time.Duration
	// MaxRead is the largest read request the kernel sends (bytes, multiple of 4096).
	MaxRead int
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
	// Debug logs every FUSE request (very verbose).
	Debug bool
}

// DefaultConfig returns the settings used when nothing else is said.
func DefaultConfig() Config {
	return Config{ReadTimeout: 2 * time.Minute, MaxRead: 256 << 10}
}

// Validate checks the settings and says what to change.
func (c Config) Validate() error {
	var errs []error
	if c.ReadTimeout <= 0 {
		errs = append(errs, fmt.Errorf("ReadTimeout %v: must be positive (a reader must never wait forever)", c.ReadTimeout))
	}
	if c.MaxRead < 4096 || c.MaxRead > 1<<20 || c.MaxRead%4096 != 0 {
		errs = append(errs, fmt.Errorf("MaxRead %d: must be a multiple of 4096 from 4 KiB to 1 MiB", c.MaxRead))
	}
	return errors.Join(errs...)
}

// Server is one FUSE mount with a read-only file per blob, named by the blob's digest string.
type Server struct {
	dir  string
	res  Resolver
	rd   BlobReader
	cfg  Config
	log  *slog.Logger
	root *fs.Inode
	srv  *fuse.Server

	mu      sync.Mutex
	blobs   map[digest.Digest]*fs.Inode
	nextIno uint64
	closed  bool
}

// Mount mounts a Shoal FUSE server at dir (which must exist) and starts serving it. It needs
// root: the mount is made with mount(2) directly (no fusermount). FUSE passthrough is not
// negotiated, because EROFS refuses file-backed mounts on stacked filesystems.
func Mount(dir string, res Resolver, rd BlobReader, cfg Config) (*Server, error) {
	if res == nil || rd == nil {
		return nil, errors.New("fusefs: nil Resolver or BlobReader")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("fusefs config: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, res: res, rd: rd, cfg: cfg, log: cfg.Logger.With("subsystem", "fusefs"), blobs: map[digest.Digest]*fs.Inode{}, nextIno: 2}
	root := &rootNode{}
	timeout := time.Second
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName:               Name,
			Name:                 Name,
			DirectMount:          true,
			DirectMountStrict:    true,
			AllowOther:           true,
			MaxWrite:             cfg.MaxRead,
			MaxReadAhead:         cfg.MaxRead,
			DisabledCapabilities: fuse.CAP_PASSTHROUGH,
			Debug:                cfg.Debug,
		},
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
	}
	srv, err := fs.Mount(dir, root, opts)
	if err != nil {
		return nil, fmt.Errorf("fusefs: mount %s: %w", dir, err)
	}
	s.srv = srv
	s.root = root.EmbeddedInode()
	s.log.Debug("mounted", "dir", dir)
	return s, nil
}

// Dir is the mountpoint.
func (s *Server) Dir() string { return s.dir }

// Path is the file through which EROFS reads blob: pass it as the device path of the mount.
func (s *Server) Path(blob digest.Digest) string { return filepath.Join(s.dir, blob.String()) }

// AddBlob makes blob (size bytes) appear as a file. Adding a blob already there with the same size
// is a no-op.
func (s *Server) AddBlob(ctx context.Context, blob digest.Digest, size int64) error {
	if err := blob.Validate(); err != nil {
		return fmt.Errorf("fusefs: add blob %q: %w", blob, err)
	}
	if size < 0 {
		return fmt.Errorf("fusefs: add blob %s: negative size %d", blob, size)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("fusefs: add blob %s: server closed", blob)
	}
	if in, ok := s.blobs[blob]; ok {
		if got := in.Operations().(*blobNode).size; got != size {
			return fmt.Errorf("fusefs: add blob %s: already there with size %d, not %d", blob, got, size)
		}
		return nil
	}
	n := &blobNode{s: s, blob: blob, size: size}
	in := s.root.NewPersistentInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: s.nextIno})
	s.nextIno++
	if !s.root.AddChild(blob.String(), in, false) {
		return fmt.Errorf("fusefs: add blob %s: name taken", blob)
	}
	s.blobs[blob] = in
	// A negative dentry from an earlier lookup must not hide the new file.
	_ = s.root.NotifyEntry(blob.String())
	return nil
}

// RemoveBlob removes blob's file. Files already open (an EROFS mount using it) keep reading
// through the resolver. Removing a blob that is not there is a no-op.
func (s *Server) RemoveBlob(blob digest.Digest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.blobs[blob]
	if !ok {
		return nil
	}
	delete(s.blobs, blob)
	s.root.RmChild(blob.String())
	in.ForgetPersistent()
	if errno := s.root.NotifyDelete(blob.String(), in); errno != 0 && errno != syscall.ENOENT {
		s.log.Debug("invalidating removed blob's entry", "blob", blob, "err", errno)
	}
	return nil
}

// Blobs lists the blobs served.
func (s *Server) Blobs() []digest.Digest {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]digest.Digest, 0, len(s.blobs))
	for b := range s.blobs {
		out = append(out, b)
	}
	return out
}

// Close unmounts the server and waits for it to stop serving. Unmount the EROFS images that use
// its files first: if the mount is still busy it is detached lazily (it leaves the namespace at
// once) and goes on serving those images until they are gone, and Close returns an error saying
// so.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	if err := s.srv.Unmount(); err != nil {
		if e := syscall.Unmount(s.dir, syscall.MNT_DETACH); e != nil && !errors.Is(e, syscall.EINVAL) {
			return fmt.Errorf("fusefs: unmount %s: %w (detach: %w)", s.dir, err, e)
		}
		return fmt.Errorf("fusefs: %s was busy (an image still mounted on its files?): detached, serving until its users are gone: %w", s.dir, err)
	}
	s.srv.Wait()
	return nil
}

type rootNode struct{ fs.Inode }

var _ fs.NodeGetattrer = (*rootNode)(nil)

func (r *rootNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o555
	return 0
}

type blobNode struct {
	fs.Inode
	s    *Server
	blob digest.Digest
	size int64
}

var (
	_ fs.NodeGetattrer = (*blobNode)(nil)
	_ fs.NodeOpener    = (*blobNode)(nil)
	_ fs.NodeReader    = (*blobNode)(nil)
)

func (n *blobNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = uint64(n.size)
	out.Blocks = (uint64(n.size) + 511) / 512
	out.Blksize = 4096
	return 0
}

func (n *blobNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	// Blob content never changes: the kernel may keep its page cache across opens.
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *blobNode) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= n.size || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	want := min(int64(len(dest)), n.size-off)
	// Not the request's context: the kernel cancels it when the reader takes a signal (a Go
	// program's runtime sends itself SIGURG all the time), and a fetch that would have succeeded
	// must not turn into EIO. The read goes on, bounded by ReadTimeout; a reader that is killed
	// is abandoned by the kernel itself.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), n.s.cfg.ReadTimeout)
	defer cancel()
	if er, ok := n.s.res.(EarlyResolver); ok {
		filled, err := er.EnsureRead(ctx, n.blob, dest[:want], off)
		if err != nil {
			n.s.log.Warn("demand read failed; reader gets EIO", "blob", n.blob, "offset", off, "length", want, "err", err)
			return nil, syscall.EIO
		}
		if filled {
			return fuse.ReadResultData(dest[:want]), 0
		}
	} else if err := n.s.res.Ensure(ctx, n.blob, off, want); err != nil {
		n.s.log.Warn("demand read failed; reader gets EIO", "blob", n.blob, "offset", off, "length", want, "err", err)
		return nil, syscall.EIO
	}
	got, err := n.s.rd.ReadAt(n.blob, dest[:want], off)
	if err != nil && !(errors.Is(err, io.EOF) && int64(got) == want) {
		n.s.log.Error("reading present range failed; reader gets EIO", "blob", n.blob, "offset", off, "length", want, "err", err)
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:got]), 0
}
