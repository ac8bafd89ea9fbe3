package p2p

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/shoal-p2p/shoal/chunk"
	shoalmetrics "github.com/shoal-p2p/shoal/internal/metrics"
)

// Pull rights (docs/privacy.md): the content of a private repository (one whose registry
// refuses anonymous pulls) is served only to peers that proved they may pull it. A peer proves
// it over RightsProtocol by presenting a Bearer token its registry issued to it for
// repository:NAME:pull; this host checks the token once against the registry (Rights.CheckPull)
// and keeps the grant, per peer and repository, until the token expires or RightsTTL passes,
// whichever is first. Nothing on the per-chunk path asks a registry: a chunk, object or tag
// request is checked against the grants in memory.
//
// What is guarded: chunks (ChunkProtocol, V2, including fetch-through and the recent-chunk
// cache) of blobs marked private with SetPrivate, unless the chunk is also in a blob that is
// not private (then it is public content); objects (ObjectProtocol) whose digest is marked
// private; tags of private repositories; and presence maps: a peer without a grant is told a
// private blob exists (PresencePrivate, so that a peer with rights knows to present them) but
// not which of its chunks this host holds. With Config.Rights set, a chunk that is in no
// registered blob is not served at all.

// RightsProtocol carries one proof of pull rights per stream: the requester writes a
// RightsRequest and closes its side; the responder checks it and writes a RightsResponse.
const RightsProtocol protocol.ID = "/shoal/rights/1"

// StatusDenied answers a request for content of a private repository from a peer that has not
// proved pull rights to it. Peers of earlier releases read it as an unknown non-OK status: not
// a strike, try another holder or the origin.
const StatusDenied Status = 5

// PresencePrivate marks a presence frame of a private blob. Sent to a peer without a grant, the
// frame's bitmap is all zero.
const PresencePrivate byte = 1 << 2

// Rights connects the node to the registries' authorization. The daemon implements it with
// origin.PullRights; repositories are "host/name" strings, as given to SetPrivate.
type Rights interface {
	// PullToken returns a Bearer token this host's credentials obtain for pulling repo, and
	// when it expires. It is a secret: the node sends it only to peers that announce a private
	// blob of repo (the holders and fetch-through candidates it would ask for its chunks).
	PullToken(ctx context.Context, repo string) (token string, expiry time.Time, err error)
	// CheckPull asks repo's registry whether token grants pull of repo. It returns the token's
	// expiry when known (zero otherwise); an error is a refusal.
	CheckPull(ctx context.Context, repo, token string) (expiry time.Time, err error)
}

// Caps of the rights protocol.
const (
	maxRepoLen  = 512
	maxTokenLen = 8 << 10
	// maxRightsRequest bounds an encoded RightsRequest.
	maxRightsRequest = 1 + 2*binary.MaxVarintLen64 + maxRepoLen + maxTokenLen
	// maxRightsResponse bounds an encoded RightsResponse.
	maxRightsResponse = 1 + 2*binary.MaxVarintLen64 + maxMsgLen
	// maxGrantTTL bounds the lifetime a response may claim.
	maxGrantTTL = 24 * time.Hour
	// rightsVersion is the first byte of a request body.
	rightsVersion byte = 1
	// rightsRetry is how long after a failed or refused presentation it is tried again.
	rightsRetry = 30 * time.Second
	// maxRightsChecks bounds the registry checks in flight for peers.
	maxRightsChecks = 4
)

// RightsRequest presents a pull token for one repository.
type RightsRequest struct {
	Repo  string // "host/name"
	Token string
}

// RightsResponse answers a RightsRequest: StatusOK with the grant's lifetime, StatusDenied (the
// registry refused the token, or this host holds no private content of the repository),
// StatusBusy or StatusError (the check could not be made).
type RightsResponse struct {
	Status Status
	TTL    time.Duration // StatusOK: how long the grant lasts, at millisecond resolution
	Msg    string
}

