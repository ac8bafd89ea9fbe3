package p2p

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/opencontainers/go-digest"
)

// BlobThroughProtocol asks the cluster's rendezvous owner of a blob (BlobOwner) to fetch it
// from an upstream registry for the cluster and stream it back, so that hosts pulling one
// ordinary image at the same moment cause one upstream download of each blob, not one per host.
//
// One request per stream: the asker writes a BlobThroughRequest frame (uvarint length, then the
// uvarint-prefixed digest, the uvarint largest size it takes, a flags byte, the uvarint-prefixed
// upstream host and repository) and closes its side. The owner answers as on BlobProtocol, but
// may first write any number of single StatusWait bytes while its fetch runs, at least one
// every RequestTimeout/3; the asker allows RequestTimeout between them.
const BlobThroughProtocol protocol.ID = "/shoal/blob-through/1"

// StatusWait, on BlobThroughProtocol only, is a byte the owner sends alone while it is still
// fetching; the response header follows later.
const StatusWait Status = 0x57

// BlobThroughManifest in BlobThroughRequest.Flags: the digest names a manifest (fetched from
// the upstream's manifests endpoint, and capped at the size the asker gives).
const BlobThroughManifest byte = 1

const (
	maxUpstreamLen = 255 // a host[:port]
	maxBlobThrough = 3*binary.MaxVarintLen64 + 1 + maxDigestLen + maxUpstreamLen + maxRepoLen
)

// BlobFetcher is the local side of BlobThroughProtocol: the registry mirror fetching a blob for
// a peer. An optional capability of the LocalChunks given to New (with LocalBlobs), used only
// when Config.BlobThrough is set.
type BlobFetcher interface {
	// FetchBlobFor brings the blob (or, manifest: the manifest) d of repository repo at the
	// registry upstream into what LocalBlobs.OpenBlob serves, sharing one fetch among all who
	// ask. It must not itself ask a peer to fetch through (two owners could wait on each other).
	// An error wrapping ErrObjectNotFound: the upstream does not have it.
	FetchBlobFor(ctx context.Context, d digest.Digest, manifest bool, upstream, repo string, max int64) error
}

// GrowingBlobs is an optional capability of the LocalChunks given to New, beside BlobFetcher:
// a blob this host is downloading from an upstream, readable as its bytes arrive, with its size
// (the upstream's). The owner then answers a blob-through request as soon as the download has
// begun and sends the bytes as they come, instead of after the whole blob: the asker's download
// overlaps the owner's. The owner still hashes what it sends and holds the last slice back until
// the whole copy matched the digest (sendBlob); the asker verifies everything before use. The
// reader ends when ctx does. While the bytes stream no StatusWait can be sent: a download that
// stalls for RequestTimeout breaks the stream off, and the asker goes to its upstream. ok
// false: no such download now (or it may not go to peers; with pull rights, one of a private
// repository), and the request waits for the fetch as before.
type GrowingBlobs interface {
	OpenGrowing(ctx context.Context, d digest.Digest) (rc io.ReadCloser, size int64, ok bool)
}

// BlobThroughRequest asks the owner to fetch a blob through.
type BlobThroughRequest struct {
	Digest     digest.Digest
	Max        int64
	Flags      byte
	Upstream   string // registry host[:port]
	Repository string
}

// AppendBlobThroughRequest appends r's encoding.
func AppendBlobThroughRequest(b []byte, r BlobThroughRequest) ([]byte, error) {
	if r.Digest == "" || len(r.Digest) > maxDigestLen || r.Max <= 0 || r.Max > MaxBlobSize ||
		r.Flags&^BlobThroughManifest != 0 || r.Upstream == "" || len(r.Upstream) > maxUpstreamLen || r.Repository == "" || len(r.Repository) > maxRepoLen {
		return b, fmt.Errorf("encode blob-through request for %q: %w", truncateName(r.Digest.String()), ErrMalformed)
	}
	body := appendString(make([]byte, 0, maxBlobThrough), r.Digest.String())
	body = binary.AppendUvarint(body, uint64(r.Max))
	body = append(body, r.Flags)
	body = appendString(body, r.Upstream)
	body = appendString(body, r.Repository)
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...), nil
}

