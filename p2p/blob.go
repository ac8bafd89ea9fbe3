package p2p

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

// BlobProtocol streams a whole blob of an ordinary (non-Shoal) image, named by its sha256, from
// what the registry mirror keeps (package mirror). Unlike ObjectProtocol it is not held in
// memory: the responder streams from its file and the asker writes to its own (a temporary file
// it renames only once the digest matched).
//
// One request per stream: the requester writes a BlobRequest frame (uvarint length, then the
// uvarint-prefixed digest and the uvarint largest size it takes) and closes its side; the
// responder writes a response header (AppendResponseHeader: status, then for StatusOK the
// uvarint size) and, for StatusOK, exactly size bytes, then closes.
const BlobProtocol protocol.ID = "/shoal/blob/1"

const (
	// MaxBlobSize bounds one blob over BlobProtocol.
	MaxBlobSize = 1 << 40
	// maxBlobRequest bounds an encoded BlobRequest body.
	maxBlobRequest = 2*binary.MaxVarintLen64 + maxDigestLen
	// blobSlice is the piece of a blob read, hashed and written per upload-rate wait, and the
	// most a responder holds back (see handleBlob).
	blobSlice = 1 << 20
)

// errBlobBrokenOff: a blob stream ended before the size its header announced.
var errBlobBrokenOff = errors.New("blob stream broken off")

// LocalBlobs is what this host serves over BlobProtocol: the mirror's verified blobs. It is an
// optional capability of the LocalChunks given to New, found by type assertion; without it the
// host answers every blob request "not found".
type LocalBlobs interface {
	// OpenBlob opens the kept blob with digest d and returns its size; ok is false if it is not
	// kept. The node hashes what it sends and breaks off rather than send the last bytes of a
	// blob that no longer matches d.
	OpenBlob(d digest.Digest) (rc io.ReadCloser, size int64, ok bool, err error)
}

// BlobRequest asks for one blob.
type BlobRequest struct {
	Digest digest.Digest
	Max    int64 // the largest blob the asker takes
}

// AppendBlobRequest appends r's encoding.
func AppendBlobRequest(b []byte, r BlobRequest) ([]byte, error) {
	if r.Digest == "" || len(r.Digest) > maxDigestLen || r.Max <= 0 || r.Max > MaxBlobSize {
		return b, fmt.Errorf("encode blob request for %q: %w", truncateName(r.Digest.String()), ErrMalformed)
	}
	body := appendString(make([]byte, 0, maxBlobRequest), r.Digest.String())
	body = binary.AppendUvarint(body, uint64(r.Max))
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...), nil
}

// ReadBlobRequest reads one blob request frame. The digest is checked to be sha256.
func ReadBlobRequest(r *bufio.Reader) (BlobRequest, error) {
	body, err := readFrame(r, maxBlobRequest)
	if err != nil {
		return BlobRequest{}, err
	}
	return parseBlobRequest(body)
}

func parseBlobRequest(body []byte) (BlobRequest, error) {
	p := parser{b: body}
	name := p.str(maxDigestLen)
	mx := p.uvarint()
	if p.err != nil || len(p.b) != 0 {
		return BlobRequest{}, fmt.Errorf("blob request: %w", ErrMalformed)
	}
	d, err := parseSHA256(name)
	if err != nil {
		return BlobRequest{}, fmt.Errorf("blob request: %v: %w", err, ErrMalformed)
	}
	if mx == 0 || mx > MaxBlobSize {
		return BlobRequest{}, fmt.Errorf("blob request: max %d: %w", mx, ErrMalformed)
	}
	return BlobRequest{Digest: d, Max: int64(mx)}, nil
}

// readBlobResponseHeader reads the status and, for StatusOK, the size (at most max).
func readBlobResponseHeader(r *bufio.Reader, max int64) (Status, int64, string, error) {
	sb, err := r.ReadByte()
	if err != nil {
		return 0, 0, "", noEOF(err)
	}
	st := Status(sb)
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return st, 0, "", noEOF(err)
	}
	if st != StatusOK {
		if n > maxMsgLen {
			return st, 0, "", fmt.Errorf("blob response message of %d bytes: %w", n, ErrMalformed)
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(r, msg); err != nil {
			return st, 0, "", noEOF(err)
		}
		return st, 0, string(msg), nil
	}
	if n > uint64(max) {
		return st, 0, "", fmt.Errorf("blob response of %d bytes, at most %d wanted: %w", n, max, ErrMalformed)
	}
	return st, int64(n), "", nil
}

