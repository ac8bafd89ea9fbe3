package bootstrap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"path"
	"strings"
	"sync"
)

// On-disk constants of EROFS (include/uapi/linux/erofs_fs.h in the kernel tree).
const (
	erofsMagic       = 0xE0F5E1E2
	superOffset      = 1024
	superSize        = 128
	featureCompatCRC = 0x1

	incompatZeroPadding  = 0x1
	incompatCompressCfgs = 0x2
	incompatChunkedFile  = 0x4
	incompatDeviceTable  = 0x8
	incompatZtailPacking = 0x10
	incompatFragments    = 0x20
	incompatXattrPrefix  = 0x40
	// incompatKnown are the incompat features this reader understands. Compression is rejected
	// explicitly: Shoal images are never compressed (data must be addressable by chunk).
	incompatKnown = incompatZeroPadding | incompatChunkedFile | incompatDeviceTable | incompatXattrPrefix

	layoutFlatPlain      = 0
	layoutCompressedFull = 1
	layoutFlatInline     = 2
	layoutCompressedComp = 3
	layoutChunkBased     = 4

	chunkFormatBlkbits = 0x1f
	chunkFormatIndexes = 0x20

	compactInodeSize  = 32
	extendedInodeSize = 64
	direntSize        = 12
	deviceSlotSize    = 128
	nullAddr          = 0xFFFFFFFF

	// maxDepth bounds directory recursion: the kernel itself has PATH_MAX, and a hostile image
	// could make a directory its own descendant.
	maxDepth = 512
	// maxNameLen is EROFS_NAME_LEN.
	maxNameLen = 255
)

// FormatError reports a malformed or unsupported image: which structure, at which byte offset of
// the bootstrap, and why.
type FormatError struct {
	Struct string // "superblock", "inode 40", "dirent", "chunk index", ...
	Offset int64  // byte offset in the bootstrap where the bad structure lives
	Reason string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("erofs: %s at offset %d: %s", e.Struct, e.Offset, e.Reason)
}

// ErrFormat is matched by errors.Is for every *FormatError.
var ErrFormat = errors.New("malformed erofs image")

// Is makes errors.Is(err, ErrFormat) true for format errors.
func (e *FormatError) Is(target error) bool { return target == ErrFormat }

func formatErr(what string, off int64, format string, args ...any) error {
	return &FormatError{Struct: what, Offset: off, Reason: fmt.Sprintf(format, args...)}
}

// Superblock holds the fields of the EROFS superblock this reader uses.
type Superblock struct {
	FeatureCompat   uint32
	BlkSzBits       uint8
	RootNid         uint64
	Inodes          uint64
	Blocks          uint32
	MetaBlkAddr     uint32
	XattrBlkAddr    uint32
	UUID            [16]byte
	VolumeName      string
	FeatureIncompat uint32
	ExtraDevices    uint16
	DevtSlotOff     uint16
	// BuildTime and BuildTimeNsec are the image's build time: the mtime of every compact inode
	// (plus the compact inode's own 32-bit offset, which older builders leave zero).
	BuildTime     uint64
	BuildTimeNsec uint32
	// XattrPrefixCount and XattrPrefixStart locate the long xattr name prefixes (start in units
	// of 4 bytes, in the packed inode's data when PackedNid is set, else in the bootstrap).
	XattrPrefixCount uint8
	XattrPrefixStart uint32
	PackedNid        uint64
}

// Device is one slot of the device table: an extra device (data blob) the image refers to.
type Device struct {
	ID            int    // device id as used in chunk indexes: 1 for the first slot
	Tag           string // the slot's tag (may be empty)
	Blocks        uint32 // size in blocks (0 when the builder did not record it)
	MappedBlkAddr uint32 // start in the flat address space, 0 when not mapped
}

// FS is an opened EROFS bootstrap. It reads metadata only; file data lives in the devices.
// Methods are safe for concurrent use when the underlying ReaderAt is.
type FS struct {
	r       io.ReaderAt
	size    int64
	sb      Superblock
	blkSize int64
	devices []Device

	prefixOnce sync.Once // the long xattr name prefixes, read on first use
	prefixes   []longPrefix
	prefixErr  error
}