// AppendRightsRequest appends r's encoding: uvarint frame length, version byte, uvarint-prefixed
// repository, uvarint-prefixed token.
func AppendRightsRequest(b []byte, r RightsRequest) ([]byte, error) {
	if r.Repo == "" || len(r.Repo) > maxRepoLen || r.Token == "" || len(r.Token) > maxTokenLen {
		return b, fmt.Errorf("encode rights request for %q: %w", truncateName(r.Repo), ErrMalformed)
	}
	body := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(r.Repo)+len(r.Token))
	body = append(body, rightsVersion)
	body = appendString(body, r.Repo)
	body = appendString(body, r.Token)
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...), nil
}

// ReadRightsRequest reads one rights request frame.
func ReadRightsRequest(r *bufio.Reader) (RightsRequest, error) {
	body, err := readFrame(r, maxRightsRequest)
	if err != nil {
		return RightsRequest{}, err
	}
	return parseRightsRequest(body)
}

func parseRightsRequest(body []byte) (RightsRequest, error) {
	p := parser{b: body}
	v := p.byte()
	var req RightsRequest
	req.Repo = p.str(maxRepoLen)
	req.Token = p.str(maxTokenLen)
	if p.err != nil || len(p.b) != 0 || v != rightsVersion || req.Repo == "" || req.Token == "" {
		return RightsRequest{}, fmt.Errorf("rights request: %w", ErrMalformed)
	}
	return req, nil
}

// AppendRightsResponse appends r's encoding: uvarint frame length, status byte, uvarint TTL in
// milliseconds, uvarint-prefixed message (cut at the message cap).
func AppendRightsResponse(b []byte, r RightsResponse) []byte {
	msg := r.Msg
	if len(msg) > maxMsgLen {
		msg = msg[:maxMsgLen]
	}
	ttl := min(max(r.TTL, 0), maxGrantTTL)
	body := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(msg))
	body = append(body, byte(r.Status))
	body = binary.AppendUvarint(body, uint64(ttl/time.Millisecond))
	body = appendString(body, msg)
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...)
}

// ReadRightsResponse reads one rights response frame.
func ReadRightsResponse(r *bufio.Reader) (RightsResponse, error) {
	body, err := readFrame(r, maxRightsResponse)
	if err != nil {
		return RightsResponse{}, noEOF(err)
	}
	return parseRightsResponse(body)
}

func parseRightsResponse(body []byte) (RightsResponse, error) {
	p := parser{b: body}
	var resp RightsResponse
	resp.Status = Status(p.byte())
	ms := p.uvarint()
	resp.Msg = p.str(maxMsgLen)
	if p.err != nil || len(p.b) != 0 || ms > uint64(maxGrantTTL/time.Millisecond) {
		return RightsResponse{}, fmt.Errorf("rights response: %w", ErrMalformed)
	}
	resp.TTL = time.Duration(ms) * time.Millisecond
	return resp, nil
}

// rightsState is the node's pull-rights bookkeeping. Its mutex is taken after n.mu, never
// before.
type rightsState struct {
	mu sync.Mutex
	// private: digest (blob or object) -> the repositories it is content of; a grant for any
	// one of them is enough.
	private map[digest.Digest][]string
	// repos counts the private digests of each repository (its tags are private too).
	repos map[string]int
	// grants: peers that proved pull rights here, per repository, until when.
	grants map[peer.ID]map[string]time.Time
	// presented: grants this host holds at peers, per repository: until when, and for how long
	// they were granted (to refresh them before they lapse).
	presented map[peer.ID]map[string]grant
	// presenting: presentations in flight or waiting to be retried (until then).
	presenting map[peerRepo]time.Time
	// failed: when a failed or refused presentation may be made again by presentFor, so that
	// a peer that refuses this host is not asked once per chunk.
	failed map[peerRepo]time.Time
	// now serializes presentFor's presentations per peer and repository.
	now singleflight.Group
	// lastDenyLog bounds the denial logs to one per peer and repository a minute.
	lastDenyLog map[peerRepo]time.Time
	checks      chan struct{} // registry checks in flight for peers

	met *rightsMetrics
	// Counters for RightsStats.
	denied, granted, refused, presentedOK, presentedDenied atomic.Int64
}