// handleBlob answers one blob request under the per-peer limits of chunk requests. It hashes
// what it reads and holds back the last slice until the whole blob matched: a blob rotted on
// disk ends in a reset, never in bytes the asker would strike us for.
func (n *Node) handleBlob(s network.Stream) { n.serveBlobStream(s, "blob_", n.openBlobFor) }

// serveBlobStream answers one blob or blob-through stream: open decides the answer (status
// 0xff: reset the stream), label prefixes the served metric's status.
func (n *Node) serveBlobStream(s network.Stream, label string, open func(network.Stream, peer.ID) (Status, digest.Digest, io.ReadCloser, int64, string)) {
	done, ok := n.scope.Track()
	if !ok {
		_ = s.Reset()
		return
	}
	defer done()
	p := s.Conn().RemotePeer()
	_ = s.SetDeadline(time.Now().Add(n.cfg.RequestTimeout))
	st, d, rc, size, msg := open(s, p)
	if st == 0xff {
		_ = s.Reset()
		return
	}
	if rc != nil {
		defer rc.Close()
	}
	n.objm.served.WithLabelValues(label + st.String()).Inc()
	// open may have taken a while (a blob-through fetch): the header gets a whole timeout.
	_ = s.SetWriteDeadline(time.Now().Add(n.cfg.RequestTimeout))
	if _, err := s.Write(AppendResponseHeader(nil, st, int(size), msg)); err != nil {
		_ = s.Reset()
		return
	}
	if st != StatusOK {
		_ = s.Close()
		return
	}
	n.sendBlob(s, p, d, rc, size)
}

// sendBlob streams a blob whose OK header has been written: in 1 MiB slices under p's upload
// limit, hashing as it reads and holding the last slice back until the whole copy matched d.
func (n *Node) sendBlob(s network.Stream, p peer.ID, d digest.Digest, rc io.Reader, size int64) {
	// The whole transfer may take longer than one request: only each write is bounded.
	_ = s.SetDeadline(time.Time{})
	n.mu.Lock()
	ps := n.peerLocked(p)
	up := ps.upLimit
	rctx := n.scope.Context()
	n.mu.Unlock()
	send := func(b []byte) bool {
		if len(b) == 0 {
			return true
		}
		if up != nil && up.WaitN(rctx, len(b)) != nil {
			return false
		}
		_ = s.SetWriteDeadline(time.Now().Add(n.cfg.RequestTimeout))
		if _, err := s.Write(b); err != nil {
			return false
		}
		n.mu.Lock()
		ps.bytesUp += int64(len(b))
		n.mu.Unlock()
		return true
	}
	v := d.Verifier()
	bufs := [2][]byte{make([]byte, blobSlice), make([]byte, blobSlice)}
	var pending []byte
	var read int64
	for i := 0; ; i++ {
		buf := bufs[i%2]
		k, err := io.ReadFull(rc, buf)
		if k > 0 {
			read += int64(k)
			_, _ = v.Write(buf[:k]) // a hash: cannot fail
			if read > size || !send(pending) {
				_ = s.Reset()
				return
			}
			pending = buf[:k]
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			n.log.Warn("reading a kept blob", "blob", d, "peer", p, "err", err)
			_ = s.Reset()
			return
		}
	}
	if read != size || !v.Verified() {
		n.log.Warn("kept blob does not match its digest; not serving it", "blob", d, "bytes", read, "size", size)
		_ = s.Reset()
		return
	}
	if !send(pending) {
		_ = s.Reset()
		return
	}
	_ = s.Close()
}

// admitBlobStream lets a peer's blob stream in (allowlist, request rate, concurrency): a
// transfer holds one of the peer's request slots to its end, so a peer cannot open more blob
// streams (each with two 1 MiB buffers) than it may have requests in flight. release gives the
// slot back; nil, the stream is refused with st and msg.
func (n *Node) admitBlobStream(p peer.ID) (release func(), st Status, msg string) {
	if !n.allowed(p) {
		return nil, StatusRefused, "not allowed"
	}
	n.mu.Lock()
	ps := n.peerLocked(p)
	ps.requestsIn++
	ok := ps.reqLimit.Allow()
	n.mu.Unlock()
	if !ok {
		return nil, StatusBusy, "over request rate"
	}
	select {
	case ps.sem <- struct{}{}:
	default:
		return nil, StatusBusy, "over concurrency"
	}
	return func() { <-ps.sem }, 0, ""
}

