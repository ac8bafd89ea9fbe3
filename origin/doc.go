// Package origin reads image manifests and blob byte ranges from where every chunk starts: an OCI
// Distribution registry or a local OCI image layout. It also holds the embedded read-only origin
// server (`shoal origin serve`) and image push (`shoal image push`).
//
// It owns the wire side of origins: references, authentication (anonymous, Basic, Bearer tokens
// from WWW-Authenticate, refreshed as they expire; credentials, in this order: a pod's image
// pull secret for the repository (PullSecrets, fed by the CRI proxy), kubelet credential provider
// plugins (KubeletProviders), Config's user, a Docker config.json, or the Docker credential helper
// it names, asked again every 10 minutes), TLS, retries with backoff and jitter, stall
// timeouts, a per-origin concurrency limit, and digest checks of whole manifests and blobs. It
// does not know chunks: callers verify the bytes of a range against its chunk CID
// (chunk.Verify). It must not import the packages that use it (demand, p2p, mount) and
// reads layouts with the image-spec types alone, so that any OCI layout is an origin.
//
// Reading:
//
//	cfg := origin.DefaultConfig()
//	cfg.Insecure = []string{"127.0.0.1:5000"} // plain HTTP for this host only
//	src, err := origin.Open("127.0.0.1:5000/img:latest", cfg) // or "./out/img", "oci:/abs/dir"
//	if err != nil { ... }
//	desc, manifest, err := src.Resolve(ctx)             // digest verified
//	b, err := src.ReadRange(ctx, blobDigest, off, n)      // exactly n bytes, or an error
//	if err := chunk.Verify(chunkCID, b); err != nil { ... }
//	rc, err := src.Open(ctx, blobDigest)                  // whole blob; Read returns io.EOF only if the digest matched
//
// An index resolves (Resolve) to the Shoal image for this host's platform: the entry marked with
// Shoal's artifactType or PlatformFeature in platform.os.features whose platform matches, so a
// tag whose index lists the original images and Shoal's (`shoal image convert --into-index`)
// serves the daemon, `shoal mount` and `shoal prefetch` the Shoal entry. Root and Manifest read
// manifests and indexes unresolved (the converter's side).
//
// Errors wrap the sentinels of errors.go (ErrNotFound, ErrUnauthorized, ErrCorrupt, ErrRange,
// ErrUnavailable, ...) and name the registry, repository and digest.
//
// Serving (the embedded origin for demos and benchmarks):
//
//	srv, err := origin.NewServer(map[string]string{"img": "out/img"}, origin.ServerConfig{Rate: 8 << 20})
//	go srv.Run(ctx, listener) // GET /v2/img/manifests/latest, /v2/img/blobs/<digest>, /shoal/stats
//	bytes := srv.Stats().BytesServed
//
// Pushing:
//
//	desc, err := origin.Push(ctx, "out/img", "registry.example/team/img:v1", cfg, origin.PushOptions{})
//	// every manifest of the layout by digest, then an index of them (after before) under the tag:
//	desc, err = origin.PushIndex(ctx, "out/img", "registry.example/team/img:v1", before, cfg, origin.PushOptions{})
//
// A push uploads only the blobs the registry lacks and writes the tag last, so a push that fails
// leaves no tag naming an incomplete image.
package origin
