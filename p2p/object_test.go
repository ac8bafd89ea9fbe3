package p2p

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

// objStore is a chunk store with kept objects, as the daemon's (which adds its manifests and
// bootstraps to the chunk store it gives the node).
type objStore struct {
	*memStore
	mu   sync.Mutex
	objs map[digest.Digest][]byte
	tags map[string]digest.Digest
}

var _ LocalObjects = (*objStore)(nil)

func (s *objStore) Object(d digest.Digest) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.objs[d]
	return b, ok, nil
}

func (s *objStore) Tag(ref string) (digest.Digest, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.tags[ref]
	return d, ok
}

func (s *objStore) put(b []byte) digest.Digest {
	d := digest.FromBytes(b)
	s.mu.Lock()
	s.objs[d] = b
	s.mu.Unlock()
	return d
}

// startObjNode runs a node whose store keeps objects, connected to peers.
func startObjNode(t testing.TB, mutate func(*Config), peers ...*Node) (*Node, *objStore) {
	t.Helper()
	st := &objStore{memStore: newMemStore(), objs: map[digest.Digest][]byte{}, tags: map[string]digest.Digest{}}
	cfg := testConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	cfg.StaticPeers = append(cfg.StaticPeers, peerAddrs(peers)...)
	n := runNode(t, cfg, st, st.memStore)
	return n, st
}

func connectedTo(n *Node, ps ...peer.ID) func() bool {
	return func() bool {
		for _, p := range ps {
			found := false
			for _, st := range n.Peers() {
				found = found || st.ID == p && st.Connected
			}
			if !found {
				return false
			}
		}
		return true
	}
}

func TestObjectRequestBytes(t *testing.T) {
	b, err := AppendObjectRequest(nil, ObjectRequest{Kind: ObjectByDigest, Name: "sha256:ab", Max: 300})
	if err != nil {
		t.Fatal(err)
	}
	// frame length 13, kind 1, name length 9, "sha256:ab", max 300 = 0xac 0x02.
	want := "0d" + "01" + "09" + hex.EncodeToString([]byte("sha256:ab")) + "ac02"
	if got := hex.EncodeToString(b); got != want {
		t.Fatalf("encoding %s, want %s", got, want)
	}
	got, err := ReadObjectRequest(bufio.NewReader(bytes.NewReader(b)))
	if err != nil || got != (ObjectRequest{Kind: ObjectByDigest, Name: "sha256:ab", Max: 300}) {
		t.Fatalf("decode: %+v, %v", got, err)
	}
	for _, bad := range []ObjectRequest{
		{Kind: 4, Name: "x", Max: 1}, // 1-3 are ByDigest, Tag, Through
		{Kind: ObjectTag, Name: "", Max: 1},
		{Kind: ObjectTag, Name: strings.Repeat("a", maxObjectName+1), Max: 1},
		{Kind: ObjectTag, Name: "a", Max: 0},
		{Kind: ObjectTag, Name: "a", Max: MaxObjectSize + 1},
	} {
		if _, err := AppendObjectRequest(nil, bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("encode %+v: %v, want ErrMalformed", bad, err)
		}
	}
	// Frames that break a rule: unknown kind, trailing bytes, zero max, an oversized frame.
	for _, raw := range []string{"0404" + "0161" + "01", "0501" + "0161" + "0100", "0401" + "0161" + "00", "ffff03"} {
		b, _ := hex.DecodeString(raw)
		if _, err := ReadObjectRequest(bufio.NewReader(bytes.NewReader(b))); !errors.Is(err, ErrMalformed) {
			t.Errorf("decode %s: %v, want ErrMalformed", raw, err)
		}
	}
}

