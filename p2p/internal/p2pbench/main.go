// Command p2pbench measures Shoal's peer-to-peer layer on one machine and prints a Markdown
// table: origin offload for N concurrent cold readers, time to complete against every host
// pulling from the origin, chunk latency from a peer, and peer-to-peer throughput against a plain
// TCP stream measured in the same run.
//
//	go run ./p2p/internal/p2pbench [-sizes 2,8,30] [-chunks 64] [-chunk-kib 256]
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/p2p"
)

type store struct {
	mu   sync.Mutex
	m    map[cid.Cid][]byte
	node *p2p.Node
}

func (s *store) HasCID(c cid.Cid) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[c]
	return ok, nil
}

func (s *store) ReadChunk(_ context.Context, c cid.Cid) (chunk.Verified, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.m[c]; ok {
		return chunk.Verify(c, b)
	}
	return chunk.Verified{}, errors.New("not found")
}

func (s *store) PutChunk(_ context.Context, blob digest.Digest, c chunk.Chunk, data chunk.Verified) error {
	s.mu.Lock()
	s.m[c.CID] = data.Bytes()
	s.mu.Unlock()
	return s.node.Announce(blob, c)
}

// origin is a registry: a fixed latency per request and an egress bandwidth shared by all hosts.
type origin struct {
	chunks  map[cid.Cid][]byte
	latency time.Duration
	bw      *rate.Limiter
	bytes   atomic.Int64
}

func (o *origin) fetch(ctx context.Context, c chunk.Chunk) ([]byte, error) {
	select {
	case <-time.After(o.latency):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	b := o.chunks[c.CID]
	for left := len(b); left > 0; left -= 64 << 10 {
		if err := o.bw.WaitN(ctx, min(left, 64<<10)); err != nil {
			return nil, err
		}
	}
	o.bytes.Add(int64(len(b)))
	return b, nil
}

func image(n int, size int64, seed uint64) (*chunk.Manifest, map[cid.Cid][]byte) {
	r := rand.New(rand.NewPCG(seed, 2))
	blob := make([]byte, int64(n)*size)
	for i := 0; i+8 <= len(blob); i += 8 {
		v := r.Uint64()
		for k := range 8 {
			blob[i+k] = byte(v >> (8 * k))
		}
	}
	m, err := chunk.FixedManifest(bytes.NewReader(blob), digest.FromBytes(blob), int64(len(blob)), size)
	if err != nil {
		panic(err)
	}
	chunks := map[cid.Cid][]byte{}
	for _, c := range m.Chunks {
		chunks[c.CID] = blob[c.Offset:c.End()]
	}
	return m, chunks
}

type node struct {
	*p2p.Node
	st *store
}

func cluster(ctx context.Context, size int) ([]*node, error) {
	var nodes []*node
	var addrs []string
	for range size {
		cfg := p2p.DefaultConfig()
		cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
		cfg.MDNS, cfg.DHT = false, false
		cfg.StaticPeers = slices.Clone(addrs)
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		st := &store{m: map[cid.Cid][]byte{}}
		n, err := p2p.New(cfg, st)
		if err != nil {
			return nil, err
		}
		st.node = n
		go func() { _ = n.Run(ctx) }()
		<-n.Ready()
		nodes = append(nodes, &node{n, st})
		addrs = append(addrs, n.Addrs()[0].String())
	}
	return nodes, nil
}

func closeAll(nodes []*node) {
	for _, n := range nodes {
		_ = n.Close()
	}
}

// read fetches every chunk of m on n with workers in parallel; direct skips p2p entirely.
func read(ctx context.Context, n *node, m *chunk.Manifest, o *origin, workers int, direct bool, lat *[]time.Duration, mu *sync.Mutex) error {
	next := make(chan chunk.Chunk)
	go func() {
		defer close(next)
		for _, c := range m.Chunks {
			next <- c
		}
	}()
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range next {
				if ok, _ := n.st.HasCID(c.CID); ok {
					continue
				}
				start := time.Now()
				var data chunk.Verified
				var err error
				if direct {
					var raw []byte
					if raw, err = o.fetch(ctx, c); err == nil {
						data, err = chunk.Verify(c.CID, raw)
					}
				} else {
					// Fetch verifies: the bytes it returns need no hash of their own.
					data, _, err = n.Fetch(ctx, m.Blob, c, func(ctx context.Context) ([]byte, error) { return o.fetch(ctx, c) })
				}
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				if lat != nil {
					mu.Lock()
					*lat = append(*lat, time.Since(start))
					mu.Unlock()
				}
				if !direct {
					_ = n.st.PutChunk(ctx, m.Blob, c, data)
				}
			}
		}()
	}
	wg.Wait()
	if e, _ := firstErr.Load().(error); e != nil {
		return e
	}
	return nil
}

