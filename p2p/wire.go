package p2p

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

// Protocol IDs. The version is part of the ID: an incompatible change gets a new ID and both are
// served during a rollout.
const (
	// ChunkProtocol is one request per stream: the requester writes a Request and closes its
	// side; the responder writes one Response and closes.
	ChunkProtocol protocol.ID = "/shoal/chunk/1"
	// ChunkProtocolV2 is ChunkProtocol with FlagHaveOthers in requests and the responder's load
	// (uploads in progress) in every response header, for swarm peer choice and super-seeding.
	// Hosts serve both and ask for V2 first, so a host of the previous release still works.
	ChunkProtocolV2 protocol.ID = "/shoal/chunk/2"
	// ChunkProtocolV3 is ChunkProtocolV2 whose OK responses carry the chunk in a wire form: a
	// codec, the chunk's length and the length of the bytes that follow (a zstd frame, or the
	// chunk itself), so a compressible chunk crosses the network compressed. Requests are
	// unchanged. Hosts serve V1 to V3 and ask for V3, then V2, then V1.
	ChunkProtocolV3 protocol.ID = "/shoal/chunk/3"
	// ChunkProtocolV4 is ChunkProtocolV3 with first bytes first: a request may name a run of
	// the chunk's sub-blocks (of a size it gives) that the requester needs now, and the OK
	// response is a sequence of parts: those sub-blocks raw, then the rest of the chunk (the
	// other sub-blocks raw, or the whole chunk as one zstd frame where it goes compressed), then
	// an end mark (AppendRequestV4, ReadResponseV4). Hosts serve V1 to V4 and ask for V4 first.
	ChunkProtocolV4 protocol.ID = "/shoal/chunk/4"
	// PresenceProtocol is a long-lived one-way stream of Presence frames from the opener.
	PresenceProtocol protocol.ID = "/shoal/presence/1"
)

// chunkProtocols are the chunk protocol IDs by version, oldest first: chunkProtocols[v-1] is
// version v.
var chunkProtocols = []protocol.ID{ChunkProtocol, ChunkProtocolV2, ChunkProtocolV3, ChunkProtocolV4}

// Hard caps on everything a peer can make us read or allocate.
const (
	// MaxChunkSize bounds the data of one chunk response.
	MaxChunkSize = 16 << 20
	// MaxBlobChunks bounds the chunk count of a presence bitmap (1 Mi bits: a 64 GiB blob at
	// 64 KiB chunks).
	MaxBlobChunks = 1 << 23
	maxDigestLen  = 136 // "sha512:" + 128 hex digits
	maxCIDLen     = 128
	maxMsgLen     = 256
	// maxRequestFrame bounds an encoded Request.
	maxRequestFrame = 1 + 2*binary.MaxVarintLen64 + maxDigestLen + maxCIDLen + 2*binary.MaxVarintLen64
	// maxRequestFrameV4 bounds an encoded V4 Request: a V1 request and the sub-block run.
	maxRequestFrameV4 = maxRequestFrame + 3*binary.MaxVarintLen64
	// MaxSubBlocks bounds the sub-blocks of one chunk a V4 exchange may cut it into.
	MaxSubBlocks = 4096
	// maxPresenceFrame bounds an encoded Presence.
	maxPresenceFrame = 1 + 3*binary.MaxVarintLen64 + maxDigestLen + MaxBlobChunks/8
)

// Errors of the wire codec. A frame that breaks a cap is malformed, not merely large.
var (
	ErrMalformed = errors.New("p2p: malformed frame")
)

// Request flags.
const (
	// FlagFetchThrough asks the responder, if it does not hold the chunk, to fetch it from its
	// origin on the requester's behalf (cluster-wide coalescing).
	FlagFetchThrough byte = 1 << 0
	// FlagHaveOthers (V2) says the requester knows other holders of the chunk it has not asked
	// yet: a responder that has already served this chunk more than its others may answer busy
	// so the requester goes to a host that has it from an earlier upload (super-seeding). A
	// request without it is never refused for that reason. V1 responders ignore it.
	FlagHaveOthers byte = 1 << 1
	// FlagCanWait (V2) says the requester knows no other holder yet but can wait briefly for
	// one: a responder that has just uploaded this chunk to another host may answer busy, and
	// the requester waits for that host's announcement (a seed serves each chunk once while
	// the swarm is still learning who holds what). A request without it is never refused for
	// that reason. Responders that do not know the flag ignore it.
	FlagCanWait byte = 1 << 2
)

