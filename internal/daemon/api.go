package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/demand"
)

// The control API: HTTP with JSON bodies on a root-only unix socket. It is the only way the CLI
// talks to the daemon. Errors are {"error": "..."} with a 4xx/5xx status.
//
//	GET    /v1/status            this host: peer ID, addresses, version, uptime
//	GET    /v1/stats             StatsReport (the schema of `shoal stats --json`)
//	GET    /v1/peers             []PeerReport
//	GET    /v1/images            []ImageReport
//	POST   /v1/images            MountRequest: add an image, mount it if Mountpoint is set
//	POST   /v1/prefetch          PrefetchRequest: add an image and fetch all of it
//	POST   /v1/umount            UmountRequest
//	POST   /v1/images/remove     RemoveRequest: forget an unmounted image
const apiVersion = "v1"

// MountRequest asks the daemon to add an image and, with a mountpoint, mount it.
type MountRequest struct {
	Ref        string `json:"ref"`
	Mountpoint string `json:"mountpoint,omitempty"`
	Mode       string `json:"mode,omitempty"` // auto (default), fscache, fanotify, fuse
}

// MountResponse says what was done.
type MountResponse struct {
	Image      string `json:"image"` // manifest digest
	Mountpoint string `json:"mountpoint,omitempty"`
	Mode       string `json:"mode,omitempty"`
	Reason     string `json:"reason,omitempty"` // why auto picked this mode
}

// PrefetchRequest asks for a whole image to be made local without mounting it.
type PrefetchRequest struct {
	Ref string `json:"ref"`
}

// RemoveRequest asks the daemon to forget an image (by ref or manifest digest). Its data stays in
// the cache, evictable, and keeps serving peers until evicted.
type RemoveRequest struct {
	Image string `json:"image"`
}

// UmountRequest asks for a mountpoint to be unmounted.
type UmountRequest struct {
	Mountpoint string `json:"mountpoint"`
}

// StatusReport describes this host.
type StatusReport struct {
	PeerID  string   `json:"peerID"`
	PID     int      `json:"pid"` // the daemon's process (the worker, under --supervise)
	Addrs   []string `json:"addrs"`
	DataDir string   `json:"dataDir"`
	Version string   `json:"version"`
	Uptime  string   `json:"uptime"`
}

// Version is reported by /v1/status; cmd/shoal sets it.
var Version = "dev"

func (d *Daemon) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, StatusReport{PeerID: d.node.ID().String(), PID: os.Getpid(), Addrs: d.selfAddrs(), DataDir: d.cfg.DataDir,
			Version: Version, Uptime: time.Since(d.started).Round(time.Second).String()})
	})
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, d.Stats()) })
	mux.HandleFunc("GET /v1/peers", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, d.Stats().Peers) })
	mux.HandleFunc("GET /v1/images", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, d.Stats().Images) })
	mux.HandleFunc("POST /v1/images", func(w http.ResponseWriter, r *http.Request) {
		var req MountRequest
		if !readJSON(w, r, &req) {
			return
		}
		resp, err := d.Mount(r.Context(), req)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, resp)
	})
	mux.HandleFunc("POST /v1/prefetch", func(w http.ResponseWriter, r *http.Request) {
		var req PrefetchRequest
		if !readJSON(w, r, &req) {
			return
		}
		im, err := d.addImage(r.Context(), req.Ref)
		if err != nil {
			writeError(w, err)
			return
		}
		d.startPrefetch(im)
		d.saveState()
		writeJSON(w, http.StatusOK, MountResponse{Image: im.Image.Digest.String()})
	})
	mux.HandleFunc("POST /v1/images/remove", func(w http.ResponseWriter, r *http.Request) {
		var req RemoveRequest
		if !readJSON(w, r, &req) {
			return
		}
		if err := d.RemoveImage(req.Image); err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"removed": req.Image})
	})
	mux.HandleFunc("POST /v1/umount", func(w http.ResponseWriter, r *http.Request) {
		var req UmountRequest
		if !readJSON(w, r, &req) {
			return
		}
		if err := d.Umount(req.Mountpoint); err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"unmounted": req.Mountpoint})
	})
	return mux
}

// errBadRequest marks errors that are the caller's to fix (HTTP 400).
var errBadRequest = errors.New("bad request")

