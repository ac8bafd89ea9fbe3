package bootstrap

import (
	"fmt"
	"io"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
)

// DeviceReader reads the uncompressed blob (the EROFS device) of a blob stored as its manifest
// says: for schema 1 the stored blob is the device; for schema 2 every chunk a read touches is
// read at its stored range, decoded and verified against its CID. Bytes no chunk covers read as
// zeros. It is for tools and tests that read an image straight from a layout (the daemon reads
// devices from the store, which holds them uncompressed).
func DeviceReader(stored io.ReaderAt, m *chunk.Manifest) io.ReaderAt {
	if m.SchemaVersion != chunk.ManifestSchemaStored {
		return stored
	}
	d, err := zchunk.DictOf(m)
	return &deviceReader{r: stored, m: m, dict: d, dictErr: err}
}

type deviceReader struct {
	r       io.ReaderAt
	m       *chunk.Manifest
	dict    *zchunk.Dict // m's dictionary, nil if it has none
	dictErr error
}

func (d *deviceReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("blob %s: negative offset %d", d.m.Blob, off)
	}
	if off >= d.m.BlobSize {
		return 0, io.EOF
	}
	if d.dictErr != nil {
		return 0, d.dictErr
	}
	n := int(min(int64(len(p)), d.m.BlobSize-off))
	clear(p[:n])
	for _, c := range d.m.ChunksIn(off, int64(n)) {
		s := c.Stored()
		buf := make([]byte, s.Length)
		if k, err := d.r.ReadAt(buf, s.Offset); int64(k) < s.Length {
			return 0, fmt.Errorf("blob %s: chunk %s stored at %d: %w", d.m.Blob, c.CID, s.Offset, orUnexpectedEOF(err))
		}
		v, err := zchunk.DecodeVerifiedWith(c, buf, d.dict)
		if err != nil {
			return 0, fmt.Errorf("blob %s: %w", d.m.Blob, err)
		}
		from, to := max(c.Offset, off), min(c.End(), off+int64(n))
		copy(p[from-off:to-off], v.Bytes()[from-c.Offset:to-c.Offset])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
