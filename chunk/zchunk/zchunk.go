package zchunk

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/shoal-p2p/shoal/chunk"
)

// Levels of NewEncoder, as the zstd command line numbers them. DefaultLevel is 1 (the encoder's
// fastest speed), not zstd's 3: over the Go distribution's tree (221.7 MiB) level 3 stores 69.6
// MiB and level 1 73.4 MiB (5% more) at a third more encoding speed, and encoding is most of an
// image build's CPU time (BENCHMARKS.md).
const (
	MinLevel     = 1
	MaxLevel     = 22
	DefaultLevel = 1
)

// MaxChunkSize bounds what Decode will produce, whatever a manifest says: peers and origins
// exchange whole chunks of at most this size.
const MaxChunkSize = 16 << 20

// Encoder compresses chunks at one level. It is safe for concurrent use.
type Encoder struct {
	level int
	enc   *zstd.Encoder
	dict  *Dict // nil: frames without a dictionary (chunk.CodecZstd)
}

// NewEncoder returns an encoder for a zstd level from MinLevel to MaxLevel (the encoder's four
// speeds cover them: 1-2 fastest, 3-5 default, 6-9 better, 10-22 best).
func NewEncoder(level int) (*Encoder, error) {
	if level < MinLevel || level > MaxLevel {
		return nil, fmt.Errorf("zstd level %d: want %d to %d", level, MinLevel, MaxLevel)
	}
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
		zstd.WithEncoderCRC(false), // the chunk's CID checks every byte
		zstd.WithSingleSegment(true),
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
	)
	if err != nil {
		return nil, fmt.Errorf("zstd level %d: %w", level, err)
	}
	return &Encoder{level: level, enc: enc}, nil
}

// Level is the encoder's zstd level.
func (e *Encoder) Level() int { return e.level }

// Pays reports whether a frame of n bytes is worth storing for a chunk of length bytes: it must
// save at least a sixteenth, or decoding would cost more than the bytes it saves.
func Pays(n, length int) bool { return n < length-length/16 }

// Encode appends the stored form of data to dst and says which codec it is: a zstd frame where
// that pays (Pays), chunk.CodecZstdDict if the encoder has a dictionary (WithDict), else data
// itself with chunk.CodecNone. Data that looks incompressible
// (Incompressible) is stored raw without being encoded: zstd would spend as long on it as on
// text and then not pay.
func (e *Encoder) Encode(dst, data []byte) ([]byte, chunk.Codec) {
	if Incompressible(data) {
		return append(dst, data...), chunk.CodecNone
	}
	z := e.enc.EncodeAll(data, dst[len(dst):])
	codec := chunk.CodecZstd
	if e.dict != nil {
		codec = chunk.CodecZstdDict
	}
	if Pays(len(z), len(data)) {
		if len(z) > 0 && cap(dst) > len(dst) && &z[0] == &dst[:len(dst)+1][len(dst)] {
			return dst[:len(dst)+len(z)], codec // encoded in place, after dst
		}
		return append(dst, z...), codec
	}
	return append(dst, data...), chunk.CodecNone
}

// incompressibleBits is the byte entropy (bits per byte, of a sample) from which Encode does not
// try zstd. Over the Go distribution's tree (221 MiB in 1 MiB chunks), no chunk at or above 7.5
// bits paid for its frame at level 1, and every chunk below 7.0 but a few hundred KiB did:
// compressed, encrypted and random data sit just under 8.
const incompressibleBits = 7.5

// sampleStride and sampleLen pick the bytes Incompressible counts: sampleLen bytes at the start
// of every sampleStride, 1/16 of a large chunk (64 KiB of 1 MiB). A chunk under sampleMin bytes
// a stride is sampled with a stride cut so that at least sampleMin bytes are still counted (a
// quarter of a 16 KiB chunk): no count is taken over fewer than 4096 bytes (the estimate of 8
// bits then reads low by under 0.05). A chunk of at most 2*sampleMin bytes is counted whole. Most
// files of a tree are small, and counting each whole cost 5% of an image build's CPU.
const (
	sampleStride = 4096
	sampleLen    = 256
	sampleMin    = 4096
)

// Incompressible reports whether data's bytes, sampled, are spread so evenly (order-0 entropy of
// at least 7.5 bits per byte) that zstd is not worth trying. It costs one pass over a sixteenth
// of a large chunk, against zstd's whole pass at roughly a tenth of the speed. It can be wrong
// only one way that matters: random-looking data repeated within the chunk (which zstd would
// find) is stored raw, which costs space, never correctness.
func Incompressible(data []byte) bool {
	if len(data) <= 2*sampleMin {
		return entropyBits(data) >= incompressibleBits
	}
	// sampleMin/sampleLen pieces at least: the stride is at most len/16, rounded down to a
	// multiple of sampleLen (at least 2*sampleLen here).
	stride := min(sampleStride, (len(data)/(sampleMin/sampleLen))&^(sampleLen-1))
	var h [256]uint32
	n := 0
	for off := 0; off < len(data); off += stride {
		s := data[off:min(off+sampleLen, len(data))]
		for _, c := range s {
			h[c]++
		}
		n += len(s)
	}
	return histBits(&h, n) >= incompressibleBits
}

