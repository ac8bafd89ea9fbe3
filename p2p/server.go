package p2p

import (
	"bufio"
	"context"
	"errors"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"

	"github.com/shoal-p2p/shoal/chunk"
)

// errAborted: writeV4 ended the answer with PartAbort (the held copy is rotten).
var errAborted = errors.New("answer aborted: the held copy failed verification")

// floodWindow is the window over which FloodBanAfter refusals ban a peer.
const floodWindow = 10 * time.Second

// chunkHandler answers chunk requests in protocol version v (1 to 4: chunkProtocols). Every
// stream has deadlines; a peer over its request rate or concurrency gets a busy answer at once
// (it asks another holder), and a peer that keeps going over its rate is banned. From V2 the
// header carries this host's load and requests flagged FlagHaveOthers are super-seeded; from V3
// a compressible chunk is sent as a zstd frame (wireForm).
func (n *Node) chunkHandler(v int) network.StreamHandler {
	return func(s network.Stream) { n.serveChunk(s, v) }
}

// chunkVersion is the newest chunk protocol version this host serves and asks for.
func (n *Node) chunkVersion() int {
	if v := n.cfg.chunkVersion; v != 0 {
		return v
	}
	return len(chunkProtocols)
}

func (n *Node) serveChunk(s network.Stream, ver int) {
	done, ok := n.scope.Track()
	if !ok {
		_ = s.Reset()
		return
	}
	defer done()
	p := s.Conn().RemotePeer()
	_ = s.SetDeadline(time.Now().Add(n.cfg.RequestTimeout))
	var req Request
	slot := false
	defer func() {
		if slot {
			<-n.slots
		}
	}()
	unverified := false
	st, data, msg := n.serve(s, p, ver, &req, &slot, &unverified)
	if st == 0xff { // unreadable request: nothing to answer
		_ = s.Reset()
		return
	}
	uploadedOK := false
	if len(data) > 0 {
		n.uploading.Add(1)
		defer n.uploading.Add(-1)
		defer func() { n.uploaded(req, p, uploadedOK) }()
	}
	n.met.servedRequests.WithLabelValues(st.String()).Inc()
	n.mu.Lock()
	ps := n.peerLocked(p)
	up := ps.upLimit
	rctx := n.scope.Context()
	n.mu.Unlock()
	_ = s.SetWriteDeadline(time.Now().Add(n.cfg.RequestTimeout))
	if ver >= 4 {
		wire, err := n.writeV4(s, rctx, up, req, st, data, msg, unverified)
		if errors.Is(err, errAborted) {
			_ = s.Close()
			return
		}
		if err != nil {
			_ = s.Reset()
			return
		}
		if len(data) > 0 {
			uploadedOK = true
			n.countServed(ps, len(data), wire)
		}
		_ = s.Close()
		return
	}
	// body is what goes on the wire: the chunk, or (V3) its zstd frame.
	codec, body := WireRaw, data
	if ver >= 3 && len(data) > 0 {
		codec, body = n.wireForm(req, data)
	}
	if up != nil && len(body) > 0 {
		if err := up.WaitN(rctx, len(body)); err != nil {
			_ = s.Reset()
			return
		}
	}
	var hdr []byte
	switch {
	case ver >= 3:
		hdr = AppendResponseHeaderV3(nil, st, int(n.uploading.Load()+n.queued.Load()), codec, len(data), len(body), msg)
	case ver == 2:
		hdr = AppendResponseHeaderV2(nil, st, int(n.uploading.Load()+n.queued.Load()), len(data), msg)
	default:
		hdr = AppendResponseHeader(nil, st, len(data), msg)
	}
	if _, err := s.Write(hdr); err != nil {
		_ = s.Reset()
		return
	}
	if len(body) > 0 {
		if _, err := s.Write(body); err != nil {
			_ = s.Reset()
			return
		}
		uploadedOK = true
		n.countServed(ps, len(data), len(body))
	}
	_ = s.Close()
}

func (n *Node) countServed(ps *peerState, data, wire int) {
	n.met.servedBytes.Add(float64(data))
	n.met.servedWireBytes.Add(float64(wire))
	n.met.served.Add(int64(data))
	n.met.servedWire.Add(int64(wire))
	n.mu.Lock()
	ps.bytesUp += int64(data)
	n.mu.Unlock()
}

