package fusetree

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/internal/scope"
	"github.com/shoal-p2p/shoal/mount"
)

// Resolver makes [off, off+length) of blob present in the local store (chunk by chunk: local
// store, peers, origin). *demand.Resolver is one.
type Resolver interface {
	Ensure(ctx context.Context, blob digest.Digest, off, length int64) error
}

// EarlyResolver is an optional capability of a Resolver (*demand.Resolver): EnsureRead fills p
// with the blob's bytes at off as soon as they are verified, which can be before their chunk is
// stored (filled true), or makes the range present for the BlobReader (filled false).
type EarlyResolver interface {
	EnsureRead(ctx context.Context, blob digest.Digest, p []byte, off int64) (filled bool, err error)
}

// BlobReader reads present bytes of a blob; *chunkstore.Store is one. Bytes that no chunk covers
// read as zeros; reading at or past the blob's end returns io.EOF.
type BlobReader interface {
	ReadAt(blob digest.Digest, p []byte, off int64) (int, error)
}

// backingPather is a BlobReader whose blobs live in local files (*chunkstore.Store is one): the
// server then asks the kernel to read ahead in those files while a sequential stream is served,
// so the disk works on the next request's bytes while this one travels through FUSE. Reads still
// go through the BlobReader (which checks presence under its lock); the hint reads nothing.
type backingPather interface {
	BackingPath(blob digest.Digest) string
}

// Name is the FUSE subtype: mounts show filesystem type "fuse.shoaltree" and the bootstrap's path
// as their source (mount.List finds them by it).
const Name = mount.TreeName

// Config holds the server's optional settings.
type Config struct {
	// ReadTimeout bounds one read's Ensure and read: a read that cannot be served in time fails
	// with EIO instead of hanging.
	ReadTimeout time.Duration
	// MaxRead is the largest read request the kernel sends (bytes, multiple of 4096, at most
	// 1 MiB). The default, 1016 KiB, is the largest answer go-fuse can splice (spliceMax);
	// larger ones are copied.
	MaxRead int
	// ReadAhead is the mount's readahead window (bytes, at least MaxRead; 0 leaves the kernel's
	// 128 KiB). A window of several MaxRead requests is sent at once and served in parallel; a
	// multiple of MaxRead keeps the kernel from sending a small request at each window's end.
	// Each cold request is one O_DIRECT read of the store's disk, so the window is the disk's
	// queue depth: the default, 8 requests (8128 KiB), is about what the kernel's own 8 MiB
	// readahead keeps in flight for a file on local ext4 of a virtio disk.
	ReadAhead int
	// CacheTimeout is how long the kernel may keep entries, attributes and negative lookups:
	// the image never changes while mounted.
	CacheTimeout time.Duration
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
	// Debug logs every FUSE request (very verbose).
	Debug bool
}

// spliceMax is the largest read answered by splice: go-fuse splices through one pipe holding the
// reply header, the data and a spare page, and pipes are at most fs.pipe-max-size (1 MiB by
// default), so a 1 MiB answer would fall back to a copy.
const spliceMax = 1<<20 - 8<<10

// DefaultConfig returns the settings used when nothing else is said.
func DefaultConfig() Config {
	return Config{ReadTimeout: 2 * time.Minute, MaxRead: spliceMax, ReadAhead: 8 * spliceMax, CacheTimeout: 24 * time.Hour}
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
	if c.ReadAhead != 0 && (c.ReadAhead < c.MaxRead || c.ReadAhead > 64<<20) {
		errs = append(errs, fmt.Errorf("ReadAhead %d: must be 0 (the kernel's default) or from MaxRead (%d) to 64 MiB", c.ReadAhead, c.MaxRead))
	}
	if c.CacheTimeout < 0 {
		errs = append(errs, fmt.Errorf("CacheTimeout %v: must not be negative", c.CacheTimeout))
	}
	return errors.Join(errs...)
}

// Image is what Mount serves: the bootstrap (a local, checked file) and the image's blobs in
// device order (blob k-1 is EROFS device k).
type Image struct {
	Bootstrap string
	Blobs     []digest.Digest
}

// Server is one mounted image: a FUSE filesystem answering from the bootstrap, with file data
// read through the Resolver.
type Server struct {
	fuse.RawFileSystem // ENOSYS for what a read-only image does not do (the mount is MS_RDONLY)

	target string
	cfg    Config
	log    *slog.Logger
	res    Resolver
	rd     BlobReader
	boot   []byte // the whole bootstrap, in memory: metadata is read on every lookup
	fs     *bootstrap.FS
	blobs  []digest.Digest
	root   uint64 // the root directory's nid
	srv    *fuse.Server
	scope  *scope.Scope
	ttl    time.Duration

	// backing[k] is blob k's backing file, opened on the first hint (nil: no hint possible).
	backing     []backingFile
	backingPath func(digest.Digest) string

	nextFh  atomic.Uint64
	dirsMu  sync.Mutex
	dirs    map[uint64][]bootstrap.Dirent // open directory handles
	formErr atomic.Int64                  // malformed-structure errors answered (EIO)
	spliced atomic.Int64                  // bytes answered by splicing from a backing file
	cached  atomic.Int64                  // of spliced: runs the backing file's page cache held whole
	direct  atomic.Int64                  // bytes answered by O_DIRECT reads of a backing file
}

