package bootstrap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
)

// This file holds what a filesystem server needs of the reader beyond a walk: extended
// attributes (inline and shared, long name prefixes), the extents of one byte range without
// reading a whole chunk table, and a directory lookup by binary search, as the kernel does it.

// Xattr is one extended attribute: its full name ("user.foo", "security.capability") and value.
type Xattr struct {
	Name  string
	Value []byte
}

// xattrPrefixes are the short name prefixes by e_name_index (fs/erofs/xattr.h). Index 5
// (lustre.) is not one Linux exposes; its entries are skipped, as the kernel skips them.
var xattrPrefixes = [...]string{
	1: "user.",
	2: "system.posix_acl_access",
	3: "system.posix_acl_default",
	4: "trusted.",
	6: "security.",
}

const (
	xattrLongPrefix     = 0x80
	xattrEntryHeader    = 4
	xattrIbodyHeader    = 12
	maxXattrPrefixBytes = 256 // a long prefix's infix; the kernel stores its size in a u8 slot
)

// longPrefix is one entry of the long xattr name prefix table.
type longPrefix struct {
	base  uint8
	infix string
}

// Xattrs returns the inode's extended attributes, inline ones first and then shared ones (the
// kernel's listxattr order). Entries with a prefix Linux does not expose are left out.
func (f *FS) Xattrs(in *Inode) ([]Xattr, error) {
	if in.xattrSize == 0 {
		return nil, nil
	}
	what := fmt.Sprintf("xattrs of inode %d", in.Nid)
	pos := in.off + in.inodeSize
	if pos+in.xattrSize > f.size {
		return nil, formatErr(what, pos, "xattr area of %d bytes past the image end", in.xattrSize)
	}
	area := make([]byte, in.xattrSize) // at most 12 + 4*65534 bytes: icount is a u16
	if _, err := f.r.ReadAt(area, pos); err != nil {
		return nil, fmt.Errorf("erofs: reading %s at %d: %w", what, pos, err)
	}
	shared := int64(area[4])
	if xattrIbodyHeader+4*shared > in.xattrSize {
		return nil, formatErr(what, pos+4, "%d shared xattr ids do not fit in the %d-byte area", shared, in.xattrSize)
	}
	var out []Xattr
	for p := xattrIbodyHeader + 4*shared; p < in.xattrSize; {
		x, n, err := f.parseXattr(area[p:], pos+p, what)
		if err != nil {
			return nil, err
		}
		if x != nil {
			out = append(out, *x)
		}
		p += n
	}
	base := int64(f.sb.XattrBlkAddr) << f.sb.BlkSzBits
	for i := range shared {
		id := int64(binary.LittleEndian.Uint32(area[xattrIbodyHeader+4*i:]))
		at := base + 4*id
		if at < 0 || at+xattrEntryHeader > f.size {
			return nil, formatErr(what, pos+xattrIbodyHeader+4*i, "shared xattr %d past the image end", id)
		}
		// An entry is at most 4 + 255 + 65535 bytes; read what the image has of it.
		buf := make([]byte, min(f.size-at, xattrEntryHeader+255+65535))
		if _, err := f.r.ReadAt(buf, at); err != nil {
			return nil, fmt.Errorf("erofs: reading shared xattr %d of inode %d: %w", id, in.Nid, err)
		}
		x, _, err := f.parseXattr(buf, at, what)
		if err != nil {
			return nil, err
		}
		if x != nil {
			out = append(out, *x)
		}
	}
	return out, nil
}