// Open parses and checks the superblock and device table of the EROFS image in r (size bytes).
func Open(r io.ReaderAt, size int64) (*FS, error) {
	if size < superOffset+superSize {
		return nil, formatErr("superblock", superOffset, "image is %d bytes, too small for a superblock", size)
	}
	raw := make([]byte, superSize)
	if _, err := r.ReadAt(raw, superOffset); err != nil {
		return nil, fmt.Errorf("erofs: reading superblock: %w", err)
	}
	le := binary.LittleEndian
	if m := le.Uint32(raw[0:]); m != erofsMagic {
		return nil, formatErr("superblock", superOffset, "bad magic %#x (want %#x)", m, erofsMagic)
	}
	sb := Superblock{
		FeatureCompat:   le.Uint32(raw[8:]),
		BlkSzBits:       raw[12],
		RootNid:         uint64(le.Uint16(raw[14:])),
		Inodes:          le.Uint64(raw[16:]),
		Blocks:          le.Uint32(raw[36:]),
		MetaBlkAddr:     le.Uint32(raw[40:]),
		XattrBlkAddr:    le.Uint32(raw[44:]),
		VolumeName:      strings.TrimRight(string(raw[64:80]), "\x00"),
		FeatureIncompat: le.Uint32(raw[80:]),
		ExtraDevices:    le.Uint16(raw[86:]),
		DevtSlotOff:     le.Uint16(raw[88:]),
		BuildTime:       le.Uint64(raw[24:]),
		BuildTimeNsec:   le.Uint32(raw[32:]),

		XattrPrefixCount: raw[91],
		XattrPrefixStart: le.Uint32(raw[92:]),
		PackedNid:        le.Uint64(raw[96:]),
	}
	copy(sb.UUID[:], raw[48:64])
	if sb.BlkSzBits < 9 || sb.BlkSzBits > 16 {
		return nil, formatErr("superblock", superOffset+12, "block size bits %d out of range 9..16", sb.BlkSzBits)
	}
	blkSize := int64(1) << sb.BlkSzBits
	if sb.FeatureCompat&featureCompatCRC != 0 {
		if err := checkSuperblockCRC(r, size, blkSize, le.Uint32(raw[4:])); err != nil {
			return nil, err
		}
	}
	if bad := sb.FeatureIncompat &^ incompatKnown; bad != 0 {
		if bad&(incompatCompressCfgs|incompatZtailPacking|incompatFragments) != 0 {
			return nil, formatErr("superblock", superOffset+80, "compressed images are not supported (incompat features %#x)", sb.FeatureIncompat)
		}
		return nil, formatErr("superblock", superOffset+80, "unknown incompat features %#x", bad)
	}
	f := &FS{r: r, size: size, sb: sb, blkSize: blkSize}
	if sb.FeatureIncompat&incompatDeviceTable != 0 && sb.ExtraDevices > 0 {
		if err := f.readDevices(); err != nil {
			return nil, err
		}
	}
	if _, err := f.Inode(sb.RootNid); err != nil {
		return nil, fmt.Errorf("erofs: root inode: %w", err)
	}
	return f, nil
}

