package chunkstore

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/shoal-p2p/shoal/chunkstore/layout"

	"github.com/prometheus/client_golang/prometheus"
)

// Config holds the store's optional settings. Start from DefaultConfig.
type Config struct {
	// Domain names the fscache volume ("erofs,<Domain>"); the fscache frontend mounts with
	// domain_id=<Domain>. Printable ASCII without '/' or ','.
	Domain string
	// MaxBytes caps the bytes of present chunks. 0 means no limit. When a write would pass it,
	// unpinned blobs are evicted, least recently used first, down to LowWatermark of MaxBytes.
	MaxBytes int64
	// PinnedOverflow lets writes pass MaxBytes when everything left to evict is pinned (data of
	// mounted images): a mounted image keeps serving reads, and a warning says the cap is too
	// small for the mounted working set. The disk's real size still applies (ErrNoSpace on
	// ENOSPC). False makes MaxBytes hard: such writes fail with ErrNoSpace.
	PinnedOverflow bool
	// ReserveBytes is free space the store keeps on the cache filesystem for its index and
	// state: chunk writes that would leave less than ReserveBytes plus the index's own size free
	// evict unpinned data first and otherwise fail with ErrNoSpace, pinned or not. Up to 17 MiB
	// of it is also held in a preallocated file in the index directory, released when the
	// filesystem fills up anyway (see space.go). A full filesystem would crash the index (badger
	// writes through mappings of sparse files: SIGBUS), so this is never off. 0 (the default)
	// means a sixteenth of the filesystem, between 4 and 64 MiB; otherwise at least 1 MiB.
	ReserveBytes int64
	// LowWatermark is the fraction of MaxBytes eviction frees down to, in (0, 1].
	LowWatermark float64
	// MaxOpenFiles bounds the backing files kept open (the fd cache). In-use files may briefly
	// exceed it.
	MaxOpenFiles int
	// IndexDir holds the badger index. Empty means <dir>/index.
	IndexDir string
	// SyncBatch is the most writes one group commit (one fdatasync per file, one index
	// transaction) takes.
	SyncBatch int
	// DirectWrites makes PutCold (a background prefetch's writes; Put always goes through the
	// page cache, for the reads that follow it) write with direct I/O (O_DIRECT), where the
	// filesystem allows it (else, as on tmpfs, through the page cache). A buffered write of
	// a chunk costs the writer the kernel's page-cache allocation and copy, 2-2.5 ms of CPU per
	// MiB on the benchmark machine (a VM), and the fdatasync after it the writeback; a direct
	// write costs about 0.13 ms/MiB and the fdatasync only the metadata (BENCHMARKS.md, one
	// peer stream). The data is then not in the page cache: the first read of a chunk after it
	// was written goes to the disk. Reads of a range the kernel caches stay coherent (a direct
	// write invalidates the cached pages it covers).
	DirectWrites bool
	// IndexCacheBytes bounds badger's block and table-index caches (each), so memory does not
	// grow with the number of chunks. The default, 8 MiB, keeps the two inside a daemon's 64 MiB
	// budget for anonymous memory (BENCHMARKS.md, daemon memory).
	IndexCacheBytes int64
	// ManifestCache is how many parsed chunk manifests stay in memory.
	ManifestCache int
	// ManifestCacheChunks bounds the chunks of those manifests, all together (about 110 bytes
	// each in memory), so that large images do not make the cache large; the manifest used last
	// is kept whatever its size.
	ManifestCacheChunks int
	// Logger receives the store's logs; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the store's Prometheus metrics; nil registers nothing.
	Registerer prometheus.Registerer
}

// DefaultConfig returns the settings used when nothing else is said.
func DefaultConfig() Config {
	return Config{
		Domain:          layout.DefaultDomain,
		LowWatermark:    0.9,
		PinnedOverflow:  true,
		MaxOpenFiles:    256,
		SyncBatch:       256,
		DirectWrites:    true,
		IndexCacheBytes: 8 << 20,
		ManifestCache:   256,
		// About 7 MiB of parsed manifests: 64 blobs of 1024 chunks (64 GiB of blobs in 1 MiB chunks).
		ManifestCacheChunks: 1 << 16,
	}
}

// Validate checks the settings and says what to change.
func (c Config) Validate() error {
	var errs []error
	if c.Domain == "" {
		errs = append(errs, errors.New("Domain is empty: use layout.DefaultDomain (\"shoal\") or a name of your own"))
	} else if strings.Contains(c.Domain, ",") || !layout.PlainKey(layout.VolumeKey(c.Domain)) || len(layout.VolumeKey(c.Domain)) > 254 {
		errs = append(errs, fmt.Errorf("Domain %q: must be printable ASCII without '/' or ',' and at most 248 bytes", c.Domain))
	}
	if c.MaxBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxBytes %d is negative: use 0 for no limit", c.MaxBytes))
	}
	if c.ReserveBytes != 0 && c.ReserveBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("ReserveBytes %d: must be 0 (automatic) or at least 1 MiB: the index needs room to start and compact", c.ReserveBytes))
	}
	if c.LowWatermark <= 0 || c.LowWatermark > 1 {
		errs = append(errs, fmt.Errorf("LowWatermark %v: must be in (0, 1], e.g. 0.9", c.LowWatermark))
	}
	if c.MaxOpenFiles < 4 {
		errs = append(errs, fmt.Errorf("MaxOpenFiles %d: must be at least 4", c.MaxOpenFiles))
	}
	if c.SyncBatch < 1 {
		errs = append(errs, fmt.Errorf("SyncBatch %d: must be at least 1", c.SyncBatch))
	}
	if c.IndexCacheBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("IndexCacheBytes %d: must be at least 1 MiB", c.IndexCacheBytes))
	}
	if c.ManifestCache < 1 {
		errs = append(errs, fmt.Errorf("ManifestCache %d: must be at least 1", c.ManifestCache))
	}
	if c.ManifestCacheChunks < 1 {
		errs = append(errs, fmt.Errorf("ManifestCacheChunks %d: must be at least 1", c.ManifestCacheChunks))
	}
	if len(errs) > 0 {
		return fmt.Errorf("chunkstore config: %w", errors.Join(errs...))
	}
	return nil
}
