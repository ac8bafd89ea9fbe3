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
// Stored is their own range and schema 1 manifests encode as they always have. A schema 2
// manifest may carry a zstd dictionary (Manifest.Dict, at most MaxDictSize, base64 in the
// JSON) for its chunks of CodecZstdDict: inside the manifest, so the manifest's digest names it
// and a reader has it once per blob; readers that predate it refuse those chunks as an unknown
// codec (images built with --dict-size 0 have none).
//
// Sub-blocks (subblock.go): a manifest may give each chunk longer than its SubBlockSize
// (DefaultSubBlockSize, 64 KiB, from `shoal image build` and convert) the sha256 of each of the
// chunk's consecutive sub-blocks (Chunk.SubHashes, "subs" in the JSON, 32 bytes a sub-block:
// 512 bytes for a 1 MiB chunk). They let a reader that needs 4 KiB of a cold chunk use the
// sub-block that holds them as soon as that sub-block has arrived and matched its digest, instead
// of waiting for the whole chunk to cross the network and be hashed. They are over the
// uncompressed bytes, like the CID, so they are the same for schema 1 and schema 2 (compressed)
// blobs. The digests are as trustworthy as the CIDs: both come from the same content-addressed
// manifest, so a sub-block that matches is the image's byte for byte. They never replace the
// CID: a chunk is stored only once its whole bytes matched the CID, and a manifest whose digests
// disagree with its CIDs fails that check (its readers got only bytes its author named). Manifests
// without them (schema 1 and 2 both, from before) parse and work as before: readers then wait for
// the whole chunk; readers that predate them ignore the fields. Progress holds one chunk's bytes
// as they arrive: sub-blocks only after VerifySubBlock, the whole chunk only as a Verified, so
// nothing unverified reaches a reader. Cost: the digests make a chunk manifest about 5 times
// larger (about 840 bytes per 1 MiB chunk), so bootstrap's 16 MiB cap on a chunk manifest holds
// blobs up to about 19 GiB at 1 MiB chunks (it was about 100 GiB).
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