// errNotFound marks requests for things that do not exist (HTTP 404).
var errNotFound = errors.New("not found")

func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, errBadRequest):
		code = http.StatusBadRequest
	case errors.Is(err, errNotFound):
		code = http.StatusNotFound
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, fmt.Errorf("%w: %v", errBadRequest, err))
		return false
	}
	return true
}

// Mount adds an image and, if a mountpoint is given, mounts it in the requested mode.
func (d *Daemon) Mount(ctx context.Context, req MountRequest) (MountResponse, error) {
	if req.Ref == "" {
		return MountResponse{}, fmt.Errorf("%w: no image reference", errBadRequest)
	}
	if req.Mode == "" {
		req.Mode = d.cfg.Mode
	}
	if req.Mountpoint != "" {
		mp, err := filepath.Abs(req.Mountpoint)
		if err != nil {
			return MountResponse{}, fmt.Errorf("%w: mountpoint: %v", errBadRequest, err)
		}
		if st, err := os.Stat(mp); err != nil || !st.IsDir() {
			return MountResponse{}, fmt.Errorf("%w: mountpoint %s is not a directory", errBadRequest, mp)
		}
		req.Mountpoint = mp
		if d.mountedAt(mp) {
			return MountResponse{}, fmt.Errorf("%w: %s is already a Shoal mount", errBadRequest, mp)
		}
	}
	im, err := d.addImage(ctx, req.Ref)
	if err != nil {
		return MountResponse{}, err
	}
	resp := MountResponse{Image: im.Image.Digest.String()}
	if req.Mountpoint == "" {
		d.saveState()
		return resp, nil
	}
	mode, reason, err := d.pickMode(req.Mode)
	if err != nil {
		return resp, err
	}
	fe, err := d.frontend(mode)
	if err != nil {
		return resp, err
	}
	if err := fe.Mount(ctx, im, req.Mountpoint); err != nil {
		return resp, fmt.Errorf("mount %s at %s (%s mode): %w", req.Ref, req.Mountpoint, mode, err)
	}
	d.mu.Lock()
	im.mounts[req.Mountpoint] = mode
	d.mu.Unlock()
	d.pinImage(im, true)
	d.log.Info("mounted", "image", req.Ref, "digest", im.Image.Digest, "mountpoint", req.Mountpoint, "mode", mode, "reason", reason)
	if d.cfg.Prefetch {
		d.startPrefetch(im)
	}
	d.saveState()
	resp.Mountpoint, resp.Mode, resp.Reason = req.Mountpoint, mode, reason
	return resp, nil
}

func (d *Daemon) mountedAt(mp string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, im := range d.images {
		if _, ok := im.mounts[mp]; ok {
			return true
		}
	}
	return false
}

// Umount unmounts a mountpoint this daemon mounted.
func (d *Daemon) Umount(mountpoint string) error {
	mp, err := filepath.Abs(mountpoint)
	if err != nil {
		return fmt.Errorf("%w: %v", errBadRequest, err)
	}
	d.mu.Lock()
	var owner *image
	var mode string
	for _, im := range d.images {
		if m, ok := im.mounts[mp]; ok {
			owner, mode = im, m
		}
	}
	fe := d.frontends[mode]
	d.mu.Unlock()
	if owner == nil {
		return fmt.Errorf("%w: %s is not mounted by this daemon (see `shoal images`)", errNotFound, mp)
	}
	if fe != nil {
		if err := fe.Unmount(mp); err != nil {
			return err
		}
	}
	d.mu.Lock()
	delete(owner.mounts, mp)
	unused := len(owner.mounts) == 0
	d.mu.Unlock()
	if unused {
		d.pinImage(owner, false)
	}
	d.saveState()
	d.saveReadOrders()
	d.log.Info("unmounted", "mountpoint", mp)
	return nil
}

