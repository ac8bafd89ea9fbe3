package fusetree

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hanwen/go-fuse/v2/splice"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/bootstrap"
)

// The FUSE side is stateless but for open directories: a node ID is the EROFS nid plus 2 (the
// root is FUSE's node 1), so Lookup hands out IDs that need no table and Forget has nothing to
// drop. st_ino is the nid plus 1 (nid 0 can be an inode, st_ino 0 cannot), the same for every
// hard link of a file and across mounts.

const rootNodeID = fuse.FUSE_ROOT_ID

func (s *Server) nodeID(nid uint64) uint64 {
	if nid == s.root {
		return rootNodeID
	}
	return nid + 2
}

func (s *Server) nidOf(node uint64) uint64 {
	if node == rootNodeID {
		return s.root
	}
	return node - 2
}

var _ fuse.RawFileSystem = (*Server)(nil)

// String names the filesystem in go-fuse's logs.
func (s *Server) String() string { return Name }

// inode reads the inode behind a node ID; a malformed one is EIO.
func (s *Server) inode(node uint64) (*bootstrap.Inode, fuse.Status) {
	if node == 0 || (node < 2 && node != rootNodeID) {
		return nil, fuse.EINVAL
	}
	in, err := s.fs.Inode(s.nidOf(node))
	if err != nil {
		return nil, s.formatErr("inode", node, err)
	}
	return in, fuse.OK
}

// formatErr logs a malformed structure and answers EIO, as EROFS answers a corrupt image
// (EFSCORRUPTED is EUCLEAN, which FUSE passes through; EIO is what tools know).
func (s *Server) formatErr(op string, node uint64, err error) fuse.Status {
	s.formErr.Add(1)
	s.log.Warn("malformed image structure; answering EIO", "op", op, "node", node, "err", err)
	return fuse.EIO
}

func (s *Server) fillAttr(in *bootstrap.Inode, a *fuse.Attr) {
	a.Ino = in.Nid + 1
	a.Size = uint64(in.Size)
	a.Blocks = (uint64(in.Size) + 511) / 512
	a.Mtime, a.Mtimensec = uint64(in.Mtime), in.MtimeNsec
	a.Atime, a.Atimensec = a.Mtime, a.Mtimensec // EROFS keeps one timestamp
	a.Ctime, a.Ctimensec = a.Mtime, a.Mtimensec
	a.Mode = uint32(in.RawMode)
	a.Nlink = in.Nlink
	a.Uid, a.Gid = in.UID, in.GID
	a.Rdev = in.Rdev
	a.Blksize = uint32(s.fs.BlockSize())
}

func (s *Server) fillEntry(in *bootstrap.Inode, out *fuse.EntryOut) {
	out.NodeId = s.nodeID(in.Nid)
	out.Generation = 1
	out.SetEntryTimeout(s.ttl)
	out.SetAttrTimeout(s.ttl)
	s.fillAttr(in, &out.Attr)
}

// Lookup finds name in the directory by binary search over its blocks.
func (s *Server) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	dir, st := s.inode(h.NodeId)
	if !st.Ok() {
		return st
	}
	if !dir.Mode.IsDir() {
		return fuse.Status(syscall.ENOTDIR)
	}
	d, ok, err := s.fs.LookupName(dir, name)
	if err != nil {
		return s.formatErr("lookup", h.NodeId, err)
	}
	if !ok {
		// A negative entry: the name will never appear.
		out.NodeId = 0
		out.SetEntryTimeout(s.ttl)
		return fuse.ENOENT
	}
	in, err := s.fs.Inode(d.Nid)
	if err != nil {
		return s.formatErr("lookup", h.NodeId, err)
	}
	s.fillEntry(in, out)
	return fuse.OK
}

// Forget has nothing to drop: node IDs are nids.
func (s *Server) Forget(nodeid, nlookup uint64) {}

