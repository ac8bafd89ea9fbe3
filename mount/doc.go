// Package mount mounts and unmounts Shoal images in each frontend mode (fscache, fanotify, FUSE),
// finds the mounts a crashed daemon left behind, and probes which mode this machine can run.
//
// It owns the mount(2)/umount2(2) calls and the reading of /proc/self/mountinfo. It does not
// serve demand reads (demand/cachefiles, demand/fanotify and demand/fusefs do) and does not
// build the fscache option string itself (cachefiles.MountOptions does).
//
//   - MountFileBacked: file-backed EROFS (Linux 6.12+) for the fanotify and FUSE modes, with
//     mount(2) directly (util-linux mount would make a loop device): source = the bootstrap as a
//     local file, one device= per blob in device order (never none: a "flatdev" mount reads
//     wrong data), optionally directio. Devices are passed as /proc/self/fd/N of an O_PATH fd,
//     because the store's backing paths contain a comma ("Ierofs,<domain>").
//   - MountFscache: source "none", fsid=<bootstrap>,domain_id=<domain>,device=<blob>...
//     The kernel takes an fsid once per domain: a second mountpoint of the same image is a
//     read-only bind mount of the first (Bind).
//   - Unmount: umount2, then MNT_DETACH if busy; ErrNotMounted if target is no mount point.
//   - List / Cleanup: the EROFS and fuse.shoal mounts under the daemon's data directory, in
//     unmount order (EROFS first, deepest first), so a daemon killed with SIGKILL leaves nothing
//     that blocks the next start.
//   - Probe: fscache if /dev/cachefiles opens and binds in on-demand mode, else fanotify if
//     pre-content marks work on files in the cache directory, else FUSE; each with its reason.
//
// Usage, at daemon start:
//
//	if gone, err := mount.Cleanup(dataDir); err != nil { ... } // stale mounts of a crashed run
//	p := mount.Probe(cacheDir)
//	log.Info("frontend", "probe", p.String())
//	switch p.Best {
//	case mount.Fscache:
//		err = mount.MountFscache(boot.Digest.String(), store.Domain(), blobDigests, target)
//	case mount.Fanotify: // after listener.Watch of every blob's backing file
//		err = mount.MountFileBacked(bootPath, backingPaths, target, mount.FileBackedOptions{DirectIO: true})
//	case mount.FUSE: // after srv.AddBlob of every blob; devices[i] = srv.Path(blob i)
//		err = mount.MountFileBacked(bootPath, devices, target, mount.FileBackedOptions{DirectIO: true})
//	}
//	defer mount.Unmount(target)
//
// Subpackage mounttest builds real images with mkfs.erofs and serves them through the real chunk
// store for the integration tests of this package and the frontends.
package mount
