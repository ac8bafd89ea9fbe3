// Package fanotify is Shoal's frontend for fanotify pre-content events (Linux 6.14+): EROFS
// images are mounted file-backed on the chunk store's sparse backing files, each backing file
// carries a FAN_PRE_ACCESS inode mark, and the kernel holds every read of a marked file until this
// package has made the range present (Resolver.Ensure) and answered FAN_ALLOW.
//
// It owns the fanotify group (Listener: the marks, the event loop, a bounded pool of workers that
// call Ensure) and the wire codec of the event stream (wire.go: ParseEvents, EncodeResponse,
// DenyErrno). It fetches nothing itself and does not mount anything (package mount does).
//
// Rules it keeps, because breaking them corrupts or hangs the machine:
//   - Marks are inode marks on the blob files only (FAN_MARK_ADD through an fd of the file),
//     never mount or filesystem marks, which would see every exec on the machine.
//   - Watch before mounting: the kernel decides at open time whether a file raises pre-content
//     events; EROFS opens its device files at mount time.
//   - Events of the daemon's own process (its pwrite of chunks into the backing files, its own
//     reads) are answered FAN_ALLOW by the reading loop at once; anything else could deadlock.
//     So the daemon must not read its own fanotify-mode mounts.
//   - Every event is answered and its fd closed: FAN_ALLOW once the range is present,
//     FAN_DENY_ERRNO(EIO) if Ensure fails or passes Config.EnsureTimeout. A reader never hangs.
//   - Closing the group lets held and future reads through: holes then read as zeros. Unmount
//     the images before Close; after a crash, unmount stale mounts (mount.Cleanup) before serving.
//
// Usage:
//
//	if err := fanotify.Probe(cacheDir); err != nil { /* fall back to FUSE; err says why */ }
//	l, err := fanotify.New(resolver, fanotify.DefaultConfig())
//	go l.Run(ctx)
//	for _, b := range im.Blobs { _ = l.Watch(b.Digest, store.BackingPath(b.Digest)) }
//	err = mount.MountFileBacked(bootstrapPath, backingPaths, target, mount.FileBackedOptions{DirectIO: true})
//	...
//	_ = l.Unwatch(blob)            // blob complete in the store: reads stop reaching the daemon
//	_ = mount.Unmount(target)
//	_ = l.Close()
package fanotify
