package chunkstore

import (
	"errors"
	"fmt"

	"github.com/shoal-p2p/shoal/chunk"
)

// Sentinel errors. Every error the store returns wraps at most one of these, and says which blob,
// chunk or path it is about.
var (
	// ErrNotFound: the blob is not registered, or no present chunk has the CID, or a range asked
	// for is not (all) present.
	ErrNotFound = errors.New("not found")
	// ErrCorrupt: bytes do not match their CID. It wraps chunk.ErrCorrupt, so
	// errors.Is(err, chunk.ErrCorrupt) holds too.
	ErrCorrupt = fmt.Errorf("chunkstore: %w", chunk.ErrCorrupt)
	// ErrNoSpace: the disk is full (ENOSPC, EDQUOT) or the cache is at MaxBytes with nothing
	// left that may be evicted. Nothing was marked present.
	ErrNoSpace = errors.New("no space left for the chunk cache")
	// ErrIO: the disk failed (EIO and other errors of the backing file). Nothing was marked
	// present.
	ErrIO = errors.New("chunk cache I/O error")
	// ErrInvalid: the call's arguments do not fit (unknown chunk, wrong length, bad digest).
	ErrInvalid = errors.New("invalid argument")
	// ErrClosed: the store is closed.
	ErrClosed = errors.New("chunk store closed")
)
