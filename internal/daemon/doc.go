// Package daemon assembles `shoal daemon`: the chunk store, the resolver, the peer-to-peer node,
// the kernel frontends and the control API, and keeps the list of images and mounts across
// restarts (state.json, read orders). It holds no chunk, network or kernel logic of its own: that
// lives in the library packages it wires together.
//
// Files: config.go (settings: file, environment, flags, one Validate), daemon.go (New, Run,
// images, prefetch), api.go and client.go (the control API and its client), frontends.go and
// frontend_fscache.go (one frontend per mount mode, mode probing; Supervise, the
// `--supervise` holder of /dev/cachefiles), state.go (what survives a restart), render.go (the
// CLI's tables).
package daemon