// ReadBlobThroughRequest reads one blob-through request frame. The digest is checked to be
// sha256; the upstream and repository only to be present and bounded (the owner's mirror
// decides whether it fetches from that upstream).
func ReadBlobThroughRequest(r *bufio.Reader) (BlobThroughRequest, error) {
	body, err := readFrame(r, maxBlobThrough)
	if err != nil {
		return BlobThroughRequest{}, err
	}
	return parseBlobThroughRequest(body)
}

func parseBlobThroughRequest(body []byte) (BlobThroughRequest, error) {
	p := parser{b: body}
	name := p.str(maxDigestLen)
	mx := p.uvarint()
	flags := p.byte()
	up := p.str(maxUpstreamLen)
	repo := p.str(maxRepoLen)
	if p.err != nil || len(p.b) != 0 {
		return BlobThroughRequest{}, fmt.Errorf("blob-through request: %w", ErrMalformed)
	}
	d, err := parseSHA256(name)
	if err != nil {
		return BlobThroughRequest{}, fmt.Errorf("blob-through request: %v: %w", err, ErrMalformed)
	}
	if mx == 0 || mx > MaxBlobSize || flags&^BlobThroughManifest != 0 || up == "" || repo == "" {
		return BlobThroughRequest{}, fmt.Errorf("blob-through request: max %d, flags %#x, upstream %q, repository %q: %w",
			mx, flags, truncateName(up), truncateName(repo), ErrMalformed)
	}
	return BlobThroughRequest{Digest: d, Max: int64(mx), Flags: flags, Upstream: up, Repository: repo}, nil
}

// skipWaits reads the StatusWait bytes before a response header, allowing timeout before each.
func skipWaits(s network.Stream, br *bufio.Reader, timeout time.Duration) error {
	for {
		_ = s.SetReadDeadline(time.Now().Add(timeout))
		b, err := br.Peek(1)
		if err != nil {
			return noEOF(err)
		}
		if Status(b[0]) != StatusWait {
			return nil
		}
		_, _ = br.ReadByte()
	}
}

// BlobOwner returns the host that fetches blob d from the upstream for the cluster: the highest
// hash(d, peer) over this host (if it fetches through, Config.BlobThrough) and the connected,
// allowed, unbanned peers that speak BlobThroughProtocol. self is true when it is this host.
// Hosts that see the same peers pick the same owner without talking.
func (n *Node) BlobOwner(d digest.Digest) (owner peer.ID, self bool) {
	owner = n.digestOwner(d, BlobThroughProtocol, n.cfg.BlobThrough)
	return owner, owner == n.id
}

// digestOwner is the rendezvous owner of content d among this host (if withSelf) and the
// connected, allowed, unbanned peers that speak proto: the highest blobScore; "" if none.
func (n *Node) digestOwner(d digest.Digest, proto protocol.ID, withSelf bool) peer.ID {
	n.mu.Lock()
	h := n.host
	now := time.Now()
	var cands []peer.ID
	for _, ps := range n.peers {
		if ps.connected && !ps.banned(now) {
			cands = append(cands, ps.id)
		}
	}
	n.mu.Unlock()
	var best peer.ID
	var bestScore uint64
	if withSelf {
		best, bestScore = n.id, blobScore(d, n.id)
	}
	for _, p := range cands {
		if h == nil || !n.allowed(p) {
			continue
		}
		if ok, err := h.Peerstore().SupportsProtocols(p, proto); err != nil || len(ok) == 0 {
			continue
		}
		if s := blobScore(d, p); best == "" || s > bestScore {
			best, bestScore = p, s
		}
	}
	return best
}