// MaxLoad caps the load a V2 response reports.
const MaxLoad = 1 << 20

// Request asks for one chunk by CID. Blob, Offset and Length let a fetch-through responder ask its
// origin for the right range; a plain request needs only the CID.
type Request struct {
	Flags  byte
	Blob   digest.Digest
	CID    cid.Cid
	Offset int64
	Length int64

	// V4 only: the chunk is cut into sub-blocks of SubSize bytes (0: not cut, the response
	// carries the chunk whole), and the requester needs sub-blocks First to First+Count-1 now.
	SubSize int64
	First   int
	Count   int
}

// validSubRun reports whether r's sub-block fields are consistent: no run without a sub-block
// size, a size that is a positive multiple of chunk.BlockSize cutting the chunk into at most
// MaxSubBlocks, and a run inside the chunk.
func (r Request) validSubRun() bool {
	if r.SubSize == 0 {
		return r.First == 0 && r.Count == 0
	}
	n := chunk.NumSubBlocks(r.Length, r.SubSize)
	return r.SubSize > 0 && r.SubSize%chunk.BlockSize == 0 && r.SubSize <= MaxChunkSize && n >= 1 && n <= MaxSubBlocks &&
		r.First >= 0 && r.Count >= 0 && r.First <= n && r.Count <= n-r.First
}

// Status of a Response.
type Status byte

// Response statuses.
const (
	StatusOK       Status = 0 // Data follows
	StatusNotFound Status = 1 // the responder does not hold the chunk (and could not fetch it)
	StatusBusy     Status = 2 // over a concurrency or rate limit: try another holder
	StatusRefused  Status = 3 // the requester is not allowed (banned, not on the allowlist)
	StatusError    Status = 4 // the responder failed (its origin failed, a read failed)
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusNotFound:
		return "not found"
	case StatusBusy:
		return "busy"
	case StatusRefused:
		return "refused"
	case StatusError:
		return "error"
	case StatusDenied: // rights.go
		return "denied"
	}
	return fmt.Sprintf("status(%d)", byte(s))
}

// Presence flags.
const (
	// PresenceCanFetch: the sender has an origin for the blob and accepts fetch-through requests
	// for it, so it is a candidate of the coalescing rendezvous.
	PresenceCanFetch byte = 1 << 0
	// PresenceGone: the sender dropped the blob entirely; forget its map.
	PresenceGone byte = 1 << 1
)

// Presence is the sender's full, current state for one blob: which chunk indexes of the blob's
// manifest it holds. Full state rather than deltas makes updates idempotent and lets a slow
// stream coalesce many changes into one frame; Seq orders frames from one sender.
type Presence struct {
	Flags   byte
	Seq     uint64
	Blob    digest.Digest
	NChunks int
	Bitmap  []byte // exactly (NChunks+7)/8 bytes, bit i = chunk index i, LSB first
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// AppendRequest appends r's encoding: uvarint frame length, then flags, blob, CID, offset, length.
func AppendRequest(b []byte, r Request) ([]byte, error) {
	if len(r.Blob) > maxDigestLen || r.Offset < 0 || r.Length < 0 || r.Length > MaxChunkSize {
		return b, fmt.Errorf("encode request for %s: %w", r.CID, ErrMalformed)
	}
	var body []byte
	body = append(body, r.Flags)
	body = appendString(body, string(r.Blob))
	body = appendString(body, r.CID.KeyString())
	body = binary.AppendUvarint(body, uint64(r.Offset))
	body = binary.AppendUvarint(body, uint64(r.Length))
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...), nil
}