// maxBootstrap bounds the bootstrap read into memory: metadata of an image, never file data.
const maxBootstrap = 2 << 30

// Mount serves im at target (an existing directory) and returns once the kernel has the mount.
// It needs root: the mount is made with mount(2) directly. The bootstrap must have been checked
// (bootstrap.FS.Check) by the caller, as the daemon does for every image it loads; a malformed
// one still never panics the server, its bad structures read as EIO.
func Mount(target string, im Image, res Resolver, rd BlobReader, cfg Config) (*Server, error) {
	if res == nil || rd == nil {
		return nil, errors.New("fusetree: nil Resolver or BlobReader")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("fusetree config: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	target, err := filepath.Abs(target)
	if err != nil {
		return nil, err
	}
	if strings.ContainsAny(im.Bootstrap, ",\x00\n ") {
		return nil, fmt.Errorf("fusetree: bootstrap path %q: a comma, space, NUL or newline cannot be a mount source", im.Bootstrap)
	}
	boot, err := readBootstrap(im.Bootstrap)
	if err != nil {
		return nil, err
	}
	s, err := newServer(boot, im.Blobs, res, rd, cfg)
	if err != nil {
		return nil, fmt.Errorf("fusetree: bootstrap %s: %w", im.Bootstrap, err)
	}
	s.target = target
	opts := &fuse.MountOptions{
		FsName:            im.Bootstrap,
		Name:              Name,
		DirectMount:       true,
		DirectMountStrict: true,
		AllowOther:        true,
		// The kernel checks modes and owners itself, as on any local filesystem.
		Options:              []string{"default_permissions"},
		DirectMountFlags:     syscall.MS_RDONLY | syscall.MS_NOSUID | syscall.MS_NODEV,
		MaxWrite:             cfg.MaxRead,
		MaxReadAhead:         cfg.MaxRead,
		MaxBackground:        64,
		EnableSymlinkCaching: true,
		// The image never changes: page cache is kept across opens (FOPEN_KEEP_CACHE) and never
		// invalidated by an attribute refresh.
		ExplicitDataCacheControl: true,
		Debug:                    cfg.Debug,
		// Runs of one blob are answered from its backing file by splice (spliceRun). A 1 MiB
		// answer needs a pipe larger than fs.pipe-max-size; root may grow one past it.
		DisableSplice: false,
	}
	srv, err := fuse.NewServer(s, target, opts)
	if err != nil {
		return nil, fmt.Errorf("fusetree: mount %s: %w", target, err)
	}
	s.srv = srv
	s.scope.Go(func(context.Context) {
		srv.Serve() // returns when the mount is gone and every request is answered
		s.closeBacking()
	})
	if err := srv.WaitMount(); err != nil {
		_ = srv.Unmount()
		s.scope.Close()
		return nil, fmt.Errorf("fusetree: mount %s: %w", target, err)
	}
	s.raiseReadahead()
	s.log.Debug("mounted", "target", target, "bootstrap", im.Bootstrap)
	return s, nil
}

func readBootstrap(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("fusetree: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("fusetree: %w", err)
	}
	if st.Size() > maxBootstrap {
		return nil, fmt.Errorf("fusetree: bootstrap %s is %d bytes, more than %d", p, st.Size(), int64(maxBootstrap))
	}
	b := make([]byte, st.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("fusetree: reading bootstrap %s: %w", p, err)
	}
	return b, nil
}

// newServer parses the bootstrap and builds the answering side, without mounting anything: the
// fuzz test drives it directly.
func newServer(boot []byte, blobs []digest.Digest, res Resolver, rd BlobReader, cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	f, err := bootstrap.Open(byteReader(boot), int64(len(boot)))
	if err != nil {
		return nil, err
	}
	if n := len(f.Devices()); n != len(blobs) {
		return nil, fmt.Errorf("%w: the image has %d extra devices, %d blobs given", bootstrap.ErrFormat, n, len(blobs))
	}
	root, err := f.Inode(f.RootNid())
	if err != nil {
		return nil, err
	}
	if !root.Mode.IsDir() {
		return nil, fmt.Errorf("%w: root inode %d is not a directory", bootstrap.ErrFormat, root.Nid)
	}
	s := &Server{
		RawFileSystem: fuse.NewDefaultRawFileSystem(),
		cfg:           cfg, log: cfg.Logger.With("subsystem", "fusetree"), res: res, rd: rd,
		boot: boot, fs: f, blobs: blobs, root: f.RootNid(), scope: scope.New(), ttl: cfg.CacheTimeout,
		dirs:    map[uint64][]bootstrap.Dirent{},
		backing: make([]backingFile, len(blobs)),
	}
	if bp, ok := rd.(backingPather); ok {
		s.backingPath = bp.BackingPath
	}
	return s, nil
}

// backingFile is one blob's backing file, opened once, read-only, twice: buffered (read-ahead
// hints, spliced answers, page-cache hits) and with O_DIRECT (cold reads, readDirect).
type backingFile struct {
	once   sync.Once
	f      *os.File // nil: not usable
	size   int64
	direct int // O_DIRECT descriptor, -1 where the filesystem refuses O_DIRECT
}

// backingFile returns blob k's backing file, opening it on first use; nil if there is none.
func (s *Server) backingFile(k int) *backingFile {
	if s.backingPath == nil || k < 0 || k >= len(s.backing) {
		return nil
	}
	b := &s.backing[k]
	b.once.Do(func() {
		p := s.backingPath(s.blobs[k])
		if p == "" {
			return
		}
		f, err := os.Open(p)
		if err != nil {
			s.log.Debug("blob's backing file not usable; reading through the store", "blob", s.blobs[k], "path", p, "err", err)
			return
		}
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			_ = f.Close()
			return
		}
		b.f, b.size, b.direct = f, st.Size(), -1
		if fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0); err == nil {
			b.direct = fd
		} else {
			s.log.Debug("no O_DIRECT on the blob's backing file; cold reads are spliced", "blob", s.blobs[k], "path", p, "err", err)
		}
	})
	if b.f == nil {
		return nil
	}
	return b
}

