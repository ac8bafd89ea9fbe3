// Package daemon assembles `shoal daemon`: the chunk store, the resolver, the peer-to-peer node,
// the kernel frontends and the control API, and keeps the list of images and mounts across
// restarts (state.json, read orders). It holds no chunk, network or kernel logic of its own: that
// lives in the library packages it wires together.
//
// Files, one responsibility each:
//   - daemon.go: New builds the parts from a Config; Run runs the node, the control API and the
//     admin listener and, on return, has stopped every goroutine it started, unmounted the images
//     and closed the node and the store.
//   - service.go: what the API does (add, mount, unmount, prefetch, remove an image), over narrow
//     interfaces of the store, resolver and node, so unit tests run it on fakes without root.
//   - registry.go: the images, their blobs and their mounts. The one path that registers a blob
//     with the store, the resolver and the swarm (and unregisters it from them and the frontends),
//     reference-counted across images, undone when a step fails.
//   - loader.go: an image from its origin (registry or local layout), its bootstrap fetched and
//     verified, and whether its repository is private (origin.PullRights.Public, asked before
//     anything is kept): pull rights, docs/privacy.md. daemon.go sets the same PullRights as
//     the node's Rights; registry.go marks private blobs (p2p.Node.SetPrivate) before the swarm
//     has them, objects.go kept objects (saved in objects/private.json); a reload at start
//     marks them again, the index the image was resolved through included. Pods' image pull
//     secrets reach origin.PullSecrets (ocfg.PullSecrets, shared by the loader, PullRights and
//     the mirror) through the CRI proxy (package criproxy, --cri-listen), built in New and
//     served in Run. objectflight.go: the metadata flights a load shares with peers that ask
//     this host as an object's owner, so hosts loading one image at once fetch its chunk
//     manifests and bootstrap once.
//   - frontend.go: the frontend interface, the switch that builds one per mount mode, and the set
//     that starts each on first use without holding any lock across the construction;
//     frontend_fscache.go, frontend_fanotify.go, frontend_fuse.go: one mode each. A new mode is
//     one file and one case in newFrontend.
//   - modes.go: which modes can run here (each frontend's probe) and how `auto` chooses.
//   - prefetch.go: background prefetch, whose goroutines it owns, and read orders.
//   - state.go: state.json, and restoring its images and mounts at start.
//   - stats.go: the status and stats reports (with the registry mirror's counters when it runs).
//   - objects.go: kept objects for peers and restarts (swept hourly by Run once no registered
//     image has used them for --object-retention), and nodeLocal, what the p2p node serves
//     (chunks, objects, the registry mirror's blobs, and its fetches for peers as a blob's
//     owner: FetchBlobFor, on with --mirror-listen). mirrorBlobs marks the mirror's blobs of
//     private repositories with the node (before they are fetched and when they are served),
//     which serves them only to peers with a grant. The mirror (package mirror,
//     --mirror-listen) is built in New after the node, which it fetches through, and served in
//     Run.
//   - api.go (HTTP only), wire.go (the JSON types, shared with the CLI), client.go (the CLI's
//     client), render.go (the CLI's tables), config.go (settings: file, environment, flags, one
//     Validate), supervise.go (Supervise, the `--supervise` holder of /dev/cachefiles).
//
// Locks: the registry's mutex guards its maps only; registrations are serialized by their own
// mutex, held across the store, resolver and node calls of one Add or Remove (local and fast)
// but never across an origin fetch, a frontend's construction, a mount or an unmount.
package daemon