// AppendRequestV4 appends r's ChunkProtocolV4 encoding: AppendRequest's fields, then the
// sub-block size, the first sub-block wanted and how many, as uvarints, in one frame.
func AppendRequestV4(b []byte, r Request) ([]byte, error) {
	if !r.validSubRun() {
		return b, fmt.Errorf("encode request for %s: sub-blocks %d+%d of %d bytes: %w", r.CID, r.First, r.Count, r.SubSize, ErrMalformed)
	}
	v1, err := AppendRequest(nil, r)
	if err != nil {
		return b, err
	}
	_, n := binary.Uvarint(v1)
	body := v1[n:]
	body = binary.AppendUvarint(body, uint64(r.SubSize))
	body = binary.AppendUvarint(body, uint64(r.First))
	body = binary.AppendUvarint(body, uint64(r.Count))
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...), nil
}

// ReadRequestV4 reads one ChunkProtocolV4 request frame.
func ReadRequestV4(r *bufio.Reader) (Request, error) {
	body, err := readFrame(r, maxRequestFrameV4)
	if err != nil {
		return Request{}, err
	}
	return parseRequestV4(body)
}

func parseRequestV4(body []byte) (Request, error) {
	// The V1 fields, then three uvarints: parse from the end so that parseRequest sees exactly
	// its own fields.
	p := parser{b: body}
	_ = p.byte()
	_ = p.str(maxDigestLen)
	_ = p.str(maxCIDLen)
	_ = p.uvarint()
	_ = p.uvarint()
	if p.err != nil {
		return Request{}, fmt.Errorf("request: %w", ErrMalformed)
	}
	rest := p.b
	req, err := parseRequest(body[:len(body)-len(rest)])
	if err != nil {
		return Request{}, err
	}
	q := parser{b: rest}
	sub, first, count := q.uvarint(), q.uvarint(), q.uvarint()
	if q.err != nil || len(q.b) != 0 || sub > MaxChunkSize || first > MaxSubBlocks || count > MaxSubBlocks {
		return Request{}, fmt.Errorf("request: sub-blocks: %w", ErrMalformed)
	}
	req.SubSize, req.First, req.Count = int64(sub), int(first), int(count)
	if !req.validSubRun() {
		return Request{}, fmt.Errorf("request: sub-blocks %d+%d of %d bytes for a chunk of %d: %w", first, count, sub, req.Length, ErrMalformed)
	}
	return req, nil
}

// ReadRequest reads one request frame.
func ReadRequest(r *bufio.Reader) (Request, error) {
	body, err := readFrame(r, maxRequestFrame)
	if err != nil {
		return Request{}, err
	}
	return parseRequest(body)
}

func parseRequest(body []byte) (Request, error) {
	p := parser{b: body}
	var req Request
	req.Flags = p.byte()
	req.Blob = digest.Digest(p.str(maxDigestLen))
	cb := p.str(maxCIDLen)
	off := p.uvarint()
	ln := p.uvarint()
	if p.err != nil || len(p.b) != 0 {
		return Request{}, fmt.Errorf("request: %w", ErrMalformed)
	}
	if off > 1<<62 || ln > MaxChunkSize {
		return Request{}, fmt.Errorf("request: offset %d length %d: %w", off, ln, ErrMalformed)
	}
	req.Offset, req.Length = int64(off), int64(ln)
	c, err := cid.Cast([]byte(cb))
	if err != nil {
		return Request{}, fmt.Errorf("request: cid: %w", ErrMalformed)
	}
	req.CID = c
	return req, nil
}

// AppendResponseHeader appends the header of a response: the status byte, then for StatusOK the
// uvarint data length (the data follows unframed), otherwise a uvarint-prefixed message.
func AppendResponseHeader(b []byte, st Status, dataLen int, msg string) []byte {
	b = append(b, byte(st))
	if st == StatusOK {
		return binary.AppendUvarint(b, uint64(dataLen))
	}
	if len(msg) > maxMsgLen {
		msg = msg[:maxMsgLen]
	}
	return appendString(b, msg)
}

