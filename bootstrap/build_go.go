package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
	"github.com/shoal-p2p/shoal/internal/units"
)

// HostPlatform is the platform of this machine, as an image index names it.
func HostPlatform() ocispec.Platform {
	p := ocispec.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	if runtime.GOARCH == "arm64" {
		p.Variant = "v8"
	}
	return p
}

// buildGo writes the image of src with WriteEROFS: one pass over the tree, file data chunked
// (hashed and encoded on every core) into the blob as it is read, then the bootstrap. The blob's
// fsync runs beside the bootstrap's writing and whatever the caller does next: blobSynced waits
// for it and must be called, on success, before the image is moved into place.
func buildGo(ctx context.Context, src, bootPath, blobPath string, chunkSize int64, enc *zchunk.Encoder, res *BuildResult, progress io.Writer) (m *chunk.Manifest, blobSynced func() error, err error) {
	bw, err := NewStoredBlobWriter(blobPath, 1, chunkSize, enc)
	if err != nil {
		return nil, nil, err
	}
	ch := NewChunker(bw, chunkSize)
	b := &dirBuilder{ctx: ctx, ch: ch, res: res, progress: progress, links: map[[2]uint64]*Node{}, last: time.Now()}
	root, err := b.node(src, "/")
	if err == nil && !root.IsDir() {
		err = fmt.Errorf("source %s is not a directory", src)
	}
	if werr := ch.Wait(); err == nil {
		err = werr
	}
	if err != nil {
		bw.Abort()
		return nil, nil, err
	}
	d, m, err := bw.Seal()
	if err != nil {
		bw.Abort()
		return nil, nil, err
	}
	synced := make(chan error, 1)
	go func() { synced <- bw.SyncClose() }()
	var once sync.Once
	var syncErr error
	blobSynced = func() error {
		once.Do(func() { syncErr = <-synced })
		return syncErr
	}
	res.DedupSaved = bw.DedupSaved()
	img, err := WriteEROFS(&Tree{Root: root}, WriteOptions{ChunkSize: chunkSize, Devices: []DeviceSpec{{Tag: d.Encoded(), Size: m.BlobSize}}})
	if err == nil {
		err = writeFileSync(bootPath, img)
	}
	if err != nil {
		_ = blobSynced() // no goroutine outlives the build
		return nil, nil, err
	}
	return m, blobSynced, nil
}

// fdReader reads a file descriptor with read(2).
type fdReader int

func (r fdReader) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(int(r), p)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

type dirBuilder struct {
	ctx      context.Context
	ch       *Chunker
	res      *BuildResult
	progress io.Writer
	links    map[[2]uint64]*Node // (dev, ino) of files with several links
	last     time.Time
}

// node reads the entry at p (rel is its path in the image, for messages) and, for a directory,
// everything under it.
func (b *dirBuilder) node(p, rel string) (*Node, error) {
	if err := b.ctx.Err(); err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return nil, fmt.Errorf("source: lstat %s: %w", p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 {
		if n := b.links[[2]uint64{st.Dev, st.Ino}]; n != nil {
			return n, nil
		}
	}
	n := &Node{Mode: st.Mode, UID: st.Uid, GID: st.Gid, Mtime: st.Mtim.Sec, MtimeNsec: uint32(st.Mtim.Nsec)}
	if err := b.xattrs(p, rel, n); err != nil {
		return nil, err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		b.res.Dirs++
		n.Children = map[string]*Node{}
		ents, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("source: %w", err)
		}
		for _, e := range ents {
			b.res.longestName = max(b.res.longestName, len(e.Name()))
			if err := CheckName(e.Name()); err != nil {
				return nil, fmt.Errorf("source: %s: %w", filepath.Join(p, e.Name()), err)
			}
			c, err := b.node(filepath.Join(p, e.Name()), strings.TrimSuffix(rel, "/")+"/"+e.Name())
			if err != nil {
				return nil, err
			}
			n.Children[e.Name()] = c
		}
	case unix.S_IFREG:
		// A bare descriptor, not an os.File: os.Open's poller registration (fcntl, a failing
		// epoll_ctl) and close cost more syscalls than reading a small file does.
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("source: open %s: %w", p, err)
		}
		n.Size = st.Size
		n.Chunks, err = b.ch.AddFile(fdReader(fd), st.Size, "source "+p)
		_ = unix.Close(fd)
		if err != nil {
			return nil, err
		}
		b.res.Files++
		b.res.FileBytes += st.Size
		if time.Since(b.last) >= time.Second {
			b.last = time.Now()
			fmt.Fprintf(b.progress, "building: %d files, %s\n", b.res.Files, units.Bytes(b.res.FileBytes))
		}
	case unix.S_IFLNK:
		t, err := os.Readlink(p)
		if err != nil {
			return nil, fmt.Errorf("source: %w", err)
		}
		n.Target = t
		b.res.Others++
	case unix.S_IFCHR, unix.S_IFBLK:
		n.RdevMajor, n.RdevMinor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
		b.res.Others++
	default:
		b.res.Others++
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 {
		b.links[[2]uint64{st.Dev, st.Ino}] = n
	}
	return n, nil
}

// xattrs reads the entry's extended attributes. Names EROFS cannot store (outside user.,
// trusted., security. and the POSIX ACLs) are left out, with a note.
func (b *dirBuilder) xattrs(p, rel string, n *Node) error {
	names, err := listXattrs(p)
	if err != nil {
		return fmt.Errorf("source: %s: listing xattrs: %w", p, err)
	}
	for _, name := range names {
		if _, _, ok := xattrIndex(name); !ok {
			fmt.Fprintf(b.progress, "note: %s: xattr %s left out (EROFS cannot store it)\n", rel, name)
			continue
		}
		v, err := getXattr(p, name)
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return fmt.Errorf("source: %s: xattr %s: %w", p, name, err)
		}
		if n.Xattrs == nil {
			n.Xattrs = map[string][]byte{}
		}
		n.Xattrs[name] = v
	}
	return nil
}

func listXattrs(p string) ([]string, error) {
	buf := make([]byte, 1024)
	for {
		sz, err := unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		var out []string
		for _, s := range strings.Split(string(buf[:sz]), "\x00") {
			if s != "" {
				out = append(out, s)
			}
		}
		return out, nil
	}
}

func getXattr(p, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		sz, err := unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			if len(buf) >= 1<<16 {
				return nil, err
			}
			buf = make([]byte, 1<<16)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:sz], nil
	}
}