// RemoveImage forgets an unmounted image: no more prefetch, its blobs leave the resolver and the
// swarm unless another image uses them. Its chunks stay in the store (unpinned, evictable).
func (d *Daemon) RemoveImage(ref string) error {
	d.mu.Lock()
	var im *image
	for dg, x := range d.images {
		if x.Ref == ref || dg.String() == ref {
			im = x
		}
	}
	if im == nil {
		d.mu.Unlock()
		return fmt.Errorf("%w: no image %q (see `shoal images`)", errNotFound, ref)
	}
	if len(im.mounts) > 0 {
		var mps []string
		for mp := range im.mounts {
			mps = append(mps, mp)
		}
		sort.Strings(mps)
		d.mu.Unlock()
		return fmt.Errorf("%w: %s is mounted at %s: unmount it first", errBadRequest, ref, strings.Join(mps, ", "))
	}
	if im.cancelPre != nil {
		im.cancelPre()
	}
	delete(d.images, im.Image.Digest)
	inUse := map[digest.Digest]bool{}
	for _, other := range d.images {
		for _, b := range other.Image.Blobs {
			inUse[b.Digest] = true
		}
	}
	d.mu.Unlock()
	for _, b := range im.Image.Blobs {
		if !inUse[b.Digest] {
			d.resolver.RemoveBlob(b.Digest)
			d.node.Forget(b.Digest)
		}
	}
	d.pinImage(im, false)
	d.saveState()
	d.log.Info("image removed", "ref", im.Ref, "digest", im.Image.Digest)
	return nil
}

// StatsReport is the JSON of `shoal stats --json` and GET /v1/stats. Fields are stable: new ones
// may be added, none renamed or removed.
type StatsReport struct {
	PeerID string `json:"peerID"`
	// Bytes of chunk data by source: local (demand reads already present), dedup (copied from
	// another local blob with the same CID), peers, origin; servedToPeers is what peers took
	// from this host.
	Bytes  ByteTotals  `json:"bytes"`
	Chunks ChunkTotals `json:"chunks"`
	// OriginOffload is the share of fetched bytes that did not come from this host's origin:
	// (peers+dedup) / (peers+dedup+origin); 0 before any fetch.
	OriginOffload  float64        `json:"originOffload"`
	VerifyFailures int64          `json:"verifyFailures"`
	FetchFailures  int64          `json:"fetchFailures"`
	Bans           int            `json:"bans"`
	Cache          CacheReport    `json:"cache"`
	Latency        map[string]Lat `json:"latency"`
	Images         []ImageReport  `json:"images"`
	Peers          []PeerReport   `json:"peers"`
	Uptime         float64        `json:"uptimeSeconds"`
}

// ByteTotals are bytes by source.
type ByteTotals struct {
	Local         int64 `json:"local"`
	Dedup         int64 `json:"dedup"`
	Peers         int64 `json:"peers"`
	Origin        int64 `json:"origin"`
	ServedToPeers int64 `json:"servedToPeers"`
}

// ChunkTotals are chunks by source.
type ChunkTotals struct {
	Dedup         int64 `json:"dedup"`
	Peers         int64 `json:"peers"`
	Origin        int64 `json:"origin"`
	ServedToPeers int64 `json:"servedToPeers"`
}

// Lat is a latency summary in milliseconds.
type Lat struct {
	P50 float64 `json:"p50ms"`
	P99 float64 `json:"p99ms"`
}

// CacheReport describes the local store.
type CacheReport struct {
	PresentBytes int64 `json:"presentBytes"`
	MaxBytes     int64 `json:"maxBytes"`
	EvictedBytes int64 `json:"evictedBytes"`
	Blobs        int   `json:"blobs"`
}

// ImageReport describes one image.
type ImageReport struct {
	Ref           string            `json:"ref"`
	Digest        string            `json:"digest"`
	Mounts        map[string]string `json:"mounts"` // mountpoint → mode
	Bytes         int64             `json:"bytes"`
	BytesPresent  int64             `json:"bytesPresent"`
	Chunks        int               `json:"chunks"`
	ChunksPresent int               `json:"chunksPresent"`
	Prefetch      string            `json:"prefetch"`
	PrefetchError string            `json:"prefetchError,omitempty"`
}