// AppendResponseHeaderV2 is AppendResponseHeader for ChunkProtocolV2: the status byte, then the
// responder's load (uploads in progress, uvarint, at most MaxLoad), then the V1 remainder.
func AppendResponseHeaderV2(b []byte, st Status, load, dataLen int, msg string) []byte {
	b = append(b, byte(st))
	b = binary.AppendUvarint(b, uint64(min(max(load, 0), MaxLoad)))
	rest := AppendResponseHeader(nil, st, dataLen, msg)
	return append(b, rest[1:]...)
}

// ReadResponseV2 reads a ChunkProtocolV2 response: ReadResponse with the responder's load.
func ReadResponseV2(r *bufio.Reader, want int64) (st Status, load int, data []byte, msg string, err error) {
	sb, err := r.ReadByte()
	if err != nil {
		return 0, 0, nil, "", err
	}
	l, err := binary.ReadUvarint(r)
	if err != nil {
		return Status(sb), 0, nil, "", noEOF(err)
	}
	if l > MaxLoad {
		return Status(sb), 0, nil, "", fmt.Errorf("response load %d over %d: %w", l, MaxLoad, ErrMalformed)
	}
	st, data, msg, err = readResponseBody(r, Status(sb), want)
	return st, int(l), data, msg, err
}

// Wire codecs of a ChunkProtocolV3 response: how the bytes that follow its header encode the chunk.
const (
	WireRaw  byte = 0 // the chunk's bytes as they are
	WireZstd byte = 1 // one zstd frame without dictionary (chunk.CodecZstd, package chunk/zchunk)
)

// wireCodecs maps wire codec bytes to the chunk codecs they carry.
var wireCodecs = map[byte]chunk.Codec{WireRaw: chunk.CodecNone, WireZstd: chunk.CodecZstd}

// WireCodec is the wire codec byte of a chunk codec; ok is false for a codec V3 cannot carry.
func WireCodec(c chunk.Codec) (b byte, ok bool) {
	for b, cc := range wireCodecs {
		if cc == c {
			return b, true
		}
	}
	return 0, false
}

// AppendResponseHeaderV3 appends the header of a ChunkProtocolV3 response: the status byte and
// the responder's load as in V2, then for StatusOK the wire codec byte, the chunk's length and
// the stored length as uvarints (storedLen bytes follow unframed), otherwise a uvarint-prefixed
// message.
func AppendResponseHeaderV3(b []byte, st Status, load int, codec byte, dataLen, storedLen int, msg string) []byte {
	if st != StatusOK {
		return AppendResponseHeaderV2(b, st, load, 0, msg)
	}
	b = append(b, byte(st))
	b = binary.AppendUvarint(b, uint64(min(max(load, 0), MaxLoad)))
	b = append(b, codec)
	b = binary.AppendUvarint(b, uint64(dataLen))
	return binary.AppendUvarint(b, uint64(storedLen))
}

// ReadResponseV3 reads a ChunkProtocolV3 response to a request for want bytes. For StatusOK it
// returns the chunk's codec and its stored bytes, not decoded: the chunk's length must be want,
// and the stored length want for a raw chunk and from 1 to want for a zstd frame (a frame the
// size of the chunk or larger does not pay, and no responder sends one), so a response never
// makes us allocate more than want. An unknown codec or another length is ErrMalformed, bytes
// that end early io.ErrUnexpectedEOF. Decoding is the caller's (zchunk.Decode, capped at want).
func ReadResponseV3(r *bufio.Reader, want int64) (st Status, load int, codec chunk.Codec, stored []byte, msg string, err error) {
	sb, err := r.ReadByte()
	if err != nil {
		return 0, 0, "", nil, "", err
	}
	st = Status(sb)
	l, err := binary.ReadUvarint(r)
	if err != nil {
		return st, 0, "", nil, "", noEOF(err)
	}
	if l > MaxLoad {
		return st, 0, "", nil, "", fmt.Errorf("response load %d over %d: %w", l, MaxLoad, ErrMalformed)
	}
	load = int(l)
	if st != StatusOK {
		st, _, msg, err = readResponseBody(r, st, want)
		return st, load, "", nil, msg, err
	}
	cb, err := r.ReadByte()
	if err != nil {
		return st, load, "", nil, "", noEOF(err)
	}
	codec, ok := wireCodecs[cb]
	if !ok {
		return st, load, "", nil, "", fmt.Errorf("response codec %d: %w", cb, ErrMalformed)
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return st, load, "", nil, "", noEOF(err)
	}
	if want <= 0 || want > MaxChunkSize || n != uint64(want) {
		return st, load, "", nil, "", fmt.Errorf("response of %d bytes, want %d: %w", n, want, ErrMalformed)
	}
	sn, err := binary.ReadUvarint(r)
	if err != nil {
		return st, load, "", nil, "", noEOF(err)
	}
	if codec == chunk.CodecNone && sn != n || codec != chunk.CodecNone && (sn == 0 || sn > n) {
		return st, load, "", nil, "", fmt.Errorf("response of %d %s bytes for a chunk of %d: %w", sn, wireName(codec), n, ErrMalformed)
	}
	stored = make([]byte, sn)
	if _, err := io.ReadFull(r, stored); err != nil {
		return st, load, "", nil, "", noEOF(err)
	}
	return st, load, codec, stored, "", nil
}

