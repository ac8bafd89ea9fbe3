package bootstrap

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"sort"
	"strings"

	"github.com/shoal-p2p/shoal/chunk"
)

// WriteOptions configures WriteEROFS.
type WriteOptions struct {
	// ChunkSize is the chunk size of every regular file's chunk index: a power of two from 4 KiB
	// to MaxChunkSize.
	ChunkSize int64
	// Devices are the extra devices (data blobs) in device id order: Devices[k-1] is device k.
	Devices []DeviceSpec
}

// DeviceSpec describes one extra device of the image.
type DeviceSpec struct {
	Tag  string // at most 64 bytes; Shoal writes the blob digest's hex
	Size int64  // bytes; a multiple of the block size
}

// EROFS on-disk values only the writer needs (include/uapi/linux/erofs_fs.h).
const (
	ftUnknown = 0
	ftReg     = 1
	ftDir     = 2
	ftChr     = 3
	ftBlk     = 4
	ftFifo    = 5
	ftSock    = 6
	ftSymlink = 7

	xattrIndexUser       = 1
	xattrIndexACLAccess  = 2
	xattrIndexACLDefault = 3
	xattrIndexTrusted    = 4
	xattrIndexSecurity   = 6
	xattrHeaderSize      = 12
	maxInlineXattrBytes  = 64 << 10
	devtSlotOff          = (superOffset + superSize) / deviceSlotSize // slots follow the superblock
	maxDevices           = 255
	maxSymlinkTarget     = 4095
	superblockBlock      = 0
	compactMaxLinks      = 0xFFFF
	compactMaxID         = 0xFFFF
	compactMaxSize       = 0xFFFFFFFF
	writerBlockSize      = chunk.BlockSize
	writerBlockBits      = 12
	maxBootstrapBytes    = int64(1) << 40
	nidSlot              = 32
	maxRootNid           = 0xFFFF
	chunkIndexEntrySize  = 8
)

// winode is one inode being laid out.
type winode struct {
	n       *Node
	ino     uint32
	nid     uint64
	nlink   uint32
	parent  *winode // directories: the parent directory (the root's is itself)
	ext     bool    // extended (64-byte) inode
	xattrs  []byte  // inline xattr area (header and entries), empty for none
	layout  int
	data    []byte // directory blocks or symlink target (bootstrap-resident data)
	inline  int64  // bytes of data stored inline after the inode
	rawBlk  uint32 // FLAT_PLAIN / FLAT_INLINE: first data block
	metaLen int64  // bytes of inode, xattrs, chunk indexes and inline data
	dirents []wdirent
}

type wdirent struct {
	name string
	in   *winode
}

// WriteEROFS writes t as an uncompressed EROFS image (4 KiB blocks) holding only metadata: every
// regular file is chunk-indexed into the extra devices of opts, every directory and symlink lives
// in the image itself. It returns the image bytes.
//
// The layout: block 0 holds the superblock at 1024 and the device table after it, then the
// inodes (32-byte slots: nids count from block 0), each followed by its inline xattrs, its chunk
// index or the inline tail of its data; directory and symlink data that does not fit inline
// follows in whole blocks. Compact inodes are used where the fields fit and the mtime is the
// superblock's build time; extended ones elsewhere.
func WriteEROFS(t *Tree, opts WriteOptions) ([]byte, error) {
	cs := opts.ChunkSize
	if cs < chunk.BlockSize || cs > MaxChunkSize || cs&(cs-1) != 0 {
		return nil, fmt.Errorf("erofs writer: chunk size %d: must be a power of two from %d to %d", cs, chunk.BlockSize, MaxChunkSize)
	}
	if len(opts.Devices) > maxDevices {
		return nil, fmt.Errorf("erofs writer: %d devices, at most %d", len(opts.Devices), maxDevices)
	}
	for i, d := range opts.Devices {
		if len(d.Tag) > 64 || d.Size < 0 || d.Size%writerBlockSize != 0 || d.Size>>writerBlockBits > 0xFFFFFFFF {
			return nil, fmt.Errorf("erofs writer: device %d: tag %q or size %d unusable", i+1, d.Tag, d.Size)
		}
	}
	if t == nil || t.Root == nil || !t.Root.IsDir() {
		return nil, fmt.Errorf("erofs writer: the root is not a directory")
	}
	w := &writer{opts: opts, chunkBits: uint(bitsOf(cs)), seen: map[*Node]*winode{}}
	if err := w.collect(t.Root, nil, "/", 0); err != nil {
		return nil, err
	}
	w.pickBuildTime()
	for _, in := range w.inodes {
		if err := w.prepare(in); err != nil {
			return nil, err
		}
	}
	if err := w.layoutInodes(); err != nil {
		return nil, err
	}
	return w.serialize()
}

