package convert

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"sync/atomic"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/chunk"
)

// Whiteout names of the OCI layer format (image-spec layer.md, "Whiteouts").
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
	paxXattr       = "SCHILY.xattr."
)

// ErrBadLayer is wrapped by every error about a source layer that is not a valid layer: corrupt
// or truncated compression, a tar entry that escapes the root or names what does not exist, a
// name EROFS cannot hold, a digest that does not match.
var ErrBadLayer = errors.New("bad source layer")

// diffEntry is one tar entry of a layer, as it will be applied.
type diffEntry struct {
	path     string          // cleaned, relative; "" is the root
	node     *bootstrap.Node // nil for a hard link
	linkPath string          // a hard link's target (cleaned)
}

// layerDiff is what a layer changes, read in full before it is applied: its entries in tar
// order, and the whiteouts and opaque directories, which apply to the lower layers only.
type layerDiff struct {
	entries   []diffEntry
	whiteouts []string
	opaques   []string
	notes     []string
	// The layer's data blob, when it has file data.
	blobPath string
	blob     digest.Digest
	manifest *chunk.Manifest
	files    int
	bytes    int64 // regular-file bytes
}

// cleanName turns a tar entry name into a path relative to the root, refusing absolute names,
// ".." components and components EROFS cannot hold. "./" and trailing slashes are dropped.
func cleanName(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("entry %q: absolute path: %w", name, ErrBadLayer)
	}
	var parts []string
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return "", fmt.Errorf("entry %q: '..' in the path: %w", name, ErrBadLayer)
		}
		if err := bootstrap.CheckName(c); err != nil {
			return "", fmt.Errorf("entry %q: %v: %w", name, err, ErrBadLayer)
		}
		parts = append(parts, c)
	}
	return strings.Join(parts, "/"), nil
}

// countingReader counts the bytes read through it (for progress, read from another goroutine)
// and stops at the context's end (a local layout's file does not watch it).
type countingReader struct {
	ctx context.Context
	r   io.Reader
	n   *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// decompress sniffs the stream's magic bytes: gzip, zstd, else an uncompressed tar. Registries and
// builders mislabel compression often enough that the bytes decide, not the media type.
func decompress(r *bufio.Reader) (io.Reader, func(), error) {
	magic, err := r.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, func() { _ = zr.Close() }, nil
	case len(magic) == 4 && magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd:
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(false))
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	}
	return r, func() {}, nil
}