func wireName(c chunk.Codec) string {
	if c == chunk.CodecNone {
		return "raw"
	}
	return string(c)
}

// ReadResponse reads a response. For StatusOK it reads exactly want bytes of data: a response
// announcing another length is malformed (it never makes us allocate more than want), and one
// that ends early is io.ErrUnexpectedEOF. want must be at most MaxChunkSize.
func ReadResponse(r *bufio.Reader, want int64) (Status, []byte, string, error) {
	sb, err := r.ReadByte()
	if err != nil {
		return 0, nil, "", err
	}
	return readResponseBody(r, Status(sb), want)
}

// readResponseBody reads what follows the status (and, in V2, the load).
func readResponseBody(r *bufio.Reader, st Status, want int64) (Status, []byte, string, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return st, nil, "", noEOF(err)
	}
	if st != StatusOK {
		if n > maxMsgLen {
			return st, nil, "", fmt.Errorf("response message of %d bytes: %w", n, ErrMalformed)
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(r, msg); err != nil {
			return st, nil, "", noEOF(err)
		}
		return st, nil, string(msg), nil
	}
	if want < 0 || want > MaxChunkSize || n != uint64(want) {
		return st, nil, "", fmt.Errorf("response of %d bytes, want %d: %w", n, want, ErrMalformed)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return st, nil, "", noEOF(err)
	}
	return st, data, "", nil
}

// AppendPresence appends p's encoding: uvarint frame length, flags, seq, blob, nchunks, bitmap.
func AppendPresence(b []byte, p Presence) ([]byte, error) {
	if len(p.Blob) > maxDigestLen || p.NChunks < 0 || p.NChunks > MaxBlobChunks || len(p.Bitmap) != (p.NChunks+7)/8 {
		return b, fmt.Errorf("encode presence for %s: %w", p.Blob, ErrMalformed)
	}
	body := make([]byte, 0, 1+3*binary.MaxVarintLen64+len(p.Blob)+len(p.Bitmap))
	body = append(body, p.Flags)
	body = binary.AppendUvarint(body, p.Seq)
	body = appendString(body, string(p.Blob))
	body = binary.AppendUvarint(body, uint64(p.NChunks))
	body = append(body, p.Bitmap...)
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...), nil
}

// ReadPresence reads one presence frame.
func ReadPresence(r *bufio.Reader) (Presence, error) {
	body, err := readFrame(r, maxPresenceFrame)
	if err != nil {
		return Presence{}, err
	}
	return parsePresence(body)
}

func parsePresence(body []byte) (Presence, error) {
	p := parser{b: body}
	var pr Presence
	pr.Flags = p.byte()
	pr.Seq = p.uvarint()
	pr.Blob = digest.Digest(p.str(maxDigestLen))
	n := p.uvarint()
	if p.err != nil || n > MaxBlobChunks || uint64(len(p.b)) != (n+7)/8 {
		return Presence{}, fmt.Errorf("presence: %w", ErrMalformed)
	}
	pr.NChunks = int(n)
	pr.Bitmap = p.b
	return pr, nil
}

