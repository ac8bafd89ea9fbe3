package p2p

import (
	"context"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/opencontainers/go-digest"
)

// ObjectThroughProtocol is ObjectProtocol with one more request kind, ObjectThrough: hosts that
// load one image at the same moment (a deployment starting everywhere at once) fetch its chunk
// manifests and bootstrap (megabytes for a large tree) from the origin about once for the
// cluster, not once each. Each asks the object's rendezvous owner (ObjectOwner); the owner, if it
// is loading an image that names the object, fetches it from its own origin once for itself and
// every peer that asks, and answers as on ObjectProtocol. A host that speaks only
// ObjectProtocol is never asked (it is not a candidate), so old and new hosts mix.
const ObjectThroughProtocol protocol.ID = "/shoal/object/2"

// ObjectFetcher is the local side of ObjectThrough: the daemon's image loader. It is an optional
// capability of the LocalChunks given to New, found by type assertion, like LocalObjects.
type ObjectFetcher interface {
	// FetchObjectFor returns the bytes of object d, at most max, for a peer that asked this host
	// as d's rendezvous owner: from the fetch this host's own load makes or is about to make,
	// sharing it with every peer that asks. ok is false when this host is not loading an image
	// that names d (it waits a moment for such a load to reach d first). It must never ask a
	// peer itself, so that two owners cannot wait on each other. The node checks the bytes
	// against d before serving them.
	FetchObjectFor(ctx context.Context, d digest.Digest, max int64) (data []byte, ok bool, err error)
}

// fetchObjectFor answers an ObjectThrough request for an object this host does not keep.
func (n *Node) fetchObjectFor(d digest.Digest, max int64) ([]byte, bool, error) {
	of, _ := n.local.(ObjectFetcher)
	if of == nil {
		return nil, false, nil
	}
	// Leave a third of the asker's RequestTimeout to send the answer.
	ctx, cancel := context.WithTimeout(n.scope.Context(), n.cfg.RequestTimeout*2/3)
	defer cancel()
	data, ok, err := of.FetchObjectFor(ctx, d, max)
	if err != nil {
		n.log.Debug("object fetch for a peer", "object", d, "err", err)
		return nil, false, nil // the asker goes to its own origin
	}
	return data, ok, nil
}

// ObjectOwner returns the host that fetches object d from the origin for the cluster when
// several load it at once: the highest hash(d, peer) over this host and the connected, allowed,
// unbanned peers that speak ObjectThroughProtocol (the blob-through owner's rule, BlobOwner).
// self is true when it is this host.
func (n *Node) ObjectOwner(d digest.Digest) (owner peer.ID, self bool) {
	owner = n.digestOwner(d, ObjectThroughProtocol, true)
	return owner, owner == n.id
}

// FetchObjectThrough asks the rendezvous owner of object d (ObjectOwner) for it, at most max
// bytes (at most MaxObjectSize), and returns its bytes once they hash to d. delegated is false,
// with no error, when this host is the owner: the caller fetches d from its origin itself, for
// the cluster. Any failure (the owner is not loading the image, has no rights to give, stalls,
// or sends other bytes: struck as for any object) is returned with delegated true, and the
// caller then goes to its origin.
func (n *Node) FetchObjectThrough(ctx context.Context, d digest.Digest, max int64) (data []byte, owner peer.ID, delegated bool, err error) {
	if d.Validate() != nil || d.Algorithm() != digest.SHA256 {
		return nil, "", false, fmt.Errorf("fetch object %q through its owner: not a sha256 digest", truncateName(d.String()))
	}
	if max <= 0 || max > MaxObjectSize {
		max = MaxObjectSize
	}
	owner, self := n.ObjectOwner(d)
	if self {
		return nil, "", false, nil
	}
	n.mu.Lock()
	h := n.host
	n.mu.Unlock()
	if h == nil {
		return nil, owner, true, ErrClosed
	}
	req := ObjectRequest{Kind: ObjectThrough, Name: d.String(), Max: max}
	data, err = n.objectRequest(ctx, h, owner, req, matchesDigest(d))
	var se *statusError
	switch {
	case err == nil:
		n.objm.fetches.WithLabelValues("through_ok").Inc()
		return data, owner, true, nil
	case errors.As(err, &se) && se.st == StatusNotFound:
		n.objm.fetches.WithLabelValues("through_not_found").Inc()
		return nil, owner, true, fmt.Errorf("%w: %w", err, ErrObjectNotFound)
	default:
		n.objm.fetches.WithLabelValues("through_failed").Inc()
		return nil, owner, true, err
	}
}