type peerRepo struct {
	p    peer.ID
	repo string
}

type grant struct {
	until time.Time
	ttl   time.Duration
}

// rightsMetrics are the shoal_p2p_rights_* series.
type rightsMetrics struct {
	denied    *prometheus.CounterVec // requests refused for want of rights, by protocol
	checks    *prometheus.CounterVec // tokens presented to this host, by result
	presented *prometheus.CounterVec // tokens this host presented, by result
}

// initRights sets up the rights bookkeeping and its metrics; Close unregisters them with the
// node's.
func (n *Node) initRights(reg prometheus.Registerer) error {
	m := &rightsMetrics{
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_rights_denied_total", Help: "Requests for a private repository's content refused to peers without pull rights, by protocol (chunk, object, tag, blob).",
		}, []string{"protocol"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_rights_checks_total", Help: "Pull tokens presented by peers and checked at the registry, by result (granted, refused, error).",
		}, []string{"result"}),
		presented: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_rights_presented_total", Help: "Pull tokens this host presented to peers, by result (granted, denied, failed, no_token).",
		}, []string{"result"}),
	}
	unreg, err := shoalmetrics.RegisterOwned(reg, m.denied, m.checks, m.presented)
	if err != nil {
		return fmt.Errorf("p2p: %w", err)
	}
	prev := n.unregister
	n.unregister = func() { unreg(); prev() }
	n.rt = &rightsState{
		private: map[digest.Digest][]string{}, repos: map[string]int{},
		grants: map[peer.ID]map[string]time.Time{}, presented: map[peer.ID]map[string]grant{},
		presenting: map[peerRepo]time.Time{}, lastDenyLog: map[peerRepo]time.Time{}, failed: map[peerRepo]time.Time{},
		checks: make(chan struct{}, maxRightsChecks), met: m,
	}
	return nil
}

// RightsStats counts the pull-rights traffic of this host since it started.
type RightsStats struct {
	// Denied: requests (chunk, object, tag) refused to peers without pull rights.
	Denied int64 `json:"denied"`
	// Granted and Refused: tokens peers presented here that the registry accepted or refused
	// (or that could not be checked).
	Granted int64 `json:"granted"`
	Refused int64 `json:"refused"`
	// PresentedOK and PresentedDenied: this host's tokens that peers accepted or refused.
	PresentedOK     int64 `json:"presented_ok"`
	PresentedDenied int64 `json:"presented_denied"`
}

// RightsStats returns the counters of the pull-rights exchange.
func (n *Node) RightsStats() RightsStats {
	rt := n.rt
	return RightsStats{Denied: rt.denied.Load(), Granted: rt.granted.Load(), Refused: rt.refused.Load(),
		PresentedOK: rt.presentedOK.Load(), PresentedDenied: rt.presentedDenied.Load()}
}

// SetPrivate marks d, a blob registered with RegisterBlob or an object served over
// ObjectProtocol, as content of the private repositories repos ("host/name"): it is served only
// to peers that proved pull rights to one of them. No repos makes d public again. A blob's
// connected peers get its presence again (masked or not), and those that announce it are
// presented this host's rights, so that it can fetch from them.
func (n *Node) SetPrivate(d digest.Digest, repos ...string) {
	rt := n.rt
	n.mu.Lock()
	defer n.mu.Unlock()
	rt.mu.Lock()
	for _, r := range rt.private[d] {
		if rt.repos[r]--; rt.repos[r] <= 0 {
			delete(rt.repos, r)
		}
	}
	if len(repos) == 0 {
		delete(rt.private, d)
	} else {
		rt.private[d] = append([]string(nil), repos...)
		for _, r := range repos {
			rt.repos[r]++
		}
	}
	rt.mu.Unlock()
	if n.blobs[d] == nil {
		return
	}
	n.markDirtyLocked(d)
	for _, ps := range n.peers {
		if ps.connected && ps.blobs[d] != nil {
			n.wantRightsLocked(ps.id, d)
		}
	}
}

