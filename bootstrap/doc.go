// Package bootstrap reads and builds Shoal images.
//
// A Shoal image is an EROFS filesystem split into a small bootstrap (superblock, inodes,
// directories, chunk indexes) and one or more data blobs (EROFS extra devices), packaged as an
// OCI image layout whose manifest also lists one chunk manifest per blob. The manifest is a
// runnable OCI image manifest (WriteImage, RunnableConfig):
//
//	manifest (artifactType application/vnd.shoal.image.v1)
//	  config: application/vnd.oci.image.config.v1+json, the source image's config (or a minimal
//	          one) with rootfs.diff_ids = the digests of the layers below, one each
//	  layers: blob k (…erofs.blob.v1, dev.shoal.device=k), in device order,
//	          chunk manifest of blob k (…chunks.v1+json, dev.shoal.blob=<blob digest>),
//	          bootstrap (…erofs.bootstrap.v1), last
//	  every layer: containerd.io/snapshot/shoal.layer=bootstrap|blob|chunks and
//	          containerd.io/snapshot/shoal.bootstrap=<bootstrap digest>, which containerd hands
//	          to a remote snapshotter's Prepare
//
// Manifests of the earlier form (an empty config, the bootstrap first) parse the same way
// (ParseImage keys on media types and annotations, not order). In an index a Shoal entry carries
// artifactType and platform.os.features ["shoal.image.v1"] (PlatformFeature).
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
//   - the EROFS writer (WriteEROFS over a Tree of Nodes): 4 KiB blocks, every non-empty regular
//     file chunk-indexed into the extra devices (8-byte indexes with device ids; all-zero chunks
//     are holes), compact inodes where the fields fit and the mtime is the build time (the most
//     common mtime), extended ones otherwise; directories as sorted dirent blocks with "." and
//     "..", the tail inline when it fits in the inode's block; inline xattrs (user., trusted.,
//     security., POSIX ACLs); symlinks inline or in a block; device nodes, FIFOs, sockets; hard
//     links as one inode with its link count; the superblock's crc32c. Checked by the reader,
//     fsck.erofs, dump.erofs and real file-backed kernel mounts in the tests, and fuzzed.
//   - writing data blobs: Chunker cuts file content per file from its start at the chunk size
//     (so identical content gives identical chunks and CIDs in every image, as mkfs.erofs's
//     chunk indexes do), hashes chunks on every core and hands them in order to a ChunkSink;
//     BlobWriter is the sink (identical chunks stored once, blob digest and chunk manifest
//     computed as it writes): uncompressed (schema 1), or with BuildOptions.Compression zstd each
//     chunk stored as a zstd frame where that pays and raw otherwise (chunks whose sampled byte
//     entropy says zstd cannot pay are not tried: zchunk.Incompressible) (schema 2: the chunk keeps
//     its offset in the uncompressed device, which the bootstrap's chunk indexes point at, and
//     gains a stored offset and length in the blob; the layer's digest and size are the stored
//     blob's, Manifest.BlobSize the device's). Per chunk: one read, one zero scan, one sha256,
//     one zstd encode (on the hashing workers; a repeat of a chunk already claimed by a worker is
//     not encoded again), one write plus the blob's sha256. The zstd encode is most of a build's
//     CPU time (BENCHMARKS.md), which is why the CLI's default level is 1. The blob's fsync runs
//     beside the bootstrap's writing and the image's checks, before the layout is renamed into
//     place. With BuildOptions.DictSize (the CLI's --dict-size, 128 KiB by default) a zstd
//     dictionary is first trained on the start of evenly spaced files of the tree (about 4 MiB of
//     sample; dict.go, zchunk.Train: deterministic, so a tree gives the same image every time)
//     and chunks are compressed with it (chunk.CodecZstdDict; the dictionary travels in the chunk
//     manifest, chunk.Manifest.Dict): a tree of many small files regains the context a whole
//     layer's zstd stream has (BENCHMARKS.md, issue 14). Training costs about 1 s per MiB of
//     sample on one core. The store and the kernel only ever see uncompressed devices;
//     DeviceReader reads a device straight from a stored blob (tools, tests); EncodeBlob
//     compresses an uncompressed blob (EngineMkfs with compression, convert with a dictionary).
//   - compressed metadata (metazstd.go): WriteImage adds each chunk manifest and the bootstrap
//     also as one zstd frame, a layer of its own (MediaTypeChunksZstd, MediaTypeBootstrapZstd,
//     AnnotationUncompressed naming the plain object); ParseImage fetches a chunk manifest's
//     compressed form first (checked against its own digest and, decoded and capped at the plain
//     size, the plain one's) and the plain one if that fails; Image.BootstrapZstd is for
//     loaders. The plain objects stay in every image, so readers that predate the compressed
//     forms (which ignore layers of types they do not know) read new images.
//   - image building (Build): by default the Go writer over the source tree in one pass;
//     EngineMkfs drives mkfs.erofs (--chunksize, --blobdev, -Eforce-chunk-indexes) instead and is
//     kept as the tests' oracle (the same tree gives the same CIDs either way). Debian
//     bookworm's mkfs.erofs 1.5 fails on 255-byte names; the Go writer does not.
//   - the OCI layout (Layout, LayoutWriter, ParseImage).
//
// It does not fetch, cache or mount anything.
//
//	res, err := bootstrap.Build(ctx, "rootfs/", "out/img", bootstrap.BuildOptions{})
//	im, _, err := bootstrap.Layout{Dir: "out/img"}.ReadImage("")
//	for _, c := range im.Blobs[0].Manifest.ChunksIn(off, n) { ... }
package bootstrap
