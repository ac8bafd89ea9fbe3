package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/shoal-p2p/shoal/chunk/zchunk"
)

// WithTrainedDict returns enc with a zstd dictionary of about size bytes trained on samples
// (zchunk.Train), or enc itself when size is 0, enc is nil or the samples do not make a
// dictionary (zchunk.ErrNoDict: too little compressible data to be worth one).
func WithTrainedDict(enc *zchunk.Encoder, samples [][]byte, size int) (*zchunk.Encoder, error) {
	if enc == nil || size == 0 {
		return enc, nil
	}
	d, err := zchunk.Train(samples, size, enc.Level())
	if errors.Is(err, zchunk.ErrNoDict) {
		return enc, nil
	}
	if err != nil {
		return nil, err
	}
	return enc.WithDict(d)
}

// Sampler keeps a dictionary's training sample while data goes by: the first
// zchunk.DictSamplePiece bytes of every stride-th piece offered (a chunk starts where its file
// starts, so a file's start is a chunk's), stride chosen from the total expected so that about
// zchunk.DictSampleBytes are kept, spread over all of it.
type Sampler struct {
	stride, n int
	samples   [][]byte
}

// NewSampler returns a sampler for pieces whose first DictSamplePiece bytes add up to about
// total.
func NewSampler(total int64) *Sampler {
	return &Sampler{stride: int(max(1, total/zchunk.DictSampleBytes))}
}

// Want reports whether the next piece is kept; Add must follow with its bytes if so.
func (s *Sampler) Want() bool {
	s.n++
	return (s.n-1)%s.stride == 0
}

// Add keeps a copy of the start of b.
func (s *Sampler) Add(b []byte) {
	s.samples = append(s.samples, append([]byte(nil), b[:min(len(b), zchunk.DictSamplePiece)]...))
}

// Samples are the pieces kept.
func (s *Sampler) Samples() [][]byte { return s.samples }

// sampleTree reads the dictionary sample of the tree at src: the start of evenly spaced regular
// files, in the walk's (sorted) order, so the same tree gives the same sample.
func sampleTree(ctx context.Context, src string) ([][]byte, error) {
	type file struct {
		path string
		size int64
	}
	var files []file
	var total int64
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return ctx.Err()
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Size() > 0 {
			files = append(files, file{p, info.Size()})
			total += min(info.Size(), zchunk.DictSamplePiece)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sampling %s for a dictionary: %w", src, err)
	}
	s := NewSampler(total)
	buf := make([]byte, zchunk.DictSamplePiece)
	for _, f := range files {
		if !s.Want() {
			continue
		}
		fh, err := os.Open(f.path)
		if err != nil {
			return nil, fmt.Errorf("sampling for a dictionary: %w", err)
		}
		n, err := io.ReadFull(fh, buf[:min(f.size, zchunk.DictSamplePiece)])
		fh.Close()
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("sampling for a dictionary: %s: %w", f.path, err)
		}
		s.Add(buf[:n])
	}
	return s.Samples(), nil
}
