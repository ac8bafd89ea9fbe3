package demand

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"

	"github.com/shoal-p2p/shoal/chunk"
)

// Progress reports a prefetch's advance: bytes of chunk data present out of the blob's total.
type Progress func(present, total int64)

// ErrIncomplete is wrapped by Prefetch's error when the blob is not whole at the end: chunks
// failed from every source on every attempt, or were evicted again (a cache smaller than the
// image). PrefetchResult says which and why.
var ErrIncomplete = errors.New("demand: prefetch incomplete")

// errEvicted is the reason given for a chunk that was fetched and is gone again.
var errEvicted = errors.New("fetched, then evicted (is the cache smaller than the image?)")

// PrefetchResult is what a prefetch left local.
type PrefetchResult struct {
	Blob           digest.Digest
	Total, Present int64          // bytes of chunk data: the blob's, and those local at the end
	Missing        []MissingChunk // chunks not local at the end, in offset order
}

// MissingChunk is a chunk a prefetch could not leave local, and why (the last attempt's error).
type MissingChunk struct {
	Chunk chunk.Chunk
	Err   error
}

// Complete reports whether every chunk of the blob was local at the end.
func (r PrefetchResult) Complete() bool { return len(r.Missing) == 0 }

// Summary says in one line what is missing and why, grouping chunks by reason.
func (r PrefetchResult) Summary() string {
	if r.Complete() {
		return fmt.Sprintf("blob %s: all %d bytes local", r.Blob, r.Total)
	}
	byWhy := map[string]int{}
	var missingBytes int64
	for _, m := range r.Missing {
		byWhy[m.Err.Error()]++
		missingBytes += m.Chunk.Length
	}
	whys := make([]string, 0, len(byWhy))
	for w := range byWhy {
		whys = append(whys, w)
	}
	sort.Slice(whys, func(i, j int) bool {
		return byWhy[whys[i]] > byWhy[whys[j]] || byWhy[whys[i]] == byWhy[whys[j]] && whys[i] < whys[j]
	})
	parts := make([]string, 0, min(len(whys), 3))
	for _, w := range whys[:min(len(whys), 3)] {
		parts = append(parts, fmt.Sprintf("%d × %s", byWhy[w], w))
	}
	if len(whys) > 3 {
		parts = append(parts, fmt.Sprintf("%d more reasons", len(whys)-3))
	}
	return fmt.Sprintf("blob %s: %d chunks (%d bytes) of %d bytes not local: %s", r.Blob, len(r.Missing), missingBytes, r.Total, strings.Join(parts, "; "))
}

// Prefetch makes the whole blob present in the background: first the ranges in first (e.g. the
// files an image reads at start, in the order it reads them), then every other chunk: in offset
// order without a cluster, rarest first in a random order with one (swarmOrder). It runs at prefetch priority, so demand reads overtake it, and takes at most lim's
// bandwidth (nil: unlimited).
//
// A chunk that fails does not stop the others: after the pass, failed chunks are tried again,
// up to Config.PrefetchAttempts in all, with exponential backoff and jitter between rounds. At
// the end the result says what is actually local, checked against the store (a chunk fetched and
// then evicted by the cache cap is missing, not done); if anything is missing the error wraps
// ErrIncomplete and the result's Summary says what and why. If ctx ends first, the error is
// ctx's.
func (r *Resolver) Prefetch(ctx context.Context, blob digest.Digest, first []chunk.Range, lim *rate.Limiter, progress Progress) (PrefetchResult, error) {
	b, err := r.blob(blob)
	if err != nil {
		return PrefetchResult{Blob: blob}, err
	}
	res := PrefetchResult{Blob: blob, Total: b.m.DataBytes()}
	missing, err := r.store.Missing(blob, 0, b.m.BlobSize)
	if err != nil {
		return res, fmt.Errorf("demand: prefetch %s: %w", blob, err)
	}
	var missingBytes int64
	for _, c := range missing {
		missingBytes += c.Length
	}
	var mu sync.Mutex
	present := res.Total - missingBytes
	report := func(n int64) {
		if progress == nil {
			return
		}
		mu.Lock()
		present += n
		p := present
		mu.Unlock()
		progress(p, res.Total)
	}
	report(0)

	failed := map[int64]MissingChunk{}
	todo, nFirst := prefetchOrder(b.m, missing, first)
	r.swarmOrder(blob, todo[nFirst:])
	for attempt := 1; len(todo) > 0 && attempt <= r.cfg.PrefetchAttempts; attempt++ {
		if attempt > 1 {
			if err := sleepCtx(ctx, backoff(r.cfg.PrefetchRetryBase, attempt-1)); err != nil {
				return res, err
			}
			r.log.Info("prefetch: trying failed chunks again", "blob", blob, "chunks", len(todo), "attempt", attempt, "of", r.cfg.PrefetchAttempts)
		}
		errs, err := r.prefetchRound(ctx, b, todo, lim, report)
		if err != nil {
			return res, err
		}
		// Every chunk still failing was in this round: the round's failures are all of them.
		todo = make([]chunk.Chunk, 0, len(errs))
		clear(failed)
		for c, e := range errs {
			failed[c.Offset] = MissingChunk{c, e}
			todo = append(todo, c)
		}
		sort.Slice(todo, func(i, j int) bool { return todo[i].Offset < todo[j].Offset })
		r.swarmOrder(blob, todo)
	}

	// What is local now, by the store's own account.
	left, err := r.store.Missing(blob, 0, b.m.BlobSize)
	if err != nil {
		return res, fmt.Errorf("demand: prefetch %s: %w", blob, err)
	}
	res.Present = res.Total
	for _, c := range left {
		res.Present -= c.Length
		why := errEvicted
		if f, ok := failed[c.Offset]; ok {
			why = f.Err
		}
		res.Missing = append(res.Missing, MissingChunk{c, why})
	}
	if !res.Complete() {
		return res, fmt.Errorf("%w: %s", ErrIncomplete, res.Summary())
	}
	return res, nil
}