// checkSuperblockCRC verifies the crc32c the kernel checks: over the superblock's block from
// byte 1024 on, with the checksum field zeroed, seeded with ~0 and not inverted at the end.
func checkSuperblockCRC(r io.ReaderAt, size, blkSize int64, want uint32) error {
	n := blkSize
	if n > superOffset {
		n -= superOffset
	}
	if superOffset+n > size {
		return formatErr("superblock", superOffset, "checksummed block runs past the image end (%d bytes)", size)
	}
	buf := make([]byte, n)
	if _, err := r.ReadAt(buf, superOffset); err != nil {
		return fmt.Errorf("erofs: reading superblock block: %w", err)
	}
	binary.LittleEndian.PutUint32(buf[4:], 0)
	got := ^crc32.Checksum(buf, castagnoli)
	if got != want {
		return formatErr("superblock", superOffset+4, "checksum %#08x, computed %#08x", want, got)
	}
	return nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (f *FS) readDevices() error {
	off := int64(f.sb.DevtSlotOff) * deviceSlotSize
	n := int64(f.sb.ExtraDevices)
	if off < superOffset+superSize || off+n*deviceSlotSize > f.size {
		return formatErr("device table", off, "%d slots do not fit in the %d-byte image", n, f.size)
	}
	buf := make([]byte, n*deviceSlotSize) // bounded by the image size checked above
	if _, err := f.r.ReadAt(buf, off); err != nil {
		return fmt.Errorf("erofs: reading device table: %w", err)
	}
	for i := range int(n) {
		s := buf[i*deviceSlotSize:]
		f.devices = append(f.devices, Device{
			ID:            i + 1,
			Tag:           strings.TrimRight(string(s[:64]), "\x00"),
			Blocks:        binary.LittleEndian.Uint32(s[64:]),
			MappedBlkAddr: binary.LittleEndian.Uint32(s[68:]),
		})
	}
	return nil
}

// Superblock returns the parsed superblock.
func (f *FS) Superblock() Superblock { return f.sb }

// BlockSize is the image's block size in bytes.
func (f *FS) BlockSize() int64 { return f.blkSize }

// Devices returns the device table: the extra devices in device id order.
func (f *FS) Devices() []Device { return append([]Device(nil), f.devices...) }

// RootNid is the inode number of the root directory.
func (f *FS) RootNid() uint64 { return f.sb.RootNid }

// Inode is a parsed EROFS inode.
type Inode struct {
	Nid      uint64
	Mode     fs.FileMode // Go file mode (type bits and permissions)
	RawMode  uint16      // the on-disk st_mode
	Size     int64
	Nlink    uint32
	UID, GID uint32
	// Mtime and MtimeNsec: an extended inode's own; a compact inode's is the superblock's build
	// time plus the inode's 32-bit offset, as the kernel computes it.
	Mtime     int64
	MtimeNsec uint32
	Rdev      uint32 // device number of a device node, in the kernel's new_encode_dev form
	Layout    int

	off       int64 // byte offset of the inode in the bootstrap
	inodeSize int64
	xattrSize int64
	rawU      uint32 // i_u: raw_blkaddr, rdev or chunk format
}

// Offset returns the byte offset of the inode in the bootstrap.
func (in *Inode) Offset() int64 { return in.off }

// Inode reads the inode with the given nid.
func (f *FS) Inode(nid uint64) (*Inode, error) {
	what := fmt.Sprintf("inode %d", nid)
	base := int64(f.sb.MetaBlkAddr) << f.sb.BlkSzBits
	if nid > uint64(f.size/32) {
		return nil, formatErr(what, base, "nid past the image end")
	}
	off := base + int64(nid)*32
	if off+compactInodeSize > f.size || off < 0 {
		return nil, formatErr(what, off, "inode past the image end (%d bytes)", f.size)
	}
	var raw [extendedInodeSize]byte
	if _, err := f.r.ReadAt(raw[:compactInodeSize], off); err != nil {
		return nil, fmt.Errorf("erofs: reading %s at %d: %w", what, off, err)
	}
	le := binary.LittleEndian
	format := le.Uint16(raw[0:])
	in := &Inode{Nid: nid, off: off, Layout: int(format>>1) & 0x7}
	icount := le.Uint16(raw[2:])
	switch format & 1 {
	case 0:
		in.inodeSize = compactInodeSize
		in.RawMode = le.Uint16(raw[4:])
		in.Nlink = uint32(le.Uint16(raw[6:]))
		in.Size = int64(le.Uint32(raw[8:]))
		in.rawU = le.Uint32(raw[16:])
		in.UID = uint32(le.Uint16(raw[24:]))
		in.GID = uint32(le.Uint16(raw[26:]))
		in.Mtime = int64(f.sb.BuildTime) + int64(le.Uint32(raw[28:]))
		in.MtimeNsec = f.sb.BuildTimeNsec
	case 1:
		in.inodeSize = extendedInodeSize
		if off+extendedInodeSize > f.size {
			return nil, formatErr(what, off, "extended inode past the image end")
		}
		if _, err := f.r.ReadAt(raw[compactInodeSize:], off+compactInodeSize); err != nil {
			return nil, fmt.Errorf("erofs: reading %s at %d: %w", what, off, err)
		}
		in.RawMode = le.Uint16(raw[4:])
		size := le.Uint64(raw[8:])
		if size > 1<<62 {
			return nil, formatErr(what, off+8, "size %d out of range", size)
		}
		in.Size = int64(size)
		in.rawU = le.Uint32(raw[16:])
		in.UID = le.Uint32(raw[24:])
		in.GID = le.Uint32(raw[28:])
		in.Mtime = int64(le.Uint64(raw[32:]))
		in.MtimeNsec = le.Uint32(raw[40:])
		in.Nlink = le.Uint32(raw[44:])
	}
	if icount > 0 {
		// erofs_xattr_ibody_header is 12 bytes and counts as the first of icount 4-byte slots.
		in.xattrSize = 12 + 4*(int64(icount)-1)
	}
	in.Mode = goMode(in.RawMode)
	if in.Mode&fs.ModeDevice != 0 {
		in.Rdev = in.rawU
	}
	switch in.Layout {
	case layoutFlatPlain, layoutFlatInline, layoutChunkBased:
	case layoutCompressedFull, layoutCompressedComp:
		return nil, formatErr(what, off, "compressed data layout %d is not supported", in.Layout)
	default:
		return nil, formatErr(what, off, "unknown data layout %d", in.Layout)
	}
	if in.Mode.Type()&^(fs.ModeDir|fs.ModeSymlink|fs.ModeNamedPipe|fs.ModeSocket|fs.ModeDevice|fs.ModeCharDevice) != 0 || in.RawMode&0xF000 == 0 {
		return nil, formatErr(what, off+4, "unknown file type in mode %#o", in.RawMode)
	}
	return in, nil
}

func goMode(m uint16) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	switch m & 0xF000 {
	case 0x4000:
		mode |= fs.ModeDir
	case 0x8000:
	case 0xA000:
		mode |= fs.ModeSymlink
	case 0x2000:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case 0x6000:
		mode |= fs.ModeDevice
	case 0x1000:
		mode |= fs.ModeNamedPipe
	case 0xC000:
		mode |= fs.ModeSocket
	default:
		mode |= fs.ModeIrregular
	}
	return mode
}

