// Package snapshotter is Shoal's containerd remote snapshotter (`shoal snapshotter`): it serves
// containerd's snapshots gRPC API on a unix socket for a proxy plugin
// ([proxy_plugins.shoal] type = "snapshot") and presents the layers of Shoal images from the
// daemon's mount of the image, so containerd downloads and unpacks none of their data. Layers of
// any other image get plain overlayfs snapshots, so one snapshotter serves every image on a node.
//
// # How a Shoal image becomes a rootfs
//
// A runnable Shoal image (bootstrap.LayoutWriter.WriteImage, `shoal image convert`) lists its
// blobs, its chunk manifests and its bootstrap as layers, each annotated with its role and the
// image's bootstrap digest under containerd.io/snapshot/shoal.*. containerd's unpacker passes
// those annotations and containerd.io/snapshot.ref (the layer's chain ID) to Prepare. For such a
// layer Prepare commits the snapshot under that name at once and answers ErrAlreadyExists,
// which tells containerd the layer is already unpacked: it fetches nothing. The bootstrap layer
// (the last) first asks the daemon (Daemon: its control API) to mount the whole image at
// ROOT/images/BOOTSTRAP-DIGEST in the mode the host does best (or Config.Mode: fusetree makes it
// a FUSE mount of the image's tree, no EROFS), from the reference in
// LabelShoalRef or LabelImageRef (CRI's containerd.io/snapshot/cri.image-ref, which containerd
// 2.x's transfer service also sets when the plugin exports enable_remote_snapshot_annotations).
//
// A snapshot over the image (a container's rootfs, a view) is an overlay mount whose lowerdir is
// the image's mount point (the blob and chunk layers are empty and left out) under the plain
// layers above it, with upperdir and workdir in ROOT/snapshots/ID; a view of the image alone is
// a read-only bind mount of it. Remove of the last committed bootstrap layer of an image (the
// store refuses it while any snapshot is above) unmounts the image.
//
// # State and restarts
//
// Snapshots live in containerd's own bbolt MetaStore (ROOT/metadata.db), as its overlayfs
// snapshotter keeps them. Mounts belong to the kernel and the daemon, not to this process: Close
// unmounts nothing, so containers keep running while the snapshotter restarts, and the daemon
// restores its mounts itself after its own restart (state.json). After a restart of both with
// nothing mounted (a reboot), the snapshots are still in the store, and the image under a
// snapshot is mounted again from the reference kept on its bootstrap layer when the snapshot is
// next mounted (Recover does it for every image at start, best effort). Cleanup removes
// directories no snapshot owns and unmounts images no snapshot uses.
//
// What the snapshotter must not do: fetch or read image data (the daemon does), touch mounts it
// did not ask the daemon for, or hold a metadata transaction across a call to the daemon.
//
//	sn, _ := snapshotter.New("/var/lib/shoal/snapshotter", snapshotter.DaemonClient("/run/shoal/shoal.sock"), snapshotter.Config{})
//	l, _ := snapshotter.Listen("/run/shoal/snapshotter.sock")
//	err := snapshotter.Serve(ctx, sn, l)
package snapshotter
