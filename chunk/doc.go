// Package chunk holds the types every layer of Shoal shares about content-addressed chunks: a
// Chunk (offset, length and CID within a blob), a blob's chunk Manifest, byte Ranges, where a
// chunk's bytes came from (Source), and the one way a chunk's bytes are checked against its CID
// (Verify, which returns the bytes as Verified: a type only Verify makes, so code that receives a
// Verified knows the hash was done and does not do it again).
//
// A manifest of schema 1 describes a blob stored as the kernel reads it. Schema 2
// (ManifestSchemaStored) describes a blob stored chunk by chunk, each chunk compressed or raw
// (Codec, decoded by package chunk/zchunk) at its own stored range (Chunk.Stored): Offset and
// Length stay the chunk's place in the uncompressed blob (the EROFS device and the store's
// backing file), the CID stays the hash of the uncompressed bytes, Blob and StoredBlobSize name
// the blob as stored (the OCI layer). Chunks of schema 1 have no stored range and no codec, so
// Stored is their own range and schema 1 manifests encode as they always have.
//
// It is a leaf: it imports nothing of Shoal's, so bootstrap (which derives manifests from EROFS
// images), chunkstore, origin, p2p and demand share these types without importing each other.
//
//	id := chunk.CID(data)                 // CIDv1, raw codec, sha2-256
//	v, err := chunk.Verify(id, data)      // errors.Is(err, chunk.ErrCorrupt) on a mismatch
//	m, err := chunk.ParseManifest(b)      // a blob's chunk manifest, validated
//	for _, c := range m.ChunksIn(off, n) { ... }
//	r := c.Stored()                        // the range to fetch from the origin
package chunk