// Extent is a run of a file's bytes and where they live.
type Extent struct {
	FileOffset int64 // offset in the file
	Length     int64 // bytes of file data (the last extent may end mid-block)
	// Device holds the bytes: 0 the bootstrap itself (plain or inline data), k>0 the k-th extra
	// device (data blob). Hole is true for a chunk with no data (reads as zeros).
	Device int
	// DeviceOffset is the byte offset in that device.
	DeviceOffset int64
	Hole         bool
}

// Extents lists where every byte of a regular file, directory or symlink lives, in file order.
// Chunk-based files give one extent per chunk.
func (f *FS) Extents(in *Inode) ([]Extent, error) {
	var out []Extent
	err := f.extents(in, func(e Extent) error { out = append(out, e); return nil })
	return out, err
}

// extents calls fn for each extent of the inode, in file order. It never allocates by the
// untrusted file size: a chunk table is read a block at a time and must lie inside the image.
func (f *FS) extents(in *Inode, fn func(Extent) error) error {
	what := fmt.Sprintf("inode %d", in.Nid)
	if in.Size == 0 {
		return nil
	}
	switch in.Layout {
	case layoutFlatPlain, layoutFlatInline:
		nblocks := (in.Size + f.blkSize - 1) / f.blkSize
		plain := in.Size
		if in.Layout == layoutFlatInline {
			plain = (nblocks - 1) * f.blkSize
		}
		if plain > 0 {
			start := int64(in.rawU) << f.sb.BlkSzBits
			if in.rawU == nullAddr {
				return formatErr(what, in.off+16, "plain data with a null block address")
			}
			if err := fn(f.flatExtent(0, plain, start)); err != nil {
				return err
			}
		}
		if in.Layout == layoutFlatInline {
			tail := in.Size - plain
			pos := in.off + in.inodeSize + in.xattrSize
			// The inline tail must not cross a block boundary (the kernel's check).
			if pos%f.blkSize+tail > f.blkSize {
				return formatErr(what, in.off, "inline tail of %d bytes crosses a block boundary", tail)
			}
			if pos+tail > f.size {
				return formatErr(what, in.off, "inline tail past the image end")
			}
			return fn(Extent{FileOffset: plain, Length: tail, Device: 0, DeviceOffset: pos})
		}
		return nil
	case layoutChunkBased:
		return f.chunkExtents(in, fn)
	}
	return formatErr(what, in.off, "data layout %d has no extents", in.Layout)
}