// writeV4 writes a ChunkProtocolV4 response: for a chunk, the sub-blocks the request wants
// first (raw: they go out before anything else is done with the chunk, compression included),
// then the rest (the other sub-blocks raw, or the whole chunk as the zstd frame wireForm picks),
// then the end mark. It returns the bytes of chunk data put on the wire. unverified: data is the
// store's copy as read (RawChunks), verified here once the first sub-blocks are out; a copy that
// does not match its CID ends the answer with PartAbort (the requester, which checked what it got
// against the sub-block digests, asks elsewhere) and is dropped from the store.
func (n *Node) writeV4(s network.Stream, ctx context.Context, up *rate.Limiter, req Request, st Status, data []byte, msg string, unverified bool) (int, error) {
	load := int(n.uploading.Load() + n.queued.Load())
	if st != StatusOK || len(data) == 0 {
		_, err := s.Write(AppendResponseHeaderV4(nil, st, load, 0, msg))
		return 0, err
	}
	wait := func(k int) error {
		if up == nil || k == 0 {
			return nil
		}
		return up.WaitN(ctx, k)
	}
	nsub := chunk.NumSubBlocks(int64(len(data)), req.SubSize)
	var sent []bool
	head := AppendResponseHeaderV4(nil, st, load, len(data), "")
	wire := 0
	// writeSub sends sub-block i as a part (behind the header, for the first part written).
	writeSub := func(i int) error {
		r := chunk.SubBlock(int64(len(data)), req.SubSize, i)
		if _, err := s.Write(AppendPartSub(head, i)); err != nil {
			return err
		}
		head = nil
		if _, err := s.Write(data[r.Offset:r.End()]); err != nil {
			return err
		}
		wire += int(r.Length)
		return nil
	}
	if req.SubSize > 0 && req.Count > 0 {
		sent = make([]bool, nsub)
		first := chunk.SubBlock(int64(len(data)), req.SubSize, req.First)
		last := chunk.SubBlock(int64(len(data)), req.SubSize, req.First+req.Count-1)
		if err := wait(int(last.End() - first.Offset)); err != nil {
			return 0, err
		}
		for i := req.First; i < req.First+req.Count; i++ {
			if err := writeSub(i); err != nil {
				return 0, err
			}
			sent[i] = true
		}
	}
	if unverified {
		if _, err := chunk.Verify(req.CID, data); err != nil {
			n.log.Warn("held chunk failed verification while being sent; aborting the answer", "chunk", req.CID, "err", err)
			_, _ = n.local.ReadChunk(ctx, req.CID) // the store drops the copy that fails
			// An abort part, then a clean close: a reset would discard the sub-blocks the
			// requester has not read yet.
			if _, err := s.Write([]byte{PartAbort}); err != nil {
				return 0, err
			}
			return 0, errAborted
		}
	}
	codec, body := n.wireForm(req, data)
	if codec != WireRaw || req.SubSize == 0 {
		if err := wait(len(body)); err != nil {
			return 0, err
		}
		if _, err := s.Write(AppendPartWhole(head, codec, len(body))); err != nil {
			return 0, err
		}
		if _, err := s.Write(body); err != nil {
			return 0, err
		}
		wire += len(body)
	} else {
		if err := wait(len(data) - wire); err != nil {
			return 0, err
		}
		for i := range nsub {
			if sent != nil && sent[i] {
				continue
			}
			if err := writeSub(i); err != nil {
				return 0, err
			}
		}
	}
	_, err := s.Write([]byte{PartEnd})
	return wire, err
}

// wireForm is how a chunk goes to a V3 peer: as the zstd frame it arrived in or was last
// compressed to (the recent buffer), else compressed now at WireCompression if its manifest
// stores it compressed and the frame pays (zchunk.Pays), else raw. A frame made here is kept in
// the recent buffer, so the swarm asking for the same chunk costs one compression, not one per
// peer.
func (n *Node) wireForm(req Request, data []byte) (codec byte, body []byte) {
	if frame, raw, ok := n.recent.wire(req.CID); ok {
		if raw {
			return WireRaw, data
		}
		return WireZstd, frame
	}
	if n.zenc == nil || !n.compressible(req) {
		return WireRaw, data
	}
	start := time.Now()
	frame, c := n.zenc.Encode(nil, data)
	n.met.compressSeconds.Add(time.Since(start).Seconds())
	if c != chunk.CodecZstd {
		n.recent.addFrame(req.CID, nil, true)
		return WireRaw, data
	}
	n.recent.addFrame(req.CID, frame, false)
	return WireZstd, frame
}

// compressible reports whether the manifest of the requested chunk (in the blob named, else in
// any registered blob that holds its CID) stores it zstd-compressed, with or without the blob's
// dictionary: the image build found that compression pays for it. A chunk stored raw, or of no
// blob known here, is sent raw. Frames on the wire never use a dictionary (WireZstd): a chunk
// stored with one is compressed again without it.
func (n *Node) compressible(req Request) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if lb := n.blobs[req.Blob]; lb != nil {
		if i := chunkIndex(lb.m, chunk.Chunk{Offset: req.Offset, CID: req.CID}); i >= 0 {
			return zstdStored(lb.m.Chunks[i].Codec)
		}
	}
	for _, ref := range n.cids[req.CID] {
		if lb := n.blobs[ref.blob]; lb != nil && zstdStored(lb.m.Chunks[ref.idx].Codec) {
			return true
		}
	}
	return false
}

