package daemon

import (
	"os"
	"sort"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunkstore"
	"github.com/shoal-p2p/shoal/demand"
	"github.com/shoal-p2p/shoal/p2p"
)

// hostPeers is what the reports read of the p2p node.
type hostPeers interface {
	ID() peer.ID
	Addrs() []ma.Multiaddr
	Peers() []p2p.PeerStats
	// Served is the chunk data uploaded to peers, and what it took on the network.
	Served() (data, wire int64)
	// RightsStats counts the pull-rights exchange.
	RightsStats() p2p.RightsStats
}

// storeCounters is what the reports read of the chunk store.
type storeCounters interface {
	Stats() chunkstore.Stats
	PresentTotals(blob digest.Digest) (bytes, chunks int64, err error)
}

// resolverCounters is what the reports read of the demand resolver.
type resolverCounters interface {
	Stats() demand.Stats
}

// selfAddrs are this host's multiaddrs with its peer ID, as peers dial them.
func (s *service) selfAddrs() []string {
	var out []string
	for _, a := range s.peers.Addrs() {
		str := a.String()
		if !strings.Contains(str, "/p2p/") {
			str += "/p2p/" + s.peers.ID().String()
		}
		out = append(out, str)
	}
	return out
}

// Status describes this host.
func (s *service) Status() StatusReport {
	return StatusReport{PeerID: s.peers.ID().String(), PID: os.Getpid(), Addrs: s.selfAddrs(), DataDir: s.cfg.DataDir,
		Version: Version, Uptime: time.Since(s.started).Round(time.Second).String(), Restored: s.restored.Load()}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Stats gathers the report `shoal stats` shows. It takes no lock across a call out: the
// registry and prefetcher answer from memory, the store from its counters.
func (s *service) Stats() StatsReport {
	rs := s.resStats.Stats()
	ss := s.storeStats.Stats()
	rep := StatsReport{
		PeerID:           s.peers.ID().String(),
		VerifyFailuresBy: VerifyBySource{Local: ss.VerifyFailures, Origin: rs.OriginCorrupt},
		FetchFailures:    rs.Failures,
		Cache:            CacheReport{PresentBytes: ss.PresentBytes, MaxBytes: ss.MaxBytes, EvictedBytes: ss.BytesEvicted, Blobs: ss.Blobs},
		Latency:          map[string]Lat{},
		Images:           []ImageReport{},
		Peers:            []PeerReport{},
		Uptime:           time.Since(s.started).Seconds(),
		ClusterPrefetch:  s.cluster.Reports(),
	}
	if s.mirrorStats != nil {
		rep.Mirror = s.mirrorStats()
	}
	rr := s.peers.RightsStats()
	rep.Rights = RightsReport{Enabled: s.cfg.PullRights, Denied: rr.Denied, Granted: rr.Granted, Refused: rr.Refused,
		PresentedOK: rr.PresentedOK, PresentedDenied: rr.PresentedDenied}
	src := func(s chunk.Source) demand.SourceStats { return rs.Sources[s] }
	rep.Bytes.Local = src(chunk.SourceLocal).Bytes
	rep.Bytes.Dedup, rep.Chunks.Dedup = src(chunk.SourceDedup).Bytes, src(chunk.SourceDedup).Chunks
	rep.Bytes.Peers, rep.Chunks.Peers = src(chunk.SourcePeer).Bytes, src(chunk.SourcePeer).Chunks
	rep.Bytes.Origin, rep.Chunks.Origin = src(chunk.SourceOrigin).Bytes, src(chunk.SourceOrigin).Chunks
	rep.WireBytes.Peers, rep.WireBytes.Origin = src(chunk.SourcePeer).WireBytes, src(chunk.SourceOrigin).WireBytes
	for key, s := range map[string]chunk.Source{"dedup": chunk.SourceDedup, "peers": chunk.SourcePeer, "origin": chunk.SourceOrigin} {
		if st := src(s); st.Chunks > 0 {
			rep.Latency[key] = Lat{ms(st.P50), ms(st.P99)}
		}
	}
	if f := rep.Bytes.Peers + rep.Bytes.Dedup + rep.Bytes.Origin; f > 0 {
		rep.OriginOffload = float64(rep.Bytes.Peers+rep.Bytes.Dedup) / float64(f)
	}
	for _, p := range s.peers.Peers() {
		pr := PeerReport{ID: p.ID.String(), FoundBy: p.FoundBy, Connected: p.Connected, BytesUp: p.BytesUp, BytesDown: p.BytesDown,
			RequestsIn: p.RequestsIn, RequestsOut: p.RequestsOut, P50: ms(p.LatencyP50), P99: ms(p.LatencyP99),
			Errors: p.Errors, Corrupt: p.Corrupt, Banned: p.Banned, Addrs: []string{},
			Standing: p.Standing, SlowShare: p.SlowShare, BadShare: p.BadShare, Blobs: p.Blobs}
		for _, a := range p.Addrs {
			pr.Addrs = append(pr.Addrs, a.String())
		}
		if pr.FoundBy == nil {
			pr.FoundBy = []string{}
		}
		rep.Bytes.ServedToPeers += p.BytesUp
		rep.Chunks.ServedToPeers += p.RequestsIn
		if p.Banned {
			rep.Bans++
		}
		rep.VerifyFailuresBy.Peers += p.Corrupt
		rep.Peers = append(rep.Peers, pr)
	}
	sort.Slice(rep.Peers, func(i, j int) bool { return rep.Peers[i].ID < rep.Peers[j].ID })
	_, rep.WireBytes.ServedToPeers = s.peers.Served()
	rep.VerifyFailures = rep.VerifyFailuresBy.Local + rep.VerifyFailuresBy.Peers + rep.VerifyFailuresBy.Origin

	for _, im := range s.reg.Images() {
		ir := ImageReport{Ref: im.Ref, Digest: im.digest().String(), Mounts: map[string]string{}}
		for _, b := range im.Image.Blobs {
			ir.Bytes += b.Manifest.DataBytes()
			ir.Chunks += len(b.Manifest.Chunks)
			// Counters, not a scan of the blob's index: `prefetch --wait` and `stats --watch`
			// ask several times a second.
			if bytes, chunks, err := s.storeStats.PresentTotals(b.Digest); err == nil {
				ir.BytesPresent += bytes
				ir.ChunksPresent += int(chunks)
			}
		}
		for mp, mode := range s.reg.Mounts(im.digest()) {
			ir.Mounts[mp] = string(mode)
		}
		ir.Prefetch, ir.PrefetchError = s.prefetch.Status(im.digest())
		if ir.Prefetch == "" {
			ir.Prefetch = "idle"
		}
		rep.Images = append(rep.Images, ir)
	}
	sort.Slice(rep.Images, func(i, j int) bool { return rep.Images[i].Ref < rep.Images[j].Ref })
	return rep
}
