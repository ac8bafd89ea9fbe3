// Package fusefs is Shoal's FUSE frontend, for kernels without fanotify pre-content events or
// cachefiles on-demand mode: one FUSE mount per daemon (e.g. <data>/fuse) with a read-only file
// per blob, named by its digest string, and EROFS images mounted file-backed on those files. A
// read of a blob file makes its range present through the Resolver and is served from the store
// (BlobReader, which *chunkstore.Store satisfies).
//
// It owns the FUSE server (go-fuse v2). It fetches nothing itself, does not touch the store's
// files and does not mount EROFS (package mount does).
//
// Facts it depends on: EROFS refuses file-backed mounts on stacked filesystems, so FUSE
// passthrough is disabled (MountOptions.DisabledCapabilities = fuse.CAP_PASSTHROUGH); the mount is
// made with mount(2) directly (DirectMount, root); blob files are opened with FOPEN_KEEP_CACHE as
// their content never changes; a read that Ensure cannot serve within Config.ReadTimeout fails
// with EIO. The daemon may read its own FUSE-mode images (unlike fanotify mode). With a
// Resolver that has EnsureRead (EarlyResolver, *demand.Resolver), a read that lies in one missing
// chunk is answered with the resolver's verified bytes as soon as they are verified (for a chunk
// from a peer, the covering sub-blocks), before the chunk is stored.
//
// Usage:
//
//	srv, err := fusefs.Mount(filepath.Join(dataDir, "fuse"), resolver, store, fusefs.DefaultConfig())
//	for _, b := range im.Blobs { _ = srv.AddBlob(ctx, b.Digest, b.Manifest.BlobSize); devs = append(devs, srv.Path(b.Digest)) }
//	err = mount.MountFileBacked(bootstrapPath, devs, target, mount.FileBackedOptions{DirectIO: true})
//	...
//	_ = mount.Unmount(target)     // images first: they keep the FUSE mount busy
//	_ = srv.RemoveBlob(blob)      // when no image uses it
//	_ = srv.Close()
package fusefs
