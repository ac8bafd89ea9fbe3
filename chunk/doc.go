// Package chunk holds the types every layer of Shoal shares about content-addressed chunks: a
// Chunk (offset, length and CID within a blob), a blob's chunk Manifest, byte Ranges, where a
// chunk's bytes came from (Source), and the one way a chunk's bytes are checked against its CID
// (Verify, which returns the bytes as Verified: a type only Verify makes, so code that receives a
// Verified knows the hash was done and does not do it again).
//
// It is a leaf: it imports nothing of Shoal's, so bootstrap (which derives manifests from EROFS
// images), chunkstore, origin, p2p and demand share these types without importing each other.
//
//	id := chunk.CID(data)                 // CIDv1, raw codec, sha2-256
//	v, err := chunk.Verify(id, data)      // errors.Is(err, chunk.ErrCorrupt) on a mismatch
//	m, err := chunk.ParseManifest(b)      // a blob's chunk manifest, validated
//	for _, c := range m.ChunksIn(off, n) { ... }
package chunk
