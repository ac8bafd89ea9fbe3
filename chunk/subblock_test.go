package chunk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func subManifest(t testing.TB, blob []byte, chunk, sub int64) *Manifest {
	t.Helper()
	m := testManifest(t, blob, chunk)
	must(t, m.SetSubHashes(bytes.NewReader(blob), sub))
	must(t, m.Validate())
	return m
}

func TestSubHashesManifest(t *testing.T) {
	blob := randBytes(t, 5*16*BlockSize+3*BlockSize) // 5 full chunks of 64 KiB and a 12 KiB one
	m := subManifest(t, blob, 16*BlockSize, 4*BlockSize)
	if m.SubBlockSize != 4*BlockSize || len(m.Chunks) != 6 {
		t.Fatalf("sub-block size %d, %d chunks", m.SubBlockSize, len(m.Chunks))
	}
	for i, c := range m.Chunks {
		n := NumSubBlocks(c.Length, m.SubBlockSize)
		if n == 1 {
			if c.SubHashes != "" {
				t.Fatalf("chunk %d of one sub-block has digests", i)
			}
			continue
		}
		if len(c.SubHashes) != n*SubHashSize {
			t.Fatalf("chunk %d: %d bytes of digests for %d sub-blocks", i, len(c.SubHashes), n)
		}
		data := blob[c.Offset:c.End()]
		for j := range n {
			r := SubBlock(c.Length, m.SubBlockSize, j)
			must(t, VerifySubBlock(c, m.SubBlockSize, j, data[r.Offset:r.End()]))
		}
		// A wrong byte, a wrong index, a wrong length: all corrupt.
		bad := bytes.Clone(data[:m.SubBlockSize])
		bad[7] ^= 1
		for _, err := range []error{
			VerifySubBlock(c, m.SubBlockSize, 0, bad),
			VerifySubBlock(c, m.SubBlockSize, 1, data[:m.SubBlockSize]),
			VerifySubBlock(c, m.SubBlockSize, n, data[:m.SubBlockSize]),
			VerifySubBlock(c, m.SubBlockSize, 0, data[:m.SubBlockSize-1]),
		} {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("chunk %d: %v, want ErrCorrupt", i, err)
			}
		}
	}
	// A chunk of one sub-block needs no digests: its CID is that sub-block's hash.
	one := subManifest(t, blob[:4*BlockSize], 4*BlockSize, 4*BlockSize)
	if one.Chunks[0].SubHashes != "" {
		t.Fatal("a one-sub-block chunk got digests")
	}

	// JSON round trip keeps them; a manifest without them encodes as before.
	b, err := json.Marshal(m)
	must(t, err)
	back, err := ParseManifest(b)
	must(t, err)
	for i := range m.Chunks {
		if back.Chunks[i] != m.Chunks[i] {
			t.Fatalf("chunk %d after JSON: %+v, want %+v", i, back.Chunks[i], m.Chunks[i])
		}
	}
	plain := testManifest(t, blob, 16*BlockSize)
	pb, err := json.Marshal(plain)
	must(t, err)
	if strings.Contains(string(pb), "subs") || strings.Contains(string(pb), "subBlockSize") {
		t.Fatalf("a manifest without sub-blocks mentions them: %s", pb)
	}

	// Validation: digests of the wrong count, digests without a size, a bad size.
	for name, mod := range map[string]func(*Manifest){
		"short digests":   func(m *Manifest) { m.Chunks[0].SubHashes = m.Chunks[0].SubHashes[:SubHashSize] },
		"no size":         func(m *Manifest) { m.SubBlockSize = 0 },
		"odd size":        func(m *Manifest) { m.SubBlockSize = 1000 },
		"size past chunk": func(m *Manifest) { m.SubBlockSize = 2 * m.ChunkSize },
		"one sub-block":   func(m *Manifest) { m.Chunks[5].SubHashes = m.Chunks[0].SubHashes[:SubHashSize] },
	} {
		bad, err := ParseManifest(b)
		must(t, err)
		mod(bad)
		if err := bad.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestProgress(t *testing.T) {
	blob := randBytes(t, 16*BlockSize)
	m := subManifest(t, blob, 16*BlockSize, 4*BlockSize)
	c := m.Chunks[0]
	p := NewProgress(c, m.SubBlockSize, Range{Offset: 5 * BlockSize, Length: 4 * BlockSize})
	if first, n := p.Wanted(); first != 1 || n != 2 {
		t.Fatalf("wanted %d+%d, want 1+2", first, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	got := make([]byte, 4*BlockSize)
	var rerr error
	wg.Add(1)
	go func() { defer wg.Done(); rerr = p.ReadAt(ctx, got, 5*BlockSize) }()

	sub := func(i int) []byte { r := SubBlock(c.Length, m.SubBlockSize, i); return blob[r.Offset:r.End()] }
	// Wrong bytes are refused and never reach the reader.
	bad := bytes.Clone(sub(1))
	bad[0] ^= 0xff
	if err := p.PutSubBlock(1, bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("wrong sub-block: %v", err)
	}
	must(t, p.PutSubBlock(1, sub(1)))
	if ok, _, _ := p.TryRead(make([]byte, 4*BlockSize), 5*BlockSize); ok {
		t.Fatal("read answered with sub-block 2 missing")
	}
	must(t, p.PutSubBlock(2, sub(2)))
	must(t, p.PutSubBlock(2, sub(2))) // a hedge's copy
	wg.Wait()
	must(t, rerr)
	if !bytes.Equal(got, blob[5*BlockSize:9*BlockSize]) {
		t.Fatal("read got other bytes")
	}
	// Another range waits for the whole chunk.
	rest := make([]byte, BlockSize)
	done := make(chan error, 1)
	go func() { done <- p.ReadAt(ctx, rest, 15*BlockSize) }()
	select {
	case err := <-done:
		t.Fatalf("read of a missing sub-block returned: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	v, err := Verify(c.CID, blob)
	must(t, err)
	p.Finish(v)
	must(t, <-done)
	if !bytes.Equal(rest, blob[15*BlockSize:]) {
		t.Fatal("read after Finish got other bytes")
	}
	if _, _, err := p.TryRead(make([]byte, 2), c.Length-1); err == nil {
		t.Fatal("read past the chunk accepted")
	}

	// Fail reaches waiting readers; a Progress without digests takes no sub-block.
	q := NewProgress(testManifest(t, blob, 16*BlockSize).Chunks[0], 4*BlockSize, Range{Length: 10})
	if q.SubBlockSize() != 0 {
		t.Fatal("sub-blocks without digests")
	}
	if err := q.PutSubBlock(0, sub(0)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("sub-block of a chunk without digests: %v", err)
	}
	go func() { done <- q.ReadAt(ctx, rest, 0) }()
	boom := errors.New("boom")
	q.Fail(boom)
	if err := <-done; !errors.Is(err, boom) {
		t.Fatalf("read after Fail: %v", err)
	}
}

func FuzzParseManifestSubBlocks(f *testing.F) {
	blob := make([]byte, 9*BlockSize)
	for i := range blob {
		blob[i] = byte(i * 7)
	}
	m, _ := FixedManifest(bytes.NewReader(blob), digest.FromBytes(blob), int64(len(blob)), 4*BlockSize)
	_ = m.SetSubHashes(bytes.NewReader(blob), BlockSize)
	b, _ := json.Marshal(m)
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		for _, c := range m.Chunks {
			if c.SubHashes == "" {
				continue
			}
			// Whatever validates can be verified against without a panic.
			n := NumSubBlocks(c.Length, m.SubBlockSize)
			r := SubBlock(c.Length, m.SubBlockSize, n-1)
			_ = VerifySubBlock(c, m.SubBlockSize, n-1, make([]byte, r.Length))
			p := NewProgress(c, m.SubBlockSize, Range{Offset: r.Offset, Length: 1})
			_ = p.PutSubBlock(n-1, make([]byte, r.Length))
		}
	})
}