// parseXattr decodes the entry at the start of b (at byte at of the bootstrap) and returns it
// (nil for a prefix Linux does not expose) and its aligned length.
func (f *FS) parseXattr(b []byte, at int64, what string) (*Xattr, int64, error) {
	if len(b) < xattrEntryHeader {
		return nil, 0, formatErr(what, at, "xattr entry header cut short")
	}
	nameLen, index := int(b[0]), b[1]
	valLen := int(binary.LittleEndian.Uint16(b[2:]))
	total := xattrEntryHeader + nameLen + valLen
	if total > len(b) {
		return nil, 0, formatErr(what, at, "xattr entry of %d bytes runs past its area (%d bytes)", total, len(b))
	}
	aligned := int64(total+3) &^ 3
	suffix := b[xattrEntryHeader : xattrEntryHeader+nameLen]
	value := bytes.Clone(b[xattrEntryHeader+nameLen : total])
	var prefix string
	if index&xattrLongPrefix != 0 {
		prefixes, err := f.longPrefixes()
		if err != nil {
			return nil, 0, err
		}
		i := int(index &^ xattrLongPrefix)
		if i >= len(prefixes) {
			return nil, 0, formatErr(what, at+1, "long xattr prefix %d, the image has %d", i, len(prefixes))
		}
		lp := prefixes[i]
		if int(lp.base) >= len(xattrPrefixes) || xattrPrefixes[lp.base] == "" {
			return nil, aligned, nil
		}
		prefix = xattrPrefixes[lp.base] + lp.infix
	} else {
		if int(index) >= len(xattrPrefixes) || xattrPrefixes[index] == "" {
			return nil, aligned, nil
		}
		prefix = xattrPrefixes[index]
	}
	name := prefix + string(suffix)
	if len(name) > 255 {
		return nil, 0, formatErr(what, at, "xattr name of %d bytes (XATTR_NAME_MAX is 255)", len(name))
	}
	return &Xattr{Name: name, Value: value}, aligned, nil
}

// longPrefixes reads the long xattr name prefix table once.
func (f *FS) longPrefixes() ([]longPrefix, error) {
	f.prefixOnce.Do(func() { f.prefixes, f.prefixErr = f.readLongPrefixes() })
	return f.prefixes, f.prefixErr
}

func (f *FS) readLongPrefixes() ([]longPrefix, error) {
	n := int(f.sb.XattrPrefixCount)
	if n == 0 {
		return nil, nil
	}
	if f.sb.FeatureIncompat&incompatXattrPrefix == 0 {
		return nil, formatErr("superblock", superOffset+91, "%d long xattr prefixes without the feature bit", n)
	}
	// The table lives in the packed inode's data when there is one, else in the bootstrap.
	read := func(p []byte, off int64) error {
		if off < 0 || off+int64(len(p)) > f.size {
			return formatErr("xattr prefix table", off, "past the image end")
		}
		_, err := f.r.ReadAt(p, off)
		return err
	}
	if f.sb.PackedNid != 0 {
		packed, err := f.Inode(f.sb.PackedNid)
		if err != nil {
			return nil, fmt.Errorf("erofs: packed inode: %w", err)
		}
		if !packed.Mode.IsRegular() || packed.Size > f.size {
			return nil, formatErr("packed inode", packed.off, "not a regular file inside the image")
		}
		exts, err := f.Extents(packed)
		if err != nil {
			return nil, err
		}
		read = func(p []byte, off int64) error {
			for len(p) > 0 {
				found := false
				for _, e := range exts {
					if off < e.FileOffset || off >= e.FileOffset+e.Length {
						continue
					}
					if e.Hole || e.Device != 0 {
						return formatErr("xattr prefix table", off, "in packed inode data outside the bootstrap")
					}
					k := min(int64(len(p)), e.FileOffset+e.Length-off)
					src := e.DeviceOffset + off - e.FileOffset
					if src+k > f.size {
						return formatErr("xattr prefix table", src, "past the image end")
					}
					if _, err := f.r.ReadAt(p[:k], src); err != nil {
						return err
					}
					p, off, found = p[k:], off+k, true
					break
				}
				if !found {
					return formatErr("xattr prefix table", off, "past the packed inode's end")
				}
			}
			return nil
		}
	}
	pos := int64(f.sb.XattrPrefixStart) << 2
	out := make([]longPrefix, 0, n)
	var hdr [2]byte
	for range n {
		pos = (pos + 3) &^ 3
		if err := read(hdr[:], pos); err != nil {
			return nil, fmt.Errorf("erofs: long xattr prefix at %d: %w", pos, err)
		}
		size := int64(binary.LittleEndian.Uint16(hdr[:]))
		if size < 1 || size > maxXattrPrefixBytes {
			return nil, formatErr("xattr prefix table", pos, "prefix of %d bytes", size)
		}
		b := make([]byte, size)
		if err := read(b, pos+2); err != nil {
			return nil, fmt.Errorf("erofs: long xattr prefix at %d: %w", pos, err)
		}
		out = append(out, longPrefix{base: b[0], infix: string(b[1:])})
		pos += 2 + size
	}
	return out, nil
}