type writer struct {
	opts      WriteOptions
	chunkBits uint
	inodes    []*winode
	seen      map[*Node]*winode
	buildSec  int64
	buildNsec uint32
	dataStart int64 // first byte of the block data area
	size      int64
}

func bitsOf(v int64) int {
	b := 0
	for v > 1 {
		v >>= 1
		b++
	}
	return b
}

// collect assigns inodes in depth-first order, parents first, entries by name: the root gets the
// first inode (and a small nid, which the superblock's 16-bit root_nid needs).
func (w *writer) collect(n *Node, parent *winode, p string, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("erofs writer: %s: tree deeper than %d levels", p, maxDepth)
	}
	if in, ok := w.seen[n]; ok {
		if n.IsDir() {
			return fmt.Errorf("erofs writer: %s: a directory is linked twice", p)
		}
		in.nlink++
		return nil
	}
	in := &winode{n: n, ino: uint32(len(w.inodes) + 1), nlink: 1, parent: parent}
	if parent == nil {
		in.parent = in
	}
	w.seen[n] = in
	w.inodes = append(w.inodes, in)
	if !n.IsDir() {
		return nil
	}
	in.nlink = 2
	for _, name := range sortedNames(n) {
		if err := CheckName(name); err != nil {
			return fmt.Errorf("erofs writer: in %s: %w", p, err)
		}
		c := n.Children[name]
		if c == nil {
			return fmt.Errorf("erofs writer: %s: nil entry %q", p, name)
		}
		if err := w.collect(c, in, strings.TrimSuffix(p, "/")+"/"+name, depth+1); err != nil {
			return err
		}
		ci := w.seen[c]
		in.dirents = append(in.dirents, wdirent{name: name, in: ci})
		if c.IsDir() {
			in.nlink++
		}
	}
	return nil
}

// pickBuildTime makes the most common mtime the superblock's build time, so that as many inodes
// as possible can be compact (compact inodes carry no mtime of their own). Ties go to the
// earliest, so the choice is deterministic.
func (w *writer) pickBuildTime() {
	type ts struct {
		s int64
		n uint32
	}
	count := map[ts]int{}
	for _, in := range w.inodes {
		count[ts{in.n.Mtime, in.n.MtimeNsec}]++
	}
	best, bestN := ts{}, -1
	for k, c := range count {
		if c > bestN || c == bestN && (k.s < best.s || k.s == best.s && k.n < best.n) {
			best, bestN = k, c
		}
	}
	w.buildSec, w.buildNsec = best.s, best.n
}

// prepare computes an inode's xattrs, data and size class.
func (w *writer) prepare(in *winode) error {
	n := in.n
	x, err := encodeXattrs(n.Xattrs)
	if err != nil {
		return fmt.Errorf("erofs writer: inode %d: %w", in.ino, err)
	}
	in.xattrs = x
	in.ext = n.UID > compactMaxID || n.GID > compactMaxID || in.nlink > compactMaxLinks ||
		n.Mtime != w.buildSec || n.MtimeNsec != w.buildNsec || n.Mtime < 0
	in.layout = layoutFlatPlain
	in.rawBlk = nullAddr
	switch n.Mode & ModeTypeMask {
	case ModeRegular:
		if n.Size < 0 {
			return fmt.Errorf("erofs writer: inode %d: negative size", in.ino)
		}
		if n.Size > compactMaxSize {
			in.ext = true
		}
		if n.Size > 0 {
			want := (n.Size + int64(1)<<w.chunkBits - 1) >> w.chunkBits
			if int64(len(n.Chunks)) != want {
				return fmt.Errorf("erofs writer: inode %d: %d bytes need %d chunks, %d given", in.ino, n.Size, want, len(n.Chunks))
			}
			for i, c := range n.Chunks {
				if c.Hole {
					continue
				}
				if c.Device < 1 || c.Device > len(w.opts.Devices) {
					return fmt.Errorf("erofs writer: inode %d chunk %d: device %d, image has %d", in.ino, i, c.Device, len(w.opts.Devices))
				}
				clen := min(int64(1)<<w.chunkBits, n.Size-int64(i)<<w.chunkBits)
				if c.Offset < 0 || c.Offset%writerBlockSize != 0 || c.Offset+clen > w.opts.Devices[c.Device-1].Size {
					return fmt.Errorf("erofs writer: inode %d chunk %d: offset %d not block-aligned or past device %d's end", in.ino, i, c.Offset, c.Device)
				}
			}
			in.layout = layoutChunkBased
		}
	case ModeDir:
		in.data = w.dirBlocks(in)
	case ModeSymlink:
		if len(n.Target) == 0 || len(n.Target) > maxSymlinkTarget {
			return fmt.Errorf("erofs writer: inode %d: symlink target of %d bytes (1..%d)", in.ino, len(n.Target), maxSymlinkTarget)
		}
		in.data = []byte(n.Target)
	case ModeChar, ModeBlock, ModeFifo, ModeSocket:
	default:
		return fmt.Errorf("erofs writer: inode %d: unknown file type in mode %#o", in.ino, n.Mode)
	}
	return nil
}

