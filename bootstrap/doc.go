// Package bootstrap reads and builds Shoal images.
//
// A Shoal image is an EROFS filesystem split into a small bootstrap (superblock, inodes,
// directories, chunk indexes) and one or more data blobs, packaged as an OCI image layout whose
// manifest also lists one chunk manifest per blob.
//
// This package owns:
//   - the EROFS reader (Open, Image): superblock with crc32c check, device table, compact and
//     extended inodes, directories, inline/plain/chunk-based layouts. Every field read from an image
//     is bounds-checked; malformed input yields a *FormatError naming the structure and offset.
//   - chunk manifests (Manifest, Chunk): for each blob the sorted, deduplicated list of chunks file
//     data occupies, each named by a CIDv1 (raw codec, sha2-256) of its exact bytes.
//   - image building (Build), which drives mkfs.erofs, and the OCI layout format (media types,
//     WriteLayout, ReadLayout).
//
// It does not fetch, cache or mount anything.
package bootstrap