// PrivateRepos returns the private repositories d is marked as content of (SetPrivate); none
// for public or unmarked content.
func (n *Node) PrivateRepos(d digest.Digest) []string {
	rt := n.rt
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return slices.Clone(rt.private[d])
}

// grantedLocked reports whether p holds a live grant for one of repos; rt.mu must be held.
func (rt *rightsState) grantedLocked(p peer.ID, repos []string, now time.Time) bool {
	g := rt.grants[p]
	for _, r := range repos {
		if until, ok := g[r]; ok && now.Before(until) {
			return true
		}
	}
	return false
}

// deniedChunk reports whether p may not have chunk req.CID, and the repository it lacks rights
// to. A chunk is servable if some registered blob holding it is public, or p holds a grant for
// a repository of one of them. With Config.Rights set, a chunk of no registered blob is not
// served (denied with repo "").
func (n *Node) deniedChunk(p peer.ID, c cid.Cid) (repo string, denied bool) {
	rt := n.rt
	n.mu.Lock()
	refs := n.cids[c]
	blobs := make([]digest.Digest, 0, len(refs))
	for _, r := range refs {
		blobs = append(blobs, r.blob)
	}
	n.mu.Unlock()
	if len(blobs) == 0 {
		return "", n.cfg.Rights != nil
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if len(rt.private) == 0 {
		return "", false
	}
	now := time.Now()
	for _, b := range blobs {
		repos := rt.private[b]
		if len(repos) == 0 || rt.grantedLocked(p, repos, now) {
			return "", false
		}
		if repo == "" {
			repo = repos[0]
		}
	}
	return repo, true
}

// authorizeChunk is the hook server.go consults after reading a chunk request and before any
// store read, recent-chunk lookup or fetch-through: ok false means answer st with msg.
func (n *Node) authorizeChunk(p peer.ID, req Request) (st Status, msg string, ok bool) {
	repo, denied := n.deniedChunk(p, req.CID)
	if !denied {
		return StatusOK, "", true
	}
	if repo == "" {
		return StatusNotFound, "chunk of no registered blob", false
	}
	n.countDenied(p, repo, "chunk", req.CID.String())
	return StatusDenied, deniedMsg(repo), false
}

// authorizeObject is the hook object.go consults before answering an object or tag request.
func (n *Node) authorizeObject(p peer.ID, req ObjectRequest) (st Status, msg string, ok bool) {
	rt := n.rt
	var repos []string
	kind := "object"
	rt.mu.Lock()
	if req.Kind == ObjectTag {
		kind = "tag"
		if r := tagRepository(req.Name); rt.repos[r] > 0 {
			repos = []string{r}
		}
	} else if d, err := digest.Parse(req.Name); err == nil {
		repos = rt.private[d]
	}
	granted := len(repos) == 0 || rt.grantedLocked(p, repos, time.Now())
	rt.mu.Unlock()
	if granted {
		return StatusOK, "", true
	}
	n.countDenied(p, repos[0], kind, truncateName(req.Name))
	return StatusDenied, deniedMsg(repos[0]), false
}

// authorizeBlob is the hook blob.go consults before opening a blob for a BlobProtocol request:
// a blob marked private (the mirror's, of a private repository) goes only to peers with a grant.
func (n *Node) authorizeBlob(p peer.ID, d digest.Digest) (st Status, msg string, ok bool) {
	rt := n.rt
	rt.mu.Lock()
	repos := rt.private[d]
	granted := len(repos) == 0 || rt.grantedLocked(p, repos, time.Now())
	rt.mu.Unlock()
	if granted {
		return StatusOK, "", true
	}
	n.countDenied(p, repos[0], "blob", d.String())
	return StatusDenied, deniedMsg(repos[0]), false
}

func deniedMsg(repo string) string {
	return "no pull rights for private repository " + repo + ": present a registry token scoped to repository:" + repoName(repo) + ":pull"
}

// repoName is the name part of "host/name".
func repoName(repo string) string {
	_, name, _ := strings.Cut(repo, "/")
	return name
}

// tagRepository is the "host/name" of a reference "host/name:tag" (or "...@digest").
func tagRepository(ref string) string {
	if i := strings.IndexByte(ref, '@'); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		ref = ref[:i]
	}
	return ref
}