func (in *winode) isize() int64 {
	if in.ext {
		return extendedInodeSize
	}
	return compactInodeSize
}

// dirBlocks encodes a directory: entries sorted by name ("." and ".." among them), packed into
// blocks of dirents followed by their names. Every block but the last is padded to the block size;
// the last ends at its last name (the directory's size).
func (w *writer) dirBlocks(in *winode) []byte {
	ents := append([]wdirent{{".", in}, {"..", in.parent}}, in.dirents...)
	sort.Slice(ents, func(i, j int) bool { return ents[i].name < ents[j].name })
	var out []byte
	for i := 0; i < len(ents); {
		j, used := i, 0
		for j < len(ents) && used+direntSize+len(ents[j].name) <= writerBlockSize {
			used += direntSize + len(ents[j].name)
			j++
		}
		blk := make([]byte, used)
		nameOff := (j - i) * direntSize
		for k := i; k < j; k++ {
			d := blk[(k-i)*direntSize:]
			// The nid is filled in at serialization, once every inode is placed.
			binary.LittleEndian.PutUint16(d[8:], uint16(nameOff))
			d[10] = fileType(ents[k].in.n.Mode)
			copy(blk[nameOff:], ents[k].name)
			nameOff += len(ents[k].name)
		}
		if j < len(ents) {
			blk = append(blk, make([]byte, writerBlockSize-used)...)
		}
		out = append(out, blk...)
		i = j
	}
	in.dirents = ents // in on-disk order, for filling nids
	return out
}

func fileType(mode uint32) uint8 {
	switch mode & ModeTypeMask {
	case ModeRegular:
		return ftReg
	case ModeDir:
		return ftDir
	case ModeChar:
		return ftChr
	case ModeBlock:
		return ftBlk
	case ModeFifo:
		return ftFifo
	case ModeSocket:
		return ftSock
	case ModeSymlink:
		return ftSymlink
	}
	return ftUnknown
}

// encodeXattrs builds the inline xattr area: the 12-byte ibody header (no shared xattrs), then each
// entry {name_len u8, name_index u8, value_size u16, name suffix, value} padded to 4 bytes, in
// name order. Names need one of the prefixes EROFS indexes: user., trusted., security. and the
// two POSIX ACL names.
func encodeXattrs(x map[string][]byte) ([]byte, error) {
	if len(x) == 0 {
		return nil, nil
	}
	names := make([]string, 0, len(x))
	for k := range x {
		names = append(names, k)
	}
	sort.Strings(names)
	out := make([]byte, xattrHeaderSize)
	for _, name := range names {
		idx, suffix, ok := xattrIndex(name)
		if !ok {
			return nil, fmt.Errorf("xattr %q: EROFS stores only user., trusted., security. and POSIX ACL xattrs", name)
		}
		v := x[name]
		if len(suffix) > 255 || len(v) > 0xFFFF {
			return nil, fmt.Errorf("xattr %q: name or value (%d bytes) too long", name, len(v))
		}
		e := []byte{byte(len(suffix)), idx, 0, 0}
		binary.LittleEndian.PutUint16(e[2:], uint16(len(v)))
		e = append(append(e, suffix...), v...)
		for len(e)%4 != 0 {
			e = append(e, 0)
		}
		out = append(out, e...)
	}
	if len(out) > maxInlineXattrBytes {
		return nil, fmt.Errorf("xattrs take %d bytes, more than %d", len(out), maxInlineXattrBytes)
	}
	return out, nil
}