// readAhead asks the kernel to start reading [off, off+length) of blob k's backing file into
// the page cache (POSIX_FADV_WILLNEED submits the reads and returns without waiting for them).
// Ranges that hold no chunk are holes and cost nothing.
func (s *Server) readAhead(k int, off, length int64) {
	if b := s.backingFile(k); b != nil {
		_ = unix.Fadvise(int(b.f.Fd()), off, length, unix.FADV_WILLNEED) // a hint: failure costs speed only
	}
}

// closeBacking closes the hint files once no request can use them.
func (s *Server) closeBacking() {
	for i := range s.backing {
		b := &s.backing[i]
		b.once.Do(func() {}) // no open after this
		if b.f != nil {
			_ = b.f.Close()
		}
		if b.f != nil && b.direct >= 0 {
			_ = unix.Close(b.direct)
		}
	}
}

// raiseReadahead sets the mount's readahead window to ReadAhead: FUSE starts every mount at the
// kernel's 128 KiB default, one request in flight at a time.
func (s *Server) raiseReadahead() {
	if s.cfg.ReadAhead == 0 {
		return
	}
	var st unix.Stat_t
	if err := unix.Stat(s.target, &st); err != nil {
		return
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if err := os.WriteFile(p, []byte(fmt.Sprint(s.cfg.ReadAhead>>10)), 0); err != nil {
		s.log.Debug("could not raise readahead", "path", p, "err", err)
	}
}

// SplicedBytes is how many bytes of file data were answered by splice from a blob's backing
// file; the rest went through the BlobReader (bootstrap-inline data, requests spanning holes or
// blobs, and every read when the BlobReader has no backing files).
func (s *Server) SplicedBytes() int64 { return s.spliced.Load() }

// DirectBytes is how many bytes of file data were read from a blob's backing file with
// O_DIRECT (the cold path, readDirect).
func (s *Server) DirectBytes() int64 { return s.direct.Load() }

// CachedBytes is how many of SplicedBytes were spliced because the backing file's page cache
// held the whole run (chunks fetched moments before) where O_DIRECT was possible.
func (s *Server) CachedBytes() int64 { return s.cached.Load() }

// Target is the mountpoint.
func (s *Server) Target() string { return s.target }

// Close unmounts the image and waits for the server to stop. If the mount is busy (a process
// has a file open or its cwd inside) it is detached lazily, as EROFS mounts are: it leaves the
// namespace at once, and the server goes on answering those users until they are gone, so Close
// returns without waiting for it.
func (s *Server) Close() error {
	err := s.srv.Unmount()
	if err != nil {
		if e := unix.Unmount(s.target, unix.MNT_DETACH); e != nil && !errors.Is(e, unix.EINVAL) {
			return fmt.Errorf("fusetree: unmount %s: %w (detach: %w)", s.target, err, e)
		}
		s.log.Warn("image mount busy: detached; served until its last user is gone", "target", s.target, "err", err)
		return nil
	}
	s.scope.Cancel() // fetches still pending end
	s.scope.Wait()
	return nil
}

// Wait blocks until the mount is gone (unmounted by Close or by anyone else) and the server has
// stopped.
func (s *Server) Wait() { s.srv.Wait() }

// byteReader is an io.ReaderAt over the in-memory bootstrap.
type byteReader []byte

func (b byteReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