// flatExtent maps a flat (device 0) address. Device-table images may map ranges of the flat
// address space onto extra devices (mapped_blkaddr); the kernel resolves those the same way.
func (f *FS) flatExtent(fileOff, length, pos int64) Extent {
	for _, d := range f.devices {
		if d.MappedBlkAddr == 0 {
			continue
		}
		start := int64(d.MappedBlkAddr) << f.sb.BlkSzBits
		end := start + int64(d.Blocks)<<f.sb.BlkSzBits
		if pos >= start && pos < end {
			return Extent{FileOffset: fileOff, Length: length, Device: d.ID, DeviceOffset: pos - start}
		}
	}
	return Extent{FileOffset: fileOff, Length: length, Device: 0, DeviceOffset: pos}
}

// ChunkBits returns log2 of the chunk size of a chunk-based inode, or an error for other layouts.
func (f *FS) ChunkBits(in *Inode) (uint, error) {
	if in.Layout != layoutChunkBased {
		return 0, formatErr(fmt.Sprintf("inode %d", in.Nid), in.off, "not chunk-based (layout %d)", in.Layout)
	}
	bits := uint(f.sb.BlkSzBits) + uint(in.rawU&chunkFormatBlkbits)
	if bits > 40 {
		return 0, formatErr(fmt.Sprintf("inode %d", in.Nid), in.off+16, "chunk size 2^%d out of range", bits)
	}
	return bits, nil
}

// ChunkIndexed reports whether a chunk-based inode uses 8-byte chunk indexes (with device ids)
// rather than the 4-byte block map.
func (in *Inode) ChunkIndexed() bool {
	return in.Layout == layoutChunkBased && in.rawU&chunkFormatIndexes != 0
}

func (f *FS) chunkExtents(in *Inode, fn func(Extent) error) error {
	bits, err := f.ChunkBits(in)
	if err != nil {
		return err
	}
	chunkSize := int64(1) << bits
	nchunks := (in.Size + chunkSize - 1) / chunkSize
	return f.chunkRange(in, bits, 0, nchunks, fn)
}

// chunkRange calls fn for chunks [from, to) of a chunk-based inode, reading only that part of
// its chunk table.
func (f *FS) chunkRange(in *Inode, bits uint, from, to int64, fn func(Extent) error) error {
	what := fmt.Sprintf("inode %d", in.Nid)
	chunkSize := int64(1) << bits
	nchunks := (in.Size + chunkSize - 1) / chunkSize
	unit := int64(4)
	if in.ChunkIndexed() {
		unit = 8
	}
	pos := in.off + in.inodeSize + in.xattrSize
	pos = (pos + unit - 1) / unit * unit
	if nchunks > (f.size-pos)/unit {
		return formatErr("chunk index", pos, "%s: %d chunks do not fit in the %d-byte image", what, nchunks, f.size)
	}
	to = min(to, nchunks)
	buf := make([]byte, min(512, max(to-from, 1))*unit)
	devMask := uint16(0xFFFF)
	for i := from; i < to; {
		batch := min(to-i, 512)
		b := buf[:batch*unit]
		if _, err := f.r.ReadAt(b, pos+i*unit); err != nil {
			return fmt.Errorf("erofs: reading chunk table of %s at %d: %w", what, pos+i*unit, err)
		}
		for j := range batch {
			fileOff := (i + j) * chunkSize
			length := min(chunkSize, in.Size-fileOff)
			var e Extent
			if unit == 8 {
				dev := int(binary.LittleEndian.Uint16(b[j*8+2:]) & devMask)
				blk := binary.LittleEndian.Uint32(b[j*8+4:])
				switch {
				case blk == nullAddr:
					e = Extent{FileOffset: fileOff, Length: length, Hole: true}
				case dev == 0:
					e = f.flatExtent(fileOff, length, int64(blk)<<f.sb.BlkSzBits)
				case dev > len(f.devices):
					return formatErr("chunk index", pos+(i+j)*unit, "%s: chunk %d names device %d, image has %d", what, i+j, dev, len(f.devices))
				default:
					e = Extent{FileOffset: fileOff, Length: length, Device: dev, DeviceOffset: int64(blk) << f.sb.BlkSzBits}
				}
			} else {
				blk := binary.LittleEndian.Uint32(b[j*4:])
				if blk == nullAddr {
					e = Extent{FileOffset: fileOff, Length: length, Hole: true}
				} else {
					e = f.flatExtent(fileOff, length, int64(blk)<<f.sb.BlkSzBits)
				}
			}
			if err := fn(e); err != nil {
				return err
			}
		}
		i += batch
	}
	return nil
}

