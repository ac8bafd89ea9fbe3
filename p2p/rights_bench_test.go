package p2p

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/internal/registrytest"
)

// BenchmarkPullRights measures what the pull-rights check costs a host that reads an image
// from a peer's cache: a private image and a public one of the same size, side by side, each
// iteration on a fresh asker connected to the holder. first-chunk-ms is from registering the
// blob (the moment the daemon adds the image) to its first chunk in hand: for the private
// image it includes presenting the asker's token and the holder's one check of it at the
// registry (the real distribution registry with token auth, in this process). MB/s is the
// rest of the image read from the holder by 8 workers, after the grant (per-chunk checks are
// in memory). Real libp2p hosts over 127.0.0.1. scripts/bench-rights.sh runs it.
func BenchmarkPullRights(b *testing.B) {
	reg := registrytest.Start(b)
	reg.AddUser("alice", "pa")
	reg.AddUser("bob", "pb")
	reg.Grant("alice", "team/private")
	reg.Grant("bob", "team/private")
	reg.SetPublic("team/public")
	privRepo, pubRepo := reg.Host+"/team/private", reg.Host+"/team/public"
	const chunkSize, chunks = 256 << 10, 128 // 32 MiB each
	privData, pubData := randomBlob(chunks*chunkSize, 11), randomBlob(chunks*chunkSize, 12)
	reg.PushBlob(b, "team/private", privData)
	reg.PushBlob(b, "team/public", pubData)
	manifest := func(data []byte) *chunk.Manifest {
		m, err := chunk.FixedManifest(bytes.NewReader(data), digest.SHA256.FromBytes(data), int64(len(data)), chunkSize)
		if err != nil {
			b.Fatal(err)
		}
		return m
	}
	privM, pubM := manifest(privData), manifest(pubData)
	ctx, cancel := context.WithTimeout(b.Context(), 5*time.Minute)
	defer cancel()
	a := startRightsHost(b, reg, "alice", "pa", 5*time.Minute)
	for _, x := range []struct {
		m    *chunk.Manifest
		repo string
	}{{privM, privRepo}, {pubM, pubRepo}} {
		a.register(b, x.m, x.repo)
		if _, err := a.read(ctx, x.m); err != nil {
			b.Fatal(err)
		}
	}
	for _, x := range []struct {
		name string
		m    *chunk.Manifest
		repo string
	}{{"public", pubM, pubRepo}, {"private", privM, privRepo}} {
		b.Run(x.name, func(b *testing.B) {
			var first, rest time.Duration
			var restBytes int64
			for range b.N {
				asker := startRightsHost(b, reg, "bob", "pb", 5*time.Minute, a.n)
				waitFor(b, 10*time.Second, "connected", connectedTo(asker.n, a.n.ID()))
				waitFor(b, 10*time.Second, "the holder's presence", func() bool { return asker.n.SwarmSize(x.m.Blob) == 1 })
				start := time.Now()
				asker.register(b, x.m, x.repo)
				if _, src, err := asker.n.Fetch(ctx, x.m.Blob, x.m.Chunks[0], nil); err != nil || src != chunk.SourcePeer {
					b.Fatalf("first chunk: %v %v", src, err)
				}
				first += time.Since(start)
				start = time.Now()
				work := make(chan chunk.Chunk)
				errs := make(chan error, 8)
				for range 8 {
					go func() {
						for c := range work {
							if _, _, err := asker.n.Fetch(ctx, x.m.Blob, c, nil); err != nil {
								errs <- err
								return
							}
						}
						errs <- nil
					}()
				}
				for _, c := range x.m.Chunks[1:] {
					work <- c
				}
				close(work)
				for range 8 {
					if err := <-errs; err != nil {
						b.Fatal(err)
					}
				}
				rest += time.Since(start)
				restBytes += int64(len(x.m.Chunks)-1) * chunkSize
				_ = asker.n.Close()
			}
			b.ReportMetric(float64(first.Microseconds())/1000/float64(b.N), "first-chunk-ms")
			b.ReportMetric(float64(restBytes)/(1<<20)/rest.Seconds(), "MB/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}
