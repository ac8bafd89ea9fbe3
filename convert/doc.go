// Package convert turns any OCI or Docker image into a runnable Shoal image (`shoal image
// convert`): it reads the source's manifest (an OCI or Docker schema 2 manifest, or an OCI index
// or Docker manifest list, choosing platforms), streams every layer (gzip, zstd or plain tar)
// once, applies the layers by the OCI rules, and writes a Shoal image as an OCI layout that
// origin.Push or origin.PushIndex uploads.
//
// # Layer semantics
//
// Each layer is read in full into a layerDiff before it is applied: its regular files' data goes
// straight into the layer's data blob (nothing is held in memory but metadata), its entries,
// whiteouts (.wh.NAME) and opaque markers (.wh..wh..opq) are kept. Applying a layer (apply)
// removes whited-out and opaque entries of the lower layers only, then applies the entries in
// tar order: a directory over a directory merges, anything else replaces (a file replaced by a
// directory and back), hard links name the node of their target (one inode, nlink counted by
// the EROFS writer). Symlinks are stored, never followed; device nodes, FIFOs, setuid/setgid/
// sticky bits, numeric owners and PAX xattrs (SCHILY.xattr.*, security.capability included) are
// kept. Entries with absolute paths or "..", names over 255 bytes, hard links to entries that do
// not exist, corrupt or truncated compression and a layer whose compressed digest or
// uncompressed diff_id does not match are errors wrapping ErrBadLayer, and nothing is written.
//
// # One blob per source layer
//
// A Shoal image made by conversion keeps one data blob per source layer (for the layers with
// file data the final tree still reads), holding that layer's regular-file data cut into chunks
// from each file's start, with the blob's chunk manifest computed from the layer alone; one
// merged bootstrap (WriteEROFS) points each file at the blob of the layer that gave its final
// content, through the EROFS device table. Why per layer and not one blob per image:
//   - The same base layer converted in two images gives a byte-identical blob and chunk
//     manifest. A push skips it (the registry has it), and the chunk store, which keys blobs by
//     digest and refuses one blob with two manifests, shares it: a host that holds one image
//     fetches only the other's own layers.
//   - A per-image blob would differ in every image (offsets shift with every file added), so
//     every push would upload the whole image again, and sharing would rest on CIDs alone.
//   - Identical files in different layers still share chunks: CIDs depend on content only, and
//     the daemon dedups by CID across blobs.
//
// The cost: a file a later layer replaces or deletes still sits in its layer's blob. A blob the
// final tree does not read at all is left out of the image; one it reads partly is fetched in
// full by a prefetch. Docker images rarely replace much of a lower layer.
//
// # Manifest and index
//
// The manifest is a runnable OCI image manifest (bootstrap.LayoutWriter.WriteImage): the source
// config (entrypoint, env, user, labels, ports, volumes, history, every field kept) with
// rootfs.diff_ids naming the Shoal layers, layers annotated for a snapshotter. With
// `--into-index` the Shoal manifests are published in the source tag's index after the original
// manifests, marked with platform.os.features ["shoal.image.v1"] and artifactType: Shoal hosts
// resolve to the Shoal entry for their platform (package origin), every other runtime keeps
// taking the original, which comes first.
//
// Costs per byte of a layer: one decompression, one sha256 for the diff_id, one scan for zero
// chunks, one sha256 per chunk (on every core), one write to the blob and its sha256; the source
// checks the compressed digest. Layers are read in parallel (Options.Parallel).
//
//	src, _ := origin.Open("registry.example/app:1", cfg)
//	res, err := convert.Convert(ctx, src.(convert.Source), "out/app", convert.Options{})
package convert
