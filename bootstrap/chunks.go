package bootstrap

import (
	"fmt"
	"io"
	"sort"

	"github.com/shoal-p2p/shoal/chunk"

	"github.com/opencontainers/go-digest"
)

// BlobData is a data blob (an extra device of the image) to cut into chunks.
type BlobData struct {
	Digest digest.Digest
	Size   int64
	R      io.ReaderAt
}

// ChunkManifests computes the chunk manifest of every extra device of the image, in device
// order. blobs[k-1] is device k.
//
// When every regular file's data is chunk-indexed (mkfs.erofs --chunksize with
// -Eforce-chunk-indexes, Shoal's own build), the chunks are exactly the EROFS chunks that file
// data occupies in each blob: ChunkingEROFS. Identical file content then yields identical chunks,
// and identical CIDs, in every image. Where two chunks overlap (possible only in images built by
// other tools), the covered bytes are cut at every chunk boundary so that chunks stay disjoint.
//
// Otherwise (plain or block-map layouts, flat device addressing) the mapping from files to blob
// bytes is not chunk-shaped, and each blob is cut into fixedChunk pieces from offset 0:
// ChunkingFixed. Every byte of the blob is then covered, so every file read is too.
func ChunkManifests(f *FS, blobs []BlobData, fixedChunk int64) ([]*chunk.Manifest, error) {
	if len(blobs) != len(f.devices) {
		return nil, fmt.Errorf("image has %d extra devices, %d blobs given", len(f.devices), len(blobs))
	}
	type span struct{ start, end int64 }
	spans := make([]map[span]struct{}, len(blobs))
	for i := range spans {
		spans[i] = map[span]struct{}{}
	}
	indexed := true
	var chunkSize int64
	// Pass 1: is every regular file chunk-indexed, and with which chunk size?
	err := f.Walk(func(p string, in *Inode) error {
		if !in.Mode.IsRegular() || in.Size == 0 {
			return nil
		}
		if !in.ChunkIndexed() {
			indexed = false
			return nil
		}
		bits, err := f.ChunkBits(in)
		if err != nil {
			return err
		}
		chunkSize = max(chunkSize, int64(1)<<bits)
		return nil
	})
	if err == nil && indexed {
		// Pass 2: the blob bytes each chunk of file data occupies.
		err = f.WalkExtents(func(p string, in *Inode, e Extent) error {
			if e.Hole || e.Device == 0 {
				return nil // holes read as zeros; device 0 is the bootstrap, always local
			}
			b := blobs[e.Device-1]
			end := e.DeviceOffset + roundUp(e.Length, chunk.BlockSize)
			if e.DeviceOffset+e.Length > b.Size {
				return fmt.Errorf("%s: bytes [%d,%d) of device %d lie past the end of blob %s (%d bytes)",
					p, e.DeviceOffset, e.DeviceOffset+e.Length, e.Device, b.Digest, b.Size)
			}
			// Rounding up to the block includes the zero padding after the file's last byte;
			// the blob may itself end before the padding would.
			spans[e.Device-1][span{e.DeviceOffset, min(end, b.Size)}] = struct{}{}
			return nil
		})
	}
	if err != nil {
		return nil, err
	}
	out := make([]*chunk.Manifest, len(blobs))
	for i, b := range blobs {
		if !indexed {
			m, err := chunk.FixedManifest(b.R, b.Digest, b.Size, fixedChunk)
			if err != nil {
				return nil, err
			}
			if err := setSubHashes(m, b.R); err != nil {
				return nil, err
			}
			out[i] = m
			continue
		}
		var pieces []span
		{
			// Sweep: +1 at each start, -1 at each end; bytes with a positive count are covered,
			// and every boundary becomes a cut.
			type ev struct {
				at    int64
				delta int
			}
			evs := make([]ev, 0, 2*len(spans[i]))
			for s := range spans[i] {
				evs = append(evs, ev{s.start, +1}, ev{s.end, -1})
			}
			sort.Slice(evs, func(a, b int) bool { return evs[a].at < evs[b].at })
			depth := 0
			for k := 0; k < len(evs); {
				at := evs[k].at
				for k < len(evs) && evs[k].at == at {
					depth += evs[k].delta
					k++
				}
				if depth > 0 && k < len(evs) {
					pieces = append(pieces, span{at, evs[k].at})
				}
			}
		}
		m := &chunk.Manifest{SchemaVersion: chunk.ManifestSchemaVersion, Blob: b.Digest, BlobSize: b.Size,
			Chunking: chunk.ChunkingEROFS, ChunkSize: max(chunkSize, chunk.BlockSize)}
		buf := make([]byte, m.ChunkSize)
		for _, p := range pieces {
			n := p.end - p.start
			if k, err := b.R.ReadAt(buf[:n], p.start); int64(k) < n {
				return nil, fmt.Errorf("reading blob %s at %d: %w", b.Digest, p.start, orUnexpectedEOF(err))
			}
			m.Chunks = append(m.Chunks, chunk.Chunk{Offset: p.start, Length: n, CID: chunk.CID(buf[:n])})
		}
		if err := setSubHashes(m, b.R); err != nil {
			return nil, err
		}
		if err := m.Validate(); err != nil {
			return nil, fmt.Errorf("computed manifest is inconsistent (a bug or a hostile image): %w", err)
		}
		out[i] = m
	}
	return out, nil
}

// setSubHashes gives m's chunks their sub-block digests (chunk.DefaultSubBlockSize), as the Go
// writer does, where chunks are larger than a sub-block.
func setSubHashes(m *chunk.Manifest, r io.ReaderAt) error {
	if m.ChunkSize <= chunk.DefaultSubBlockSize {
		return nil
	}
	return m.SetSubHashes(r, chunk.DefaultSubBlockSize)
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

func orUnexpectedEOF(err error) error {
	if err == nil || err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