func (n *Node) countDenied(p peer.ID, repo, kind, what string) {
	rt := n.rt
	rt.denied.Add(1)
	rt.met.denied.WithLabelValues(kind).Inc()
	now := time.Now()
	k := peerRepo{p, repo}
	rt.mu.Lock()
	loud := now.Sub(rt.lastDenyLog[k]) > time.Minute
	if loud {
		rt.lastDenyLog[k] = now
	}
	rt.mu.Unlock()
	if loud {
		n.log.Info("refused a peer without pull rights", "peer", p, "repository", repo, kind, what)
	} else {
		n.log.Debug("refused a peer without pull rights", "peer", p, "repository", repo, kind, what)
	}
}

// maskPresenceLocked is the hook of the presence writer: a private blob's frame to a peer
// without a grant says only that this host has the blob; n.mu must be held.
func (n *Node) maskPresenceLocked(to peer.ID, pr *Presence) {
	rt := n.rt
	rt.mu.Lock()
	defer rt.mu.Unlock()
	repos := rt.private[pr.Blob]
	if len(repos) == 0 || pr.Flags&PresenceGone != 0 {
		return
	}
	pr.Flags |= PresencePrivate
	if !rt.grantedLocked(to, repos, time.Now()) {
		pr.Bitmap = make([]byte, len(pr.Bitmap))
	}
}

// wantRightsLocked is the hook of the presence reader: p announced blob; if this host has blob
// marked private and holds no live grant at p for its repositories, present them (in the
// background). n.mu must be held.
func (n *Node) wantRightsLocked(p peer.ID, blob digest.Digest) {
	rt := n.rt
	if n.cfg.Rights == nil || n.blobs[blob] == nil {
		return
	}
	now := time.Now()
	rt.mu.Lock()
	repos := rt.private[blob]
	var todo []string
	for _, r := range repos {
		if g, ok := rt.presented[p][r]; ok && now.Before(g.until) {
			rt.mu.Unlock()
			return // one grant is enough for the blob
		}
		k := peerRepo{p, r}
		if t, busy := rt.presenting[k]; busy && now.Before(t) {
			continue
		}
		rt.presenting[k] = now.Add(n.cfg.RequestTimeout + rightsRetry)
		todo = append(todo, r)
	}
	rt.mu.Unlock()
	for _, r := range todo {
		if !n.goFn(func() { n.presentRights(p, r) }) {
			rt.mu.Lock()
			delete(rt.presenting, peerRepo{p, r})
			rt.mu.Unlock()
		}
	}
}

// presentRights presents this host's pull token for repo to p. A failure or refusal is retried
// after rightsRetry, when p announces the blob again or the rights loop comes round.
func (n *Node) presentRights(p peer.ID, repo string) {
	rt := n.rt
	k := peerRepo{p, repo}
	ctx, cancel := context.WithTimeout(n.scope.Context(), 2*n.cfg.RequestTimeout)
	defer cancel()
	result, g, err := n.presentOnce(ctx, p, repo)
	rt.met.presented.WithLabelValues(result).Inc()
	rt.mu.Lock()
	if err == nil {
		if rt.presented[p] == nil {
			rt.presented[p] = map[string]grant{}
		}
		rt.presented[p][repo] = g
		delete(rt.presenting, k)
		delete(rt.failed, k)
	} else {
		rt.presenting[k] = time.Now().Add(rightsRetry)
		rt.failed[k] = time.Now().Add(rightsRetry)
	}
	rt.mu.Unlock()
	switch {
	case err == nil:
		rt.presentedOK.Add(1)
		n.log.Debug("pull rights granted by peer", "peer", p, "repository", repo, "for", g.ttl)
	case result == "denied":
		rt.presentedDenied.Add(1)
		n.log.Info("peer refused this host's pull rights", "peer", p, "repository", repo, "err", err)
	default:
		n.log.Debug("presenting pull rights failed", "peer", p, "repository", repo, "result", result, "err", err)
	}
}

