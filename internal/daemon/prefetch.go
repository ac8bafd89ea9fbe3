package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/demand"
)

// prefetchResolver is what background prefetch needs of the demand resolver.
type prefetchResolver interface {
	Prefetch(ctx context.Context, blob digest.Digest, first []chunk.Range, lim *rate.Limiter, progress demand.Progress) (demand.PrefetchResult, error)
	ReadOrder(blob digest.Digest) []chunk.Range
}

// Prefetch states, as ImageReport.Prefetch shows them ("" is reported as "idle").
const (
	prefetchRunning = "running"
	prefetchDone    = "done"
	prefetchFailed  = "failed"
	// prefetchIncomplete: it ran to the end, but not every chunk is local (some failed from every
	// source, or were evicted again because the image does not fit the cache). The error says
	// which and why.
	prefetchIncomplete = "incomplete"
	prefetchStopped    = "stopped"
)

// prefetcher fetches whole images in the background, one goroutine per image, and owns those
// goroutines: Stop cancels one, Close cancels all and waits for them (before the store closes).
type prefetcher struct {
	res    prefetchResolver
	orders readOrders
	rate   int64 // bytes per second for all prefetches of one image; 0: unlimited
	log    *slog.Logger

	mu     sync.Mutex
	jobs   map[digest.Digest]*prefetchJob // by image
	closed bool
	wg     sync.WaitGroup
}

type prefetchJob struct {
	state  string
	err    string
	cancel context.CancelFunc
}

func newPrefetcher(res prefetchResolver, orders readOrders, bytesPerSec int64, log *slog.Logger) *prefetcher {
	return &prefetcher{res: res, orders: orders, rate: bytesPerSec, log: log, jobs: map[digest.Digest]*prefetchJob{}}
}

// Start fetches the rest of im in the background; it does nothing while a prefetch of im runs or
// after one completed. ctx is the caller's (a request, or the restore): the prefetch takes its
// values but outlives it, until Stop or Close.
func (p *prefetcher) Start(ctx context.Context, im *image) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	if j := p.jobs[im.digest()]; j != nil && (j.state == prefetchRunning || j.state == prefetchDone) {
		return
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	j := &prefetchJob{state: prefetchRunning, cancel: cancel}
	p.jobs[im.digest()] = j
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer cancel()
		p.run(ctx, im, j)
	}()
}

func (p *prefetcher) run(ctx context.Context, im *image, j *prefetchJob) {
	lim := newLimiter(p.rate)
	var err error
	var incomplete []string
	var present, total int64
	for _, b := range im.blobs() {
		var res demand.PrefetchResult
		res, err = p.res.Prefetch(ctx, b.Digest, p.orders.load(b.Digest), lim, nil)
		present, total = present+res.Present, total+res.Total
		if errors.Is(err, demand.ErrIncomplete) {
			incomplete = append(incomplete, res.Summary()) // the other blobs still go on
			err = nil
			continue
		}
		if err != nil {
			break
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	current := p.jobs[im.digest()] == j
	switch {
	case ctx.Err() != nil || !current:
		j.state = prefetchStopped // stopped, or its image removed (its blobs gone from the resolver)
	case err != nil:
		j.state, j.err = prefetchFailed, err.Error()
		p.log.Warn("prefetch failed", "image", im.Ref, "err", err)
	case len(incomplete) > 0:
		j.state = prefetchIncomplete
		j.err = fmt.Sprintf("%d of %d bytes local; %s", present, total, strings.Join(incomplete, "; "))
		p.log.Warn("prefetch incomplete: not all of the image is local", "image", im.Ref, "present", present, "total", total, "why", j.err)
	default:
		j.state = prefetchDone
		p.log.Info("prefetch complete", "image", im.Ref, "bytes", total)
	}
}

// Status returns the state of image d's prefetch ("" if none was started) and its error.
func (p *prefetcher) Status(d digest.Digest) (state, errText string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if j := p.jobs[d]; j != nil {
		return j.state, j.err
	}
	return "", ""
}

// Stop cancels image d's prefetch and forgets it (its image is removed). It does not wait: Close
// does.
func (p *prefetcher) Stop(d digest.Digest) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if j := p.jobs[d]; j != nil {
		j.cancel()
		delete(p.jobs, d)
	}
}

// Close cancels every prefetch and waits for their goroutines. Start does nothing afterwards.
func (p *prefetcher) Close() {
	p.mu.Lock()
	p.closed = true
	for _, j := range p.jobs {
		j.cancel()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func newLimiter(bytesPerSec int64) *rate.Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bytesPerSec), int(min(bytesPerSec, 16<<20)))
}

// readOrders keeps, per blob, the chunks the first run of an image read, in the order it read
// them, in <dir>/<hex>.json. A later prefetch of the blob (a restart, another mount, `shoal
// prefetch`) fetches those first, so a host warming an image gets its start-up working set
// before the rest. The first recording is kept: later runs read mostly from the cache.
type readOrders struct {
	dir string
	log *slog.Logger
}

func (o readOrders) path(blob digest.Digest) string {
	return filepath.Join(o.dir, blob.Encoded()+".json")
}

func (o readOrders) load(blob digest.Digest) []chunk.Range {
	b, err := os.ReadFile(o.path(blob))
	if err != nil {
		return nil
	}
	var order []chunk.Range
	if err := json.Unmarshal(b, &order); err != nil {
		o.log.Warn("ignoring a damaged read order", "blob", blob, "err", err)
		return nil
	}
	return order
}

// save records the read order of each blob that has one and no recording yet.
func (o readOrders) save(blobs []digest.Digest, readOrder func(digest.Digest) []chunk.Range) {
	for _, blob := range blobs {
		path := o.path(blob)
		if _, err := os.Stat(path); err == nil {
			continue
		}
		order := readOrder(blob)
		if len(order) == 0 {
			continue
		}
		b, err := json.Marshal(order)
		if err == nil {
			err = os.MkdirAll(o.dir, 0o700)
		}
		if err == nil {
			err = writeFileAtomic(path, b)
		}
		if err != nil {
			o.log.Warn("saving the read order", "blob", blob, "err", err)
		}
	}
}
