//go:build tools

// Package deps pins the chosen dependencies in go.mod while the packages that use them are written;
// it is never built. Delete a line once real code imports that module.
package deps

import (
	_ "github.com/dgraph-io/badger/v4"
	_ "github.com/hanwen/go-fuse/v2/fs"
	_ "github.com/ipfs/go-cid"
	_ "github.com/libp2p/go-libp2p"
	_ "github.com/libp2p/go-libp2p-kad-dht"
	_ "github.com/multiformats/go-multiaddr"
	_ "github.com/multiformats/go-multihash"
	_ "github.com/opencontainers/go-digest"
	_ "github.com/opencontainers/image-spec/specs-go/v1"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "golang.org/x/sync/errgroup"
	_ "golang.org/x/sys/unix"
	_ "golang.org/x/time/rate"
	_ "gopkg.in/yaml.v3"
)