// GetAttr answers stat.
func (s *Server) GetAttr(cancel <-chan struct{}, input *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	in, st := s.inode(input.NodeId)
	if !st.Ok() {
		return st
	}
	s.fillAttr(in, &out.Attr)
	out.SetTimeout(s.ttl)
	return fuse.OK
}

// Readlink returns a symlink's target.
func (s *Server) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	in, st := s.inode(h.NodeId)
	if !st.Ok() {
		return nil, st
	}
	if in.Mode.Type() != fs.ModeSymlink {
		return nil, fuse.EINVAL
	}
	target, err := s.fs.ReadLink(in)
	if err != nil {
		return nil, s.formatErr("readlink", h.NodeId, err)
	}
	return []byte(target), fuse.OK
}

// GetXAttr returns one xattr's value, or its size when dest is too small (go-fuse turns that
// into the answer to a size query).
func (s *Server) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	in, st := s.inode(h.NodeId)
	if !st.Ok() {
		return 0, st
	}
	xs, err := s.fs.Xattrs(in)
	if err != nil {
		return 0, s.formatErr("getxattr", h.NodeId, err)
	}
	for _, x := range xs {
		if x.Name != attr {
			continue
		}
		if len(dest) < len(x.Value) {
			return uint32(len(x.Value)), fuse.ERANGE
		}
		return uint32(copy(dest, x.Value)), fuse.OK
	}
	return 0, fuse.ENOATTR
}

// ListXAttr lists xattr names, NUL-terminated.
func (s *Server) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	in, st := s.inode(h.NodeId)
	if !st.Ok() {
		return 0, st
	}
	xs, err := s.fs.Xattrs(in)
	if err != nil {
		return 0, s.formatErr("listxattr", h.NodeId, err)
	}
	var list []byte
	for _, x := range xs {
		list = append(append(list, x.Name...), 0)
	}
	if len(dest) < len(list) {
		return uint32(len(list)), fuse.ERANGE
	}
	return uint32(copy(dest, list)), fuse.OK
}

// Open allows reading only and keeps the page cache across opens: the image never changes.
func (s *Server) Open(cancel <-chan struct{}, input *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if input.Flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return fuse.EROFS
	}
	in, st := s.inode(input.NodeId)
	if !st.Ok() {
		return st
	}
	if !in.Mode.IsRegular() {
		return fuse.EINVAL
	}
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

// Read serves file bytes: inline and plain data from the bootstrap, blob data through the
// Resolver and the store, holes as zeros. Runs of one blob are fetched and read at once; a
// request that is one run of one blob (the common case: a large file's data is contiguous in
// its blob) is answered by splicing from the blob's backing file (readRun).
func (s *Server) Read(cancel <-chan struct{}, input *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	in, st := s.inode(input.NodeId)
	if !st.Ok() {
		return nil, st
	}
	if !in.Mode.IsRegular() {
		return nil, fuse.EINVAL
	}
	off := int64(input.Offset)
	if off >= in.Size || len(buf) == 0 {
		return fuse.ReadResultData(nil), fuse.OK
	}
	n := min(int64(len(buf)), in.Size-off)
	runs, err := s.runs(in, off, n)
	if err != nil {
		return nil, s.formatErr("read", input.NodeId, err)
	}
	if len(runs) == 1 && runs[0].dev > 0 && runs[0].len == n {
		if er, ok := s.res.(EarlyResolver); ok && runs[0].dev <= len(s.blobs) {
			// A read in one missing chunk is answered as soon as its bytes are verified
			// (from a peer: the covering sub-blocks), before the chunk is stored.
			filled, st := s.ensureRead(er, s.blobs[runs[0].dev-1], buf[:n], runs[0].devOff)
			if !st.Ok() {
				return nil, st
			}
			if filled {
				return fuse.ReadResultData(buf[:n]), fuse.OK
			}
		}
		if rr, st, ok := s.spliceRun(in, runs[0]); ok {
			return rr, st
		}
	}
	dst := buf[:n]
	at := off // file offset dst[0] stands for
	for _, r := range runs {
		clear(dst[at-off : r.fileOff-off]) // a hole before this run
		if st := s.readDevice(in, r.dev, dst[r.fileOff-off:r.fileOff-off+r.len], r.devOff); !st.Ok() {
			return nil, st
		}
		at = r.fileOff + r.len
	}
	clear(dst[at-off:]) // a hole at the end
	return fuse.ReadResultData(dst), fuse.OK
}

