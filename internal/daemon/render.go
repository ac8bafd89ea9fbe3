package daemon

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/shoal-p2p/shoal/internal/units"
	"github.com/shoal-p2p/shoal/p2p"
)

// wireRatio is "wire bytes for data bytes (ratio)": compressed chunks take less than their data.
func wireRatio(wire, data int64) string {
	if data == 0 {
		return "0 B"
	}
	return fmt.Sprintf("%s for %s of data (%.2fx)", units.Bytes(wire), units.Bytes(data), float64(wire)/float64(data))
}

// RenderStats writes the human form of `shoal stats`: totals, images, peers.
func RenderStats(w io.Writer, r StatsReport) {
	fetched := r.Bytes.Peers + r.Bytes.Dedup + r.Bytes.Origin
	fmt.Fprintf(w, "host %s   up %s\n\n", short(r.PeerID), units.Duration(r.Uptime))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tBYTES\tCHUNKS\tSHARE\tP50\tP99")
	row := func(name string, b, c int64, lat Lat, ok bool) {
		share := "-"
		if fetched > 0 && name != "local hits" {
			share = fmt.Sprintf("%.1f%%", 100*float64(b)/float64(fetched))
		}
		p50, p99 := "-", "-"
		if ok {
			p50, p99 = fmt.Sprintf("%.1fms", lat.P50), fmt.Sprintf("%.1fms", lat.P99)
		}
		cs := "-"
		if c >= 0 {
			cs = fmt.Sprint(c)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", name, units.Bytes(b), cs, share, p50, p99)
	}
	l, ok := r.Latency["peers"]
	row("peers", r.Bytes.Peers, r.Chunks.Peers, l, ok)
	l, ok = r.Latency["origin"]
	row("origin", r.Bytes.Origin, r.Chunks.Origin, l, ok)
	l, ok = r.Latency["dedup"]
	row("local dedup", r.Bytes.Dedup, r.Chunks.Dedup, l, ok)
	row("local hits", r.Bytes.Local, -1, Lat{}, false)
	tw.Flush()
	fmt.Fprintf(w, "\norigin offload %.1f%%   served to peers %s in %d chunks   verify failures %d (local %d, peers %d, origin %d)   fetch failures %d   bans %d\n",
		100*r.OriginOffload, units.Bytes(r.Bytes.ServedToPeers), r.Chunks.ServedToPeers, r.VerifyFailures,
		r.VerifyFailuresBy.Local, r.VerifyFailuresBy.Peers, r.VerifyFailuresBy.Origin, r.FetchFailures, r.Bans)
	fmt.Fprintf(w, "on the wire: from peers %s, from origin %s, to peers %s\n",
		wireRatio(r.WireBytes.Peers, r.Bytes.Peers), wireRatio(r.WireBytes.Origin, r.Bytes.Origin), wireRatio(r.WireBytes.ServedToPeers, r.Bytes.ServedToPeers))
	maxs := "no cap"
	if r.Cache.MaxBytes > 0 {
		maxs = "cap " + units.Bytes(r.Cache.MaxBytes)
	}
	fmt.Fprintf(w, "cache %s in %d blobs (%s), evicted %s\n", units.Bytes(r.Cache.PresentBytes), r.Cache.Blobs, maxs, units.Bytes(r.Cache.EvictedBytes))
	if rr := r.Rights; rr.Enabled {
		fmt.Fprintf(w, "pull rights: refused to peers without rights %d   peers' tokens granted %d, refused %d   ours granted %d, refused %d\n",
			rr.Denied, rr.Granted, rr.Refused, rr.PresentedOK, rr.PresentedDenied)
	} else {
		fmt.Fprintln(w, "pull rights: off (every chunk is served to any peer)")
	}

	fmt.Fprintln(w, "\nIMAGES")
	if len(r.Images) == 0 {
		fmt.Fprintln(w, "  (none)")
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, im := range r.Images {
		fmt.Fprintf(tw, "  %s\t%s\t%s %s\t%s\tprefetch %s\n", im.Ref, mountsText(im.Mounts), Bar(im.BytesPresent, im.Bytes, 20),
			percent(im.BytesPresent, im.Bytes), fmt.Sprintf("%d/%d chunks", im.ChunksPresent, im.Chunks), im.Prefetch)
	}
	tw.Flush()

	if len(r.ClusterPrefetch) > 0 {
		fmt.Fprintln(w, "\nCLUSTER PREFETCH")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, j := range r.ClusterPrefetch {
			fmt.Fprintf(tw, "  #%d %s\t%d hosts: %d done, %d failed\t%s %s\t%s\n", j.ID, j.Ref, len(j.Hosts), j.Done, j.Failed,
				Bar(j.BytesPresent, j.Bytes, 20), percent(j.BytesPresent, j.Bytes), j.State)
			for _, h := range j.Hosts {
				who := short(h.Peer)
				if h.Self {
					who += " (this host)"
				}
				fmt.Fprintf(tw, "    %s	%s	%s of %s	%s\n", who, h.State, units.Bytes(h.BytesPresent), units.Bytes(h.Bytes), h.Error)
			}
		}
		tw.Flush()
	}

	fmt.Fprintln(w, "\nPEERS")
	if len(r.Peers) == 0 {
		fmt.Fprintln(w, "  (none)")
		return
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  PEER\tADDRESS\tDOWN\tUP\tREQ OUT/IN\tP50\tP99\tERRORS\tSTATE")
	for _, p := range r.Peers {
		addr := "-"
		if len(p.Addrs) > 0 {
			addr = p.Addrs[0]
		}
		state := "connected"
		switch {
		case p.Banned:
			state = "BANNED"
		case !p.Connected:
			state = "disconnected"
		case p.Standing == p2p.StandingDemoted:
			state = "demoted"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d/%d\t%.1fms\t%.1fms\t%d\t%s\n", short(p.ID), addr, units.Bytes(p.BytesDown), units.Bytes(p.BytesUp),
			p.RequestsOut, p.RequestsIn, p.P50, p.P99, p.Errors+p.Corrupt, state)
	}
	tw.Flush()
}

// RenderPeers writes `shoal peers`: each peer, how it was found, whether it is connected.
func RenderPeers(w io.Writer, peers []PeerReport) {
	if len(peers) == 0 {
		fmt.Fprintln(w, "no peers")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tFOUND BY\tSTATE\tADDRESSES")
	for _, p := range peers {
		state := "connected"
		switch {
		case p.Banned:
			state = "banned"
		case !p.Connected:
			state = "disconnected"
		case p.Standing == p2p.StandingDemoted:
			state = "demoted"
		}
		found := append([]string(nil), p.FoundBy...)
		sort.Strings(found)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.ID, strings.Join(found, ","), state, strings.Join(p.Addrs, " "))
	}
	tw.Flush()
}

// RenderImages writes `shoal images`.
func RenderImages(w io.Writer, images []ImageReport) {
	if len(images) == 0 {
		fmt.Fprintln(w, "no images")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tDIGEST\tMOUNTS\tLOCAL\tPREFETCH")
	for _, im := range images {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s of %s (%s)\t%s\n", im.Ref, shortDigest(im.Digest), mountsText(im.Mounts),
			units.Bytes(im.BytesPresent), units.Bytes(im.Bytes), percent(im.BytesPresent, im.Bytes), im.Prefetch)
	}
	tw.Flush()
}

func mountsText(m map[string]string) string {
	if len(m) == 0 {
		return "not mounted"
	}
	var parts []string
	for mp, mode := range m {
		parts = append(parts, mp+" ("+mode+")")
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// Bar draws a progress bar of width cells.
func Bar(done, total int64, width int) string {
	fill := width
	if total > 0 {
		fill = int(float64(width) * float64(done) / float64(total))
	}
	fill = max(0, min(width, fill))
	return "[" + strings.Repeat("#", fill) + strings.Repeat(".", width-fill) + "]"
}

func percent(done, total int64) string {
	if total == 0 {
		return "100%"
	}
	return fmt.Sprintf("%d%%", 100*done/total)
}

func short(id string) string {
	if len(id) > 16 {
		return id[:8] + "…" + id[len(id)-6:]
	}
	return id
}

// shortDigest keeps the algorithm and 12 hex digits, as container tools show image IDs.
func shortDigest(d string) string {
	if i := strings.IndexByte(d, ':'); i >= 0 && len(d) > i+13 {
		return d[:i+13]
	}
	return d
}