func blobScore(d digest.Digest, p peer.ID) uint64 {
	h := sha256.New()
	h.Write([]byte(d))
	h.Write([]byte(p))
	return binary.BigEndian.Uint64(h.Sum(nil))
}

// FetchBlobThrough has the rendezvous owner of d (BlobOwner) fetch it from the upstream, once
// for all the hosts that ask, and streams it to w, verified as FetchBlob does. delegated is
// false, with no error and nothing written, when this host is the owner (or there is none): the
// caller fetches it itself, for the cluster. A failure after bytes reached w is returned with
// delegated true and is a strike or a mark against the owner as in FetchBlob; the caller then
// goes to the upstream itself (the owner may be gone or unable to reach it).
func (n *Node) FetchBlobThrough(ctx context.Context, d digest.Digest, manifest bool, upstream, repo string, max int64, w io.Writer) (from string, delegated bool, err error) {
	if d.Validate() != nil || d.Algorithm() != digest.SHA256 {
		return "", false, fmt.Errorf("fetch blob %q through a peer: not a sha256 digest", truncateName(d.String()))
	}
	if max <= 0 || max > MaxBlobSize {
		max = MaxBlobSize
	}
	owner, self := n.BlobOwner(d)
	if self || owner == "" {
		return "", false, nil
	}
	n.mu.Lock()
	h := n.host
	n.mu.Unlock()
	if h == nil {
		return "", false, ErrClosed
	}
	req := BlobThroughRequest{Digest: d, Max: max, Upstream: upstream, Repository: repo}
	if manifest {
		req.Flags = BlobThroughManifest
	}
	buf, err := AppendBlobThroughRequest(nil, req)
	if err != nil {
		return "", false, err
	}
	_, err = n.blobStream(ctx, h, owner, BlobThroughProtocol, buf, d, max, true, w)
	if err == nil {
		n.objm.fetches.WithLabelValues("blob_through_ok").Inc()
		return owner.String(), true, nil
	}
	n.objm.fetches.WithLabelValues("blob_through_failed").Inc()
	err = fmt.Errorf("blob %s through %s: %w", d, owner, err)
	if se := (*statusError)(nil); !errors.As(err, &se) {
		n.judgeBlobFailure(ctx, owner, err)
	}
	return owner.String(), true, err
}

// handleBlobThrough answers one blob-through request: from what this host keeps, else after
// fetching it through BlobFetcher (sending StatusWait meanwhile), under the per-peer limits of
// blob requests.
func (n *Node) handleBlobThrough(s network.Stream) {
	n.serveBlobStream(s, "blob_through_", n.openBlobThroughFor)
}

