package daemon

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoal-p2p/shoal/p2p"
)

// Cluster-wide prefetch (`shoal prefetch --cluster REF [--percent P]`): this host asks hosts of
// the cluster (itself and its connected peers, or the P% of them ranked highest by a hash of the
// reference and their peer ID, so that asking again picks the same ones) to warm an image, each
// by its own prefetch (p2p.PreheatProtocol), and follows their progress until every one is
// done or failed. Each host fetches through its normal path (peers that hold chunks, then the
// chunk's rendezvous owner, then its origin), so the cluster takes the image from the origin
// about once however many hosts warm it. Progress is in `shoal stats` (clusterPrefetch).

// preheatPeers is what a cluster prefetch asks of the p2p node.
type preheatPeers interface {
	Preheat(ctx context.Context, p peer.ID, ref string, start bool) (p2p.PreheatProgress, error)
}

// clusterPoll is how often a cluster prefetch asks each host how far it got; clusterLost is
// how many failed asks in a row give a host up.
const (
	clusterPoll    = time.Second
	clusterLost    = 60
	clusterKeep    = 16 // finished jobs kept for `shoal stats`
	clusterTimeout = 6 * time.Hour
)

// clusterPrefetcher runs cluster prefetch jobs and owns their goroutines (Close waits for them).
type clusterPrefetcher struct {
	svc   *service
	peers preheatPeers // nil: refused
	log   *slog.Logger

	mu     sync.Mutex
	jobs   []*clusterJob
	nextID int
	closed bool
	wg     sync.WaitGroup
}

type clusterJob struct {
	id      int
	ref     string
	percent int
	started time.Time
	hosts   []*clusterHost
	state   string // running, done, failed
	cancel  context.CancelFunc
}

type clusterHost struct {
	id             peer.ID
	self           bool
	image          string
	state          string // the host's prefetch state, failed (the start was refused), or unreachable
	err            string
	bytes, present int64
	misses         int // failed asks in a row
}

// final says whether a host's prefetch has ended.
func (h *clusterHost) final() bool {
	switch h.state {
	case prefetchDone, prefetchFailed, prefetchIncomplete, prefetchStopped, "unreachable":
		return true
	}
	return false
}

// pickHosts returns the hosts a cluster prefetch of ref asks: all of them, or the percent of
// them (at least one) ranked highest by sha256(ref, peer ID).
func pickHosts(ref string, hosts []peer.ID, percent int) []peer.ID {
	if percent <= 0 || percent >= 100 {
		return hosts
	}
	n := max(1, (len(hosts)*percent+99)/100)
	rank := func(p peer.ID) [32]byte { return sha256.Sum256([]byte(ref + "\x00" + string(p))) }
	sorted := slices.Clone(hosts)
	slices.SortFunc(sorted, func(a, b peer.ID) int {
		ra, rb := rank(a), rank(b)
		return -strings.Compare(string(ra[:]), string(rb[:]))
	})
	return sorted[:n]
}

// Start begins a cluster prefetch of ref and returns the peer IDs of the hosts it asks.
func (c *clusterPrefetcher) Start(ctx context.Context, ref string, percent int) (int, []string, error) {
	if c.peers == nil {
		return 0, nil, fmt.Errorf("%w: cluster prefetch needs the p2p node", errBadRequest)
	}
	if percent < 0 || percent > 100 {
		return 0, nil, fmt.Errorf("%w: --percent %d is not 0..100", errBadRequest, percent)
	}
	if isPath(ref) {
		return 0, nil, fmt.Errorf("%w: cluster prefetch takes a registry reference, not the local layout %s", errBadRequest, ref)
	}
	self := c.svc.peers.ID()
	all := []peer.ID{self}
	for _, p := range c.svc.peers.Peers() {
		if p.Connected && !p.Banned {
			all = append(all, p.ID)
		}
	}
	job := &clusterJob{ref: ref, percent: percent, started: time.Now(), state: prefetchRunning}
	var ids []string
	for _, p := range pickHosts(ref, all, percent) {
		job.hosts = append(job.hosts, &clusterHost{id: p, self: p == self})
		ids = append(ids, p.String())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, nil, errStopping
	}
	c.nextID++
	job.id = c.nextID
	c.jobs = append(c.jobs, job)
	if len(c.jobs) > clusterKeep {
		for i, j := range c.jobs { // drop the oldest finished one
			if j.state != prefetchRunning {
				c.jobs = slices.Delete(c.jobs, i, i+1)
				break
			}
		}
	}
	jctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), clusterTimeout)
	job.cancel = cancel
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer cancel()
		c.run(jctx, job)
	}()
	c.log.Info("cluster prefetch", "ref", ref, "percent", percent, "hosts", len(job.hosts), "of", len(all))
	return job.id, ids, nil
}

