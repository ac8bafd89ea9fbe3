// Package bootstrap reads and builds Shoal images.
//
// A Shoal image is an EROFS filesystem split into a small bootstrap (superblock, inodes,
// directories, chunk indexes) and one or more data blobs (EROFS extra devices), packaged as an
// OCI image layout whose manifest also lists one chunk manifest per blob:
//
//	manifest (artifactType application/vnd.shoal.image.v1)
//	  layers: bootstrap (…erofs.bootstrap.v1), blob k (…erofs.blob.v1, dev.shoal.device=k),
//	          chunk manifest of blob k (…chunks.v1+json, dev.shoal.blob=<blob digest>)
//
// This package owns:
//   - the EROFS reader (Open, FS): superblock with its crc32c check, device table, compact and
//     extended inodes, xattr areas (skipped), directories, inline/plain/chunk-based layouts, and
//     for any file where its bytes live (Extents). Every field read from an image is bounds-checked
//     and no allocation is sized by an untrusted field; malformed input yields a *FormatError
//     naming the structure and byte offset (errors.Is(err, ErrFormat)). Walks are bounded: loops,
//     depth and overlapping chunk tables are errors, not hangs.
//   - chunk manifests (ChunkManifests, of package chunk's types): for each blob the sorted, disjoint list
//     of chunks file data occupies, each {offset, length, CID}, the length rounded up to the 4 KiB
//     block, the CID a CIDv1 (raw codec, sha2-256) of exactly those bytes. Chunk-indexed images
//     (Shoal's own builds) use the EROFS chunks themselves (ChunkingEROFS), so identical file
//     content has identical CIDs in every image; other images fall back to fixed-size pieces of
//     each blob (ChunkingFixed).
//   - image building (Build), which drives mkfs.erofs (--chunksize, --blobdev,
//     -Eforce-chunk-indexes, 4 KiB blocks), and the OCI layout (Layout, ParseImage).
//
// It does not fetch, cache or mount anything.
//
//	res, err := bootstrap.Build(ctx, "rootfs/", "out/img", bootstrap.BuildOptions{})
//	im, _, err := bootstrap.Layout{Dir: "out/img"}.ReadImage("")
//	for _, c := range im.Blobs[0].Manifest.ChunksIn(off, n) { ... }
package bootstrap
