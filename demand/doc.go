// Package demand resolves demand reads: it makes byte ranges of a blob present in the local
// store, chunk by chunk, from the local store, then peers, then the origin, and prefetches in the
// background. Each kernel frontend lives in its own subpackage (cachefiles, fanotify, fusefs,
// fusetree) and calls Resolver.Ensure; none of them fetches anything itself.
//
//	r, _ := demand.New(store, peers, demand.DefaultConfig()) // peers may be nil: origin only
//	r.AddBlob(manifest, func(ctx context.Context, c chunk.Chunk) ([]byte, error) {
//		return src.ReadRange(ctx, manifest.Blob, c.Offset, c.Length)
//	})
//	err := r.Ensure(ctx, blob, off, n)           // a kernel read: returns when present
//	go r.Prefetch(ctx, blob, firstRanges, lim, progress) // the rest, yielding to demand
//
// Guarantees: one fetch per chunk however many readers wait on it (singleflight keyed by blob
// and offset; a reader that gives up does not cancel the fetch others wait on); every chunk is
// verified against its CID before it is stored; bytes of a range that no chunk covers are not
// file data and stay holes (zeros);
// at most Config.Workers fetches run at once, prefetch at most PrefetchWorkers of them, and
// prefetch waits while demand reads are queued. A fetch slot covers the network, not the store's
// write and fdatasync that follow: a prefetch keeps up to PrefetchWriteBehind more chunks in
// memory while the store writes them, so the next fetches run while the disk syncs. A
// prefetch's chunks are written with the store's PutCold where it has one (ColdStore: around the
// page cache), a demand read's with Put (the reads after it find the pages cached).
//
// Demand reads are recorded per blob in first-touch order (ReadOrder); the daemon keeps the first
// run's order and passes it to later Prefetch calls, so a host warming an image fetches what the
// image reads at start before the rest.
//
// # The demand path, per chunk
//
// A miss costs, whichever frontend asked: one presence check in the store's in-memory map
// (Missing), one singleflight entry, one worker slot, and then exactly one hash of the chunk's
// bytes, by whoever first holds bytes from an untrusted place: package p2p for a peer's answer
// or the origin's (Peers.Fetch), this package for the origin when there is no cluster, the store
// for a local copy in another blob (dedup; disks rot). The bytes travel on as chunk.Verified and
// the store writes them with one pwrite and a shared fdatasync (group commit), hashing nothing.
// The fscache frontend's kernel reads that same backing file, FUSE reads it back once to answer
// the kernel, fanotify lets the kernel read it: no mode copies the bytes into a second file.
//
// First bytes: EnsureRead (what FUSE mode's reads call) is Ensure for a reader that wants the
// bytes: where the range lies in one missing chunk, the reader is answered from the chunk's
// chunk.Progress as soon as the bytes it covers are verified: the covering 64 KiB sub-blocks
// from a ChunkProtocolV4 peer (package p2p), or else the whole chunk as soon as it is verified,
// in both cases before the store's write and fdatasync. The chunk is stored once verified
// against its CID, as always; the next reader of it finds it present.
//
// It owns neither the store nor the network: Store and Peers are small interfaces satisfied by
// *chunkstore.Store and *p2p.Node.
package demand