// ExtentsAt calls fn for the extents that hold bytes [off, off+length) of a file, in file order;
// the first and last may reach outside the range. A chunk-based file's table is read only where
// the range lies, so a read costs the same at any offset.
func (f *FS) ExtentsAt(in *Inode, off, length int64, fn func(Extent) error) error {
	if off < 0 || length < 0 {
		return fmt.Errorf("erofs: inode %d: range [%d,+%d) invalid", in.Nid, off, length)
	}
	end := min(off+length, in.Size)
	if off >= end {
		return nil
	}
	if in.Layout == layoutChunkBased {
		bits, err := f.ChunkBits(in)
		if err != nil {
			return err
		}
		return f.chunkRange(in, bits, off>>bits, (end-1)>>bits+1, fn)
	}
	return f.extents(in, func(e Extent) error {
		if e.FileOffset+e.Length <= off || e.FileOffset >= end {
			return nil
		}
		return fn(e)
	})
}

var errStop = errors.New("stop")

// LookupName finds name in directory dir. Directory blocks are sorted by name (the first name of
// each block sorting after every name of the block before), so it binary-searches the blocks and
// then scans one, as the kernel does: a lookup costs O(log blocks) block reads however large the
// directory. ok is false when there is no such entry.
func (f *FS) LookupName(dir *Inode, name string) (d Dirent, ok bool, err error) {
	what := fmt.Sprintf("directory inode %d", dir.Nid)
	if !dir.Mode.IsDir() {
		return Dirent{}, false, formatErr(what, dir.off, "not a directory")
	}
	if dir.Size > f.size {
		return Dirent{}, false, formatErr(what, dir.off+8, "directory size %d larger than the image", dir.Size)
	}
	if dir.Layout == layoutChunkBased {
		// No builder writes chunk-based directories; scan rather than index them.
		err := f.readDir(dir, func(e Dirent) error {
			if e.Name == name {
				d, ok = e, true
				return errStop
			}
			return nil
		})
		if errors.Is(err, errStop) {
			err = nil
		}
		return d, ok, err
	}
	nblocks := (dir.Size + f.blkSize - 1) / f.blkSize
	buf := make([]byte, f.blkSize)
	block := func(i int64) ([]byte, int64, error) {
		var at, n int64
		err := f.ExtentsAt(dir, i*f.blkSize, 1, func(e Extent) error {
			if e.Hole || e.Device != 0 {
				return formatErr(what, dir.off, "directory data outside the bootstrap (device %d)", e.Device)
			}
			at = e.DeviceOffset + (i*f.blkSize - e.FileOffset)
			n = min(f.blkSize, e.FileOffset+e.Length-i*f.blkSize)
			return nil
		})
		if err != nil {
			return nil, 0, err
		}
		if n <= 0 || at < 0 || at+n > f.size {
			return nil, 0, formatErr(what, at, "directory block %d past the image end", i)
		}
		if _, err := f.r.ReadAt(buf[:n], at); err != nil {
			return nil, 0, fmt.Errorf("erofs: reading %s at %d: %w", what, at, err)
		}
		return buf[:n], at, nil
	}
	// Find the last block whose first name is <= name.
	lo, hi := int64(0), nblocks-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		b, at, err := block(mid)
		if err != nil {
			return Dirent{}, false, err
		}
		var first string
		err = parseDirBlock(b, at, what, func(e Dirent) error { first = e.Name; return errStop })
		if err != nil && !errors.Is(err, errStop) {
			return Dirent{}, false, err
		}
		if first <= name {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	b, at, err := block(lo)
	if err != nil {
		return Dirent{}, false, err
	}
	err = parseDirBlock(b, at, what, func(e Dirent) error {
		if e.Name == name {
			d, ok = e, true
			return errStop
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return Dirent{}, false, err
	}
	return d, ok, nil
}

// IsDevice reports whether the inode is a character or block device node.
func (in *Inode) IsDevice() bool { return in.Mode&fs.ModeDevice != 0 }