// openBlobFor decides the answer to a blob request; status 0xff: unreadable request.
func (n *Node) openBlobFor(s network.Stream, p peer.ID) (Status, digest.Digest, io.ReadCloser, int64, string) {
	release, st, msg := n.admitBlobStream(p)
	if release == nil {
		return st, "", nil, 0, msg
	}
	req, err := ReadBlobRequest(bufio.NewReaderSize(s, 256))
	if err != nil {
		release()
		n.log.Debug("bad blob request", "peer", p, "err", err)
		return 0xff, "", nil, 0, ""
	}
	if st, msg, ok := n.authorizeBlob(p, req.Digest); !ok {
		release()
		return st, "", nil, 0, msg
	}
	lb, _ := n.local.(LocalBlobs)
	if lb == nil {
		release()
		return StatusNotFound, "", nil, 0, ""
	}
	rc, size, ok, err := lb.OpenBlob(req.Digest)
	switch {
	case err != nil:
		release()
		n.log.Warn("opening a kept blob", "blob", req.Digest, "peer", p, "err", err)
		return StatusError, "", nil, 0, "read failed"
	case !ok:
		release()
		return StatusNotFound, "", nil, 0, ""
	case size > req.Max:
		release()
		rc.Close()
		return StatusError, "", nil, 0, fmt.Sprintf("blob is %d bytes, over the %d asked for", size, req.Max)
	}
	return StatusOK, req.Digest, &releasingReader{ReadCloser: rc, release: release}, size, ""
}

// releasingReader frees a request slot when the blob being served is closed.
type releasingReader struct {
	io.ReadCloser
	release func()
}

func (r *releasingReader) Close() error {
	err := r.ReadCloser.Close()
	r.release()
	return err
}

// FetchBlob asks connected peers, best first and one at a time, for the blob with digest d (at
// most max bytes) and streams it to w, hashing it; it returns the peer that sent it once the
// whole blob matched d. Peers that do not have it are passed over. Once a peer has written to
// w, its failure ends the fetch (w cannot be rewound): a whole blob that does not hash to d, or
// bytes past its announced size, are a strike against the peer (and ban it as bad chunks do),
// and the error wraps chunk.ErrCorrupt; a stream broken off early (as a holder whose copy rotted
// does, see handleBlob) or silent for RequestTimeout counts against its standing.
func (n *Node) FetchBlob(ctx context.Context, d digest.Digest, max int64, w io.Writer) (string, error) {
	if d.Validate() != nil || d.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("fetch blob %q from peers: not a sha256 digest", truncateName(d.String()))
	}
	if max <= 0 || max > MaxBlobSize {
		max = MaxBlobSize
	}
	n.mu.Lock()
	h := n.host
	n.mu.Unlock()
	if h == nil {
		return "", ErrClosed
	}
	cands := n.objectCandidates()
	notFound := 0
	var errs []error
	start := time.Now()
	for _, p := range cands {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		wrote, err := n.blobExchange(ctx, h, p, BlobRequest{Digest: d, Max: max}, w)
		var denied *statusError
		if errors.As(err, &denied) && denied.st == StatusDenied && n.presentFor(p, d, start) {
			// A private blob (SetPrivate here too): p granted this host's rights just now.
			wrote, err = n.blobExchange(ctx, h, p, BlobRequest{Digest: d, Max: max}, w)
		}
		if err == nil {
			n.objm.fetches.WithLabelValues("blob_ok").Inc()
			return p.String(), nil
		}
		var se *statusError
		if errors.As(err, &se) {
			if se.st == StatusNotFound {
				notFound++
			} else {
				// A refusal (busy, no pull rights) is no strike, but the caller hears of it.
				errs = append(errs, fmt.Errorf("blob %s from %s: %w", d, p, err))
			}
			continue
		}
		err = fmt.Errorf("blob %s from %s: %w", d, p, err)
		n.judgeBlobFailure(ctx, p, err)
		if wrote > 0 {
			n.objm.fetches.WithLabelValues("blob_failed").Inc()
			return p.String(), err
		}
		errs = append(errs, err)
	}
	n.objm.fetches.WithLabelValues("blob_not_found").Inc()
	if len(errs) == 0 {
		return "", fmt.Errorf("fetch blob %s: none of %d peers has it: %w", d, notFound, ErrObjectNotFound)
	}
	return "", fmt.Errorf("fetch blob %s: %d of %d peers do not have it: %w: %w", d, notFound, len(cands), ErrObjectNotFound, errors.Join(errs...))
}