// run is consecutive bytes of a file that are consecutive bytes of one device.
type run struct {
	dev         int
	fileOff     int64
	devOff, len int64
}

// runs maps [off, off+n) of the file to runs of device bytes, in file order; what no run
// covers is a hole.
func (s *Server) runs(in *bootstrap.Inode, off, n int64) ([]run, error) {
	var runs []run
	err := s.fs.ExtentsAt(in, off, n, func(e bootstrap.Extent) error {
		// The part of the extent inside [off, off+n).
		lo, hi := max(e.FileOffset, off), min(e.FileOffset+e.Length, off+n)
		if lo >= hi || e.Hole {
			return nil
		}
		if len(runs) > 0 && lo < runs[len(runs)-1].fileOff+runs[len(runs)-1].len {
			return errors.New("extents overlap or go backwards")
		}
		devOff := e.DeviceOffset + (lo - e.FileOffset)
		if k := len(runs) - 1; k >= 0 && runs[k].dev == e.Device && runs[k].fileOff+runs[k].len == lo && runs[k].devOff+runs[k].len == devOff {
			runs[k].len += hi - lo
			return nil
		}
		runs = append(runs, run{dev: e.Device, fileOff: lo, devOff: devOff, len: hi - lo})
		return nil
	})
	return runs, err
}

// spliceRun answers a request that is one run r of a blob from the blob's backing file. Bytes
// the backing file's page cache holds are spliced from it into /dev/fuse, one copy fewer than
// reading them into a buffer; bytes it does not hold are read with O_DIRECT (direct.go), so they
// are not cached twice; without O_DIRECT they are spliced after a read-ahead hint. ok is false when the backing file cannot be used (no BackingPath, not
// openable, or r runs past its end); the caller then reads through the BlobReader.
//
// This bypasses the BlobReader's presence check: Ensure has just made every chunk of r present,
// and a mounted image's blobs are pinned, so its present chunks are never evicted (punched)
// while the mount serves them.
func (s *Server) spliceRun(in *bootstrap.Inode, r run) (rr fuse.ReadResult, st fuse.Status, ok bool) {
	if r.dev > len(s.blobs) {
		return nil, s.formatErr("read", in.Nid+2, errors.New("extent on a device the image does not have")), true
	}
	b := s.backingFile(r.dev - 1)
	if b == nil || r.devOff < 0 || r.devOff+r.len > b.size || !spliceFits(r.len) {
		return nil, fuse.OK, false
	}
	if st := s.ensure(s.blobs[r.dev-1], r.devOff, r.len); !st.Ok() {
		return nil, st, true
	}
	if b.direct >= 0 {
		if pageCached(b, r) { // fetched moments before: no disk, no hint
			s.cached.Add(r.len)
			s.spliced.Add(r.len)
			return fuse.ReadResultFd(b.f.Fd(), r.devOff, int(r.len)), fuse.OK, true
		}
		if r.len%4096 == 0 && r.devOff%4096 == 0 && r.len <= directBufSize {
			s.direct.Add(r.len)
			return &splicedDirect{s: s, b: b, r: r}, fuse.OK, true
		}
		if rr, ok := s.readDirect(b, r); ok { // a partial last page: through a buffer
			return rr, fuse.OK, true
		}
	}
	s.spliced.Add(r.len)
	s.hintNext(r.dev, r.devOff, r.len)
	return fuse.ReadResultFd(b.f.Fd(), r.devOff, int(r.len)), fuse.OK, true
}