// Dirent is one directory entry.
type Dirent struct {
	Name     string
	Nid      uint64
	FileType uint8 // EROFS_FT_*: 1 reg, 2 dir, 3 chr, 4 blk, 5 fifo, 6 sock, 7 symlink
}

// ReadDir lists a directory, "." and ".." included, in on-disk (sorted) order.
func (f *FS) ReadDir(in *Inode) ([]Dirent, error) {
	var out []Dirent
	err := f.readDir(in, func(d Dirent) error { out = append(out, d); return nil })
	return out, err
}

func (f *FS) readDir(in *Inode, fn func(Dirent) error) error {
	what := fmt.Sprintf("directory inode %d", in.Nid)
	if !in.Mode.IsDir() {
		return formatErr(what, in.off, "not a directory")
	}
	blk := make([]byte, f.blkSize)
	// A directory's data must live in the bootstrap (metadata never leaves it), so its size is
	// bounded by the image size: no hostile size makes this loop long.
	if in.Size > f.size {
		return formatErr(what, in.off+8, "directory size %d larger than the image", in.Size)
	}
	return f.extents(in, func(e Extent) error {
		if e.Hole || e.Device != 0 {
			return formatErr(what, in.off, "directory data outside the bootstrap (device %d)", e.Device)
		}
		for done := int64(0); done < e.Length; done += f.blkSize {
			n := min(f.blkSize, e.Length-done)
			p := e.DeviceOffset + done
			if p < 0 || p+n > f.size {
				return formatErr(what, p, "directory block past the image end")
			}
			b := blk[:n]
			if _, err := f.r.ReadAt(b, p); err != nil {
				return fmt.Errorf("erofs: reading %s at %d: %w", what, p, err)
			}
			if err := parseDirBlock(b, p, what, fn); err != nil {
				return err
			}
		}
		return nil
	})
}

