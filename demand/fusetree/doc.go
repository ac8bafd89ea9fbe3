// Package fusetree is Shoal's mount mode for any kernel with FUSE: Shoal serves the image's
// filesystem tree itself, from the bootstrap (package bootstrap's EROFS reader), and file data
// through the Resolver, so the kernel needs neither EROFS, nor cachefiles on-demand mode, nor
// fanotify pre-content events. One FUSE mount per mounted image, at the image's mountpoint,
// type "fuse.shoaltree", source the bootstrap's path.
//
// It owns that FUSE server (go-fuse v2, raw API). It fetches nothing itself (the Resolver does),
// does not write the store and does not parse EROFS itself (package bootstrap does).
//
// Semantics are the image's, read-only: directories, regular files, symlinks, hard links (one
// inode number, st_ino = nid+1, stable across mounts), device nodes, FIFOs, sockets, modes,
// owners, setuid/setgid/sticky bits, nanosecond mtimes, xattrs inline and shared with long name
// prefixes (security.capability, trusted.overlay.*: an overlay stacked on it behaves as on
// EROFS), statfs. The kernel checks permissions itself (default_permissions); the mount is
// MS_RDONLY|MS_NOSUID|MS_NODEV, as the EROFS modes' mounts are.
//
// Speed: the node ID is the nid plus 2 (root: 1), so lookups need no table and Forget nothing;
// lookups binary-search directory blocks as the kernel's EROFS does; the bootstrap is held in
// memory. The kernel keeps entries, attributes, negative lookups, symlink targets, directory
// listings (FOPEN_CACHE_DIR) and file pages (FOPEN_KEEP_CACHE, explicit invalidation only) for
// Config.CacheTimeout: the image never changes, and a warm read never reaches the server.
// readdirplus answers `ls -l` and `find` without lookups; reads are up to 1016 KiB (max_pages
// 254) and the mount's readahead window is eight such requests; requests are served
// concurrently.
//
// The read path, per FUSE read: one inode decode from memory, the chunk-table entries of the
// range only (ExtentsAt) mapped to runs (consecutive bytes of one device), then:
//   - a request that is one run of one blob (a large file's data is contiguous in its blob):
//     one Resolver.Ensure, then one cachestat(2) of the run in the blob's backing file. If the
//     page cache holds it all (chunks fetched moments before), the answer is spliced from the
//     backing file (fuse.ReadResultFd): the kernel moves page references into a pipe and
//     copies once into the FUSE page cache. If not (a cold read), the run is read with O_DIRECT
//     (direct.go): whole pages spliced from an O_DIRECT descriptor, so the disk DMAs into the
//     kernel's pipe pages and the one copy is /dev/fuse's; a file's partial last page through
//     a page-aligned buffer. The blob's bytes are then cached once, in the FUSE file's page
//     cache, not also in the backing file's, and the daemon allocates no backing-file folios;
//     the kernel's FUSE readahead keeps eight such reads in flight, which is the disk's queue
//     depth. Where the filesystem refuses O_DIRECT, the run is spliced after a read-ahead hint
//     (POSIX_FADV_WILLNEED of the next window). 1016 KiB, not 1 MiB, because go-fuse needs
//     header, data and a spare page in one pipe of at most fs.pipe-max-size (1 MiB). The
//     BlobReader's presence check is bypassed there: Ensure has just made the chunks present,
//     and a mounted image's blobs are pinned, so they are never punched while served;
//   - before that, with a Resolver that has EnsureRead (EarlyResolver): a request within one
//     missing chunk is answered from the resolver's verified bytes as soon as they are verified
//     (for a chunk from a peer, the covering sub-blocks), before the chunk is stored; a request
//     whose bytes are present goes on to the splice;
//   - anything else (inline data, holes, runs of several blobs, a BlobReader without backing
//     files): per run one Ensure and one BlobReader.ReadAt (pread) into go-fuse's buffer, then
//     one copy by the kernel into the page cache.
//
// No hash, no lock beyond the resolver's. Ensure runs under a context detached from the request
// (a signalled reader never gets EIO for a fetch that succeeds), bounded by Config.ReadTimeout
// and the server's life.
//
// FUSE passthrough (Linux 6.9+, go-fuse's Server.RegisterBackingFd and OpenOut.BackingId) is not
// used, though the development machine's kernel (6.18) has it: the kernel then reads the backing
// file at the FUSE file's own offsets (struct fuse_backing_map is {fd, flags, padding}: no
// offset, no length), but a file's bytes live in its blob's backing file (cachefiles layout) at
// the file's offset in the blob, packed at 4 KiB, so file offset 0 is not backing-file offset 0
// for any file but a blob's first, the bytes after a file's end are the next file's, and a
// chunked file may span devices. Passthrough would need a per-file backing file (a copy, or a
// reflink where the filesystem has them), which doubles the disk or ties Shoal to btrfs/xfs.
// Warm reads already never reach the server, and cold reads are one DMA and one copy.
//
// Usage:
//
//	srv, err := fusetree.Mount(target, fusetree.Image{Bootstrap: bootPath, Blobs: digests}, resolver, store, fusetree.DefaultConfig())
//	...
//	err = srv.Close() // unmounts (lazily if busy) and waits for the server
package fusetree
