// Package mirror is the node-local, read-only OCI distribution endpoint that containerd (or
// CRI-O) uses as a registry mirror for any upstream registry, for ordinary images that Shoal has
// not converted: GET and HEAD of /v2/, /v2/NAME/manifests/REF and /v2/NAME/blobs/DIGEST, with
// Range requests on blobs.
//
// It owns the mirror's HTTP API and its store of verified content (<data>/mirror). It reaches the
// upstream through package origin's registry client (tokens, credentials, TLS, retries) and peers
// through the small Peers interface it declares (the p2p node's blob exchange); it knows nothing
// of chunks, mounts or libp2p.
//
//	cfg := mirror.DefaultConfig()
//	cfg.Dir = filepath.Join(dataDir, "mirror")
//	cfg.MaxBytes = 20 << 30
//	m, err := mirror.New(cfg, node) // node: FetchBlob(ctx, digest, max, w)
//	go m.Serve(ctx, ln)             // containerd's hosts.toml: host "http://127.0.0.1:5005"
//
// The upstream of a request is containerd's ?ns=HOST query parameter (sent to every mirror
// host; docker.io means registry-1.docker.io), else Config.DefaultUpstream. Content by digest
// kept here or held by a peer is served even when neither names an upstream (a digest names the
// same bytes at every registry); a tag, or content only the upstream has, needs one. A HEAD of a
// blob not yet kept fetches it whole, as a GET would (containerd GETs what it HEADs).
//
// Manifests by tag are resolved at the upstream on every request (a tag moves; nothing else can
// say what it names now) and passed through with their Docker-Content-Digest, checked against
// the bytes; the manifest is kept by digest, so the GET by digest containerd sends next is local.
// Manifests by digest and blobs come from the store, else from peers that hold them, else
// through the digest's rendezvous owner (Coalescer, an optional capability of Peers: the owner
// fetches from the upstream once for every node that asks, FetchForPeer on its side), else from
// the upstream. Concurrent requests for one digest share one fetch (singleflight), which runs on
// its own context so a client that gives up does not fail the others; the fetch from the
// upstream is a second flight per digest, shared by this host's own flight and the peers it
// owns the digest for, and it never asks a peer (two owners with different views of the
// cluster cannot wait on each other). With Config.PeerUpstreams set, a peer can have this host
// fetch only from those registries.
//
// Verification: every byte from a peer or the upstream goes to a temporary file while its
// sha256 is computed; only when the whole blob matches its digest is the file renamed into the
// store, and only files in the store are served (http.ServeContent, which answers Range and
// HEAD). Nothing is streamed to a client while it is being fetched, so no unverified byte
// reaches containerd; the cost is that a client sees the first byte of a blob only after the
// mirror has all of it. A peer whose bytes do not match is counted (Stats.PeerRejected) and the
// upstream is tried; the peer exchange itself strikes and bans such peers (package p2p).
//
// Per blob fetched: one write of each byte to the temporary file and one sha256 here; bytes
// from the upstream are hashed a second time by origin's reader, and bytes from a peer by the p2p
// exchange (which needs its own check to judge the peer). Serving reads the file (sendfile when
// the connection allows).
//
// Streaming through the owner (stream.go): while this host downloads a blob from the upstream
// whose size the upstream announced, OpenGrowing reads it as it lands in the temporary file, so
// a peer that asked this host as the blob's owner receives its bytes during the download, not
// after it. Those bytes are not served to containerd by anyone before they are verified: the
// owner's p2p exchange hashes what it sends and holds the last slice back until the whole copy
// matched, the asker writes them to its own temporary file and checks the digest (above), and a
// download that fails or does not match ends the readers with an error.
//
// Over Config.MaxBytes, the least recently used files are removed; a client already reading one
// finishes (the open file outlives its name).
//
// Files: path.go (request paths and the upstream host, fuzzed), store.go (verified content on
// disk), stream.go (downloads read as they land), mirror.go (the handler and the fetch path), metrics.go (shoal_mirror_* series, and
// Stats for `shoal stats`).
package mirror
