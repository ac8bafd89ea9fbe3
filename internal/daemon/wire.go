package daemon

import "github.com/shoal-p2p/shoal/mirror"

// The wire types of the control API: the JSON bodies of its requests and answers, shared by the
// daemon (api.go), its client (client.go) and the CLI. Their JSON is stable: fields may be added,
// none renamed or removed (docs/stats.md documents StatsReport; a test keeps it complete).

// apiVersion prefixes every path of the control API (api.go lists them).
const apiVersion = "v1"

// MountRequest asks the daemon to add an image and, with a mountpoint, mount it.
type MountRequest struct {
	Ref        string `json:"ref"`
	Mountpoint string `json:"mountpoint,omitempty"`
	Mode       string `json:"mode,omitempty"` // auto (default), fscache, fanotify, fuse, fusetree
}

// MountResponse says what was done.
type MountResponse struct {
	Image      string `json:"image"` // manifest digest
	Mountpoint string `json:"mountpoint,omitempty"`
	Mode       string `json:"mode,omitempty"`
	Reason     string `json:"reason,omitempty"` // why auto picked this mode
	// Cluster is the cluster prefetch's job (StatsReport.ClusterPrefetch) and Hosts the peer IDs
	// it asks.
	Cluster int      `json:"cluster,omitempty"`
	Hosts   []string `json:"hosts,omitempty"`
}

// PrefetchRequest asks for a whole image to be made local without mounting it.
type PrefetchRequest struct {
	Ref string `json:"ref"`
	// Cluster asks hosts of the cluster (this one and its connected peers) to warm the image,
	// each by its own prefetch; Percent, if in 1..99, only that share of them.
	Cluster bool `json:"cluster,omitempty"`
	Percent int  `json:"percent,omitempty"`
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
	// Restored is true once the images and mounts of the last run (state.json) are back, or
	// failed and were logged. A client that mounts at a mountpoint the last run used (the
	// snapshotter after a reboot) waits for it, so that it does not race the daemon's own restore.
	Restored bool `json:"restored"`
}

// Version is reported by /v1/status; cmd/shoal sets it.
var Version = "dev"

// StatsReport is the JSON of `shoal stats --json` and GET /v1/stats. Fields are stable: new ones
// may be added, none renamed or removed.
type StatsReport struct {
	PeerID string `json:"peerID"`
	// Bytes of chunk data by source: local (demand reads already present), dedup (copied from
	// another local blob with the same CID), peers, origin; servedToPeers is what peers took
	// from this host.
	Bytes  ByteTotals  `json:"bytes"`
	Chunks ChunkTotals `json:"chunks"`
	// WireBytes is what the fetched chunks took on the network to this host, by source: less
	// than Bytes where they came compressed.
	WireBytes WireTotals `json:"wireBytes"`
	// OriginOffload is the share of fetched bytes that did not come from this host's origin:
	// (peers+dedup) / (peers+dedup+origin); 0 before any fetch.
	OriginOffload float64 `json:"originOffload"`
	// VerifyFailures counts chunks whose bytes did not match their CID, from every source;
	// VerifyFailuresBy splits it: local (the store's own checks of its disk), peers (wrong or
	// truncated answers, struck against the peer), origin (each refused answer).
	VerifyFailures   int64          `json:"verifyFailures"`
	VerifyFailuresBy VerifyBySource `json:"verifyFailuresBySource"`
	FetchFailures    int64          `json:"fetchFailures"`
	Bans             int            `json:"bans"`
	Cache            CacheReport    `json:"cache"`
	Latency          map[string]Lat `json:"latency"`
	Images           []ImageReport  `json:"images"`
	Peers            []PeerReport   `json:"peers"`
	Uptime           float64        `json:"uptimeSeconds"`
	// Mirror is the registry mirror's counters (upstream bytes, peer bytes, local hits); absent
	// when --mirror-listen is off.
	Mirror *mirror.Stats `json:"mirror,omitempty"`
	// Rights counts the pull-rights exchange with peers (docs/privacy.md).
	Rights RightsReport `json:"rights"`
	// ClusterPrefetch is the cluster prefetches this host started (`shoal prefetch --cluster`),
	// oldest first, with each asked host's progress.
	ClusterPrefetch []ClusterPrefetchReport `json:"clusterPrefetch"`
}

// ClusterPrefetchReport is one cluster prefetch: the hosts it asked and how far each got.
type ClusterPrefetchReport struct {
	ID      int    `json:"id"`
	Ref     string `json:"ref"`
	Percent int    `json:"percent"` // 0: every host
	Started string `json:"started"` // RFC 3339
	// State is running until every host's prefetch ended, then done (all hold the image) or
	// failed (some did not: see their state and error).
	State string `json:"state"`
	// Done and Failed count hosts; Bytes and BytesPresent sum the hosts' image bytes and what
	// they hold of them.
	Done         int                 `json:"done"`
	Failed       int                 `json:"failed"`
	Bytes        int64               `json:"bytes"`
	BytesPresent int64               `json:"bytesPresent"`
	Hosts        []ClusterHostReport `json:"hosts"`
}

// ClusterHostReport is one host of a cluster prefetch.
type ClusterHostReport struct {
	Peer         string `json:"peer"`
	Self         bool   `json:"self"`
	Image        string `json:"image"` // manifest digest, once the host resolved the reference
	State        string `json:"state"` // asking, the host's prefetch state (running, done, failed, ...), or unreachable
	Bytes        int64  `json:"bytes"`
	BytesPresent int64  `json:"bytesPresent"`
	Error        string `json:"error,omitempty"`
}

// RightsReport counts the pull-rights exchange: requests refused to peers without rights,
// peers' tokens checked here, and this host's tokens presented to peers.
type RightsReport struct {
	Enabled         bool  `json:"enabled"`
	Denied          int64 `json:"denied"`
	Granted         int64 `json:"granted"`
	Refused         int64 `json:"refused"`
	PresentedOK     int64 `json:"presentedOK"`
	PresentedDenied int64 `json:"presentedDenied"`
}

// VerifyBySource is verification failures by where the bytes came from.
type VerifyBySource struct {
	Local  int64 `json:"local"`
	Peers  int64 `json:"peers"`
	Origin int64 `json:"origin"`
}

// ByteTotals are bytes by source.
type ByteTotals struct {
	Local         int64 `json:"local"`
	Dedup         int64 `json:"dedup"`
	Peers         int64 `json:"peers"`
	Origin        int64 `json:"origin"`
	ServedToPeers int64 `json:"servedToPeers"`
}

// WireTotals are bytes on the network by source.
type WireTotals struct {
	Peers  int64 `json:"peers"`
	Origin int64 `json:"origin"`
	// ServedToPeers is what this host's uploads to peers took on the network (Bytes.ServedToPeers
	// of data).
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
	// Standing is good, demoted (ranked after every peer in good standing and hedged at once)
	// or banned; SlowShare and BadShare are the shares of its recent requests that were slow
	// (answered past the cluster's slow threshold) or bad (timed out, or lost a race it should
	// have won), which is what demotes it.
	// Blobs is how many blobs the peer has sent presence maps for.
	Blobs     int     `json:"blobs"`
	Standing  string  `json:"standing"`
	SlowShare float64 `json:"slowShare"`
	BadShare  float64 `json:"badShare"`
}
