package demand

import (
	"context"
	"fmt"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"

	"github.com/shoal-p2p/shoal/chunk"
)

// Progress reports a prefetch's advance: bytes of chunk data present out of the blob's total.
type Progress func(present, total int64)

// Prefetch makes the whole blob present in the background: first the ranges in first (e.g. the
// files an image reads at start, in the order it reads them), then every other chunk in offset
// order. It runs at prefetch priority, so demand reads overtake it, and takes at most lim's
// bandwidth (nil: unlimited). It returns when the blob is complete, on the first error, or when
// ctx ends.
func (r *Resolver) Prefetch(ctx context.Context, blob digest.Digest, first []chunk.Range, lim *rate.Limiter, progress Progress) error {
	b, err := r.blob(blob)
	if err != nil {
		return err
	}
	total := b.m.DataBytes()
	missing, err := r.store.Missing(blob, 0, b.m.BlobSize)
	if err != nil {
		return fmt.Errorf("demand: prefetch %s: %w", blob, err)
	}
	var missingBytes int64
	for _, c := range missing {
		missingBytes += c.Length
	}
	var mu sync.Mutex
	present := total - missingBytes
	report := func(n int64) {
		if progress == nil {
			return
		}
		mu.Lock()
		present += n
		p := present
		mu.Unlock()
		progress(p, total)
	}
	report(0)

	// Order: chunks under the priority ranges first, then the rest by offset.
	order := make([]chunk.Chunk, 0, len(missing))
	queued := map[int64]bool{}
	isMissing := map[int64]bool{}
	for _, c := range missing {
		isMissing[c.Offset] = true
	}
	for _, rg := range first {
		for _, c := range b.m.ChunksIn(rg.Offset, rg.Length) {
			if isMissing[c.Offset] && !queued[c.Offset] {
				queued[c.Offset] = true
				order = append(order, c)
			}
		}
	}
	for _, c := range missing {
		if !queued[c.Offset] {
			order = append(order, c)
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan chunk.Chunk)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for range r.cfg.PrefetchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				if err := r.ensureChunk(ctx, b, c, true); err != nil {
					select {
					case errc <- err:
					default:
					}
					cancel()
					return
				}
				report(c.Length)
			}
		}()
	}
	var sendErr error
feed:
	for _, c := range order {
		if lim != nil {
			if err := waitBytes(ctx, lim, c.Length); err != nil {
				sendErr = err
				break
			}
		}
		select {
		case work <- c:
		case <-ctx.Done():
			sendErr = ctx.Err()
			break feed
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		return fmt.Errorf("demand: prefetch %s: %w", blob, err)
	default:
	}
	return sendErr
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