func TestObjectResponseRejects(t *testing.T) {
	ok := append(AppendResponseHeader(nil, StatusOK, 5, ""), "hello"...)
	if st, data, _, err := ReadObjectResponse(bufio.NewReader(bytes.NewReader(ok)), 5); err != nil || st != StatusOK || string(data) != "hello" {
		t.Fatalf("good response: %v %q %v", st, data, err)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		max  int64
		want error
	}{
		{"over the asker's max", ok, 4, ErrMalformed},
		{"over MaxObjectSize", AppendResponseHeader(nil, StatusOK, MaxObjectSize+1, ""), MaxObjectSize, ErrMalformed},
		{"truncated", ok[:len(ok)-2], 5, io.ErrUnexpectedEOF},
		{"empty", nil, 5, io.ErrUnexpectedEOF},
		{"long message", append([]byte{byte(StatusError)}, 0x81, 0x02), 5, ErrMalformed},
	} {
		if _, _, _, err := ReadObjectResponse(bufio.NewReader(bytes.NewReader(tc.b)), tc.max); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// A peer announcing 64 MiB and sending 10 bytes costs about 10 bytes, not 64 MiB.
	lie := append(AppendResponseHeader(nil, StatusOK, MaxObjectSize, ""), "0123456789"...)
	allocs := testing.AllocsPerRun(1, func() {
		_, _, _, _ = ReadObjectResponse(bufio.NewReaderSize(bytes.NewReader(lie), 16), MaxObjectSize)
	})
	if allocs > 20 {
		t.Errorf("%v allocations for a lying header", allocs)
	}
}

func FuzzObjectRequest(f *testing.F) {
	b, _ := AppendObjectRequest(nil, ObjectRequest{Kind: ObjectByDigest, Name: digest.FromString("x").String(), Max: 1 << 20})
	f.Add(b)
	b, _ = AppendObjectRequest(nil, ObjectRequest{Kind: ObjectTag, Name: "127.0.0.1:5000/img:latest", Max: 100})
	f.Add(b)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, in []byte) {
		req, err := ReadObjectRequest(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		// What decodes re-encodes to the same frame.
		out, err := AppendObjectRequest(nil, req)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", req, err)
		}
		if !bytes.Equal(out, in[:len(out)]) {
			t.Fatalf("re-encoding %x differs from %x", out, in)
		}
	})
}

func FuzzObjectResponse(f *testing.F) {
	f.Add(append(AppendResponseHeader(nil, StatusOK, 3, ""), "abc"...), int64(3))
	f.Add(AppendResponseHeader(nil, StatusNotFound, 0, "no"), int64(10))
	f.Add(AppendResponseHeader(nil, StatusOK, MaxObjectSize, ""), int64(MaxObjectSize))
	f.Fuzz(func(t *testing.T, in []byte, max int64) {
		st, data, msg, err := ReadObjectResponse(bufio.NewReader(bytes.NewReader(in)), max)
		if err != nil {
			return
		}
		if st == StatusOK && (int64(len(data)) > max || len(data) > len(in)) {
			t.Fatalf("%d bytes of data from %d bytes of input, max %d", len(data), len(in), max)
		}
		if st != StatusOK && (data != nil || len(msg) > maxMsgLen) {
			t.Fatalf("status %v with data or a long message", st)
		}
	})
}

// TestFetchObject: a host gets an object from the peer that keeps it, verified, whichever of its
// peers that is; an object no peer keeps is ErrObjectNotFound; tags are answered from what the
// peers resolved.
func TestFetchObject(t *testing.T) {
	a, as := startObjNode(t, nil)
	b, _ := startObjNode(t, nil, a)
	c, _ := startObjNode(t, nil, a, b)
	waitFor(t, 10*time.Second, "the mesh", connectedTo(c, a.ID(), b.ID()))
	obj := bytes.Repeat([]byte("manifest "), 10000)
	d := as.put(obj)
	as.mu.Lock()
	as.tags["127.0.0.1:5000/img:latest"] = d
	as.mu.Unlock()

	ctx := t.Context()
	got, err := c.FetchObject(ctx, d, 1<<20)
	if err != nil || !bytes.Equal(got, obj) {
		t.Fatalf("FetchObject: %d bytes, %v", len(got), err)
	}
	if _, err := c.FetchObject(ctx, digest.FromString("nobody has this"), 1<<20); !errors.Is(err, ErrObjectNotFound) {
		t.Fatalf("unknown object: %v, want ErrObjectNotFound", err)
	}
	if _, err := c.FetchObject(ctx, d, 100); err == nil {
		t.Fatal("an object over the asker's limit was returned")
	}
	td, from, err := c.ResolveTag(ctx, "127.0.0.1:5000/img:latest")
	if err != nil || td != d || from != a.ID() {
		t.Fatalf("ResolveTag = %s from %s, %v; want %s from %s", td, from, err, d, a.ID())
	}
	if _, _, err := c.ResolveTag(ctx, "127.0.0.1:5000/img:other"); !errors.Is(err, ErrObjectNotFound) {
		t.Fatalf("unknown tag: %v", err)
	}
	// The refusal for size was no strike: a is still asked.
	for _, st := range c.Peers() {
		if st.Banned || st.Corrupt > 0 {
			t.Fatalf("peer %s penalised by honest answers: %+v", st.ID, st)
		}
	}
}