func zstdStored(c chunk.Codec) bool { return c == chunk.CodecZstd || c == chunk.CodecZstdDict }

// serve decides the answer to a request on s, which it stores in reqOut once read; status 0xff
// means the request was unreadable. *slot is set when it took an upload slot (n.slots), which
// the caller frees once the answer is written.
//
// *unverified is set when the bytes returned are the store's copy as read, not yet verified
// (V4 with sub-blocks wanted first and a RawChunks store): writeV4 verifies them.
func (n *Node) serve(s network.Stream, p peer.ID, ver int, reqOut *Request, slot *bool, unverified *bool) (Status, []byte, string) {
	v2 := ver >= 2
	if !n.allowed(p) {
		return StatusRefused, nil, "not allowed"
	}
	n.mu.Lock()
	ps := n.peerLocked(p)
	ps.requestsIn++
	ok := ps.reqLimit.Allow()
	flood := false
	if !ok {
		// Refusals count towards a ban within a window, so a busy but honest peer that brushes
		// the limit now and then is never banned.
		if now := time.Now(); now.Sub(ps.refusedSince) > floodWindow {
			ps.refused, ps.refusedSince = 0, now
		}
		ps.refused++
		flood = ps.refused >= n.cfg.FloodBanAfter
	}
	rctx := n.scope.Context()
	n.mu.Unlock()
	if !ok {
		if flood {
			n.ban(p, "request flood")
			return StatusRefused, nil, "banned"
		}
		return StatusBusy, nil, "over request rate"
	}
	select {
	case ps.sem <- struct{}{}:
		defer func() { <-ps.sem }()
	default:
		return StatusBusy, nil, "over concurrency"
	}
	read := ReadRequest
	if ver >= 4 {
		read = ReadRequestV4
	}
	req, err := read(bufio.NewReaderSize(s, 512))
	if err != nil {
		n.log.Debug("bad chunk request", "peer", p, "err", err)
		return 0xff, nil, ""
	}
	*reqOut = req
	// Pull rights (rights.go): a private repository's chunks, from the store, the recent
	// chunks or fetch-through, only to peers that proved pull rights to it.
	if st, msg, ok := n.authorizeChunk(p, req); !ok {
		return st, nil, msg
	}
	held := false
	if n.local != nil {
		var err error
		if held, err = n.local.HasCID(req.CID); err != nil {
			n.log.Warn("local store lookup failed", "chunk", req.CID, "peer", p, "err", err)
			return StatusError, nil, "store lookup failed"
		}
	}
	if held && n.slots != nil {
		// Wait for an upload slot, then decide: the chunk may have reached another host
		// meanwhile, and super-seeding sends this requester there.
		n.queued.Add(1)
		// Half the request's time at most, leaving the other half for the upload.
		ctx, cancel := context.WithTimeout(rctx, n.cfg.RequestTimeout/2)
		select {
		case n.slots <- struct{}{}:
			*slot = true
		case <-ctx.Done():
		}
		cancel()
		n.queued.Add(-1)
		if !*slot {
			return StatusBusy, nil, "every upload slot stayed busy"
		}
	}
	if held {
		switch n.superSeed(req, p, v2) {
		case seedRefuseRepeat:
			return StatusBusy, nil, "served already: try another holder"
		case seedRefuseWait:
			return StatusBusy, nil, "just served to another host: wait for its announcement"
		}
		ctx, cancel := context.WithTimeout(rctx, n.cfg.RequestTimeout)
		defer cancel()
		if rc, ok := n.local.(RawChunks); ok && ver >= 4 && req.Count > 0 {
			if raw, err := rc.ReadChunkUnverified(ctx, req.CID); err == nil && int64(len(raw)) == req.Length {
				*unverified = true
				return StatusOK, raw, ""
			}
		}
		data, err := n.local.ReadChunk(ctx, req.CID)
		if err == nil {
			return StatusOK, data.Bytes(), ""
		}
		// Evicted between the check and the read: fall through.
	}
	if data, _ := n.recent.get(req.CID); !data.IsZero() {
		return StatusOK, data.Bytes(), ""
	}
	if req.Flags&FlagFetchThrough == 0 {
		return StatusNotFound, nil, ""
	}
	// Fetch-through: this host was picked to fetch the chunk from its origin for the cluster.
	n.mu.Lock()
	lb := n.blobs[req.Blob]
	h := n.host
	n.mu.Unlock()
	if lb == nil || lb.origin == nil {
		return StatusNotFound, nil, "blob not registered here"
	}
	i := chunkIndex(lb.m, chunk.Chunk{Offset: req.Offset, CID: req.CID})
	if i < 0 {
		return StatusNotFound, nil, "chunk not in the blob's manifest"
	}
	c := lb.m.Chunks[i]
	_ = s.SetDeadline(time.Now().Add(n.cfg.CoalesceTimeout))
	ctx, cancel := context.WithTimeout(rctx, n.cfg.CoalesceTimeout)
	defer cancel()
	f, err := n.ownedFetch(ctx, h, req.Blob, c, func(ctx context.Context) ([]byte, error) { return lb.origin(ctx, c) }, true, false, causeForPeer)
	if err != nil {
		return StatusError, nil, err.Error()
	}
	return StatusOK, f.data.Bytes(), ""
}