func (n *Node) presentOnce(ctx context.Context, p peer.ID, repo string) (result string, g grant, err error) {
	n.mu.Lock()
	h := n.host
	n.mu.Unlock()
	if h == nil {
		return "failed", grant{}, ErrClosed
	}
	tok, _, err := n.cfg.Rights.PullToken(ctx, repo)
	if err != nil {
		return "no_token", grant{}, fmt.Errorf("pull token for %s: %w", repo, err)
	}
	buf, err := AppendRightsRequest(nil, RightsRequest{Repo: repo, Token: tok})
	if err != nil {
		return "failed", grant{}, err
	}
	s, err := h.NewStream(ctx, p, RightsProtocol)
	if err != nil {
		return "failed", grant{}, err
	}
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	start := time.Now()
	if _, err := s.Write(buf); err != nil {
		_ = s.Reset()
		return "failed", grant{}, err
	}
	_ = s.CloseWrite()
	resp, err := ReadRightsResponse(bufio.NewReaderSize(s, 512))
	if err != nil {
		_ = s.Reset()
		return "failed", grant{}, err
	}
	_ = s.Close()
	switch resp.Status {
	case StatusOK:
		return "granted", grant{until: start.Add(resp.TTL), ttl: resp.TTL}, nil
	case StatusDenied:
		return "denied", grant{}, &statusError{resp.Status, resp.Msg}
	}
	return "failed", grant{}, &statusError{resp.Status, resp.Msg}
}

// presentFor is the fetch path's answer to a denial by p of a chunk of blob, asked at since:
// if blob is private here (this host has it as content of a repository it can pull), present
// this host's rights to p now, unless a presentation to p failed within rightsRetry or one
// granted after since. It reports whether p now holds a grant, worth asking again for. Callers
// denied at once share one presentation.
func (n *Node) presentFor(p peer.ID, blob digest.Digest, since time.Time) bool {
	rt := n.rt
	if n.cfg.Rights == nil {
		return false
	}
	rt.mu.Lock()
	repos := slices.Clone(rt.private[blob])
	rt.mu.Unlock()
	for _, repo := range repos {
		k := peerRepo{p, repo}
		v, _, _ := rt.now.Do(string(p)+"\x00"+repo, func() (any, error) {
			now := time.Now()
			rt.mu.Lock()
			g, ok := rt.presented[p][repo]
			fresh := ok && now.Before(g.until) && g.until.Add(-g.ttl).After(since)
			backoff := now.Before(rt.failed[k])
			rt.mu.Unlock()
			if fresh {
				return true, nil
			}
			if backoff {
				return false, nil
			}
			n.presentRights(p, repo)
			rt.mu.Lock()
			g, ok = rt.presented[p][repo]
			rt.mu.Unlock()
			return ok && time.Now().Before(g.until), nil
		})
		if v.(bool) {
			return true
		}
	}
	return false
}

// maxRightsWait bounds how long a fetch waits, after this host's rights were granted at a
// peer, for that peer's unmasked presence map.
const maxRightsWait = 500 * time.Millisecond

