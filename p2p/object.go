package p2p

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-p2p/shoal/chunk"
	shoalmetrics "github.com/shoal-p2p/shoal/internal/metrics"
)

// ObjectProtocol is the exchange of an image's small content-addressed objects: OCI manifests
// and indexes, chunk manifests, bootstraps, configs. It is what lets a host resolve and mount an
// image while the registry is down, from peers that pulled it before: everything an image needs
// after its tag is named by a sha256 digest, so a peer's answer is checked like a chunk.
//
// One request per stream, as ChunkProtocol: the requester writes an ObjectRequest and closes its
// side; the responder writes a response (AppendResponseHeader: status, then for StatusOK the
// uvarint length and the bytes) and closes.
const ObjectProtocol protocol.ID = "/shoal/object/1"

// Object request kinds.
const (
	// ObjectByDigest asks for the bytes of the object whose digest is Name ("sha256:<hex>").
	ObjectByDigest byte = 1
	// ObjectTag asks which digest the responder resolved the reference Name
	// ("host/name:tag") to at its registry. The answer cannot be verified: the asker uses it
	// only when its operator allows (the daemon's --peer-tags).
	ObjectTag byte = 2
	// ObjectThrough, on ObjectThroughProtocol only, asks for the object whose digest is Name of
	// a host the asker chose as its rendezvous owner (ObjectOwner): if the responder does not
	// hold it but is loading an image that names it, it fetches it from its origin, once for
	// itself and every peer that asks (objectthrough.go).
	ObjectThrough byte = 3
)

const (
	// MaxObjectSize bounds one object response: a bootstrap of a very large image fits, and a
	// peer can never make us take more.
	MaxObjectSize = 64 << 20
	// maxObjectName bounds a request's name: a digest or a registry reference.
	maxObjectName = 1024
	// maxObjectRequest bounds an encoded ObjectRequest.
	maxObjectRequest = 1 + binary.MaxVarintLen64 + maxObjectName + binary.MaxVarintLen64
	// objectFanout is how many peers are asked for one object at a time.
	objectFanout = 3
	// objectWriteSlice is the piece of an answer written per upload-rate wait.
	objectWriteSlice = 1 << 20
)

// ErrObjectNotFound: no peer asked holds the object (or knows the tag).
var ErrObjectNotFound = errors.New("p2p: no peer has the object")

// LocalObjects is what this host serves over ObjectProtocol: the daemon's kept manifests, chunk
// manifests and bootstraps. It is an optional capability of the LocalChunks given to New, found
// by type assertion; without it the host answers every object request "not found".
type LocalObjects interface {
	// Object returns the bytes of the object with digest d; ok is false if it is not held. The
	// node checks the bytes against d before serving them.
	Object(d digest.Digest) (data []byte, ok bool, err error)
	// Tag returns the digest this host's registry gave for ref (a canonical
	// "host/name:tag"), if this host resolved it.
	Tag(ref string) (digest.Digest, bool)
}

// ObjectRequest asks for one object.
type ObjectRequest struct {
	Kind byte   // ObjectByDigest, ObjectTag or ObjectThrough
	Name string // the digest, or the reference
	// Max is the largest answer the asker takes; the responder refuses a larger object rather
	// than send bytes that would be thrown away.
	Max int64
}

// AppendObjectRequest appends r's encoding: uvarint frame length, kind, uvarint-prefixed name,
// uvarint max.
func AppendObjectRequest(b []byte, r ObjectRequest) ([]byte, error) {
	if !validObjectKind(r.Kind) || r.Name == "" || len(r.Name) > maxObjectName || r.Max <= 0 || r.Max > MaxObjectSize {
		return b, fmt.Errorf("encode object request for %q: %w", truncateName(r.Name), ErrMalformed)
	}
	body := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(r.Name))
	body = append(body, r.Kind)
	body = appendString(body, r.Name)
	body = binary.AppendUvarint(body, uint64(r.Max))
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...), nil
}

func validObjectKind(k byte) bool {
	return k == ObjectByDigest || k == ObjectTag || k == ObjectThrough
}

