package p2p

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// PreheatProtocol asks a peer to warm an image (`shoal prefetch --cluster`), or how far it got.
// One request per stream: a frame with the version, the operation (PreheatStart or
// PreheatStatus) and the reference; one answer frame: status, the image's manifest digest, the
// prefetch state, its bytes and bytes present, a message. The peer warms the image by its own
// normal fetch path (peers first, then the blob's rendezvous owner, then the origin), so a
// cluster-wide preheat keeps the rule that each chunk leaves the origin about once.
const PreheatProtocol protocol.ID = "/shoal/preheat/1"

// Preheat operations.
const (
	PreheatStart  byte = 1 // begin warming the reference (nothing if it runs or is done) and report
	PreheatStatus byte = 2 // report only
)

const (
	preheatVersion = 1
	maxPreheatRef  = 1024
	maxPreheatStr  = 128 // digest, state
	// maxPreheatRequest and maxPreheatResponse bound the frames.
	maxPreheatRequest  = 2 + binary.MaxVarintLen64 + maxPreheatRef
	maxPreheatResponse = 1 + 2*(binary.MaxVarintLen64+maxPreheatStr) + 2*binary.MaxVarintLen64 + binary.MaxVarintLen64 + maxMsgLen
)

// PreheatRequest is one preheat request.
type PreheatRequest struct {
	Op  byte
	Ref string
}

// PreheatProgress is how far a host got with warming an image.
type PreheatProgress struct {
	Image          string // manifest digest
	State          string // the host's prefetch state: running, done, failed, incomplete, ...
	Bytes, Present int64
	Msg            string // what failed
}

// Preheater warms images on this host for peers (the daemon's service). With start false it
// only reports; an image it does not have is an error.
type Preheater interface {
	Preheat(ctx context.Context, ref string, start bool) (PreheatProgress, error)
}

// AppendPreheatRequest appends r's encoding: uvarint frame length, version byte, operation byte,
// uvarint-prefixed reference.
func AppendPreheatRequest(b []byte, r PreheatRequest) ([]byte, error) {
	if r.Ref == "" || len(r.Ref) > maxPreheatRef || (r.Op != PreheatStart && r.Op != PreheatStatus) {
		return nil, fmt.Errorf("preheat request op %d for %q: want op 1 or 2 and a reference of 1 to %d bytes", r.Op, truncateName(r.Ref), maxPreheatRef)
	}
	body := []byte{preheatVersion, r.Op}
	body = appendString(body, r.Ref)
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...), nil
}

// ReadPreheatRequest reads one preheat request frame.
func ReadPreheatRequest(r *bufio.Reader) (PreheatRequest, error) {
	body, err := readFrame(r, maxPreheatRequest)
	if err != nil {
		return PreheatRequest{}, noEOF(err)
	}
	return parsePreheatRequest(body)
}

func parsePreheatRequest(body []byte) (PreheatRequest, error) {
	p := parser{b: body}
	v := p.byte()
	req := PreheatRequest{Op: p.byte()}
	req.Ref = p.str(maxPreheatRef)
	if p.err != nil || len(p.b) != 0 || v != preheatVersion || req.Ref == "" || (req.Op != PreheatStart && req.Op != PreheatStatus) {
		return PreheatRequest{}, fmt.Errorf("preheat request: %w", ErrMalformed)
	}
	return req, nil
}

// AppendPreheatResponse appends the answer's encoding: uvarint frame length, status byte,
// uvarint-prefixed image and state (cut at their cap), uvarint bytes and bytes present,
// uvarint-prefixed message (cut at the message cap).
func AppendPreheatResponse(b []byte, st Status, pr PreheatProgress) []byte {
	cut := func(s string, n int) string {
		if len(s) > n {
			return s[:n]
		}
		return s
	}
	body := []byte{byte(st)}
	body = appendString(body, cut(pr.Image, maxPreheatStr))
	body = appendString(body, cut(pr.State, maxPreheatStr))
	body = binary.AppendUvarint(body, uint64(max(pr.Bytes, 0)))
	body = binary.AppendUvarint(body, uint64(max(pr.Present, 0)))
	body = appendString(body, cut(pr.Msg, maxMsgLen))
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...)
}

// ReadPreheatResponse reads one preheat answer frame.
func ReadPreheatResponse(r *bufio.Reader) (Status, PreheatProgress, error) {
	body, err := readFrame(r, maxPreheatResponse)
	if err != nil {
		return 0, PreheatProgress{}, noEOF(err)
	}
	return parsePreheatResponse(body)
}

