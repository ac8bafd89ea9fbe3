package cachefiles

import (
	"bytes"
	"errors"
	"runtime"
	"testing"
)

// FuzzDecodeMsg feeds arbitrary bytes to the decoder: it must return a clear error or a message
// that re-encodes to the same bytes, never panic, and never allocate from a size in the input.
func FuzzDecodeMsg(f *testing.F) {
	for _, seed := range [][]byte{openWire, closeWire, readWire, openWire[:20], readWire[:31], nil} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMsg(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownOpcode) {
				t.Fatalf("error %v wraps no sentinel", err)
			}
			return
		}
		if len(m.VolumeKey)+len(m.CookieKey) > len(b) {
			t.Fatalf("keys of %d bytes from a %d-byte message", len(m.VolumeKey)+len(m.CookieKey), len(b))
		}
		enc, err := AppendMsg(nil, &m)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", m, err)
		}
		if !bytes.Equal(enc, b) {
			t.Fatalf("round trip:\n got % x\nwant % x", enc, b)
		}
	})
}

func TestDecodeDoesNotAllocateFromSizes(t *testing.T) {
	huge := cat(le32(1), le32(0), le32(32), le32(1), le32(0x7FFFFFFF), le32(0x7FFFFFFF), le32(3), le32(0))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 100 {
		_, _ = DecodeMsg(huge)
	}
	runtime.ReadMemStats(&after)
	// Only the error values: a few hundred bytes each, nothing proportional to the claimed sizes.
	if perCall := (after.TotalAlloc - before.TotalAlloc) / 100; perCall > 4096 {
		t.Fatalf("%d bytes allocated per decode of a message that claims 4 GiB of keys", perCall)
	}
}