// spliceFits reports whether go-fuse can splice an answer of n bytes: it needs one pipe for the
// reply header, the data and a spare page, at most fs.pipe-max-size (read at start). Where it
// cannot, go-fuse would log a failure and copy on every request; the caller copies quietly.
func spliceFits(n int64) bool {
	return splice.Resizable() && n+int64(os.Getpagesize())+64 <= int64(splice.MaxPipeSize())
}

// ensure makes [off, off+length) of blob present.
func (s *Server) ensure(blob digest.Digest, off, length int64) fuse.Status {
	// Not the request's context: the kernel interrupts a request when the reader takes a
	// signal (a Go program's runtime sends itself SIGURG all the time), and a fetch that would
	// have succeeded must not become EIO. The read goes on, bounded by ReadTimeout and the
	// server's life; a reader that is killed is abandoned by the kernel itself.
	ctx, cancel := s.scope.Detach(s.scope.Context(), s.cfg.ReadTimeout)
	defer cancel()
	if err := s.res.Ensure(ctx, blob, off, length); err != nil {
		s.log.Warn("demand read failed; reader gets EIO", "blob", blob, "offset", off, "length", length, "err", err)
		return fuse.EIO
	}
	return fuse.OK
}

// ensureRead is ensure through EnsureRead: filled says p holds the bytes; else they are present.
func (s *Server) ensureRead(er EarlyResolver, blob digest.Digest, p []byte, off int64) (bool, fuse.Status) {
	ctx, cancel := s.scope.Detach(s.scope.Context(), s.cfg.ReadTimeout)
	defer cancel()
	filled, err := er.EnsureRead(ctx, blob, p, off)
	if err != nil {
		s.log.Warn("demand read failed; reader gets EIO", "blob", blob, "offset", off, "length", len(p), "err", err)
		return false, fuse.EIO
	}
	return filled, fuse.OK
}

// hintNext asks for read-ahead after a full-size request: that is the kernel's readahead of a
// sequential stream, and the next request wants the bytes after these (files are packed in
// their blob), so the disk starts on them now instead of when that request arrives.
func (s *Server) hintNext(dev int, devOff, length int64) {
	if length >= int64(s.cfg.MaxRead) {
		s.readAhead(dev-1, devOff+length, int64(max(s.cfg.ReadAhead, s.cfg.MaxRead)))
	}
}

// readDevice fills p from device dev (0: the bootstrap) at devOff.
func (s *Server) readDevice(in *bootstrap.Inode, dev int, p []byte, devOff int64) fuse.Status {
	if dev == 0 {
		if devOff < 0 || devOff+int64(len(p)) > int64(len(s.boot)) {
			return s.formatErr("read", in.Nid+2, errors.New("inline data past the bootstrap's end"))
		}
		copy(p, s.boot[devOff:])
		return fuse.OK
	}
	if dev > len(s.blobs) {
		return s.formatErr("read", in.Nid+2, errors.New("extent on a device the image does not have"))
	}
	blob := s.blobs[dev-1]
	if st := s.ensure(blob, devOff, int64(len(p))); !st.Ok() {
		return st
	}
	got, err := s.rd.ReadAt(blob, p, devOff)
	if err != nil && !(errors.Is(err, io.EOF) && got == len(p)) {
		s.log.Error("reading a present range failed; reader gets EIO", "blob", blob, "offset", devOff, "length", len(p), "err", err)
		return fuse.EIO
	}
	if got < len(p) {
		clear(p[got:]) // a file's data never runs past its blob; zeros rather than stale bytes
	}
	s.hintNext(dev, devOff, int64(len(p)))
	return fuse.OK
}

// Release has nothing to free: file handles carry no state.
func (s *Server) Release(cancel <-chan struct{}, input *fuse.ReleaseIn) {}