// PeerReport describes one peer.
type PeerReport struct {
	ID          string   `json:"id"`
	Addrs       []string `json:"addrs"`
	FoundBy     []string `json:"foundBy"`
	Connected   bool     `json:"connected"`
	BytesUp     int64    `json:"bytesUp"`
	BytesDown   int64    `json:"bytesDown"`
	RequestsIn  int64    `json:"requestsIn"`
	RequestsOut int64    `json:"requestsOut"`
	P50         float64  `json:"p50ms"`
	P99         float64  `json:"p99ms"`
	Errors      int64    `json:"errors"`
	Corrupt     int64    `json:"corrupt"`
	Banned      bool     `json:"banned"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Stats gathers the report `shoal stats` shows.
func (d *Daemon) Stats() StatsReport {
	rs := d.resolver.Stats()
	ss := d.store.Stats()
	rep := StatsReport{
		PeerID:         d.node.ID().String(),
		VerifyFailures: ss.VerifyFailures,
		FetchFailures:  rs.Failures,
		Cache:          CacheReport{PresentBytes: ss.PresentBytes, MaxBytes: ss.MaxBytes, EvictedBytes: ss.BytesEvicted, Blobs: ss.Blobs},
		Latency:        map[string]Lat{},
		Images:         []ImageReport{},
		Peers:          []PeerReport{},
		Uptime:         time.Since(d.started).Seconds(),
	}
	src := func(s chunk.Source) demand.SourceStats { return rs.Sources[s] }
	rep.Bytes.Local = src(chunk.SourceLocal).Bytes
	rep.Bytes.Dedup, rep.Chunks.Dedup = src(chunk.SourceDedup).Bytes, src(chunk.SourceDedup).Chunks
	rep.Bytes.Peers, rep.Chunks.Peers = src(chunk.SourcePeer).Bytes, src(chunk.SourcePeer).Chunks
	rep.Bytes.Origin, rep.Chunks.Origin = src(chunk.SourceOrigin).Bytes, src(chunk.SourceOrigin).Chunks
	for key, s := range map[string]chunk.Source{"dedup": chunk.SourceDedup, "peers": chunk.SourcePeer, "origin": chunk.SourceOrigin} {
		if st := src(s); st.Chunks > 0 {
			rep.Latency[key] = Lat{ms(st.P50), ms(st.P99)}
		}
	}
	if f := rep.Bytes.Peers + rep.Bytes.Dedup + rep.Bytes.Origin; f > 0 {
		rep.OriginOffload = float64(rep.Bytes.Peers+rep.Bytes.Dedup) / float64(f)
	}
	for _, p := range d.node.Peers() {
		pr := PeerReport{ID: p.ID.String(), FoundBy: p.FoundBy, Connected: p.Connected, BytesUp: p.BytesUp, BytesDown: p.BytesDown,
			RequestsIn: p.RequestsIn, RequestsOut: p.RequestsOut, P50: ms(p.LatencyP50), P99: ms(p.LatencyP99),
			Errors: p.Errors, Corrupt: p.Corrupt, Banned: p.Banned, Addrs: []string{}}
		for _, a := range p.Addrs {
			pr.Addrs = append(pr.Addrs, a.String())
		}
		if pr.FoundBy == nil {
			pr.FoundBy = []string{}
		}
		rep.Bytes.ServedToPeers += p.BytesUp
		rep.Chunks.ServedToPeers += p.RequestsIn
		if p.Banned {
			rep.Bans++
		}
		rep.Peers = append(rep.Peers, pr)
	}
	sort.Slice(rep.Peers, func(i, j int) bool { return rep.Peers[i].ID < rep.Peers[j].ID })

	d.mu.Lock()
	images := make([]*image, 0, len(d.images))
	for _, im := range d.images {
		images = append(images, im)
	}
	d.mu.Unlock()
	for _, im := range images {
		ir := ImageReport{Ref: im.Ref, Digest: im.Image.Digest.String(), Mounts: map[string]string{}}
		for _, b := range im.Image.Blobs {
			ir.Bytes += b.Manifest.DataBytes()
			ir.Chunks += len(b.Manifest.Chunks)
			// Counters, not a scan of the blob's index: `prefetch --wait` and `stats --watch`
			// ask several times a second.
			if bytes, chunks, err := d.store.PresentTotals(b.Digest); err == nil {
				ir.BytesPresent += bytes
				ir.ChunksPresent += int(chunks)
			}
		}
		d.mu.Lock()
		for mp, mode := range im.mounts {
			ir.Mounts[mp] = mode
		}
		ir.Prefetch, ir.PrefetchError = im.prefetch.State, im.prefetch.Err
		d.mu.Unlock()
		if ir.Prefetch == "" {
			ir.Prefetch = "idle"
		}
		rep.Images = append(rep.Images, ir)
	}
	sort.Slice(rep.Images, func(i, j int) bool { return rep.Images[i].Ref < rep.Images[j].Ref })
	return rep
}