// readLayer reads one layer stream (compressed or not) to its end: regular-file data goes
// through the chunker into the layer's blob sink as it streams, the rest is kept as a layerDiff.
// The uncompressed stream must hash to diffID.
func readLayer(compressed io.Reader, diffID digest.Digest, ch *bootstrap.Chunker) (*layerDiff, error) {
	br := bufio.NewReaderSize(compressed, 1<<20)
	dr, closeDR, err := decompress(br)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrBadLayer)
	}
	defer closeDR()
	h := sha256.New()
	tee := io.TeeReader(dr, h)
	tr := tar.NewReader(tee)
	d := &layerDiff{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading tar: %w: %w", err, ErrBadLayer)
		}
		if err := d.add(hdr, tr, ch); err != nil {
			return nil, err
		}
	}
	// The tar's end-of-archive blocks and any padding after them count toward the diff ID.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return nil, fmt.Errorf("reading after the tar's end: %w: %w", err, ErrBadLayer)
	}
	if diffID != "" {
		if got := digest.NewDigest(digest.SHA256, h); got != diffID {
			return nil, fmt.Errorf("uncompressed content hashes to %s, the config's diff_id is %s: %w", got, diffID, ErrBadLayer)
		}
	}
	// Drain the compressed stream: the source checks its digest at the end.
	if _, err := io.Copy(io.Discard, br); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *layerDiff) add(hdr *tar.Header, r io.Reader, ch *bootstrap.Chunker) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	p, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	dir, base := path.Split(p)
	dir = strings.TrimSuffix(dir, "/")
	if strings.HasPrefix(base, whiteoutPrefix) {
		switch {
		case base == whiteoutOpaque:
			d.opaques = append(d.opaques, dir)
		case strings.HasPrefix(base, whiteoutMeta):
			// Reserved for the format's own metadata (aufs hard-link dirs): never content.
		default:
			target := base[len(whiteoutPrefix):]
			if err := bootstrap.CheckName(target); err != nil {
				return fmt.Errorf("whiteout %q: %v: %w", hdr.Name, err, ErrBadLayer)
			}
			d.whiteouts = append(d.whiteouts, path.Join(dir, target))
		}
		return nil
	}
	n := &bootstrap.Node{
		Mode: uint32(hdr.Mode) & 0o7777, UID: uint32(hdr.Uid), GID: uint32(hdr.Gid),
		Mtime: hdr.ModTime.Unix(), MtimeNsec: uint32(hdr.ModTime.Nanosecond()),
	}
	if hdr.Uid < 0 || hdr.Gid < 0 || int64(hdr.Uid) > 1<<32-1 || int64(hdr.Gid) > 1<<32-1 {
		return fmt.Errorf("entry %q: owner %d:%d out of range: %w", hdr.Name, hdr.Uid, hdr.Gid, ErrBadLayer)
	}
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, paxXattr)
		if !ok {
			continue
		}
		if n.Xattrs == nil {
			n.Xattrs = map[string][]byte{}
		}
		n.Xattrs[name] = []byte(v)
	}
	if err := d.checkXattrs(p, n); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeReg:
		n.Mode |= bootstrap.ModeRegular
		if hdr.Size < 0 {
			return fmt.Errorf("entry %q: negative size: %w", hdr.Name, ErrBadLayer)
		}
		n.Size = hdr.Size
		n.Chunks, err = ch.AddFile(r, hdr.Size, "entry "+p)
		if errors.Is(err, bootstrap.ErrRead) {
			return fmt.Errorf("%w: %w", err, ErrBadLayer)
		}
		if err != nil {
			return err
		}
		d.files++
		d.bytes += hdr.Size
	case tar.TypeDir:
		n.Mode |= bootstrap.ModeDir
		n.Children = map[string]*bootstrap.Node{}
	case tar.TypeSymlink:
		n.Mode |= bootstrap.ModeSymlink
		if hdr.Linkname == "" {
			return fmt.Errorf("entry %q: symlink with an empty target: %w", hdr.Name, ErrBadLayer)
		}
		n.Target = hdr.Linkname
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hard link %q: %w", hdr.Name, err)
		}
		d.entries = append(d.entries, diffEntry{path: p, linkPath: target})
		return nil
	case tar.TypeChar, tar.TypeBlock:
		n.Mode |= bootstrap.ModeChar
		if hdr.Typeflag == tar.TypeBlock {
			n.Mode = n.Mode&^bootstrap.ModeTypeMask | bootstrap.ModeBlock
		}
		if hdr.Devmajor < 0 || hdr.Devminor < 0 || hdr.Devmajor > 0xfff || hdr.Devminor > 0xfffff {
			return fmt.Errorf("entry %q: device %d:%d out of range: %w", hdr.Name, hdr.Devmajor, hdr.Devminor, ErrBadLayer)
		}
		n.RdevMajor, n.RdevMinor = uint32(hdr.Devmajor), uint32(hdr.Devminor)
	case tar.TypeFifo:
		n.Mode |= bootstrap.ModeFifo
	default:
		return fmt.Errorf("entry %q: tar entry type %q is not supported: %w", hdr.Name, hdr.Typeflag, ErrBadLayer)
	}
	if p == "" && !n.IsDir() {
		return fmt.Errorf("entry %q: the root must be a directory: %w", hdr.Name, ErrBadLayer)
	}
	d.entries = append(d.entries, diffEntry{path: p, node: n})
	return nil
}

// checkXattrs drops, with a note, xattrs EROFS has no name index for (all but user., trusted.,
// security. and the POSIX ACLs), so that one odd attribute does not fail a conversion.
func (d *layerDiff) checkXattrs(p string, n *bootstrap.Node) error {
	for k, v := range n.Xattrs {
		if len(v) > 0xFFFF {
			return fmt.Errorf("entry %q: xattr %s of %d bytes: %w", p, k, len(v), ErrBadLayer)
		}
		if !bootstrap.XattrStorable(k) {
			d.notes = append(d.notes, fmt.Sprintf("%s: xattr %s left out (EROFS cannot store it)", p, k))
			delete(n.Xattrs, k)
		}
	}
	return nil
}
