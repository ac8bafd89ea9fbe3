package p2p

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

// blobStore is a chunk store that also keeps mirror blobs, as the daemon's nodeLocal; rot
// flips a byte of what it hands out to play a disk that went bad.
type blobStore struct {
	*memStore
	mu    sync.Mutex
	blobs map[digest.Digest][]byte
	rot   bool
}

var _ LocalBlobs = (*blobStore)(nil)

func (s *blobStore) OpenBlob(d digest.Digest) (io.ReadCloser, int64, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.blobs[d]
	if !ok {
		return nil, 0, false, nil
	}
	if s.rot {
		b = bytes.Clone(b)
		b[len(b)-1] ^= 1
	}
	return io.NopCloser(bytes.NewReader(b)), int64(len(b)), true, nil
}

func startBlobNode(t *testing.T, peers ...*Node) (*Node, *blobStore) {
	t.Helper()
	st := &blobStore{memStore: newMemStore(), blobs: map[digest.Digest][]byte{}}
	cfg := testConfig()
	cfg.StaticPeers = append(cfg.StaticPeers, peerAddrs(peers)...)
	n := runNode(t, cfg, st, st.memStore)
	return n, st
}

func TestBlobRequestBytes(t *testing.T) {
	d := digest.Digest("sha256:" + strings.Repeat("0", 64))
	b, err := AppendBlobRequest(nil, BlobRequest{Digest: d, Max: 300})
	if err != nil {
		t.Fatal(err)
	}
	// frame length 74, name length 71, the digest, max 300 = 0xac 0x02.
	want := "4a" + "47" + hex.EncodeToString([]byte(d)) + "ac02"
	if got := hex.EncodeToString(b); got != want {
		t.Fatalf("encoding %s, want %s", got, want)
	}
	got, err := ReadBlobRequest(bufio.NewReader(bytes.NewReader(b)))
	if err != nil || got != (BlobRequest{Digest: d, Max: 300}) {
		t.Fatalf("decode: %+v, %v", got, err)
	}
	for _, raw := range []string{
		"0401" + "61" + "01",                          // not a digest
		"4a47" + hex.EncodeToString([]byte(d)) + "00", // zero max... wrong frame length too
		"ffff03",
	} {
		b, _ := hex.DecodeString(raw)
		if _, err := ReadBlobRequest(bufio.NewReader(bytes.NewReader(b))); err == nil {
			t.Errorf("decode %s: accepted", raw)
		}
	}
}

// FuzzBlobRequest: any frame decodes to a valid request or an error, and what decodes encodes
// back to the same bytes.
func FuzzBlobRequest(f *testing.F) {
	b, _ := AppendBlobRequest(nil, BlobRequest{Digest: digest.FromString("x"), Max: 1 << 30})
	f.Add(b[1:])
	f.Add([]byte{0x01, 0x61, 0x01})
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := parseBlobRequest(body)
		if err != nil {
			return
		}
		enc, err := AppendBlobRequest(nil, req)
		if err != nil {
			t.Fatalf("%+v decoded but does not encode: %v", req, err)
		}
		back, err := ReadBlobRequest(bufio.NewReader(bytes.NewReader(enc)))
		if err != nil || back != req {
			t.Fatalf("round trip %+v: %+v, %v", req, back, err)
		}
	})
}