// TestHostileObjectPeers: a peer that answers object requests with other bytes, more bytes
// than asked for, a truncated answer, or nothing at all never gets its answer accepted; it is
// banned after BanAfter bad answers (StallBanAfter stalls), as for chunks, and FetchObject
// returns the honest peer's copy throughout.
func TestHostileObjectPeers(t *testing.T) {
	for _, kind := range []string{"corrupt", "oversize", "truncated", "stall"} {
		t.Run(kind, func(t *testing.T) {
			honest, hs := startObjNode(t, nil)
			victim, _ := startObjNode(t, func(c *Config) {
				c.RequestTimeout = time.Second
				c.StallBanAfter = 2
			}, honest)
			waitFor(t, 10*time.Second, "the honest peer", connectedTo(victim, honest.ID()))
			obj := bytes.Repeat([]byte(kind), 5000)
			d := hs.put(obj)

			h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = h.Close() })
			h.SetStreamHandler(ObjectProtocol, func(s network.Stream) {
				req, err := ReadObjectRequest(bufio.NewReader(s))
				if err != nil {
					_ = s.Reset()
					return
				}
				bad := append([]byte(nil), obj...)
				switch kind {
				case "corrupt":
					bad[100] ^= 1
				case "oversize":
					bad = make([]byte, req.Max+1)
				case "truncated":
					_, _ = s.Write(AppendResponseHeader(nil, StatusOK, len(bad), ""))
					_, _ = s.Write(bad[:len(bad)/2])
					_ = s.Close()
					return
				case "stall":
					_, _ = io.Copy(io.Discard, s)
					<-t.Context().Done()
					return
				}
				_, _ = s.Write(AppendResponseHeader(nil, StatusOK, len(bad), ""))
				_, _ = s.Write(bad)
				_ = s.Close()
			})
			if err := h.Connect(t.Context(), peer.AddrInfo{ID: victim.ID(), Addrs: victim.Addrs()}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "the hostile peer", connectedTo(victim, h.ID()))

			fetch := func(what string) {
				t.Helper()
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				defer cancel()
				got, err := victim.FetchObject(ctx, d, 1<<20)
				if err != nil || !bytes.Equal(got, obj) {
					t.Fatalf("%s: %d bytes, %v; want the honest peer's %d bytes", what, len(got), err, len(obj))
				}
			}
			fetch("with the hostile peer connected")
			// Ask the hostile peer alone, as FetchObject would, until the ban: with the honest
			// peer in the same round, the honest answer may end the round first.
			verify := func(b []byte) error {
				if digest.FromBytes(b) != d {
					return fmt.Errorf("wrong bytes: %w", chunk.ErrCorrupt)
				}
				return nil
			}
			limit := victim.cfg.BanAfter
			if kind == "stall" {
				limit = victim.cfg.StallBanAfter
			}
			for i := range limit {
				_, err := victim.objectRequest(t.Context(), victim.host, h.ID(), ObjectRequest{Kind: ObjectByDigest, Name: d.String(), Max: 1 << 20}, verify)
				if err == nil {
					t.Fatalf("answer %d of the %s peer was accepted", i, kind)
				}
			}
			waitFor(t, 10*time.Second, "the ban", func() bool {
				for _, st := range victim.Peers() {
					if st.ID == h.ID() {
						return st.Banned
					}
				}
				return false
			})
			fetch("after the ban")
			for _, st := range victim.Peers() {
				if st.ID == honest.ID() && (st.Banned || st.Corrupt > 0) {
					t.Fatalf("the honest peer was penalised: %+v", st)
				}
			}
		})
	}
}