// isPath says whether ref names a local directory rather than a registry reference: a peer
// must not make this host read its files as an image.
func isPath(ref string) bool {
	if strings.HasPrefix(ref, "/") || strings.HasPrefix(ref, ".") {
		return true
	}
	st, err := os.Stat(ref)
	return err == nil && st.IsDir()
}

// run starts the prefetch on every host of job, then asks each how far it got until all ended.
func (c *clusterPrefetcher) run(ctx context.Context, job *clusterJob) {
	ask := func(h *clusterHost, start bool) {
		ref := job.ref
		c.mu.Lock()
		if h.image != "" {
			ref = h.image // the digest the host resolved: a tag may move meanwhile
		}
		c.mu.Unlock()
		var pr p2p.PreheatProgress
		var err error
		if h.self {
			pr, err = c.svc.Preheat(ctx, ref, start)
		} else {
			pr, err = c.peers.Preheat(ctx, h.id, ref, start)
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if pr.Image != "" {
			h.image, h.state, h.bytes, h.present = pr.Image, pr.State, pr.Bytes, pr.Present
		}
		if pr.Msg != "" {
			h.err = pr.Msg
		}
		if err == nil {
			h.misses = 0
			return
		}
		if ctx.Err() == nil {
			c.log.Debug("cluster prefetch: asking a host", "ref", job.ref, "host", h.id, "err", err)
		}
		h.err = err.Error()
		h.misses++
		switch {
		case start:
			h.state = prefetchFailed // refused, or the host could not load the image
		case h.misses >= clusterLost:
			h.state = "unreachable"
		}
	}
	var wg sync.WaitGroup
	for _, h := range job.hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ask(h, true)
		}()
	}
	wg.Wait()
	t := time.NewTicker(clusterPoll)
	defer t.Stop()
	for {
		c.mu.Lock()
		var open []*clusterHost
		failed := false
		for _, h := range job.hosts {
			if !h.final() {
				open = append(open, h)
			} else if h.state != prefetchDone {
				failed = true
			}
		}
		if len(open) == 0 {
			job.state = prefetchDone
			if failed {
				job.state = prefetchFailed
			}
			c.mu.Unlock()
			c.log.Info("cluster prefetch ended", "ref", job.ref, "state", job.state, "hosts", len(job.hosts), "took", time.Since(job.started).Round(time.Millisecond))
			return
		}
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			c.mu.Lock()
			job.state = prefetchStopped
			c.mu.Unlock()
			return
		case <-t.C:
		}
		for _, h := range open {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ask(h, false)
			}()
		}
		wg.Wait()
	}
}

// Reports describes every job, newest last.
func (c *clusterPrefetcher) Reports() []ClusterPrefetchReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []ClusterPrefetchReport{}
	for _, j := range c.jobs {
		r := ClusterPrefetchReport{ID: j.id, Ref: j.ref, Percent: j.percent, Started: j.started.UTC().Format(time.RFC3339),
			State: j.state, Hosts: []ClusterHostReport{}}
		for _, h := range j.hosts {
			r.Bytes += h.bytes
			r.BytesPresent += h.present
			switch {
			case h.state == prefetchDone:
				r.Done++
			case h.final():
				r.Failed++
			}
			state := h.state
			if state == "" {
				state = "asking"
			}
			r.Hosts = append(r.Hosts, ClusterHostReport{Peer: h.id.String(), Self: h.self, Image: h.image, State: state,
				Bytes: h.bytes, BytesPresent: h.present, Error: h.err})
		}
		out = append(out, r)
	}
	return out
}

// Close stops every job and waits for them.
func (c *clusterPrefetcher) Close() {
	c.mu.Lock()
	c.closed = true
	for _, j := range c.jobs { // a job dropped from the list had ended
		j.cancel()
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// Preheat is p2p.Preheater: a peer's cluster prefetch asks this host to warm ref (start) or how
// far it got. ref is a registry reference or, once started, the manifest digest.
func (s *service) Preheat(ctx context.Context, ref string, start bool) (p2p.PreheatProgress, error) {
	if isPath(ref) {
		return p2p.PreheatProgress{}, errors.New("not a registry reference")
	}
	if start {
		resp, err := s.Prefetch(ctx, PrefetchRequest{Ref: ref})
		if err != nil {
			return p2p.PreheatProgress{}, err
		}
		ref = resp.Image
	}
	for _, im := range s.reg.Images() {
		if im.Ref != ref && im.digest().String() != ref {
			continue
		}
		pr := p2p.PreheatProgress{Image: im.digest().String()}
		for _, b := range im.Image.Blobs {
			pr.Bytes += b.Manifest.DataBytes()
			if n, _, err := s.storeStats.PresentTotals(b.Digest); err == nil {
				pr.Present += n
			}
		}
		pr.State, pr.Msg = s.prefetch.Status(im.digest())
		if pr.State == "" {
			pr.State = "idle"
		}
		return pr, nil
	}
	return p2p.PreheatProgress{}, fmt.Errorf("image %s is not on this host", ref)
}

var _ p2p.Preheater = (*service)(nil)