// parseDirBlock decodes one directory block: dirents first, the first one's nameoff giving the
// count, then the names, each ending where the next begins (the last at the first NUL or the end).
func parseDirBlock(b []byte, at int64, what string, fn func(Dirent) error) error {
	if len(b) < direntSize {
		return formatErr(what, at, "directory block of %d bytes", len(b))
	}
	le := binary.LittleEndian
	first := int(le.Uint16(b[8:]))
	if first < direntSize || first%direntSize != 0 || first > len(b) {
		return formatErr(what, at, "first name offset %d invalid", first)
	}
	n := first / direntSize
	for i := range n {
		d := b[i*direntSize:]
		start := int(le.Uint16(d[8:]))
		end := len(b)
		if i+1 < n {
			end = int(le.Uint16(b[(i+1)*direntSize+8:]))
		}
		if start < first || end > len(b) || start >= end {
			return formatErr(what, at+int64(i*direntSize), "dirent %d name range [%d,%d) invalid", i, start, end)
		}
		name := b[start:end]
		if i+1 == n {
			if k := indexByte(name, 0); k >= 0 {
				name = name[:k]
			}
		}
		if len(name) == 0 || len(name) > maxNameLen {
			return formatErr(what, at+int64(i*direntSize), "dirent %d name length %d", i, len(name))
		}
		if err := fn(Dirent{Name: string(name), Nid: le.Uint64(d[0:]), FileType: d[10]}); err != nil {
			return err
		}
	}
	return nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// ReadLink returns a symlink's target (stored as the symlink's data, in the bootstrap).
func (f *FS) ReadLink(in *Inode) (string, error) {
	what := fmt.Sprintf("symlink inode %d", in.Nid)
	if in.Mode.Type() != fs.ModeSymlink {
		return "", formatErr(what, in.off, "not a symlink")
	}
	if in.Size > 4096 {
		return "", formatErr(what, in.off+8, "target of %d bytes longer than PATH_MAX", in.Size)
	}
	buf := make([]byte, 0, in.Size)
	err := f.extents(in, func(e Extent) error {
		if e.Hole || e.Device != 0 {
			return formatErr(what, in.off, "symlink data outside the bootstrap")
		}
		if e.DeviceOffset+e.Length > f.size {
			return formatErr(what, e.DeviceOffset, "symlink data past the image end")
		}
		b := make([]byte, e.Length)
		if _, err := f.r.ReadAt(b, e.DeviceOffset); err != nil {
			return fmt.Errorf("erofs: reading %s: %w", what, err)
		}
		buf = append(buf, b...)
		return nil
	})
	return string(buf), err
}

// WalkFunc is called for every inode of the tree, parents before children. The root's path is
// "/". Returning fs.SkipDir from a directory skips its entries.
type WalkFunc func(path string, in *Inode) error

// Walk visits the tree from the root. A directory reachable twice (a loop in a hostile image) is
// an error, as is a tree deeper than 512 levels or with more entries than the image could hold.
func (f *FS) Walk(fn WalkFunc) error {
	root, err := f.Inode(f.sb.RootNid)
	if err != nil {
		return err
	}
	if !root.Mode.IsDir() {
		return formatErr("root inode", root.off, "root is not a directory")
	}
	w := walker{f: f, fn: fn, seenDirs: map[uint64]bool{}, budget: f.size / direntSize}
	return w.walk("/", root, 0)
}

type walker struct {
	f        *FS
	fn       WalkFunc
	seenDirs map[uint64]bool
	budget   int64 // entries left before the tree is larger than the image could describe
}

func (w *walker) walk(p string, in *Inode, depth int) error {
	if err := w.fn(p, in); err != nil {
		if errors.Is(err, fs.SkipDir) && in.Mode.IsDir() {
			return nil
		}
		return err
	}
	if !in.Mode.IsDir() {
		return nil
	}
	if depth >= maxDepth {
		return formatErr(fmt.Sprintf("directory inode %d", in.Nid), in.off, "tree deeper than %d levels", maxDepth)
	}
	if w.seenDirs[in.Nid] {
		return formatErr(fmt.Sprintf("directory inode %d", in.Nid), in.off, "directory reached twice (loop)")
	}
	w.seenDirs[in.Nid] = true
	ents, err := w.f.ReadDir(in)
	if err != nil {
		return err
	}
	for _, d := range ents {
		if d.Name == "." || d.Name == ".." {
			continue
		}
		if w.budget--; w.budget < 0 {
			return formatErr(fmt.Sprintf("directory inode %d", in.Nid), in.off, "more entries than the image can hold")
		}
		if strings.ContainsRune(d.Name, '/') {
			return formatErr(fmt.Sprintf("directory inode %d", in.Nid), in.off, "entry name %q contains a slash", d.Name)
		}
		child, err := w.f.Inode(d.Nid)
		if err != nil {
			return err
		}
		if err := w.walk(path.Join(p, d.Name), child, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// FileExtentFunc is called by WalkExtents for each extent of each regular file.
type FileExtentFunc func(path string, in *Inode, e Extent) error

// WalkExtents calls fn for every extent of every regular file, each inode once however many hard
// links name it. The chunk tables of distinct inodes never overlap in a well-formed image, so
// more index entries in total than the image has room for means a hostile image; it is an error
// rather than quadratic work.
func (f *FS) WalkExtents(fn FileExtentFunc) error {
	done := map[uint64]bool{}
	budget := f.size / 4 // the smallest table entry is 4 bytes
	return f.Walk(func(p string, in *Inode) error {
		if !in.Mode.IsRegular() || done[in.Nid] {
			return nil
		}
		done[in.Nid] = true
		return f.extents(in, func(e Extent) error {
			if budget--; budget < 0 {
				return formatErr(fmt.Sprintf("inode %d", in.Nid), in.off, "chunk tables claim more entries than the image holds")
			}
			return fn(p, in, e)
		})
	})
}

// Lookup resolves an absolute path (symlinks are not followed).
func (f *FS) Lookup(p string) (*Inode, error) {
	in, err := f.Inode(f.sb.RootNid)
	if err != nil {
		return nil, err
	}
	for _, name := range strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/") {
		if name == "" {
			continue
		}
		if !in.Mode.IsDir() {
			return nil, fmt.Errorf("erofs: %s: %w", p, fs.ErrNotExist)
		}
		var found *Dirent
		errFound := errors.New("found")
		err := f.readDir(in, func(d Dirent) error {
			if d.Name == name {
				found = &d
				return errFound
			}
			return nil
		})
		if err != nil && !errors.Is(err, errFound) {
			return nil, err
		}
		if found == nil {
			return nil, fmt.Errorf("erofs: %s: %w", p, fs.ErrNotExist)
		}
		if in, err = f.Inode(found.Nid); err != nil {
			return nil, err
		}
	}
	return in, nil
}

// ReadFile reads a file's contents, taking data from the bootstrap or the given devices
// (devices[k-1] is device k). Holes read as zeros. Meant for tools and tests; the daemon serves
// data through the kernel.
func (f *FS) ReadFile(in *Inode, devices []io.ReaderAt, maxSize int64) ([]byte, error) {
	if in.Size > maxSize {
		return nil, fmt.Errorf("erofs: inode %d is %d bytes, more than %d", in.Nid, in.Size, maxSize)
	}
	out := make([]byte, in.Size)
	err := f.extents(in, func(e Extent) error {
		dst := out[e.FileOffset : e.FileOffset+e.Length]
		if e.Hole {
			return nil
		}
		src := f.r
		if e.Device > 0 {
			if e.Device > len(devices) || devices[e.Device-1] == nil {
				return fmt.Errorf("erofs: inode %d needs device %d, not given", in.Nid, e.Device)
			}
			src = devices[e.Device-1]
		}
		if _, err := src.ReadAt(dst, e.DeviceOffset); err != nil {
			return fmt.Errorf("erofs: reading inode %d at file offset %d (device %d offset %d): %w", in.Nid, e.FileOffset, e.Device, e.DeviceOffset, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Check walks the whole tree and every file's extents, and checks that the image names exactly
// the given blobs (blobSizes[k-1] is device k's size) and that file data lies inside them. A
// daemon checks a bootstrap from an origin this way before handing it to the kernel, so a
// malformed or hostile image is refused with a clear error instead of failing reads later.
func (f *FS) Check(blobSizes []int64) error {
	if len(f.devices) != len(blobSizes) {
		return formatErr("device table", int64(f.sb.DevtSlotOff)*deviceSlotSize, "%d extra devices, the image lists %d blobs", len(f.devices), len(blobSizes))
	}
	err := f.Walk(func(p string, in *Inode) error {
		switch {
		case in.Mode.IsDir():
			_, err := f.ReadDir(in)
			return err
		case in.Mode.Type() == fs.ModeSymlink:
			_, err := f.ReadLink(in)
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	return f.WalkExtents(func(p string, in *Inode, e Extent) error {
		switch {
		case e.Hole:
			return nil
		case e.Device == 0:
			if e.DeviceOffset+e.Length > f.size {
				return formatErr(fmt.Sprintf("inode %d", in.Nid), in.off, "%s: data [%d,%d) past the bootstrap's end", p, e.DeviceOffset, e.DeviceOffset+e.Length)
			}
		case e.DeviceOffset+e.Length > blobSizes[e.Device-1]:
			return formatErr(fmt.Sprintf("inode %d", in.Nid), in.off, "%s: data [%d,%d) past the end of device %d (%d bytes)",
				p, e.DeviceOffset, e.DeviceOffset+e.Length, e.Device, blobSizes[e.Device-1])
		}
		return nil
	})
}
