// Package chunkstore keeps verified chunks on local disk, in backing files laid out exactly as the
// kernel's cachefiles backend lays them out, indexed in badger.
//
// It owns the cache directory: backing files at <dir>/cache/I<volume key>/@<hh>/D<cookie key>,
// with the user.CacheFiles.cache xattrs the kernel checks (their names and formats are the leaf
// package chunkstore/layout's), so one directory serves the fscache, fanotify and FUSE frontends and survives switching between
// them. The cookie key of a blob or bootstrap is its digest string ("sha256:…"); the volume key is
// "erofs,<Config.Domain>". It does not fetch, announce or mount anything: frontends and the p2p
// layer call it.
//
// # Usage
//
//	s, err := chunkstore.Open("/var/cache/shoal", chunkstore.DefaultConfig())
//	if err != nil { ... }
//	defer s.Close()
//	_ = s.AddBlob(ctx, manifest)                    // sparse backing file + xattr, idempotent
//	err = s.Put(ctx, manifest.Blob, c, verified)    // pwrite, fdatasync, mark present (no hash)
//	err = s.PutCold(ctx, manifest.Blob, c, verified) // the same around the page cache (prefetch)
//	err = s.WriteChunk(ctx, manifest.Blob, c, data) // untrusted bytes: verify, then Put
//	missing, _ := s.Missing(manifest.Blob, off, n)  // what to fetch for a read
//	n, err := s.ReadAt(manifest.Blob, p, off)       // FUSE reads (ErrNotFound if not present)
//	v, err := s.ReadChunk(ctx, c.CID)               // peers, dedup: by CID from any blob, verified
//	cancel := s.Subscribe(func(e chunkstore.Event) { /* ChunkAdded / ChunkEvicted */ })
//	_ = s.Pin(manifest.Blob, imageDigest)           // never evicted while pinned
//
// Put is the only way chunk data enters the store, in every mount mode: the fscache frontend's
// kernel reads the store's own backing files, so nothing is copied a second time. A chunk costs
// one pwrite (from a pooled page-aligned buffer: one copy, none where the caller's buffer is
// page-aligned and whole blocks), a share of one fdatasync and one index batch (group commit), and
// no hash: the caller's chunk.Verified says it was verified. PutCold, for chunks nobody is about
// to read (a background prefetch), writes with direct I/O (Config.DirectWrites, O_DIRECT on a
// second descriptor of the file) where the filesystem allows it: no page-cache copy for the
// writer and no writeback for the fdatasync, about 0.13 ms of CPU per MiB against 2-2.5 ms
// buffered on the benchmark VM; the first read of such a chunk goes to the disk. Put stays
// buffered: a reader waits for its chunk, and the reads after it find the pages cached.
//
// # Presence
//
// Which chunks are present is answered from memory: per blob, one bit per chunk of its manifest
// (presence.go), loaded from the index on first use and kept in step with it under the index
// lock, so Missing, ReadAt and the write path's "already present?" cost a few bit tests, not an
// index scan.
//
// # Index
//
// Badger keys (index.go): per blob a record (size, manifest digest, present bytes and chunks, last
// access, file signature) and its manifest (a compact binary form, manifestcodec.go; JSON in
// indexes written before it, still read); per present chunk a P key (blob, offset → length, CID)
// and a C key (CID, blob, offset → length) written and deleted in the same batch, so a CID finds
// every location holding it; pins; persistent counters. Memory holds one small record per blob and
// a bounded number of parsed manifests; badger's block and index caches are bounded by
// Config.IndexCacheBytes (8 MiB each by default), its tables are not compressed (store.go,
// badgerOptions), so memory does not grow with the number of chunks.
//
// # Writes and crash semantics
//
// A chunk is verified against its CID before anything is written. Data goes in with pwrite at its
// 4 KiB-aligned offset from a page-aligned buffer padded with zeros to a whole block (the form
// direct I/O and the kernel's anonymous fds use; the last chunk's padding can make the file up to
// one block longer than the blob, as the kernel's own writes do). Writers then hand the chunk to
// one group-commit goroutine, which fdatasyncs each distinct file of the batch once and only then
// writes the index batch that marks the chunks present. Concurrent writers of one chunk share a
// single write.
//
//   - Index says present ⇒ data was durable first. After a crash (process or power) a chunk the
//     index calls present reads back as its bytes. The index itself is not fsynced per write, so a
//     power loss can forget recent presence: those chunks are fetched again.
//   - Eviction reverses the order: the index deletion is synced (DB.Sync) before holes are punched.
//   - A crash between pwrite and the index write leaves unindexed data: the chunk is simply
//     fetched and written again.
//   - Open reconciles: a backing file whose inode, size and ctime match what Close recorded is
//     trusted (one stat per blob); any other file (written since, truncated, recreated, missing) is
//     checked with SEEK_DATA/SEEK_HOLE and chunks whose ranges are not all data lose presence.
//   - Counters are persisted with each index batch; they may lag by the last batch after a crash.
//
// ENOSPC/EDQUOT fail the write with ErrNoSpace, EIO (write or fdatasync) with ErrIO; in both
// cases nothing is marked present and the range is punched back.
//
// # Disk space
//
// Badger writes through shared mappings of sparse files, so on a full filesystem it dies of
// SIGBUS instead of returning ENOSPC, and then cannot even write its LOCK file on the next start.
// The store therefore never lets chunks fill the filesystem (space.go): a chunk write must leave
// Config.ReserveBytes (by default a sixteenth of the filesystem, 4 to 64 MiB) plus the index's
// own size free, evicting unpinned blobs first and otherwise failing with ErrNoSpace ("cache
// filesystem nearly full"), pinned or not. A preallocated reserve
// file in the index directory (up to 17 MiB) holds what the index needs to start: when something
// else filled the filesystem, Open releases it, opens the index, evicts unpinned chunks to get
// the headroom back and makes the file again; without a reserve file (a store of an older
// version) Open punches unpinned blobs found through a read-only view of the index first. When
// nothing can be freed, Open either serves what is present and refuses new chunks, or, if the
// index could not even start, fails with an error that says so: it never crashes.
//
// # Capacity
//
// With Config.MaxBytes set (it counts the index's tables and value logs as well as chunk data),
// a write that would pass it first evicts unpinned blobs' chunks, least
// recently used blob first (access is tracked per blob), down to LowWatermark of MaxBytes. Evicted
// chunks raise ChunkEvicted events, which the p2p layer uses to withdraw announcements. Pins are
// the daemon's mounted images: when everything left is pinned, writes pass MaxBytes with a warning
// (Config.PinnedOverflow, the default) so a mounted image keeps serving reads, or fail with
// ErrNoSpace when the cap is made hard. The filesystem's headroom (above) stops pinned data too.
package chunkstore