// openBlobThroughFor decides the answer to a blob-through request, fetching the blob first if
// this host does not keep it; status 0xff: unreadable request or an asker that left.
func (n *Node) openBlobThroughFor(s network.Stream, p peer.ID) (Status, digest.Digest, io.ReadCloser, int64, string) {
	release, st, msg := n.admitBlobStream(p)
	if release == nil {
		return st, "", nil, 0, msg
	}
	req, err := ReadBlobThroughRequest(bufio.NewReaderSize(s, 1024))
	if err != nil {
		release()
		n.log.Debug("bad blob-through request", "peer", p, "err", err)
		return 0xff, "", nil, 0, ""
	}
	// A private blob (the mirror's, of a private repository) goes only to peers with a grant.
	if st, msg, ok := n.authorizeBlob(p, req.Digest); !ok {
		release()
		return st, "", nil, 0, msg
	}
	lb, _ := n.local.(LocalBlobs)
	bf, _ := n.local.(BlobFetcher)
	if lb == nil || bf == nil || !n.cfg.BlobThrough {
		release()
		return StatusNotFound, "", nil, 0, "does not fetch through"
	}
	rc, size, ok, err := lb.OpenBlob(req.Digest)
	if err == nil && !ok {
		grc, gsize, ferr := n.fetchBlobFor(s, p, bf, req)
		if grc != nil {
			if gsize > req.Max {
				release()
				grc.Close()
				return StatusError, "", nil, 0, fmt.Sprintf("blob is %d bytes, over the %d asked for", gsize, req.Max)
			}
			n.log.Debug("streaming a blob to a peer while it downloads", "blob", req.Digest, "peer", p, "bytes", gsize)
			return StatusOK, req.Digest, &releasingReader{ReadCloser: grc, release: release}, gsize, ""
		}
		if ferr != nil {
			release()
			if errors.Is(ferr, errAskerLeft) {
				return 0xff, "", nil, 0, ""
			}
			n.log.Debug("fetch-through of a blob", "blob", req.Digest, "peer", p, "upstream", req.Upstream, "err", ferr)
			if errors.Is(ferr, ErrObjectNotFound) {
				return StatusNotFound, "", nil, 0, truncateName(ferr.Error())
			}
			return StatusError, "", nil, 0, truncateName(ferr.Error())
		}
		rc, size, ok, err = lb.OpenBlob(req.Digest)
	}
	switch {
	case err != nil:
		release()
		n.log.Warn("opening a kept blob", "blob", req.Digest, "peer", p, "err", err)
		return StatusError, "", nil, 0, "read failed"
	case !ok:
		release()
		return StatusError, "", nil, 0, "fetched but no longer kept"
	case size > req.Max:
		release()
		rc.Close()
		return StatusError, "", nil, 0, fmt.Sprintf("blob is %d bytes, over the %d asked for", size, req.Max)
	}
	return StatusOK, req.Digest, &releasingReader{ReadCloser: rc, release: release}, size, ""
}

var errAskerLeft = errors.New("the asker left")

// growingPoll is how often a blob-through request waiting for the owner's download looks for
// its bytes to begin (GrowingBlobs).
const growingPoll = 10 * time.Millisecond

// fetchBlobFor runs the local fetch of req's blob, writing a StatusWait byte every
// RequestTimeout/3 until it ends; a failed write means the asker left. With GrowingBlobs, it
// returns a reader of the download as soon as it has begun (rc not nil); the fetch goes on
// (it is shared, on its own context, in the mirror), and this request no longer waits for it.
func (n *Node) fetchBlobFor(s network.Stream, p peer.ID, bf BlobFetcher, req BlobThroughRequest) (rc io.ReadCloser, size int64, err error) {
	ctx, cancel := context.WithCancel(n.scope.Context())
	defer cancel()
	res := make(chan error, 1)
	go func() {
		res <- bf.FetchBlobFor(ctx, req.Digest, req.Flags&BlobThroughManifest != 0, req.Upstream, req.Repository, req.Max)
	}()
	tick := time.NewTicker(max(n.cfg.RequestTimeout/3, time.Millisecond))
	defer tick.Stop()
	var poll <-chan time.Time
	gb, _ := n.local.(GrowingBlobs)
	if gb != nil && req.Flags&BlobThroughManifest == 0 {
		pt := time.NewTicker(growingPoll)
		defer pt.Stop()
		poll = pt.C
	}
	for {
		select {
		case err := <-res:
			return nil, 0, err
		case <-poll:
			// The reader outlives this request's wait, not the node: Close ends it.
			if rc, size, ok := gb.OpenGrowing(n.scope.Context(), req.Digest); ok {
				return rc, size, nil
			}
		case <-tick.C:
			_ = s.SetWriteDeadline(time.Now().Add(n.cfg.RequestTimeout))
			if _, err := s.Write([]byte{byte(StatusWait)}); err != nil {
				n.log.Debug("blob-through asker left", "blob", req.Digest, "peer", p, "err", err)
				return nil, 0, errAskerLeft
			}
		}
	}
}