// Availability is an optional capability of Peers, found by type assertion (package p2p's Node
// has it): how many peers hold each chunk, for a rarest-first prefetch.
type Availability interface {
	Holders(blob digest.Digest, chunks []chunk.Chunk) []int
}

// swarmOrder reorders the chunks a prefetch fetches after its priority ranges when there is a
// cluster, so hosts prefetching one image together fetch different chunks first and then serve
// them to each other, instead of all asking the same holder (a seed, or the rendezvous owner) for
// the same chunk in manifest order: a random order, then stably rarest first (fewest holders
// among the peers now) when Peers can tell. Without a cluster the order stays by offset.
func (r *Resolver) swarmOrder(blob digest.Digest, chunks []chunk.Chunk) {
	if r.peers == nil || len(chunks) < 2 {
		return
	}
	rand.Shuffle(len(chunks), func(i, j int) { chunks[i], chunks[j] = chunks[j], chunks[i] })
	av, ok := r.peers.(Availability)
	if !ok {
		return
	}
	holders := av.Holders(blob, chunks)
	if len(holders) != len(chunks) {
		return
	}
	idx := make([]int, len(chunks))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return holders[idx[a]] < holders[idx[b]] })
	sorted := make([]chunk.Chunk, len(chunks))
	for k, i := range idx {
		sorted[k] = chunks[i]
	}
	copy(chunks, sorted)
}

// prefetchOrder is the fetch order of the missing chunks: those under the priority ranges first,
// in the ranges' order (nFirst of them), then the rest by offset. Each chunk appears once.
func prefetchOrder(m *chunk.Manifest, missing []chunk.Chunk, first []chunk.Range) (order []chunk.Chunk, nFirst int) {
	order = make([]chunk.Chunk, 0, len(missing))
	queued := map[int64]bool{}
	isMissing := map[int64]bool{}
	for _, c := range missing {
		isMissing[c.Offset] = true
	}
	for _, rg := range first {
		for _, c := range m.ChunksIn(rg.Offset, rg.Length) {
			if isMissing[c.Offset] && !queued[c.Offset] {
				queued[c.Offset] = true
				order = append(order, c)
			}
		}
	}
	nFirst = len(order)
	for _, c := range missing {
		if !queued[c.Offset] {
			order = append(order, c)
		}
	}
	return order, nFirst
}

// prefetchRound fetches chunks with PrefetchWorkers + PrefetchWriteBehind workers (at most
// PrefetchWorkers of them fetching, the others' chunks being written and synced) and returns the
// chunks that failed, with their errors. Only ctx ending stops it early (its error is returned
// then).
func (r *Resolver) prefetchRound(ctx context.Context, b *blobEntry, chunks []chunk.Chunk, lim *rate.Limiter, report func(int64)) (map[chunk.Chunk]error, error) {
	work := make(chan chunk.Chunk)
	var mu sync.Mutex
	errs := map[chunk.Chunk]error{}
	var wg sync.WaitGroup
	for range r.cfg.PrefetchWorkers + r.cfg.PrefetchWriteBehind {
		wg.Go(func() {
			for c := range work {
				if err := r.ensureChunk(ctx, b, c, true); err != nil {
					if ctx.Err() != nil {
						continue // stopping: not the chunk's fault
					}
					r.log.Debug("prefetch: chunk failed, will try again", "blob", b.m.Blob, "offset", c.Offset, "cid", c.CID, "err", err)
					mu.Lock()
					errs[c] = err
					mu.Unlock()
					continue
				}
				report(c.Length)
			}
		})
	}
	var stopErr error
feed:
	for _, c := range chunks {
		if lim != nil {
			if err := waitBytes(ctx, lim, c.Length); err != nil {
				stopErr = err
				break
			}
		}
		select {
		case work <- c:
		case <-ctx.Done():
			stopErr = ctx.Err()
			break feed
		}
	}
	close(work)
	wg.Wait()
	if stopErr == nil {
		stopErr = ctx.Err()
	}
	return errs, stopErr
}

// backoff is the wait before retry round n (1, 2, ...): base doubling, capped at 30 s, with up
// to 25% jitter so hosts that failed together do not retry together.
func backoff(base time.Duration, n int) time.Duration {
	d := base << min(n-1, 16)
	d = min(d, 30*time.Second)
	return d + time.Duration(rand.Int64N(int64(d)/4+1))
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitBytes takes n bytes from a limiter whose burst may be smaller than n.
func waitBytes(ctx context.Context, lim *rate.Limiter, n int64) error {
	for n > 0 {
		step := min(n, int64(max(lim.Burst(), 1)))
		if err := lim.WaitN(ctx, int(step)); err != nil {
			return err
		}
		n -= step
	}
	return nil
}