func parsePreheatResponse(body []byte) (Status, PreheatProgress, error) {
	p := parser{b: body}
	st := Status(p.byte())
	var pr PreheatProgress
	pr.Image = p.str(maxPreheatStr)
	pr.State = p.str(maxPreheatStr)
	b, present := p.uvarint(), p.uvarint()
	pr.Msg = p.str(maxMsgLen)
	if p.err != nil || len(p.b) != 0 || b > 1<<62 || present > b {
		return 0, PreheatProgress{}, fmt.Errorf("preheat response: %w", ErrMalformed)
	}
	pr.Bytes, pr.Present = int64(b), int64(present)
	return st, pr, nil
}

// SetPreheater makes this host answer PreheatProtocol with p (nil: it refuses). Set it before
// Run; later is allowed (requests before it are refused).
func (n *Node) SetPreheater(p Preheater) {
	n.mu.Lock()
	n.preheater = p
	n.mu.Unlock()
}

// handlePreheat answers one PreheatProtocol stream.
func (n *Node) handlePreheat(s network.Stream) {
	done, ok := n.scope.Track()
	if !ok {
		_ = s.Reset()
		return
	}
	defer done()
	p := s.Conn().RemotePeer()
	// Loading an image (its manifest and bootstrap from the registry or peers) comes before the
	// first answer to PreheatStart: allow the time a fetch-through has.
	_ = s.SetDeadline(time.Now().Add(n.cfg.CoalesceTimeout))
	st, pr, ok := n.servePreheat(s, p)
	if !ok {
		_ = s.Reset()
		return
	}
	if _, err := s.Write(AppendPreheatResponse(nil, st, pr)); err != nil {
		_ = s.Reset()
		return
	}
	_ = s.Close()
}

func (n *Node) servePreheat(s network.Stream, p peer.ID) (Status, PreheatProgress, bool) {
	if !n.allowed(p) {
		return StatusRefused, PreheatProgress{Msg: "not allowed"}, true
	}
	n.mu.Lock()
	ps := n.peerLocked(p)
	ok := ps.reqLimit.Allow()
	ph := n.preheater
	rctx := n.scope.Context()
	n.mu.Unlock()
	if !ok {
		return StatusBusy, PreheatProgress{Msg: "over request rate"}, true
	}
	req, err := ReadPreheatRequest(bufio.NewReaderSize(s, 256))
	if err != nil {
		n.log.Debug("bad preheat request", "peer", p, "err", err)
		return 0, PreheatProgress{}, false
	}
	if ph == nil {
		return StatusError, PreheatProgress{Msg: "this host does not preheat for peers"}, true
	}
	ctx, cancel := context.WithTimeout(rctx, n.cfg.CoalesceTimeout)
	defer cancel()
	pr, err := ph.Preheat(ctx, req.Ref, req.Op == PreheatStart)
	if err != nil {
		pr.Msg = err.Error()
		return StatusError, pr, true
	}
	if req.Op == PreheatStart {
		n.log.Info("preheating for a peer", "peer", p, "ref", req.Ref, "image", pr.Image)
	}
	return StatusOK, pr, true
}

// Preheat asks peer p to warm ref (start) or to say how far it got. An answer with an error
// status is returned as an error, with the progress the peer reported.
func (n *Node) Preheat(ctx context.Context, p peer.ID, ref string, start bool) (PreheatProgress, error) {
	op := PreheatStatus
	if start {
		op = PreheatStart
	}
	buf, err := AppendPreheatRequest(nil, PreheatRequest{Op: op, Ref: ref})
	if err != nil {
		return PreheatProgress{}, err
	}
	n.mu.Lock()
	h := n.host
	n.mu.Unlock()
	if h == nil {
		return PreheatProgress{}, ErrClosed
	}
	hctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
	s, err := h.NewStream(hctx, p, PreheatProtocol)
	cancel()
	if err != nil {
		return PreheatProgress{}, fmt.Errorf("preheat %s on %s: %w", ref, p, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	_ = s.SetDeadline(time.Now().Add(n.cfg.CoalesceTimeout))
	if _, err := s.Write(buf); err != nil {
		_ = s.Reset()
		return PreheatProgress{}, fmt.Errorf("preheat %s on %s: %w", ref, p, err)
	}
	_ = s.CloseWrite()
	st, pr, err := ReadPreheatResponse(bufio.NewReaderSize(s, 512))
	if err != nil {
		_ = s.Reset()
		return PreheatProgress{}, fmt.Errorf("preheat %s on %s: %w", ref, p, err)
	}
	_ = s.Close()
	if st != StatusOK {
		return pr, fmt.Errorf("preheat %s on %s: %s: %s", ref, p, st, pr.Msg)
	}
	return pr, nil
}