// readFrame reads a uvarint length and that many bytes, refusing lengths over max before
// allocating.
func readFrame(r *bufio.Reader, max int) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err // io.EOF here is a clean end of stream
	}
	if n > uint64(max) {
		return nil, fmt.Errorf("frame of %d bytes over the %d limit: %w", n, max, ErrMalformed)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, noEOF(err)
	}
	return b, nil
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parser reads fields from a frame body; the first error sticks.
type parser struct {
	b   []byte
	err error
}

func (p *parser) byte() byte {
	if p.err != nil || len(p.b) < 1 {
		p.err = ErrMalformed
		return 0
	}
	v := p.b[0]
	p.b = p.b[1:]
	return v
}

func (p *parser) uvarint() uint64 {
	if p.err != nil {
		return 0
	}
	v, n := binary.Uvarint(p.b)
	if n <= 0 {
		p.err = ErrMalformed
		return 0
	}
	p.b = p.b[n:]
	return v
}

func (p *parser) str(max int) string {
	n := p.uvarint()
	if p.err != nil {
		return ""
	}
	if n > uint64(max) || n > uint64(len(p.b)) {
		p.err = ErrMalformed
		return ""
	}
	s := string(p.b[:n])
	p.b = p.b[n:]
	return s
}

// Parts of a ChunkProtocolV4 OK response, each introduced by its kind byte.
const (
	// PartEnd ends the response.
	PartEnd byte = 0
	// PartSub is one sub-block: uvarint index, then its bytes raw (their length follows from
	// the index, the chunk's length and the request's sub-block size).
	PartSub byte = 1
	// PartWhole is the whole chunk: wire codec byte, uvarint stored length, then the stored
	// bytes (the chunk raw, or a zstd frame shorter than it), as in a V3 response.
	PartWhole byte = 2
	// PartAbort ends the response without the rest of the chunk: the sender found its own copy
	// rotten (it sent the first sub-blocks before hashing the whole chunk). The sub-blocks it
	// sent were checked against their digests by the receiver; the rest is to be had elsewhere.
	// An answer like StatusError, not a strike.
	PartAbort byte = 3
)

// AppendResponseHeaderV4 appends the header of a ChunkProtocolV4 response: the status byte and
// the responder's load as in V2, then for StatusOK the chunk's length (uvarint; parts follow),
// otherwise a uvarint-prefixed message.
func AppendResponseHeaderV4(b []byte, st Status, load int, dataLen int, msg string) []byte {
	return AppendResponseHeaderV2(b, st, load, dataLen, msg)
}

// AppendPartSub appends the head of a PartSub for sub-block i; its bytes follow.
func AppendPartSub(b []byte, i int) []byte {
	return binary.AppendUvarint(append(b, PartSub), uint64(i))
}

// AppendPartWhole appends the head of a PartWhole; storedLen bytes follow.
func AppendPartWhole(b []byte, codec byte, storedLen int) []byte {
	return binary.AppendUvarint(append(b, PartWhole, codec), uint64(storedLen))
}