// awaitRights runs before a fetch of chunk c of blob looks for holders: if blob is private here
// and connected peers announce it masked (they have not granted this host's rights yet, the
// blob having just been registered), present the rights to them now and wait briefly for
// their maps, rather than take the first chunks of an image from the origin while the
// background presentation is under way. Once a grant is live it costs one map lookup.
func (n *Node) awaitRights(ctx context.Context, blob digest.Digest, c chunk.Chunk) {
	rt := n.rt
	if n.cfg.Rights == nil {
		return
	}
	start := time.Now()
	n.mu.Lock()
	rt.mu.Lock()
	repos := rt.private[blob]
	var ask []peer.ID
	for _, ps := range n.peers {
		if len(repos) == 0 || len(ask) >= n.cfg.MaxAttempts {
			break
		}
		rb := ps.blobs[blob]
		if !ps.connected || rb == nil || !rb.private || presentedLocked(rt, ps.id, repos, start) || start.Before(rt.failedFor(ps.id, repos)) {
			continue
		}
		ask = append(ask, ps.id)
	}
	rt.mu.Unlock()
	n.mu.Unlock()
	granted := false
	for _, p := range ask {
		if ctx.Err() != nil {
			return
		}
		granted = n.presentFor(p, blob, time.Time{}) || granted
	}
	if !granted {
		return
	}
	wait := time.NewTimer(maxRightsWait)
	defer wait.Stop()
	for {
		n.mu.Lock()
		if len(n.holdersLocked(c.CID, time.Now())) > 0 {
			n.mu.Unlock()
			return
		}
		changed := n.presenceChangedLocked()
		n.mu.Unlock()
		select {
		case <-changed:
		case <-wait.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// presentedLocked reports whether this host holds a live grant at p for one of repos; rt.mu
// must be held.
func presentedLocked(rt *rightsState, p peer.ID, repos []string, now time.Time) bool {
	for _, r := range repos {
		if g, ok := rt.presented[p][r]; ok && now.Before(g.until) {
			return true
		}
	}
	return false
}

// failedFor is when presentations to p for repos may be made again (the latest backoff);
// rt.mu must be held.
func (rt *rightsState) failedFor(p peer.ID, repos []string) time.Time {
	var t time.Time
	for _, r := range repos {
		if f := rt.failed[peerRepo{p, r}]; f.After(t) {
			t = f
		}
	}
	return t
}

// handleRights checks one presented token at the registry and records the grant.
func (n *Node) handleRights(s network.Stream) {
	done, ok := n.scope.Track()
	if !ok {
		_ = s.Reset()
		return
	}
	defer done()
	p := s.Conn().RemotePeer()
	_ = s.SetDeadline(time.Now().Add(2 * n.cfg.RequestTimeout))
	resp, ok := n.serveRights(s, p)
	if !ok {
		_ = s.Reset()
		return
	}
	if _, err := s.Write(AppendRightsResponse(nil, resp)); err != nil {
		_ = s.Reset()
		return
	}
	_ = s.Close()
}

// serveRights decides the answer to a rights request; ok false: unreadable request.
func (n *Node) serveRights(s network.Stream, p peer.ID) (RightsResponse, bool) {
	rt := n.rt
	if !n.allowed(p) {
		return RightsResponse{Status: StatusRefused, Msg: "not allowed"}, true
	}
	n.mu.Lock()
	ps := n.peerLocked(p)
	ok := ps.reqLimit.Allow()
	rctx := n.scope.Context()
	n.mu.Unlock()
	if !ok {
		return RightsResponse{Status: StatusBusy, Msg: "over request rate"}, true
	}
	req, err := ReadRightsRequest(bufio.NewReaderSize(s, 1024))
	if err != nil {
		n.log.Debug("bad rights request", "peer", p, "err", err)
		return RightsResponse{}, false
	}
	rt.mu.Lock()
	ours := rt.repos[req.Repo] > 0
	rt.mu.Unlock()
	switch {
	case n.cfg.Rights == nil:
		return RightsResponse{Status: StatusError, Msg: "this host does not check pull rights"}, true
	case !ours:
		// Only repositories this host holds private content of are checked: a peer cannot make
		// this host send requests to any registry it names.
		return RightsResponse{Status: StatusDenied, Msg: "no private content of " + truncateName(req.Repo) + " here"}, true
	}
	select {
	case rt.checks <- struct{}{}:
		defer func() { <-rt.checks }()
	default:
		return RightsResponse{Status: StatusBusy, Msg: "too many checks in flight"}, true
	}
	ctx, cancel := context.WithTimeout(rctx, n.cfg.RequestTimeout)
	defer cancel()
	now := time.Now()
	exp, err := n.cfg.Rights.CheckPull(ctx, req.Repo, req.Token)
	if err != nil {
		rt.refused.Add(1)
		rt.met.checks.WithLabelValues("refused").Inc()
		n.log.Info("peer's pull rights refused by the registry", "peer", p, "repository", req.Repo, "err", err)
		return RightsResponse{Status: StatusDenied, Msg: "the registry refused the token for " + req.Repo}, true
	}
	until := now.Add(n.cfg.RightsTTL)
	if !exp.IsZero() && exp.Before(until) {
		until = exp
	}
	if !until.After(now) {
		rt.refused.Add(1)
		rt.met.checks.WithLabelValues("refused").Inc()
		return RightsResponse{Status: StatusDenied, Msg: "the token has expired"}, true
	}
	rt.granted.Add(1)
	rt.met.checks.WithLabelValues("granted").Inc()
	n.log.Debug("peer proved pull rights", "peer", p, "repository", req.Repo, "until", until)
	n.mu.Lock()
	rt.mu.Lock()
	if rt.grants[p] == nil {
		rt.grants[p] = map[string]time.Time{}
	}
	rt.grants[p][req.Repo] = until
	blobs := rt.blobsOfLocked(req.Repo)
	rt.mu.Unlock()
	n.resendLocked(p, blobs)
	n.mu.Unlock()
	return RightsResponse{Status: StatusOK, TTL: until.Sub(now)}, true
}

// blobsOfLocked lists the private digests of repo; rt.mu must be held.
func (rt *rightsState) blobsOfLocked(repo string) []digest.Digest {
	var out []digest.Digest
	for d, repos := range rt.private {
		for _, r := range repos {
			if r == repo {
				out = append(out, d)
				break
			}
		}
	}
	return out
}

// resendLocked queues the presence of the registered ones of blobs for p; n.mu must be held.
func (n *Node) resendLocked(p peer.ID, blobs []digest.Digest) {
	ps := n.peers[p]
	if ps == nil || !ps.connected {
		return
	}
	for _, b := range blobs {
		if n.blobs[b] != nil {
			ps.dirty[b] = true
		}
	}
	wake(ps.wake)
}

// rightsLoop keeps grants current: a grant given here that lapses sends the peer a masked
// presence map again, and a grant held at a peer is presented anew before it lapses, while
// that peer still announces a private blob of its repository. It runs while the node does
// (started by Run when Config.Rights is set).
func (n *Node) rightsLoop(ctx context.Context) {
	rt := n.rt
	tick := time.NewTicker(min(max(n.cfg.RightsTTL/8, 50*time.Millisecond), time.Second))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		n.mu.Lock()
		rt.mu.Lock()
		type lapsed struct {
			p     peer.ID
			blobs []digest.Digest
		}
		var gone []lapsed
		for p, g := range rt.grants {
			for repo, until := range g {
				if !now.Before(until) {
					delete(g, repo)
					gone = append(gone, lapsed{p, rt.blobsOfLocked(repo)})
				}
			}
			if len(g) == 0 {
				delete(rt.grants, p)
			}
		}
		var refresh []peerRepo
		for p, g := range rt.presented {
			for repo, gr := range g {
				if gr.until.Sub(now) <= gr.ttl/4 {
					delete(g, repo)
					refresh = append(refresh, peerRepo{p, repo})
				}
			}
			if len(g) == 0 {
				delete(rt.presented, p)
			}
		}
		for k, t := range rt.presenting {
			if !now.Before(t) {
				delete(rt.presenting, k)
			}
		}
		rt.mu.Unlock()
		for _, l := range gone {
			n.resendLocked(l.p, l.blobs)
		}
		for _, k := range refresh {
			ps := n.peers[k.p]
			if ps == nil || !ps.connected {
				continue
			}
			for b := range ps.blobs {
				n.wantRightsLocked(k.p, b)
			}
		}
		n.mu.Unlock()
	}
}
