// Package p2p connects Shoal daemons: the libp2p host, peer discovery, content routing (who holds
// which chunk) and the chunk exchange protocol, including cluster-wide origin coalescing.
//
// It owns the network between hosts and nothing else. It does not import the chunk store or the
// origin: it consumes the small interfaces it declares (LocalChunks, optionally ChunkWriter and
// LocalObjects, and OriginFunc), and the daemon feeds it the store's events through Announce and Withdraw.
//
// # Usage
//
//	cfg := p2p.DefaultConfig()
//	cfg.IdentityKeyPath = filepath.Join(dataDir, "p2p.key")
//	cfg.StaticPeers = peerFlags // --peer /ip4/10.0.0.7/tcp/4001/p2p/12D3Koo...
//	cfg.Registerer = prometheus.DefaultRegisterer
//	node, err := p2p.New(cfg, store) // store: ReadChunk + HasCID (+ PutChunk)
//	...
//	g.Go(func() error { return node.Run(ctx) })
//
//	// When an image is pulled: join each blob's swarm.
//	node.RegisterBlob(manifest, func(ctx context.Context, c chunk.Chunk) ([]byte, error) {
//		return registry.FetchRange(ctx, manifest.Blob, c.Offset, c.Length)
//	})
//	// From the store's events.
//	case chunkstore.ChunkAdded:   node.Announce(ev.Blob, ev.Chunk)
//	case chunkstore.ChunkEvicted: node.Withdraw(ev.Blob, ev.Chunk)
//
//	// In the demand resolver, on a miss:
//	data, src, err := node.Fetch(ctx, blob, chunk, func(ctx context.Context) ([]byte, error) {
//		return registry.FetchRange(ctx, blob, chunk.Offset, chunk.Length)
//	})
//	// data is a chunk.Verified (hashed once, here): store it with chunkstore.Put, which hashes
//	// nothing (the store then emits ChunkAdded).
//
// # Design
//
// Preheat (preheat.go, PreheatProtocol): a host asks a peer to warm an image, or how far it got;
// the peer's Preheater (the daemon) prefetches it by its own fetch path, so a cluster-wide
// preheat (`shoal prefetch --cluster`) keeps the origin-once rule of every other fetch.
//
// Discovery: static peers (redialled every RedialInterval, and within about a second after a
// disconnection, so a peer that restarts is back before readers miss it), a /dnsaddr name (re-resolved),
// a DNS name of every host's IP (DiscoverDNS: a Kubernetes headless Service; each IP's identity
// endpoint, IdentityListen, says its peer ID and addresses, identity.go), mDNS on the LAN, and a
// Kademlia DHT in LAN mode under the /shoal prefix, which never meets the public IPFS DHT. The DHT
// holds one provider record per blob and host (BlobCID), never one per chunk; hosts that share a
// blob find each other through it and connect.
//
// Content routing: connected hosts exchange presence maps over PresenceProtocol: for each blob,
// a bitmap over the manifest's chunk indexes of what the sender holds, and whether it can fetch
// the blob from an origin. Frames carry full state, not deltas, so they are idempotent and a burst
// of announcements collapses into one frame per blob and peer; one writer goroutine per peer sends
// them as soon as they change (milliseconds on a LAN). A write can succeed on a stream that has
// already died (the writer learns it at its next write), so when a write fails the next stream
// starts with the full state of every registered blob, as a new connection does. Lookup maps a chunk CID to the peers whose
// maps hold it, across every registered blob that contains it.
//
// Exchange: ChunkProtocol to ChunkProtocolV4 (wire.go) are one request per stream,
// length-prefixed, capped at MaxChunkSize, with deadlines on every stream. A host serves all
// four and asks for V4, then V3, V2, V1, so hosts of the previous releases are served and asked
// in what they speak. The receiver allocates only the length it asked for and verifies the CID
// before any use.
//
// First bytes (V4): a 4 KiB read of a cold 1 MiB chunk should not wait for the whole chunk to
// cross the network and be hashed. FetchProgressive takes a chunk.Progress: the chunk's
// sub-block digests (from its manifest, chunk.Chunk.SubHashes, 64 KiB sub-blocks) and the range
// the reader wants. The request names the sub-block size and the run of sub-blocks covering that
// range; the holder writes them first, raw, before it does anything else with the chunk (no
// compression, no waiting on the rest), then the rest of the chunk, then an end mark. The
// receiver reads the parts as they come and hands each wanted sub-block to the Progress, which
// verifies it against its digest before any reader sees it: the reader is answered after one
// 64 KiB sub-block, not after 1 MiB. The rest: for a chunk that goes raw, the other sub-blocks
// (the chunk is assembled from all of them); for a chunk whose manifest stores it compressed
// (schema 2) and that the holder sends compressed, the whole chunk as one zstd frame, exactly as
// V3 sends it (the frame duplicates the first sub-blocks, compressed: a zstd frame cannot be cut
// at sub-block boundaries, and re-encoding per sub-block would cost the sender a compression per
// sub-block and lose most of the ratio). Either way the whole chunk is verified against its CID
// before FetchProgressive returns it and before anyone stores it, as in every version. A wanted
// sub-block that does not match its digest, a sub-block index past the chunk or repeated, a part
// the protocol does not know or a response that ends without the whole chunk is a strike, as
// wrong bytes are (BanAfter strikes ban the peer), and the chunk is asked of the next holder or
// the origin. A request without a run (prefetch, a manifest without digests, a peer of an older
// release) is answered with the whole chunk, as in V3; a V3 peer is asked in V3 and the reader
// gets its bytes when the whole chunk has been verified. What the receiver allocates is bounded
// by the chunk: one buffer of its length for sub-blocks, one of at most its length for a frame.
// The holder does not hash the whole chunk before the first sub-blocks go out: with a store that
// offers RawChunks it reads its copy unverified, writes the wanted sub-blocks, and only then
// verifies the chunk against its CID, before sending the rest. A copy that fails is dropped from
// the store and the answer ends with PartAbort (a clean end, like StatusError; a reset would
// discard the sub-blocks in flight): the requester keeps the sub-blocks it verified against their
// digests and asks elsewhere for the chunk. The holder is not struck for that; it is struck if the
// rot lay in the wanted sub-blocks themselves, which the requester finds wrong (rot is rare, and
// the holder's copy is gone after the first such answer).
//
// Compression (V3): an OK response carries a wire codec (raw or zstd), the chunk's length and the
// stored length, then the stored bytes: a zstd frame shorter than the chunk, or the chunk itself.
// The sender sends a frame only where the chunk's manifest stores it compressed (the image build
// found that it pays; a chunk stored raw, or of an uncompressed image, goes raw): the frame the
// chunk arrived in if the recent buffer still has it, else one it compresses now at
// WireCompression (level 1 by default) and keeps there, so a swarm asking for a chunk costs one
// compression. Frames on the wire never use a dictionary: a chunk its image stores with the
// blob's trained dictionary (chunk.CodecZstdDict) is compressed again without it (WireZstd), so
// the wire and its version are as they were and an older peer decodes every frame; a frame that
// names a dictionary is refused. The receiver decodes with chunk/zchunk, capped at the chunk's
// length, and then verifies the CID: a bomb, a truncated frame, bytes that are not a zstd frame,
// an unknown codec or another chunk's frame is a strike like corrupt bytes. Wire bytes (frames) and data
// bytes are counted apart (shoal_p2p_*_wire_bytes_total, FetchWire, Served). The recent buffer
// (recent.go) holds a fetched chunk's bytes until it is announced (stored: the store serves it
// from then on), and frames for recentMaxAge (10 s) at most, all within recentMaxBytes,
// and is empty once the host is idle.
//
// Streams: every yamux stream opens with a 4 MiB receive window (host.go, streamMuxer), not
// yamux's 256 KiB, so a chunk's answer crosses without waiting on window updates.
//
// Per chunk from a peer, on the receiving side: one copy out of the stream into a buffer of the
// stored length, one zstd decode into a buffer of exactly the chunk's length (none for a raw
// chunk), one sha256, no store write here (the caller stores it). On the sending side: one
// verified store read (its sha256), at most one zstd encode per chunk while its frame stays in
// the recent buffer, one write to the stream. Wrong or truncated bytes are strikes; BanAfter strikes
// ban the peer (its connections are closed and the gater refuses it); StallBanAfter bad
// requests in a row ban it for slowness (below). Holders are ranked by
// (requests in flight + 1) × recent median latency, and a request that runs past min(its peer's
// p90, the slow threshold) is hedged to the next holder. Each peer's served requests are bounded
// in concurrency, rate and upload bytes; a peer that keeps exceeding its rate is banned.
//
// Standing: the cluster's normal latency is the lower median, over connected peers in good
// standing, of each one's recent p99 (HedgeDelay until 8 samples exist), so a minority of slow
// peers cannot make slowness normal; the slow threshold is HedgeFactor (4) times it. Each peer
// keeps the outcomes of its last StandingWindow (16) requests: good; slow (answered past the
// threshold); bad (timed out, or cancelled after running past the threshold because another
// source won, or lost any race while demoted). Busy and not-found answers and fetch-throughs
// (which wait on an origin) are not judged. A quarter of the window slow or bad demotes the peer:
// it is ranked after every peer in good standing and hedged at once, and it climbs back by
// beating the fallback. Half a window bad bans it (SlowBanRate). A request to the last or only
// holder is hedged to the rendezvous owner (fetch-through) or the origin at the slow threshold,
// so a peer that stalls every other request or answers just inside RequestTimeout costs a reader
// about HedgeFactor × p99 per chunk until it is demoted (a few requests), then MinHedgeDelay, then
// nothing once banned; what it costs in bytes is the hedged duplicate of each such chunk.
// A ban for slowness alone (SlowBanRate, StallBanAfter) passes the peer over but keeps it
// connected, with its presence maps, unlike a ban for bad data: an honest seed that every
// reader's requests queue on answers late until its readers ban it, and it may hold the only
// copy. When every other source of a chunk has failed (its holders, the owner, the origin: the
// registry down), lastResort asks the connected holders of it, those banned for slowness
// included, one at a time with lastResortTimeouts × RequestTimeout
// (shoal_p2p_last_resort_chunks_total), so a slow copy is never a lost one.
//
// Swarm: hosts reading one image together spread the upload instead of forming a star around the
// first holder (a seed) or the rendezvous owner. Demand reads go first; a prefetch fetches the
// rest in a random order, rarest first among the peers (demand's swarmOrder through Holders), so
// hosts start on different chunks. A chunk is announced as soon as it is stored (presence frames
// go out within milliseconds) and a host that has just received it is a holder like any other.
// ChunkProtocolV2 (beside V1, which every host still serves and falls back to) carries each
// responder's load, its uploads in progress to everyone, in every response header; holders are
// ranked by (max(our requests in flight to it, its reported load, for a second) + 1) × its
// recent median latency, so a seed busy serving the swarm loses to a host that has the chunk
// and is idle. A request carries FlagHaveOthers when untried holders remain after it; a host
// (SuperSeed, on by default) refuses such a request with busy when it has already uploaded that
// chunk more often than the blob's average, so a seed serves each chunk about once before any
// repeat and the repeats come from the hosts it served. A request to the last holder known
// carries FlagCanWait instead: a host refuses it with busy if it uploaded that chunk to another
// connected host within the last superSeedWait (2 s after the upload ended), and the asker waits
// up to the slow threshold for that host's presence frame, then asks it (and only it, without a
// flag). In a seeded start every reader first sees only the seed; without this the seed served
// each chunk to every reader that asked before the first recipient announced it (1.9-2.8 images
// from the seed at 12 hosts; with it 1.1-1.3). If no holder appears, or all refuse, the least
// loaded refuser is asked again with no flag, which is never refused: super-seeding never makes
// a chunk unavailable, it costs at most one round trip per holder asked and one wait. Under a
// partial mesh the wait can be wasted (the recipient is not connected to the asker): it is
// bounded by the slow threshold per chunk and by superSeedWait after the upload.
//
// Upload slots: a host uploads at most UploadSlots (8) held chunks at once, to everyone
// together; further requests wait for a slot (half their timeout at most) and count as load,
// and the super-seeding verdict is taken once the slot is had, so a requester queued behind an
// upload of the same chunk is sent to its recipient. On a shaped link a seed that split its
// uplink among every reader's requests (7 readers × 16 workers) finished no chunk for seconds,
// so nobody had anything to pass on; with slots each upload gets an eighth of the uplink.
// The gauges shoal_p2p_upload_slots, _slots_busy and shoal_p2p_upload_queued_requests show
// them: busy at the limit with a queue means this host's uplink is what the swarm waits for.
//
// Objects: ObjectProtocol (object.go) serves an image's small content-addressed objects
// (manifests, indexes, chunk manifests, bootstraps) by sha256 digest from what the daemon keeps
// (LocalObjects, an optional capability of LocalChunks), so that a host can resolve and mount an
// image while its registry is down. FetchObject asks connected peers, those holding blobs first,
// three at a time, and returns bytes only once they hash to the digest; answers are capped
// (MaxObjectSize, and the size the asker expects), read as they arrive, and a wrong, oversized,
// truncated or stalled answer counts against the peer exactly as a bad chunk does. ResolveTag asks
// which digest a peer's registry gave for a tag: a peer's word, not verifiable, which the daemon
// uses only with --peer-tags. One request per stream, as for chunks.
//
// Metadata through its owner: hosts that load one image in the same instant (a deployment
// starting everywhere) find no peer that has registered it, so FetchObject has nobody to ask,
// and each would fetch the chunk manifests and bootstrap (megabytes for a large tree) from the
// origin. Instead each asks an object's rendezvous owner (ObjectOwner: the highest hash(digest,
// peer) over this host and the connected peers that speak ObjectThroughProtocol,
// /shoal/object/2) with the request kind ObjectThrough (FetchObjectThrough). The owner answers
// from what it keeps, or else through ObjectFetcher: if it is loading an image that names the
// object, from the one origin fetch it shares between its own load and every asker (it waits up
// to a second for a running load to reach the object, and answers "not found" at once when it
// loads nothing). The asker checks the digest as always (a wrong answer is a strike), and on
// "not found", a refusal or any failure fetches the object from its own origin. /shoal/object/2
// is ObjectProtocol plus that kind; a host that speaks only /shoal/object/1 is never chosen as
// an owner, so old and new hosts mix. Private images' objects are not asked for this way (the
// owner serves them only to hosts that have presented rights, which a loading host has not).
//
// Pull rights: with Config.Rights set, blobs and objects marked SetPrivate (content of a
// repository whose registry refuses anonymous pulls) are served only to peers that proved pull
// rights over RightsProtocol (rights.go): they present a registry token scoped to
// repository:NAME:pull, checked once at the registry and kept as a grant for the token's life
// (at most RightsTTL). Chunk, object, tag and blob requests are checked against the grants in
// memory (StatusDenied otherwise); a fetch of a private blob that peers announce masked presents
// this host's rights first and waits briefly for their maps, and a denied chunk request presents
// them and asks once more (so does a denied BlobProtocol request, for a digest marked private
// here too: the registry mirror's); a private blob's presence goes to a peer without a grant with
// PresencePrivate and an empty bitmap, which tells a peer with rights to present them. Design
// and threat model: docs/privacy.md.
//
// Blobs: BlobProtocol (blob.go) streams whole blobs of ordinary (unconverted) images, named only
// by their sha256, between registry mirrors (package mirror; LocalBlobs, an optional capability
// of LocalChunks). Piece scheme, decided for this first version: none. A blob is verified whole:
// the asker hashes the stream as it writes it to a temporary file and the mirror renames and
// serves it only once the digest matched, so nothing unverified reaches containerd. Whole-blob
// verification is what the digest allows without trusting a peer's piece list; its costs are
// that a blob comes from one peer at a time (no swarming of one layer across holders) and that
// a bad peer is found out only at the end (the asker then falls back to the upstream, having
// wasted at most one blob's transfer per bad peer before BanAfter strikes ban it). The planned
// scheme, when swarming large layers matters: the first host to fetch a blob from the upstream
// publishes a piece list (fixed 4 MiB pieces, each sha256, the list itself named by its own
// hash and signed by its author's peer key); others fetch pieces from any holder and check each
// against the list, and the whole-blob digest is still checked before serving, so a list that
// does not add up to the digest bans its author and the blob is fetched again from the upstream.
// Rules of the present protocol: FetchBlob asks connected peers one at a time, best first;
// "not found" costs one round trip; holders stream from their file in 1 MiB slices under the
// per-peer upload limits, hashing as they go and holding back the last slice until the whole
// copy matched, so a holder whose disk rotted breaks the stream off (counted against its
// standing, not struck); a whole blob of wrong bytes or bytes past the announced size is a
// strike, as a bad chunk is. Blobs are found among connected peers only: no DHT provider
// record yet.
//
// Blob owners: when no connected peer holds a blob, the mirror asks its rendezvous owner
// (BlobOwner: the highest hash(digest, peer ID) over this host and the connected, allowed,
// unbanned peers that speak BlobThroughProtocol, i.e. run the mirror with Config.BlobThrough)
// to fetch it for the cluster (FetchBlobThrough, blobthrough.go). The request names the upstream
// registry and repository; the owner's mirror fetches the blob once from there (BlobFetcher,
// shared with its own clients and every other asker, and never itself asking a peer, so two
// owners cannot wait on each other), sending a StatusWait byte at least every RequestTimeout/3
// meanwhile, then streams it as on BlobProtocol. With GrowingBlobs (the mirror's downloads
// read as they land, when the upstream announced the size) the owner answers as soon as its
// download has begun and sends the bytes as they arrive, so the asker's copy overlaps the
// owner's download; the owner still holds the last slice back until its whole copy matched the
// digest, and a download that stalls for RequestTimeout breaks the stream off (no StatusWait
// can go inside a body). The asker verifies the whole blob as from any
// holder: wrong bytes are a strike against the owner, a stall or a broken stream counts against
// its standing, and on any failure the asker's mirror goes to the upstream itself. Hosts that see
// the same peers agree on the owner, so hosts pulling one image at the same moment cause one
// upstream download per blob, spread over the owners.
//
// Listening: the TCP transport runs without SO_REUSEPORT, and a configured listen address whose
// port is in use stops Run with an error, so a second daemon on a port another holds fails to
// start instead of sharing the port (and half of its connections) with it.
//
// Coalescing: when no peer holds a chunk, the host with the highest hash(CID, peer ID) among this
// host and the connected peers that can fetch the blob (rendezvous hashing) fetches it from its
// origin; the others ask it with FlagFetchThrough and it streams the bytes back. Concurrent asks
// share one origin fetch (singleflight), and the owner keeps recent chunks in memory while they
// are being stored. If the owner cannot be reached or fails (it left, its connection broke, its
// origin erred), the asker passes it over for the next host in rendezvous order, once
// (maxOwnerTries), and only then goes to its own origin: every host that saw the first owner
// fail picks the same second one, so churn does not turn into one origin fetch per asker. An
// owner asked for a chunk it has stored meanwhile serves it from its store. Every origin fetch
// is counted by why it happened (shoal_p2p_origin_fetches_total{cause}). Hosts agree on the owner without talking as long as they agree on the
// swarm, so a cluster reading one image pulls each chunk from the origin about once.
//
// That holds in a full mesh only. With connection limits each host sees a few dozen peers, and
// hosts that see different peers pick different owners: in the cluster simulator
// (clustersim_test.go) 24 hosts with about 8 connections each pulled 3 images from the origin
// for one, 100 hosts with 16 each 11.75 (BENCHMARKS.md, "Cluster simulator").
//
// Membership (Config.Membership, members.go) is what fixes that: every host runs
// hashicorp/memberlist (SWIM gossip over its own UDP and TCP port, encrypted with SecretKey or
// the PSK), named by its peer ID, with metadata of a version byte, whether it can fetch from an
// origin (fixed for its life: MembershipConfig.NoOrigin) and up to 8 of its libp2p listen
// addresses (which go to the peerstore). The rendezvous candidates are then every member that
// can fetch, connected or not, plus the connected fetchers (a member that has not registered
// the blob answers a fetch-through with not found, and the asker goes to its own origin). An
// owner this host is not connected to is dialled on demand (within dialTimeout, so a member
// that has just died costs a dial, not CoalesceTimeout) and stays connected like any peer, so
// it sends presence maps and is a holder candidate from then on. An owner is one host that
// every reader without a holder asks at once: once it holds the chunk, their fetch-throughs
// queue for its upload slots, and one answered busy keeps to the cluster (whileOwnerBusy): it
// asks the holders it knows (the owner and those it served are announcing the chunk), waits up
// to the slow threshold for a new holder, asks the owner again, up to ownerBusyRounds times,
// and goes to its own origin only after that. In the simulator at 100 hosts membership alone
// took the origin from 11.75 images to 9.6; asking the holders once after a busy answer took
// it to 1.8, and at 300 hosts busy owners were still 560 of 615 origin fetches, which keeping
// to the cluster removes (BENCHMARKS.md, "Cluster simulator").
// Hosts agree on owners once their member lists agree, which memberlist reaches within a few
// gossip rounds (about log(N) × GossipInterval) of a join or leave. Member metadata is
// decoded defensively (decodeMemberMeta, fuzzed); it carries no chunk state, which stays in
// presence maps between connected hosts.
//
// Churn: a host that stops gracefully leaves (a leave broadcast: others drop it at once); one
// that dies is suspected after failed probes and dropped after memberlist's suspicion timeout
// (seconds). Until then hosts may still pick it: their fetch-through dial or request fails and
// they ask the next owner in rendezvous order, so churn costs little origin, never
// availability. Only the chunks a host joining or leaving wins or won
// change owner (rendezvous hashing). Partitions: each side marks the other dead and picks owners
// among its own members, so the origin serves each chunk about once per side; when the
// partition heals the sides merge again through MembershipConfig.Join, retried every
// RejoinInterval (memberlist itself does not contact members it has declared dead). A member
// list that disagrees (during convergence, or a member some hosts cannot reach) costs origin
// bytes in the same way and nothing else. Without a SecretKey or PSK anyone who can reach the
// port can join and claim a peer ID: a false member that wins a chunk makes askers' dials or
// requests fail (libp2p authenticates the peer ID it dials), and they fall back to their own
// origin, so the cost is origin offload, not integrity (every chunk is still verified).
package p2p