// ReadResponseV4 reads a ChunkProtocolV4 response to req. For StatusOK it reads the parts as
// they come and calls onSub (if not nil) with each sub-block as soon as it has been read, before
// the next part is read: an error from onSub (a sub-block that does not match its digest) ends
// the read with that error. It returns the chunk as V3 would: raw (codec chunk.CodecNone, every
// sub-block arrived, assembled) or the stored bytes of the whole-chunk part (a zstd frame, or
// the chunk raw), not yet verified. The chunk's length must be req.Length; a sub-block index past
// the chunk or repeated, a PartSub when the request named no sub-block size, a second PartWhole,
// an unknown part or codec, or an end without the whole chunk is ErrMalformed, and bytes that end
// early io.ErrUnexpectedEOF. A PartAbort is a StatusError answer. What it allocates is bounded by req.Length: one buffer of the chunk
// for sub-blocks, one of at most the chunk for a whole part.
func ReadResponseV4(r *bufio.Reader, req Request, onSub func(i int, data []byte) error) (st Status, load int, codec chunk.Codec, stored []byte, msg string, err error) {
	want := req.Length
	sb, err := r.ReadByte()
	if err != nil {
		return 0, 0, "", nil, "", err
	}
	st = Status(sb)
	l, err := binary.ReadUvarint(r)
	if err != nil {
		return st, 0, "", nil, "", noEOF(err)
	}
	if l > MaxLoad {
		return st, 0, "", nil, "", fmt.Errorf("response load %d over %d: %w", l, MaxLoad, ErrMalformed)
	}
	load = int(l)
	if st != StatusOK {
		st, _, msg, err = readResponseBody(r, st, want)
		return st, load, "", nil, msg, err
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return st, load, "", nil, "", noEOF(err)
	}
	if want <= 0 || want > MaxChunkSize || n != uint64(want) || !req.validSubRun() {
		return st, load, "", nil, "", fmt.Errorf("response of %d bytes, want %d: %w", n, want, ErrMalformed)
	}
	nsub := chunk.NumSubBlocks(want, req.SubSize)
	var (
		buf   []byte // sub-blocks, assembled
		have  []bool
		nhave int
		whole []byte
		wcod  chunk.Codec
	)
	for {
		kind, err := r.ReadByte()
		if err != nil {
			return st, load, "", nil, "", noEOF(err)
		}
		switch kind {
		case PartAbort:
			return StatusError, load, "", nil, "holder's copy failed verification", nil
		case PartEnd:
			switch {
			case whole != nil:
				return st, load, wcod, whole, "", nil
			case nsub > 0 && nhave == nsub:
				return st, load, chunk.CodecNone, buf, "", nil
			}
			return st, load, "", nil, "", fmt.Errorf("response ended with %d of %d sub-blocks and no whole chunk: %w", nhave, nsub, ErrMalformed)
		case PartSub:
			i, err := binary.ReadUvarint(r)
			if err != nil {
				return st, load, "", nil, "", noEOF(err)
			}
			if nsub == 0 || i >= uint64(nsub) || have != nil && have[i] {
				return st, load, "", nil, "", fmt.Errorf("response sub-block %d of %d (repeated or out of range): %w", i, nsub, ErrMalformed)
			}
			if buf == nil {
				buf, have = make([]byte, want), make([]bool, nsub)
			}
			sr := chunk.SubBlock(want, req.SubSize, int(i))
			part := buf[sr.Offset:sr.End()]
			if _, err := io.ReadFull(r, part); err != nil {
				return st, load, "", nil, "", noEOF(err)
			}
			have[i] = true
			nhave++
			if onSub != nil {
				if err := onSub(int(i), part); err != nil {
					return st, load, "", nil, "", err
				}
			}
		case PartWhole:
			if whole != nil {
				return st, load, "", nil, "", fmt.Errorf("response with two whole chunks: %w", ErrMalformed)
			}
			cb, err := r.ReadByte()
			if err != nil {
				return st, load, "", nil, "", noEOF(err)
			}
			c, ok := wireCodecs[cb]
			if !ok {
				return st, load, "", nil, "", fmt.Errorf("response codec %d: %w", cb, ErrMalformed)
			}
			sn, err := binary.ReadUvarint(r)
			if err != nil {
				return st, load, "", nil, "", noEOF(err)
			}
			if c == chunk.CodecNone && sn != n || c != chunk.CodecNone && (sn == 0 || sn > n) {
				return st, load, "", nil, "", fmt.Errorf("response of %d %s bytes for a chunk of %d: %w", sn, wireName(c), n, ErrMalformed)
			}
			whole = make([]byte, sn)
			if _, err := io.ReadFull(r, whole); err != nil {
				return st, load, "", nil, "", noEOF(err)
			}
			wcod = c
		default:
			return st, load, "", nil, "", fmt.Errorf("response part %d: %w", kind, ErrMalformed)
		}
	}
}
