// Package mount mounts and unmounts Shoal images in each frontend mode (fscache, fanotify, FUSE;
// fusetree mounts are made by demand/fusetree itself, as they are its FUSE server) and finds the
// mounts a crashed daemon left behind.
//
// It owns the mount(2)/umount2(2) calls, their option strings and the reading of
// /proc/self/mountinfo. It imports no frontend: it does not serve demand reads
// (demand/cachefiles, demand/fanotify and demand/fusefs do), and whether a mode works here is
// each frontend's own probe (cachefiles.Probe, fanotify.Probe, fusefs.Probe), combined by the
// daemon, with ProbeFileBacked from here for the modes that mount EROFS file-backed.
//
//   - MountFileBacked: file-backed EROFS (Linux 6.12+) for the fanotify and FUSE modes, with
//     mount(2) directly (util-linux mount would make a loop device): source = the bootstrap as a
//     local file, one device= per blob in device order (never none: a "flatdev" mount reads
//     wrong data), optionally directio. Devices are passed as /proc/self/fd/N of an O_PATH fd,
//     because the store's backing paths contain a comma ("Ierofs,<domain>").
//   - MountFscache: source "none", fsid=<bootstrap>,domain_id=<domain>,device=<blob>...
//     (FscacheOptions; the values are cookie keys, checked against package layout's limits).
//     The kernel takes an fsid once per domain: a second mountpoint of the same image is a
//     read-only bind mount of the first (Bind).
//   - Unmount: umount2, then MNT_DETACH if busy; ErrNotMounted if target is no mount point.
//   - List / Cleanup: the EROFS, fuse.shoaltree (fusetree mode, source the bootstrap) and
//     fuse.shoal mounts of the daemon's data directory, in unmount order (images first, deepest
//     first), so a daemon killed with SIGKILL leaves nothing that blocks the next start.
//   - ProbeFileBacked: EROFS is there and the kernel takes file-backed mounts (6.12+).
//
// Usage, at daemon start:
//
//	if gone, err := mount.Cleanup(dataDir); err != nil { ... } // stale mounts of a crashed run
//	switch mode { // chosen by the daemon from the frontends' probes

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