// Super-seeding verdicts.
const (
	seedServe        = iota
	seedRefuseRepeat // FlagHaveOthers: served more often than the blob's average
	seedRefuseWait   // FlagCanWait: just uploaded to another host, which will announce it
)

// superSeedWait is how long after uploading a chunk to one host this host keeps refusing it to
// requesters that can wait (FlagCanWait): the time the recipient takes to verify, store and
// announce it, with margin for a loaded host. Past it the recipient is taken not to pass it on
// (it evicted the chunk, or the requester cannot reach it), and the chunk is served again.
const superSeedWait = 2 * time.Second

// superSeed counts an upload of a held chunk to p, or refuses it. A host serves each chunk of a
// blob about as often as its others before repeating one (BitTorrent's super-seeding): to a
// requester that has other holders to ask (FlagHaveOthers), a chunk already uploaded more often
// than the blob's average (over the chunks this host holds) is refused with busy, and the
// requester asks a host that got it from an earlier upload. To a requester that knows no other
// holder yet but can wait (FlagCanWait), a chunk uploaded to another host within
// superSeedWait is refused, and the requester waits for that host's announcement: in a seeded
// start every reader first sees only the seed, and without this the seed would serve each chunk
// to every reader that asks before the first recipient has announced it. A request with
// neither flag is always served, so this never makes a chunk unavailable. Chunks of blobs not
// registered here are served.
func (n *Node) superSeed(req Request, p peer.ID, v2 bool) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	lb := n.blobs[req.Blob]
	if lb == nil {
		return seedServe
	}
	i := chunkIndex(lb.m, chunk.Chunk{Offset: req.Offset, CID: req.CID})
	if i < 0 {
		return seedServe
	}
	if lb.served == nil {
		lb.served = make([]uint32, len(lb.m.Chunks))
		lb.lastTo = make([]peer.ID, len(lb.m.Chunks))
		lb.lastUntil = make([]int64, len(lb.m.Chunks))
	}
	now := time.Now()
	if v2 && n.cfg.SuperSeed {
		if req.Flags&FlagHaveOthers != 0 && !superSeedServe(lb.served[i], lb.servedTotal, lb.nhave) {
			return seedRefuseRepeat
		}
		if req.Flags&FlagCanWait != 0 && lb.lastTo[i] != "" && lb.lastTo[i] != p && now.UnixNano() < lb.lastUntil[i] {
			if ps := n.peers[lb.lastTo[i]]; ps != nil && ps.connected {
				return seedRefuseWait
			}
		}
	}
	lb.served[i]++
	lb.servedTotal++
	lb.lastTo[i] = p
	lb.lastUntil[i] = now.Add(n.cfg.RequestTimeout + superSeedWait).UnixNano()
	return seedServe
}

// uploaded records that the upload of req's chunk to p has ended (ok: completely): the
// recipient announces it within superSeedWait, or, if the upload failed, it will not.
func (n *Node) uploaded(req Request, p peer.ID, ok bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	lb := n.blobs[req.Blob]
	if lb == nil || lb.lastTo == nil {
		return
	}
	i := chunkIndex(lb.m, chunk.Chunk{Offset: req.Offset, CID: req.CID})
	if i < 0 || lb.lastTo[i] != p {
		return
	}
	if ok {
		lb.lastUntil[i] = time.Now().Add(superSeedWait).UnixNano()
	} else {
		lb.lastUntil[i] = 0
	}
}

// superSeedServe is the super-seeding rule: serve a chunk uploaded served times already, of a
// blob whose held chunks (held of them) were uploaded total times, to a requester with other
// holders, while served < max(1, total/held) (at least once: a chunk nobody has got from this
// host yet is served).
func superSeedServe(served uint32, total uint64, held int) bool {
	return held <= 0 || uint64(served) < max(1, total/uint64(held))
}