// ReadObjectRequest reads one object request frame.
func ReadObjectRequest(r *bufio.Reader) (ObjectRequest, error) {
	body, err := readFrame(r, maxObjectRequest)
	if err != nil {
		return ObjectRequest{}, err
	}
	return parseObjectRequest(body)
}

func parseObjectRequest(body []byte) (ObjectRequest, error) {
	p := parser{b: body}
	var req ObjectRequest
	req.Kind = p.byte()
	req.Name = p.str(maxObjectName)
	mx := p.uvarint()
	if p.err != nil || len(p.b) != 0 {
		return ObjectRequest{}, fmt.Errorf("object request: %w", ErrMalformed)
	}
	if !validObjectKind(req.Kind) {
		return ObjectRequest{}, fmt.Errorf("object request: kind %d: %w", req.Kind, ErrMalformed)
	}
	if req.Name == "" || mx == 0 || mx > MaxObjectSize {
		return ObjectRequest{}, fmt.Errorf("object request: name of %d bytes, max %d: %w", len(req.Name), mx, ErrMalformed)
	}
	req.Max = int64(mx)
	return req, nil
}

// ReadObjectResponse reads an object response. For StatusOK it reads the announced length, which
// must be at most max (at most MaxObjectSize); the buffer grows with the bytes that arrive, so a
// peer that announces a large object and sends nothing costs no memory. An answer that ends
// early is io.ErrUnexpectedEOF.
func ReadObjectResponse(r *bufio.Reader, max int64) (Status, []byte, string, error) {
	sb, err := r.ReadByte()
	if err != nil {
		return 0, nil, "", noEOF(err)
	}
	st := Status(sb)
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return st, nil, "", noEOF(err)
	}
	if st != StatusOK {
		if n > maxMsgLen {
			return st, nil, "", fmt.Errorf("object response message of %d bytes: %w", n, ErrMalformed)
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(r, msg); err != nil {
			return st, nil, "", noEOF(err)
		}
		return st, nil, string(msg), nil
	}
	if max <= 0 || max > MaxObjectSize || n > uint64(max) {
		return st, nil, "", fmt.Errorf("object response of %d bytes, at most %d wanted: %w", n, max, ErrMalformed)
	}
	var buf bytes.Buffer
	if got, err := io.CopyN(&buf, r, int64(n)); err != nil {
		if errors.Is(err, io.EOF) {
			return st, nil, "", fmt.Errorf("object response: %d of %d bytes: %w", got, n, io.ErrUnexpectedEOF)
		}
		return st, nil, "", err
	}
	return st, buf.Bytes(), "", nil
}

func truncateName(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// objectMetrics are the shoal_p2p_object_* series.
type objectMetrics struct {
	fetches  *prometheus.CounterVec // by result: ok, not_found, failed
	served   *prometheus.CounterVec // by status
	failures *prometheus.CounterVec // by kind: corrupt, malformed, stall, error
}

// initObjects makes the object exchange's metrics; Close unregisters them with the node's.
func (n *Node) initObjects(reg prometheus.Registerer) error {
	m := &objectMetrics{
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_object_fetches_total", Help: "Objects (manifests, bootstraps) and tags asked of peers, by result (ok, not_found, failed; through_ok, through_not_found, through_failed: of an object's rendezvous owner; blob_through_ok, ...: of a blob's).",
		}, []string{"result"}),
		served: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_object_served_total", Help: "Object requests answered to peers, by status.",
		}, []string{"status"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_object_peer_failures_total", Help: "Object requests to peers that failed, by kind (corrupt, malformed, stall, error).",
		}, []string{"kind"}),
	}
	unreg, err := shoalmetrics.RegisterOwned(reg, m.fetches, m.served, m.failures)
	if err != nil {
		return fmt.Errorf("p2p: %w", err)
	}
	prev := n.unregister
	n.unregister = func() { unreg(); prev() }
	n.objm = m
	return nil
}