type offload struct {
	size          int
	ratio         float64
	p2p, naive    time.Duration
	naiveRatio    float64
	originBytesMB float64
}

func coldRead(ctx context.Context, size, chunks int, chunkSize int64, originLatency time.Duration, originBW int) (offload, error) {
	m, data := image(chunks, chunkSize, uint64(size))
	run := func(direct bool) (time.Duration, int64, error) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		o := &origin{chunks: data, latency: originLatency, bw: rate.NewLimiter(rate.Limit(originBW), 64<<10)}
		nodes, err := cluster(ctx, size)
		if err != nil {
			return 0, 0, err
		}
		defer closeAll(nodes)
		for _, n := range nodes {
			if err := n.RegisterBlob(m, o.fetch); err != nil {
				return 0, 0, err
			}
		}
		deadline := time.Now().Add(time.Minute)
		for _, n := range nodes {
			for n.SwarmSize(m.Blob) != size-1 {
				if time.Now().After(deadline) {
					return 0, 0, fmt.Errorf("swarm of %d did not form", size)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		start := time.Now()
		var wg sync.WaitGroup
		errs := make([]error, size)
		for i, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = read(ctx, n, m, o, 8, direct, nil, nil)
			}()
		}
		wg.Wait()
		return time.Since(start), o.bytes.Load(), errors.Join(errs...)
	}
	tp, bp, err := run(false)
	if err != nil {
		return offload{}, err
	}
	tn, bn, err := run(true)
	if err != nil {
		return offload{}, err
	}
	img := float64(m.DataBytes())
	return offload{size: size, ratio: float64(bp) / img, naiveRatio: float64(bn) / img, p2p: tp, naive: tn, originBytesMB: float64(bp) / (1 << 20)}, nil
}

