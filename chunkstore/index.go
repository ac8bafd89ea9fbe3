package chunkstore

import (
	"encoding/binary"
	"fmt"

	"github.com/ipfs/go-cid"
	"github.com/opencontainers/go-digest"
)

// Index layout in badger. Digest strings never contain NUL, so NUL ends a digest inside a key.
//
//	B <digest>                          -> blobRecord (encodeBlobRecord)
//	M <digest>                          -> chunk manifest (encodeIndexManifest; JSON in older indexes)
//	P <digest> 0x00 <be64 offset>       -> presentValue: the chunk at offset is present
//	C <u8 len> <cid> <digest> 0x00 <be64 offset> -> be64 length: a location holding the CID
//	N <digest> 0x00 <image>             -> empty: image pins digest
//	S <name>                            -> be64 counter
//
// P and C keys of one chunk are always written and deleted in the same transaction.
const (
	pfxBlob     = 'B'
	pfxManifest = 'M'
	pfxPresent  = 'P'
	pfxCID      = 'C'
	pfxPin      = 'N'
	pfxStat     = 'S'
)

const recordVersion = 1

// blobRecord is the persistent per-blob state.
type blobRecord struct {
	Size           int64
	ManifestDigest digest.Digest
	PresentBytes   int64 // sum of the lengths of present chunks
	PresentChunks  int64
	LastAccess     int64 // unix nanoseconds
	// Sig is the backing file's identity and change time when the index was last known to match
	// it (written at Close). A file whose Sig differs at Open is reconciled.
	Sig fileSig
}

type fileSig struct {
	Ino, Size, CtimeNs int64
}

func blobKey(d digest.Digest) []byte     { return append([]byte{pfxBlob}, d...) }
func manifestKey(d digest.Digest) []byte { return append([]byte{pfxManifest}, d...) }

func presentPrefix(d digest.Digest) []byte {
	k := make([]byte, 0, 2+len(d)+8)
	k = append(k, pfxPresent)
	k = append(k, d...)
	return append(k, 0)
}

func presentKey(d digest.Digest, off int64) []byte {
	return binary.BigEndian.AppendUint64(presentPrefix(d), uint64(off))
}

func cidPrefix(c cid.Cid) []byte {
	b := c.Bytes()
	k := make([]byte, 0, 2+len(b)+80)
	k = append(k, pfxCID, byte(len(b)))
	return append(k, b...)
}

func cidKey(c cid.Cid, d digest.Digest, off int64) []byte {
	k := append(cidPrefix(c), d...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, uint64(off))
}

func pinPrefix(d digest.Digest) []byte { return append(append([]byte{pfxPin}, d...), 0) }
func pinKey(d digest.Digest, image string) []byte {
	return append(pinPrefix(d), image...)
}
func statKey(name string) []byte { return append([]byte{pfxStat}, name...) }

func be64(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

func decodeBE64(b []byte) (int64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("index value: %d bytes, want 8: %w", len(b), ErrCorrupt)
	}
	return int64(binary.BigEndian.Uint64(b)), nil
}

func encodeBlobRecord(r blobRecord) []byte {
	b := []byte{recordVersion}
	b = binary.AppendVarint(b, r.Size)
	b = binary.AppendUvarint(b, uint64(len(r.ManifestDigest)))
	b = append(b, r.ManifestDigest...)
	for _, v := range []int64{r.PresentBytes, r.PresentChunks, r.LastAccess, r.Sig.Ino, r.Sig.Size, r.Sig.CtimeNs} {
		b = binary.AppendVarint(b, v)
	}
	return b
}

func decodeBlobRecord(b []byte) (blobRecord, error) {
	var r blobRecord
	bad := func(what string) (blobRecord, error) {
		return blobRecord{}, fmt.Errorf("blob record: bad %s: %w", what, ErrCorrupt)
	}
	if len(b) == 0 || b[0] != recordVersion {
		return bad("version")
	}
	b = b[1:]
	varint := func(dst *int64) bool {
		v, n := binary.Varint(b)
		if n <= 0 {
			return false
		}
		*dst, b = v, b[n:]
		return true
	}
	if !varint(&r.Size) || r.Size < 0 {
		return bad("size")
	}
	l, n := binary.Uvarint(b)
	if n <= 0 || l > uint64(len(b)-n) {
		return bad("manifest digest")
	}
	r.ManifestDigest = digest.Digest(b[n : n+int(l)])
	b = b[n+int(l):]
	for _, p := range []*int64{&r.PresentBytes, &r.PresentChunks, &r.LastAccess, &r.Sig.Ino, &r.Sig.Size, &r.Sig.CtimeNs} {
		if !varint(p) {
			return bad("counters")
		}
	}
	if len(b) != 0 {
		return bad("trailing bytes")
	}
	if r.PresentBytes < 0 || r.PresentChunks < 0 {
		return bad("counters")
	}
	return r, nil
}

// presentValue is what a P key holds: the chunk's length and CID.
func encodePresent(length int64, c cid.Cid) []byte {
	return append(binary.AppendUvarint(nil, uint64(length)), c.Bytes()...)
}

func decodePresent(b []byte) (int64, cid.Cid, error) {
	l, n := binary.Uvarint(b)
	if n <= 0 || l == 0 || l > 1<<40 {
		return 0, cid.Undef, fmt.Errorf("present record: bad length: %w", ErrCorrupt)
	}
	c, err := cid.Cast(b[n:])
	if err != nil {
		return 0, cid.Undef, fmt.Errorf("present record: bad cid: %w: %w", ErrCorrupt, err)
	}
	return int64(l), c, nil
}

// decodePresentKey returns the offset in a P key of blob d.
func decodePresentKey(k []byte, d digest.Digest) (int64, error) {
	if len(k) != 2+len(d)+8 || k[0] != pfxPresent || string(k[1:1+len(d)]) != string(d) || k[1+len(d)] != 0 {
		return 0, fmt.Errorf("present key %q: %w", k, ErrCorrupt)
	}
	off := int64(binary.BigEndian.Uint64(k[len(k)-8:]))
	if off < 0 {
		return 0, fmt.Errorf("present key %q: negative offset: %w", k, ErrCorrupt)
	}
	return off, nil
}

// decodeCIDKey returns the blob and offset of a C key.
func decodeCIDKey(k []byte) (cid.Cid, digest.Digest, int64, error) {
	bad := fmt.Errorf("cid key %q: %w", k, ErrCorrupt)
	if len(k) < 2 || k[0] != pfxCID {
		return cid.Undef, "", 0, bad
	}
	l := int(k[1])
	if len(k) < 2+l+1+8 {
		return cid.Undef, "", 0, bad
	}
	c, err := cid.Cast(k[2 : 2+l])
	if err != nil {
		return cid.Undef, "", 0, bad
	}
	rest := k[2+l:]
	d := rest[:len(rest)-9]
	if rest[len(rest)-9] != 0 || len(d) == 0 {
		return cid.Undef, "", 0, bad
	}
	for _, ch := range d {
		if ch == 0 {
			return cid.Undef, "", 0, bad
		}
	}
	off := int64(binary.BigEndian.Uint64(rest[len(rest)-8:]))
	if off < 0 {
		return cid.Undef, "", 0, bad
	}
	return c, digest.Digest(d), off, nil
}