// handleObject answers one object request, under the same per-peer limits as chunk requests.
func (n *Node) handleObject(s network.Stream) {
	done, ok := n.scope.Track()
	if !ok {
		_ = s.Reset()
		return
	}
	defer done()
	p := s.Conn().RemotePeer()
	_ = s.SetDeadline(time.Now().Add(n.cfg.RequestTimeout))
	st, data, msg := n.serveObject(s, p)
	if st == 0xff {
		_ = s.Reset()
		return
	}
	n.objm.served.WithLabelValues(st.String()).Inc()
	if _, err := s.Write(AppendResponseHeader(nil, st, len(data), msg)); err != nil {
		_ = s.Reset()
		return
	}
	n.mu.Lock()
	ps := n.peerLocked(p)
	up := ps.upLimit
	rctx := n.scope.Context()
	n.mu.Unlock()
	for len(data) > 0 {
		k := min(len(data), objectWriteSlice)
		if up != nil {
			if err := up.WaitN(rctx, k); err != nil {
				_ = s.Reset()
				return
			}
		}
		_ = s.SetWriteDeadline(time.Now().Add(n.cfg.RequestTimeout))
		if _, err := s.Write(data[:k]); err != nil {
			_ = s.Reset()
			return
		}
		data = data[k:]
		n.mu.Lock()
		ps.bytesUp += int64(k)
		n.mu.Unlock()
	}
	_ = s.Close()
}

// serveObject decides the answer to an object request; status 0xff: unreadable request.
func (n *Node) serveObject(s network.Stream, p peer.ID) (Status, []byte, string) {
	if !n.allowed(p) {
		return StatusRefused, nil, "not allowed"
	}
	n.mu.Lock()
	ps := n.peerLocked(p)
	ps.requestsIn++
	ok := ps.reqLimit.Allow()
	n.mu.Unlock()
	if !ok {
		return StatusBusy, nil, "over request rate"
	}
	select {
	case ps.sem <- struct{}{}:
		defer func() { <-ps.sem }()
	default:
		return StatusBusy, nil, "over concurrency"
	}
	req, err := ReadObjectRequest(bufio.NewReaderSize(s, 512))
	if err != nil {
		n.log.Debug("bad object request", "peer", p, "err", err)
		return 0xff, nil, ""
	}
	// Pull rights (rights.go): a private repository's objects and tags only to peers with rights.
	if st, msg, ok := n.authorizeObject(p, req); !ok {
		return st, nil, msg
	}
	lo, _ := n.local.(LocalObjects)
	if lo == nil {
		return StatusNotFound, nil, ""
	}
	if req.Kind == ObjectTag {
		d, ok := lo.Tag(req.Name)
		if !ok {
			return StatusNotFound, nil, ""
		}
		return StatusOK, []byte(d.String()), ""
	}
	d, err := parseSHA256(req.Name)
	if err != nil {
		return StatusNotFound, nil, "not a sha256 digest"
	}
	data, ok, err := lo.Object(d)
	if err == nil && !ok && req.Kind == ObjectThrough {
		data, ok, err = n.fetchObjectFor(d, req.Max)
	}
	switch {
	case err != nil:
		n.log.Warn("reading a kept object", "object", d, "peer", p, "err", err)
		return StatusError, nil, "read failed"
	case !ok:
		return StatusNotFound, nil, ""
	case digest.SHA256.FromBytes(data) != d:
		// Rotted on disk: never send bytes the asker would ban us for.
		n.log.Warn("kept object does not match its digest; not serving it", "object", d)
		return StatusNotFound, nil, ""
	case int64(len(data)) > req.Max:
		return StatusError, nil, fmt.Sprintf("object is %d bytes, over the %d asked for", len(data), req.Max)
	}
	return StatusOK, data, ""
}

// matchesDigest checks an answer for object d: its bytes must hash to d.
func matchesDigest(d digest.Digest) func([]byte) error {
	return func(b []byte) error {
		if got := digest.SHA256.FromBytes(b); got != d {
			return fmt.Errorf("object %s: %d bytes hashing to %s: %w", d, len(b), got, chunk.ErrCorrupt)
		}
		return nil
	}
}

func parseSHA256(s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", err
	}
	if d.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("digest %s: only sha256", truncateName(s))
	}
	return d, nil
}