// XattrStorable reports whether EROFS can store an xattr of this name.
func XattrStorable(name string) bool {
	_, _, ok := xattrIndex(name)
	return ok
}

func xattrIndex(name string) (uint8, string, bool) {
	switch name {
	case "system.posix_acl_access":
		return xattrIndexACLAccess, "", true
	case "system.posix_acl_default":
		return xattrIndexACLDefault, "", true
	}
	for _, p := range []struct {
		prefix string
		idx    uint8
	}{{"user.", xattrIndexUser}, {"trusted.", xattrIndexTrusted}, {"security.", xattrIndexSecurity}} {
		if s, ok := strings.CutPrefix(name, p.prefix); ok && s != "" {
			return p.idx, s, true
		}
	}
	return 0, "", false
}

// layoutInodes places every inode in its 32-byte-aligned slot, deciding which data goes inline,
// and then the block data area.
func (w *writer) layoutInodes() error {
	pos := int64(devtSlotOff*deviceSlotSize + len(w.opts.Devices)*deviceSlotSize)
	pos = roundUp(pos, nidSlot)
	for _, in := range w.inodes {
		head := in.isize() + int64(len(in.xattrs))
		switch in.layout {
		case layoutChunkBased:
			nchunks := int64(len(in.n.Chunks))
			in.metaLen = roundUp(head, chunkIndexEntrySize) + nchunks*chunkIndexEntrySize
		default:
			size := int64(len(in.data))
			tail := size % writerBlockSize
			if size > 0 && tail > 0 && head+tail <= writerBlockSize {
				// Inline the tail: inode, xattrs and tail must share one block (the kernel's
				// rule), so start a new block if they would not.
				if pos%writerBlockSize+head+tail > writerBlockSize {
					pos = roundUp(pos, writerBlockSize)
				}
				in.layout = layoutFlatInline
				in.inline = tail
			}
			in.metaLen = head + in.inline
		}
		// Keep the inode and its xattrs in one block when they fit in one, so that no reader
		// has to stitch them together.
		if head <= writerBlockSize && pos%writerBlockSize+head > writerBlockSize {
			pos = roundUp(pos, writerBlockSize)
		}
		if (pos-superblockBlock)%nidSlot != 0 {
			return fmt.Errorf("erofs writer: inode %d misaligned at %d", in.ino, pos)
		}
		in.nid = uint64(pos / nidSlot)
		pos += roundUp(in.metaLen, nidSlot)
	}
	if w.inodes[0].nid > maxRootNid {
		return fmt.Errorf("erofs writer: root nid %d does not fit the superblock", w.inodes[0].nid)
	}
	pos = roundUp(pos, writerBlockSize)
	w.dataStart = pos
	for _, in := range w.inodes {
		plain := int64(len(in.data)) - in.inline
		if plain > 0 {
			if pos>>writerBlockBits > 0xFFFFFFFE {
				return fmt.Errorf("erofs writer: metadata larger than the block address space")
			}
			in.rawBlk = uint32(pos >> writerBlockBits)
			pos += roundUp(plain, writerBlockSize)
		}
	}
	if pos > maxBootstrapBytes {
		return fmt.Errorf("erofs writer: bootstrap of %d bytes is too large", pos)
	}
	if pos < writerBlockSize {
		pos = writerBlockSize
	}
	w.size = pos
	return nil
}