// peerLatency: one host holds the image, another fetches each chunk once, one at a time.
func peerLatency(ctx context.Context, chunks int, chunkSize int64) (p50, p99 time.Duration, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m, data := image(chunks, chunkSize, 99)
	o := &origin{chunks: data, bw: rate.NewLimiter(rate.Inf, 0)}
	nodes, err := cluster(ctx, 2)
	if err != nil {
		return 0, 0, err
	}
	defer closeAll(nodes)
	a, b := nodes[0], nodes[1]
	_ = a.RegisterBlob(m, o.fetch)
	_ = b.RegisterBlob(m, nil)
	for _, c := range m.Chunks {
		v, _ := chunk.Verify(c.CID, data[c.CID])
		_ = a.st.PutChunk(ctx, m.Blob, c, v)
	}
	for len(b.Lookup(m.Chunks[len(m.Chunks)-1].CID)) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	var lat []time.Duration
	var mu sync.Mutex
	if err := read(ctx, b, m, o, 1, false, &lat, &mu); err != nil {
		return 0, 0, err
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

// throughput of one large blob from one peer (8 chunks in flight), and of a plain TCP stream of
// the same bytes on the same machine.
func throughput(ctx context.Context, total int64, chunkSize int64) (p2pMBs, tcpMBs float64, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m, data := image(int(total/chunkSize), chunkSize, 42)
	o := &origin{chunks: data, bw: rate.NewLimiter(rate.Inf, 0)}
	nodes, err := cluster(ctx, 2)
	if err != nil {
		return 0, 0, err
	}
	defer closeAll(nodes)
	a, b := nodes[0], nodes[1]
	_ = a.RegisterBlob(m, o.fetch)
	_ = b.RegisterBlob(m, nil)
	for _, c := range m.Chunks {
		v, _ := chunk.Verify(c.CID, data[c.CID])
		_ = a.st.PutChunk(ctx, m.Blob, c, v)
	}
	for len(b.Lookup(m.Chunks[len(m.Chunks)-1].CID)) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	if err := read(ctx, b, m, o, 8, false, nil, nil); err != nil {
		return 0, 0, err
	}
	p2pMBs = float64(total) / (1 << 20) / time.Since(start).Seconds()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		for _, ch := range m.Chunks {
			if _, err := c.Write(data[ch.CID]); err != nil {
				return
			}
		}
	}()
	start = time.Now()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	buf := make([]byte, chunkSize)
	for range m.Chunks {
		if _, err := io.ReadFull(c, buf); err != nil {
			return 0, 0, err
		}
		// The p2p path verifies each chunk; so does the baseline, to compare transports alone.
		_ = chunk.CID(buf)
	}
	tcpMBs = float64(total) / (1 << 20) / time.Since(start).Seconds()
	return p2pMBs, tcpMBs, nil
}

func main() {
	sizes := flag.String("sizes", "2,8,30", "cluster sizes for the offload runs")
	chunks := flag.Int("chunks", 64, "chunks in the image of the offload runs")
	chunkKiB := flag.Int64("chunk-kib", 256, "chunk size in KiB")
	originLatency := flag.Duration("origin-latency", 20*time.Millisecond, "origin latency per request")
	originMBs := flag.Int("origin-mbs", 200, "origin egress bandwidth shared by all hosts, MiB/s")
	blobMiB := flag.Int64("blob-mib", 256, "size of the blob of the throughput run")
	flag.Parse()
	ctx := context.Background()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "p2pbench:", err)
		os.Exit(1)
	}
	chunkSize := *chunkKiB << 10
	fmt.Printf("p2pbench: %d CPUs, %s, image %d × %d KiB = %d MiB, origin %v + %d MiB/s shared\n\n",
		runtime.NumCPU(), runtime.Version(), *chunks, *chunkKiB, int64(*chunks)*chunkSize>>20, *originLatency, *originMBs)
	fmt.Println("| cold readers | origin bytes ÷ image (p2p) | origin bytes ÷ image (no p2p) | time, p2p | time, all from origin | speed-up |")
	fmt.Println("|---:|---:|---:|---:|---:|---:|")
	for _, s := range strings.Split(*sizes, ",") {
		size, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			fail(err)
		}
		r, err := coldRead(ctx, size, *chunks, chunkSize, *originLatency, *originMBs<<20)
		if err != nil {
			fail(err)
		}
		fmt.Printf("| %d | %.3f | %.2f | %v | %v | %.1f× |\n", r.size, r.ratio, r.naiveRatio,
			r.p2p.Round(time.Millisecond), r.naive.Round(time.Millisecond), r.naive.Seconds()/r.p2p.Seconds())
	}
	p50, p99, err := peerLatency(ctx, 256, chunkSize)
	if err != nil {
		fail(err)
	}
	fmt.Printf("\nchunk fetch from a peer (%d KiB, one at a time, 256 fetches): p50 %v, p99 %v\n", *chunkKiB, p50.Round(time.Microsecond), p99.Round(time.Microsecond))
	pm, tm, err := throughput(ctx, *blobMiB<<20, 4<<20)
	if err != nil {
		fail(err)
	}
	fmt.Printf("one %d MiB blob (4 MiB chunks, 8 in flight) from one peer: %.0f MiB/s; plain TCP stream + sha256: %.0f MiB/s; ratio %.2f\n", *blobMiB, pm, tm, pm/tm)
}