// FetchObject asks connected peers for the object with digest d, at most max bytes (at most
// MaxObjectSize), and returns its bytes once they hash to d. Peers are asked a few at a time,
// best first; a peer that sends other bytes, a malformed or oversized answer, or stalls past
// RequestTimeout is struck or counted as stalling exactly as for chunks (and banned the same
// way). It is meant for the few objects of an image, when its registry cannot be reached.
func (n *Node) FetchObject(ctx context.Context, d digest.Digest, max int64) ([]byte, error) {
	if d.Validate() != nil || d.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("fetch object %q from peers: not a sha256 digest", truncateName(d.String()))
	}
	if max <= 0 || max > MaxObjectSize {
		max = MaxObjectSize
	}
	req := ObjectRequest{Kind: ObjectByDigest, Name: d.String(), Max: max}
	data, p, err := n.askPeers(ctx, req, matchesDigest(d))
	if err != nil {
		return nil, fmt.Errorf("fetch object %s from peers: %w", d, err)
	}
	n.log.Debug("object from peer", "object", d, "peer", p, "bytes", len(data))
	return data, nil
}

// ResolveTag asks connected peers which digest their registry gave for ref (a canonical
// "host/name:tag"). The first well-formed answer wins, and it is only a peer's word: the caller
// then fetches the object by that digest, which is verified, but nothing proves the tag names
// it now.
func (n *Node) ResolveTag(ctx context.Context, ref string) (digest.Digest, peer.ID, error) {
	if ref == "" || len(ref) > maxObjectName {
		return "", "", fmt.Errorf("resolve tag %q from peers: bad reference", truncateName(ref))
	}
	var d digest.Digest
	req := ObjectRequest{Kind: ObjectTag, Name: ref, Max: maxDigestLen}
	_, p, err := n.askPeers(ctx, req, func(b []byte) error {
		got, err := parseSHA256(string(b))
		if err != nil {
			return fmt.Errorf("tag answer %q: %v: %w", truncateName(string(b)), err, ErrMalformed)
		}
		d = got
		return nil
	})
	if err != nil {
		return "", "", fmt.Errorf("resolve tag %s from peers: %w", ref, err)
	}
	return d, p, nil
}

// objectCandidates are the connected, unbanned peers, best first: those that hold some blob
// (hosts that pulled images) before those that hold none, then by the chunk score.
func (n *Node) objectCandidates() []peer.ID {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := time.Now()
	type cand struct {
		id    peer.ID
		blobs bool
		score time.Duration
	}
	var cs []cand
	for _, ps := range n.peers {
		if ps.connected && !ps.banned(now) {
			cs = append(cs, cand{ps.id, len(ps.blobs) > 0, ps.score(now)})
		}
	}
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].blobs != cs[j].blobs {
			return cs[i].blobs
		}
		if cs[i].score != cs[j].score {
			return cs[i].score < cs[j].score
		}
		return cs[i].id < cs[j].id
	})
	out := make([]peer.ID, len(cs))
	for i, c := range cs {
		out[i] = c.id
	}
	return out
}

// askPeers sends req to the candidates, objectFanout at a time, until one answers with bytes
// check accepts. Peers that answer "not found" are passed over; bad answers are accounted.
func (n *Node) askPeers(ctx context.Context, req ObjectRequest, check func([]byte) error) ([]byte, peer.ID, error) {
	n.mu.Lock()
	h := n.host
	n.mu.Unlock()
	if h == nil {
		return nil, "", ErrClosed
	}
	cands := n.objectCandidates()
	if len(cands) == 0 {
		n.objm.fetches.WithLabelValues("not_found").Inc()
		return nil, "", fmt.Errorf("no connected peer to ask: %w", ErrObjectNotFound)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		p    peer.ID
		data []byte
		err  error
	}
	results := make(chan result, len(cands))
	next, inflight := 0, 0
	launch := func() {
		p := cands[next]
		next++
		inflight++
		go func() {
			data, err := n.objectRequest(ctx, h, p, req, check)
			results <- result{p, data, err}
		}()
	}
	for next < len(cands) && inflight < objectFanout {
		launch()
	}
	var errs []error
	notFound := 0
	for inflight > 0 {
		r := <-results
		inflight--
		if r.err == nil {
			cancel()
			n.objm.fetches.WithLabelValues("ok").Inc()
			return r.data, r.p, nil
		}
		var se *statusError
		if errors.As(r.err, &se) && se.st == StatusNotFound {
			notFound++
		} else {
			errs = append(errs, r.err)
		}
		if next < len(cands) && ctx.Err() == nil {
			launch()
		}
	}
	if err := ctx.Err(); err != nil {
		n.objm.fetches.WithLabelValues("failed").Inc()
		return nil, "", err
	}
	if len(errs) == 0 {
		n.objm.fetches.WithLabelValues("not_found").Inc()
		return nil, "", fmt.Errorf("none of %d peers has it: %w", notFound, ErrObjectNotFound)
	}
	n.objm.fetches.WithLabelValues("failed").Inc()
	return nil, "", fmt.Errorf("%d of %d peers do not have it, the others failed: %w: %w", notFound, len(cands), ErrObjectNotFound, errors.Join(errs...))
}

