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
// Config.CacheTimeout: the image never changes. readdirplus answers `ls -l` and `find` without
// lookups; reads are up to 1 MiB (max_pages) and the mount's readahead window is raised to
// match; requests are served concurrently.
//
// The read path, per FUSE read: one inode decode from memory, the chunk-table entries of the
// range only (ExtentsAt), then per run of consecutive bytes of one blob one Resolver.Ensure and
// one BlobReader.ReadAt (pread of the store's backing file) into go-fuse's buffer: one copy
// into the request buffer, one by the kernel into the page cache. No hash, no lock beyond the
// resolver's. Ensure runs under a context detached from the request (a signalled reader never
// gets EIO for a fetch that succeeds), bounded by Config.ReadTimeout and the server's life.
//
// Usage:
//
//	srv, err := fusetree.Mount(target, fusetree.Image{Bootstrap: bootPath, Blobs: digests}, resolver, store, fusetree.DefaultConfig())
//	...
//	err = srv.Close() // unmounts (lazily if busy) and waits for the server
package fusetree