// OpenDir reads the directory once and keeps its entries for this handle; the kernel caches the
// listing (FOPEN_CACHE_DIR) so later opens do not come back.
func (s *Server) OpenDir(cancel <-chan struct{}, input *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	in, st := s.inode(input.NodeId)
	if !st.Ok() {
		return st
	}
	if !in.Mode.IsDir() {
		return fuse.Status(syscall.ENOTDIR)
	}
	ents, err := s.fs.ReadDir(in)
	if err != nil {
		return s.formatErr("opendir", input.NodeId, err)
	}
	fh := s.nextFh.Add(1)
	s.dirsMu.Lock()
	s.dirs[fh] = ents
	s.dirsMu.Unlock()
	out.Fh = fh
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_CACHE_DIR
	return fuse.OK
}

func (s *Server) dirHandle(fh uint64) ([]bootstrap.Dirent, bool) {
	s.dirsMu.Lock()
	defer s.dirsMu.Unlock()
	ents, ok := s.dirs[fh]
	return ents, ok
}

// direntMode is the type bits of an EROFS_FT_* file type.
var direntMode = [...]uint32{
	1: syscall.S_IFREG, 2: syscall.S_IFDIR, 3: syscall.S_IFCHR, 4: syscall.S_IFBLK,
	5: syscall.S_IFIFO, 6: syscall.S_IFSOCK, 7: syscall.S_IFLNK,
}

func typeBits(ft uint8) uint32 {
	if int(ft) < len(direntMode) {
		return direntMode[ft]
	}
	return 0 // DT_UNKNOWN: readers stat
}

// ReadDir lists entries from input.Offset (an index into the directory) on.
func (s *Server) ReadDir(cancel <-chan struct{}, input *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	ents, ok := s.dirHandle(input.Fh)
	if !ok {
		return fuse.EBADF
	}
	for i := input.Offset; i < uint64(len(ents)); i++ {
		d := ents[i]
		if !out.AddDirEntry(fuse.DirEntry{Name: d.Name, Mode: typeBits(d.FileType), Ino: d.Nid + 1, Off: i + 1}) {
			break
		}
	}
	return fuse.OK
}

// ReadDirPlus lists entries with their attributes, so `ls -l` and `find` need no lookups.
func (s *Server) ReadDirPlus(cancel <-chan struct{}, input *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	ents, ok := s.dirHandle(input.Fh)
	if !ok {
		return fuse.EBADF
	}
	for i := input.Offset; i < uint64(len(ents)); i++ {
		d := ents[i]
		var child *bootstrap.Inode
		if d.Name != "." && d.Name != ".." {
			in, err := s.fs.Inode(d.Nid)
			if err != nil {
				return s.formatErr("readdirplus", input.NodeId, err)
			}
			child = in
		}
		e := out.AddDirLookupEntry(fuse.DirEntry{Name: d.Name, Mode: typeBits(d.FileType), Ino: d.Nid + 1, Off: i + 1})
		if e == nil {
			break
		}
		if child != nil { // "." and ".." carry no entry: the kernel takes no reference to them
			s.fillEntry(child, e)
		}
	}
	return fuse.OK
}

// ReleaseDir drops an open directory's entries.
func (s *Server) ReleaseDir(input *fuse.ReleaseIn) {
	s.dirsMu.Lock()
	delete(s.dirs, input.Fh)
	s.dirsMu.Unlock()
}

// StatFs reports the image's size and inode count; nothing is free on a read-only image.
func (s *Server) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	sb := s.fs.Superblock()
	bs := uint32(s.fs.BlockSize())
	blocks := uint64(sb.Blocks)
	for _, d := range s.fs.Devices() {
		blocks += uint64(d.Blocks)
	}
	*out = fuse.StatfsOut{Blocks: blocks, Files: sb.Inodes, Bsize: bs, Frsize: bs, NameLen: 255}
	return fuse.OK
}