// TestFetchBlobFromPeer: real libp2p hosts; a multi-megabyte blob streams from the one holder,
// a peer without it is passed over, and one whose copy rotted breaks off without sending its
// last bytes (so the asker gets no full wrong blob) and is not struck for its stale disk.
func TestFetchBlobFromPeer(t *testing.T) {
	blob := make([]byte, 5<<20+123)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range blob {
		blob[i] = byte(rng.Uint32())
	}
	d := digest.FromBytes(blob)
	holder, hs := startBlobNode(t)
	hs.blobs[d] = blob
	empty, _ := startBlobNode(t)
	asker, _ := startBlobNode(t, empty, holder)
	waitFor(t, 10*time.Second, "connected", connectedTo(asker, holder.ID(), empty.ID()))

	var buf bytes.Buffer
	from, err := asker.FetchBlob(t.Context(), d, 1<<30, &buf)
	if err != nil || from != holder.ID().String() || !bytes.Equal(buf.Bytes(), blob) {
		t.Fatalf("fetch: from %s, %d bytes, %v", from, buf.Len(), err)
	}
	// Too small a max: the holder refuses rather than send what would be thrown away.
	buf.Reset()
	if _, err := asker.FetchBlob(t.Context(), d, 1<<20, &buf); err == nil || buf.Len() != 0 {
		t.Fatalf("fetch with a 1 MiB max: %d bytes, %v", buf.Len(), err)
	}
	if _, err := asker.FetchBlob(t.Context(), digest.FromString("absent"), 1<<20, &buf); !errors.Is(err, ErrObjectNotFound) {
		t.Fatalf("absent blob: %v", err)
	}
	hs.mu.Lock()
	hs.rot = true
	hs.mu.Unlock()
	buf.Reset()
	_, err = asker.FetchBlob(t.Context(), d, 1<<30, &buf)
	if err == nil || int64(buf.Len()) >= int64(len(blob)) {
		t.Fatalf("rotted copy: %d of %d bytes reached the asker, err %v", buf.Len(), len(blob), err)
	}
	if !errors.Is(err, errBlobBrokenOff) {
		t.Fatalf("rotted copy: %v, want a broken-off stream", err)
	}
	for _, p := range asker.Peers() {
		if p.ID == holder.ID() && (p.Corrupt != 0 || p.Banned) {
			t.Fatalf("holder with a rotted copy struck: %+v", p)
		}
	}
}

// TestFetchBlobLiarStruck: a peer that answers a blob request with other bytes of the right
// length is struck (the error wraps chunk.ErrCorrupt), and banned after BanAfter such answers.
func TestFetchBlobLiarStruck(t *testing.T) {
	liar, _ := startBlobNode(t)
	blob := bytes.Repeat([]byte("shoal"), 100000)
	d := digest.FromBytes(blob)
	bad := bytes.Clone(blob)
	bad[7] ^= 1
	// A lying host skips the holder's own check: a raw handler sends the wrong bytes.
	liar.host.SetStreamHandler(BlobProtocol, func(s network.Stream) {
		if _, err := ReadBlobRequest(bufio.NewReader(s)); err != nil {
			_ = s.Reset()
			return
		}
		_, _ = s.Write(AppendResponseHeader(nil, StatusOK, len(bad), ""))
		_, _ = s.Write(bad)
		_ = s.Close()
	})
	asker, _ := startBlobNode(t, liar)
	waitFor(t, 10*time.Second, "connected", connectedTo(asker, liar.ID()))
	cfg := testConfig()
	for i := range cfg.BanAfter {
		var buf bytes.Buffer
		_, err := asker.FetchBlob(t.Context(), d, 1<<30, &buf)
		if i == 0 && !errors.Is(err, chunk.ErrCorrupt) {
			t.Fatalf("wrong bytes: %v, want chunk.ErrCorrupt", err)
		}
	}
	waitFor(t, 5*time.Second, "liar banned", func() bool {
		for _, p := range asker.Peers() {
			if p.ID == liar.ID() {
				return p.Banned && p.Corrupt >= int64(cfg.BanAfter)
			}
		}
		return false
	})
}

// TestFetchBlobPrivate: a mirror blob marked private is refused, StatusDenied with the
// repository named, to a peer without a grant (a real node pair; the grant itself is exercised
// in TestPrivateRepositoryRights), and counted; unmarked again, it is served.
func TestFetchBlobPrivate(t *testing.T) {
	blob := []byte("layer of a private image")
	d := digest.FromBytes(blob)
	holder, hs := startBlobNode(t)
	hs.blobs[d] = blob
	asker, _ := startBlobNode(t, holder)
	waitFor(t, 10*time.Second, "connected", connectedTo(asker, holder.ID()))
	holder.SetPrivate(d, "reg.example/team/private")
	var buf bytes.Buffer
	_, err := asker.FetchBlob(t.Context(), d, 1<<20, &buf)
	if err == nil || buf.Len() != 0 || !strings.Contains(err.Error(), "team/private") {
		t.Fatalf("private blob without rights: %d bytes, %v; want denied naming the repository", buf.Len(), err)
	}
	if s := holder.RightsStats(); s.Denied != 1 {
		t.Errorf("denials counted: %+v, want 1", s)
	}
	holder.SetPrivate(d)
	if _, err := asker.FetchBlob(t.Context(), d, 1<<20, &buf); err != nil || !bytes.Equal(buf.Bytes(), blob) {
		t.Fatalf("public again: %q, %v", buf.Bytes(), err)
	}
}