// objectRequest asks p once and accounts the outcome to p as request does for chunks.
func (n *Node) objectRequest(parent context.Context, h host.Host, p peer.ID, req ObjectRequest, check func([]byte) error) ([]byte, error) {
	ctx, cancel := context.WithTimeout(parent, n.cfg.RequestTimeout)
	defer cancel()
	n.mu.Lock()
	ps := n.peerLocked(p)
	ps.requestsOut++
	n.mu.Unlock()
	data, err := n.objectExchange(ctx, h, p, req)
	if err == nil {
		err = check(data)
	}
	if err == nil {
		return data, nil
	}
	err = fmt.Errorf("%s from %s: %w", truncateName(req.Name), p, err)
	var se *statusError
	switch {
	case parent.Err() != nil: // another peer answered, or the caller left
		return nil, err
	case errors.As(err, &se):
		return nil, err // an honest "not found" or "busy"
	case errors.Is(err, chunk.ErrCorrupt):
		n.objm.failures.WithLabelValues("corrupt").Inc()
		n.strike(p, err)
	case isBadData(err):
		n.objm.failures.WithLabelValues("malformed").Inc()
		n.strike(p, err)
	case errors.Is(err, context.DeadlineExceeded):
		n.objm.failures.WithLabelValues("stall").Inc()
		n.record(p, outcomeBad) // a stall counts against its standing, as for chunks
	default:
		n.objm.failures.WithLabelValues("error").Inc()
	}
	n.mu.Lock()
	ps.errors++
	n.mu.Unlock()
	return nil, err
}

// objectExchange runs one object request/response on a new stream; ctx ending resets it.
func (n *Node) objectExchange(ctx context.Context, h host.Host, p peer.ID, req ObjectRequest) ([]byte, error) {
	buf, err := AppendObjectRequest(nil, req)
	if err != nil {
		return nil, err
	}
	proto := ObjectProtocol
	if req.Kind == ObjectThrough {
		proto = ObjectThroughProtocol
	}
	s, err := h.NewStream(ctx, p, proto)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if _, err := s.Write(buf); err != nil {
		_ = s.Reset()
		return nil, err
	}
	_ = s.CloseWrite()
	st, data, msg, err := ReadObjectResponse(bufio.NewReaderSize(s, 32<<10), req.Max)
	if err != nil {
		_ = s.Reset()
		// The stream's deadline is ctx's and may fire first: both are the peer running out of
		// time.
		if ctx.Err() != nil || isTimeout(err) {
			return nil, context.DeadlineExceeded
		}
		return nil, err
	}
	_ = s.Close()
	if st != StatusOK {
		return nil, &statusError{st, msg}
	}
	return data, nil
}

// isTimeout reports a stream deadline (yamux's "i/o deadline reached" is a net.Error, not
// os.ErrDeadlineExceeded).
func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// BlobPeers is how many connected, unbanned peers have sent this host a presence map for blob:
// hosts that registered an image with that layer, and so kept its manifest, chunk manifests and
// bootstrap, which they serve over ObjectProtocol. A host loading the image asks them for those
// objects before the origin.
func (n *Node) BlobPeers(blob digest.Digest) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := time.Now()
	c := 0
	for _, ps := range n.peers {
		if ps.connected && !ps.banned(now) && ps.blobs[blob] != nil {
			c++
		}
	}
	return c
}