func entropyBits(b []byte) float64 {
	var h [256]uint32
	for _, c := range b {
		h[c]++
	}
	return histBits(&h, len(b))
}

// histBits is the Shannon entropy, in bits per byte, of n bytes counted in h.
func histBits(h *[256]uint32, n int) float64 {
	if n == 0 {
		return 0
	}
	var e float64
	for _, c := range h {
		if c > 0 {
			p := float64(c) / float64(n)
			e -= p * math.Log2(p)
		}
	}
	return e
}

var (
	decOnce sync.Once
	dec     *zstd.Decoder
	decErr  error
)

func decoder() (*zstd.Decoder, error) {
	decOnce.Do(func() {
		dec, decErr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(0), // one per core for DecodeAll
			zstd.WithDecoderMaxMemory(MaxChunkSize),
			zstd.WithDecoderMaxWindow(MaxChunkSize),
			zstd.WithDecodeAllCapLimit(true), // never past cap(dst): the chunk's length
		)
	})
	return dec, decErr
}

// Decode returns the bytes of chunk c from its stored form: stored itself for chunk.CodecNone,
// the zstd frame decoded for chunk.CodecZstd. The output is exactly c.Length bytes or an error
// wrapping chunk.ErrCorrupt; decoding never writes past c.Length bytes. It does not verify the
// CID (DecodeVerified does). A chunk of chunk.CodecZstdDict needs its manifest's dictionary
// (DecodeWith).
func Decode(c chunk.Chunk, stored []byte) ([]byte, error) { return DecodeWith(c, stored, nil) }

// DecodeWith is Decode with the dictionary of c's manifest (DictOf; nil if it has none). A
// frame must name exactly the dictionary its codec says: none for chunk.CodecZstd, d's ID for
// chunk.CodecZstdDict; any other frame is refused before it is decoded, so bytes made with
// another image's dictionary (or sent to confuse) never reach the decoder.
func DecodeWith(c chunk.Chunk, stored []byte, d *Dict) ([]byte, error) {
	if c.Length <= 0 || c.Length > MaxChunkSize {
		return nil, fmt.Errorf("chunk %s: length %d out of (0, %d]: %w", c.CID, c.Length, MaxChunkSize, chunk.ErrCorrupt)
	}
	switch c.Codec {
	case chunk.CodecNone:
		if int64(len(stored)) != c.Length {
			return nil, fmt.Errorf("chunk %s: %d raw bytes, want %d: %w", c.CID, len(stored), c.Length, chunk.ErrCorrupt)
		}
		return stored, nil
	case chunk.CodecZstd, chunk.CodecZstdDict:
		var want uint32
		if c.Codec == chunk.CodecZstdDict {
			if d == nil {
				return nil, fmt.Errorf("chunk %s: codec %s without its manifest's dictionary: %w", c.CID, c.Codec, chunk.ErrCorrupt)
			}
			want = d.id
		}
		got, err := frameDictID(stored)
		if err != nil {
			return nil, fmt.Errorf("chunk %s: zstd frame of %d bytes: header: %v: %w", c.CID, len(stored), err, chunk.ErrCorrupt)
		}
		if got != want {
			return nil, fmt.Errorf("chunk %s: zstd frame names dictionary %d, its codec %q wants %d: %w", c.CID, got, c.Codec, want, chunk.ErrCorrupt)
		}
		dec, err := decoder()
		if c.Codec == chunk.CodecZstdDict {
			dec, err = d.decoder()
		}
		if err != nil {
			return nil, fmt.Errorf("zstd decoder: %w", err)
		}
		out, err := dec.DecodeAll(stored, make([]byte, 0, c.Length))
		if err != nil {
			if errors.Is(err, zstd.ErrDecoderSizeExceeded) {
				err = fmt.Errorf("decodes to more than %d bytes", c.Length)
			}
			return nil, fmt.Errorf("chunk %s: zstd frame of %d bytes: %v: %w", c.CID, len(stored), err, chunk.ErrCorrupt)
		}
		if int64(len(out)) != c.Length {
			return nil, fmt.Errorf("chunk %s: zstd frame of %d bytes decodes to %d bytes, want %d: %w", c.CID, len(stored), len(out), c.Length, chunk.ErrCorrupt)
		}
		return out, nil
	}
	return nil, fmt.Errorf("chunk %s: unknown codec %q: %w", c.CID, c.Codec, chunk.ErrCorrupt)
}

// DecodeVerified decodes chunk c's stored bytes (Decode) and verifies them against c.CID.
func DecodeVerified(c chunk.Chunk, stored []byte) (chunk.Verified, error) {
	return DecodeVerifiedWith(c, stored, nil)
}

// DecodeVerifiedWith is DecodeVerified with the dictionary of c's manifest (DecodeWith).
func DecodeVerifiedWith(c chunk.Chunk, stored []byte, d *Dict) (chunk.Verified, error) {
	data, err := DecodeWith(c, stored, d)
	if err != nil {
		return chunk.Verified{}, err
	}
	return chunk.Verify(c.CID, data)
}
