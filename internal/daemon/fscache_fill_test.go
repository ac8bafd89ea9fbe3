package daemon

import (
	"fmt"
	"testing"

	"github.com/shoal-p2p/shoal/chunk"
)

func TestWriteGaps(t *testing.T) {
	const p = chunk.BlockSize
	// Chunks at [1p,3p) and [5p, 6p+100): the blob ends 100 bytes into page 6.
	m := &chunk.Manifest{BlobSize: 6*p + 100, Chunks: []chunk.Chunk{{Offset: p, Length: 2 * p}, {Offset: 5 * p, Length: p + 100}}}
	for _, tc := range []struct {
		off, n int64
		want   string // written ranges, in pages
	}{
		{0, 7 * p, "[0,1) [3,5)"},
		{p, 2 * p, ""},
		{2 * p, 2 * p, "[3,4)"},
		{6 * p, p, ""}, // the last page is the last chunk's (its tail is zero padding)
		{4 * p, 3 * p, "[4,5)"},
	} {
		got := ""
		err := writeGaps(m, tc.off, tc.n, func(b []byte, off int64) error {
			if off%p != 0 || len(b)%p != 0 {
				t.Errorf("unaligned write [%d,+%d)", off, len(b))
			}
			for _, x := range b {
				if x != 0 {
					t.Fatal("gap written with non-zero bytes")
				}
			}
			if got != "" {
				got += " "
			}
			got += fmt.Sprintf("[%d,%d)", off/p, (off+int64(len(b)))/p)
			return nil
		})
		if err != nil || got != tc.want {
			t.Errorf("writeGaps(%d, %d) wrote %q (%v), want %q", tc.off/p, tc.n/p, got, err, tc.want)
		}
	}
}