// judgeBlobFailure counts a failed blob transfer from p (not a status answer) and holds it
// against p: wrong or malformed bytes are strikes, a stall or a transfer broken off counts
// against its standing. Nothing is held against p once ctx has ended (the asker left).
func (n *Node) judgeBlobFailure(ctx context.Context, p peer.ID, err error) {
	switch {
	case ctx.Err() != nil:
	case errors.Is(err, chunk.ErrCorrupt):
		n.objm.failures.WithLabelValues("corrupt").Inc()
		n.strike(p, err)
	case isBadData(err):
		n.objm.failures.WithLabelValues("malformed").Inc()
		n.strike(p, err)
	case errors.Is(err, context.DeadlineExceeded):
		n.objm.failures.WithLabelValues("stall").Inc()
		n.record(p, outcomeBad)
	case errors.Is(err, errBlobBrokenOff):
		n.objm.failures.WithLabelValues("broken_off").Inc()
		n.record(p, outcomeBad)
	default:
		n.objm.failures.WithLabelValues("error").Inc()
	}
}

// blobExchange runs one blob request on a new stream and copies the body to w, verified. It
// returns how many bytes reached w.
func (n *Node) blobExchange(ctx context.Context, h interface {
	NewStream(context.Context, peer.ID, ...protocol.ID) (network.Stream, error)
}, p peer.ID, req BlobRequest, w io.Writer) (int64, error) {
	buf, err := AppendBlobRequest(nil, req)
	if err != nil {
		return 0, err
	}
	return n.blobStream(ctx, h, p, BlobProtocol, buf, req.Digest, req.Max, false, w)
}

// blobStream sends one encoded blob request over proto and copies the verified body to w. waits:
// the responder may send StatusWait bytes before its header (BlobThroughProtocol), each of which
// extends the wait by RequestTimeout. It returns how many bytes reached w.
func (n *Node) blobStream(ctx context.Context, h interface {
	NewStream(context.Context, peer.ID, ...protocol.ID) (network.Stream, error)
}, p peer.ID, proto protocol.ID, buf []byte, d digest.Digest, max int64, waits bool, w io.Writer) (int64, error) {
	req := struct {
		Digest digest.Digest
		Max    int64
	}{d, max}
	n.mu.Lock()
	ps := n.peerLocked(p)
	ps.requestsOut++
	n.mu.Unlock()
	hctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
	s, err := h.NewStream(hctx, p, proto)
	cancel()
	if err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	_ = s.SetDeadline(time.Now().Add(n.cfg.RequestTimeout))
	if _, err := s.Write(buf); err != nil {
		_ = s.Reset()
		return 0, err
	}
	_ = s.CloseWrite()
	br := bufio.NewReaderSize(s, 64<<10)
	if waits {
		if err := skipWaits(s, br, n.cfg.RequestTimeout); err != nil {
			_ = s.Reset()
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			if isTimeout(err) {
				return 0, context.DeadlineExceeded
			}
			return 0, err
		}
	}
	st, size, msg, err := readBlobResponseHeader(br, req.Max)
	if err != nil {
		_ = s.Reset()
		if isTimeout(err) {
			return 0, context.DeadlineExceeded
		}
		return 0, err
	}
	if st != StatusOK {
		_ = s.Close()
		return 0, &statusError{st, msg}
	}
	v := req.Digest.Verifier()
	var got int64
	chunkBuf := make([]byte, 256<<10)
	for got < size {
		_ = s.SetReadDeadline(time.Now().Add(n.cfg.RequestTimeout))
		k, rerr := br.Read(chunkBuf[:min(int64(len(chunkBuf)), size-got)])
		if k > 0 {
			_, _ = v.Write(chunkBuf[:k])
			if _, err := w.Write(chunkBuf[:k]); err != nil {
				_ = s.Reset()
				return got, err
			}
			got += int64(k)
			n.mu.Lock()
			ps.bytesDown += int64(k)
			n.mu.Unlock()
		}
		if rerr != nil && got < size {
			_ = s.Reset()
			if ctx.Err() != nil {
				return got, ctx.Err()
			}
			if isTimeout(rerr) {
				return got, context.DeadlineExceeded
			}
			// Broken off: a holder that found its own copy rotted does this, and so does a
			// network failure. Not a strike; it counts against the peer's standing.
			return got, fmt.Errorf("%d of %d bytes, then %v: %w", got, size, rerr, errBlobBrokenOff)
		}
	}
	// Nothing may follow the blob.
	if _, err := br.ReadByte(); err != io.EOF {
		_ = s.Reset()
		return got, fmt.Errorf("bytes after the %d announced: %w", size, chunk.ErrCorrupt)
	}
	_ = s.Close()
	if !v.Verified() {
		return got, fmt.Errorf("%d bytes that do not hash to the digest: %w", got, chunk.ErrCorrupt)
	}
	return got, nil
}