func (w *writer) serialize() ([]byte, error) {
	img := make([]byte, w.size)
	le := binary.LittleEndian
	for _, in := range w.inodes {
		n := in.n
		off := int64(in.nid) * nidSlot
		b := img[off : off+in.metaLen]
		format := uint16(in.layout << 1)
		if in.ext {
			format |= 1
		}
		le.PutUint16(b[0:], format)
		if len(in.xattrs) > 0 {
			le.PutUint16(b[2:], uint16((len(in.xattrs)-xattrHeaderSize)/4+1))
		}
		le.PutUint16(b[4:], uint16(n.Mode))
		size := n.Size
		if !n.IsRegular() {
			size = int64(len(in.data))
		}
		var iu uint32
		switch {
		case in.layout == layoutChunkBased:
			iu = uint32(w.chunkBits-writerBlockBits) | chunkFormatIndexes
		case n.Mode&ModeTypeMask == ModeChar || n.Mode&ModeTypeMask == ModeBlock:
			iu = n.RdevMinor&0xff | n.RdevMajor<<8 | (n.RdevMinor&^0xff)<<12
		default:
			iu = in.rawBlk
		}
		if in.ext {
			le.PutUint64(b[8:], uint64(size))
			le.PutUint32(b[16:], iu)
			le.PutUint32(b[20:], in.ino)
			le.PutUint32(b[24:], n.UID)
			le.PutUint32(b[28:], n.GID)
			le.PutUint64(b[32:], uint64(n.Mtime))
			le.PutUint32(b[40:], n.MtimeNsec)
			le.PutUint32(b[44:], in.nlink)
		} else {
			le.PutUint16(b[6:], uint16(in.nlink))
			le.PutUint32(b[8:], uint32(size))
			le.PutUint32(b[16:], iu)
			le.PutUint32(b[20:], in.ino)
			le.PutUint16(b[24:], uint16(n.UID))
			le.PutUint16(b[26:], uint16(n.GID))
		}
		p := in.isize()
		copy(b[p:], in.xattrs)
		p += int64(len(in.xattrs))
		if in.layout == layoutChunkBased {
			p = roundUp(off+p, chunkIndexEntrySize) - off
			for _, c := range n.Chunks {
				e := b[p : p+chunkIndexEntrySize]
				if c.Hole {
					le.PutUint32(e[4:], nullAddr)
				} else {
					le.PutUint16(e[2:], uint16(c.Device))
					le.PutUint32(e[4:], uint32(c.Offset>>writerBlockBits))
				}
				p += chunkIndexEntrySize
			}
			continue
		}
		if n.IsDir() {
			// Fill in the nids now that every inode is placed.
			for blk, k := 0, 0; blk < len(in.data); blk += writerBlockSize {
				d := in.data[blk:min(blk+writerBlockSize, len(in.data))]
				cnt := int(le.Uint16(d[8:])) / direntSize
				for i := range cnt {
					le.PutUint64(d[i*direntSize:], in.dirents[k].in.nid)
					k++
				}
			}
		}
		plain := int64(len(in.data)) - in.inline
		copy(b[p:], in.data[plain:])
		if plain > 0 {
			copy(img[int64(in.rawBlk)<<writerBlockBits:], in.data[:plain])
		}
	}
	// Superblock.
	sb := img[superOffset : superOffset+superSize]
	le.PutUint32(sb[0:], erofsMagic)
	le.PutUint32(sb[8:], featureCompatCRC)
	sb[12] = writerBlockBits
	le.PutUint16(sb[14:], uint16(w.inodes[0].nid))
	le.PutUint64(sb[16:], uint64(len(w.inodes)))
	le.PutUint64(sb[24:], uint64(w.buildSec))
	le.PutUint32(sb[32:], w.buildNsec)
	le.PutUint32(sb[36:], uint32(w.size>>writerBlockBits))
	le.PutUint32(sb[40:], 0) // meta_blkaddr: nids count from block 0
	le.PutUint32(sb[44:], 0) // no shared xattrs
	incompat := uint32(incompatChunkedFile)
	if len(w.opts.Devices) > 0 {
		incompat |= incompatDeviceTable
	}
	le.PutUint32(sb[80:], incompat)
	le.PutUint16(sb[86:], uint16(len(w.opts.Devices)))
	le.PutUint16(sb[88:], devtSlotOff)
	for i, d := range w.opts.Devices {
		s := img[devtSlotOff*deviceSlotSize+i*deviceSlotSize:]
		copy(s[:64], d.Tag)
		le.PutUint32(s[64:], uint32(d.Size>>writerBlockBits))
	}
	// crc32c of the superblock's block from byte 1024 on, checksum field zero (see checkSuperblockCRC).
	le.PutUint32(sb[4:], ^crc32.Checksum(img[superOffset:writerBlockSize], castagnoli))
	return img, nil
}
