package zchunk

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/shoal-p2p/shoal/chunk"
)

// Dictionary training. A blob of many small chunks (a source tree: 15,000 files of 20 KiB on
// average) loses, chunk by chunk, the context a whole-layer zstd stream carries from file to file;
// a dictionary trained on a sample of the blob's chunks gives each frame that context back.
const (
	// DefaultDictSize is the dictionary size the CLI asks Train for. Over the Go distribution's
	// tree (72.6 MiB of chunks stored at level 1 without one) 64 KiB saved 3.2 MiB, 128 KiB 3.3,
	// 256 KiB and 1 MiB 3.3-3.4: past 128 KiB the dictionary, which every host fetches in the
	// chunk manifest, costs about what it saves.
	DefaultDictSize = 128 << 10
	// MinDictSize is the smallest dictionary Train makes; less sample than this is not worth one.
	MinDictSize = 4 << 10
	// DictSampleBytes is how much sample Train wants: training costs about 1 s per MiB of
	// sample on one core, and more than 16 times the dictionary's size gains little.
	DictSampleBytes = 4 << 20
	// DictSamplePiece caps one sample: the start of a chunk holds what its neighbours share
	// (headers, imports, licence texts).
	DictSamplePiece = 16 << 10
)

// ErrNoDict is returned by Train when the samples do not make a dictionary worth storing.
var ErrNoDict = errors.New("no dictionary: too little compressible sample, or nothing in it repeats")

// Dict is a blob's zstd dictionary (chunk.Manifest.Dict), parsed, with the decoder that uses it.
// It is safe for concurrent use.
type Dict struct {
	raw []byte
	id  uint32

	once   sync.Once
	dec    *zstd.Decoder
	decErr error
}

// ParseDict checks a dictionary in zstd's format (as chunk.Manifest.Dict holds it): at most
// chunk.MaxDictSize bytes, a non-zero ID, tables zstd can load. Errors wrap chunk.ErrCorrupt.
func ParseDict(raw []byte) (*Dict, error) {
	if len(raw) == 0 || len(raw) > chunk.MaxDictSize {
		return nil, fmt.Errorf("zstd dictionary of %d bytes: want 1 to %d: %w", len(raw), chunk.MaxDictSize, chunk.ErrCorrupt)
	}
	d, err := zstd.InspectDictionary(raw)
	if err != nil {
		return nil, fmt.Errorf("zstd dictionary of %d bytes: %v: %w", len(raw), err, chunk.ErrCorrupt)
	}
	if d.ID() == 0 {
		return nil, fmt.Errorf("zstd dictionary of %d bytes: ID 0 (means no dictionary): %w", len(raw), chunk.ErrCorrupt)
	}
	return &Dict{raw: raw, id: d.ID()}, nil
}

// ID is the dictionary ID that frames made with it carry.
func (d *Dict) ID() uint32 { return d.id }

// Bytes is the dictionary as stored (chunk.Manifest.Dict). Do not modify.
func (d *Dict) Bytes() []byte { return d.raw }

func (d *Dict) decoder() (*zstd.Decoder, error) {
	d.once.Do(func() {
		d.dec, d.decErr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(min(runtime.GOMAXPROCS(0), 4)),
			zstd.WithDecoderMaxMemory(MaxChunkSize),
			zstd.WithDecoderMaxWindow(MaxChunkSize),
			zstd.WithDecodeAllCapLimit(true),
			zstd.WithDecoderDicts(d.raw),
		)
	})
	return d.dec, d.decErr
}

// dictCache holds the parsed dictionaries of the manifests DictOf was asked about, by the
// sha256 of their bytes, so each blob's dictionary is parsed and gets a decoder once. Bounded:
// a decoder holds some memory per core.
var dictCache = struct {
	sync.Mutex
	m map[[32]byte]*Dict
}{m: map[[32]byte]*Dict{}}

const dictCacheMax = 16

// DictOf returns the parsed dictionary of a manifest, nil if it has none. Manifests with the same
// dictionary bytes share one Dict.
func DictOf(m *chunk.Manifest) (*Dict, error) {
	if len(m.Dict) == 0 {
		return nil, nil
	}
	key := sha256.Sum256(m.Dict)
	dictCache.Lock()
	d := dictCache.m[key]
	dictCache.Unlock()
	if d != nil {
		return d, nil
	}
	d, err := ParseDict(m.Dict)
	if err != nil {
		return nil, fmt.Errorf("chunk manifest for %s: %w", m.Blob, err)
	}
	dictCache.Lock()
	defer dictCache.Unlock()
	if old := dictCache.m[key]; old != nil {
		return old, nil
	}
	if len(dictCache.m) >= dictCacheMax {
		for k := range dictCache.m { // any one: the rest keep working, an evicted one is parsed again
			delete(dictCache.m, k)
			break
		}
	}
	dictCache.m[key] = d
	return d, nil
}

// Train builds a dictionary of about size bytes (at most chunk.MaxDictSize) for the encoder's
// level from samples (pieces of the blob's chunks; incompressible ones are skipped). The ID is
// derived from the samples, so the same samples give the same dictionary and an image build
// stays reproducible. It returns ErrNoDict when the compressible sample is under 4 times size or
// MinDictSize.
func Train(samples [][]byte, size, level int) (*Dict, error) {
	if size < MinDictSize || size > chunk.MaxDictSize {
		return nil, fmt.Errorf("dictionary size %d: want %d to %d", size, MinDictSize, chunk.MaxDictSize)
	}
	h := sha256.New()
	var use [][]byte
	total := 0
	for _, s := range samples {
		if len(s) < 64 || Incompressible(s) {
			continue
		}
		use = append(use, s)
		total += len(s)
		h.Write(s)
	}
	if total < 4*size {
		return nil, ErrNoDict
	}
	sum := h.Sum(nil)
	// IDs under 32768 are reserved by zstd's format for registered dictionaries.
	id := 32768 + binary.BigEndian.Uint32(sum)%(1<<31-32768)
	raw, err := buildZstdDict(use, size, id, zstd.EncoderLevelFromZstd(level))
	if err != nil {
		return nil, fmt.Errorf("training a zstd dictionary on %d samples (%d bytes): %w", len(use), total, err)
	}
	return ParseDict(raw)
}

// WithDict returns an encoder at e's level whose frames use d: Encode then says
// chunk.CodecZstdDict for the frames it makes.
func (e *Encoder) WithDict(d *Dict) (*Encoder, error) {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(e.level)),
		zstd.WithEncoderCRC(false),
		zstd.WithSingleSegment(true),
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
		zstd.WithEncoderDict(d.raw),
	)
	if err != nil {
		return nil, fmt.Errorf("zstd level %d with dictionary %d: %w", e.level, d.id, err)
	}
	return &Encoder{level: e.level, enc: enc, dict: d}, nil
}

// Dict is the encoder's dictionary, nil if it has none.
func (e *Encoder) Dict() *Dict { return e.dict }

// frameDictID reads the dictionary ID a zstd frame's header names (0: none).
func frameDictID(stored []byte) (uint32, error) {
	var h zstd.Header
	if err := h.Decode(stored); err != nil {
		return 0, err
	}
	return h.DictionaryID, nil
}
