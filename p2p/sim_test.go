package p2p

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The swarm simulator: a fluid model of a cluster reading one image, for sizes (1000 hosts) that
// real libp2p hosts on one machine cannot reach. It runs the node's own policy functions, not
// copies: holder ranking (holderQueue), super-seeding (superSeedServe, FlagHaveOthers and the
// re-ask of a refuser), rarest-first random chunk order (as demand's swarmOrder), and
// rendezvous owners (rendezvousScore) with one origin fetch per chunk. What it models rather
// than runs: links are processor-shared (a transfer gets min(upload ÷ the source's uploads,
// download ÷ the destination's downloads)); a host knows every holder's current load exactly
// (the node learns it from each V2 response, at most a second old) and sees at most simView
// random holders of a chunk (connection limits); presence reaches everyone within one step;
// busy answers cost no time; hedging and bans are not modelled. Time is in chunk times: one
// chunk over one host's link.

const simView = 64

type simMode int

const (
	simSeeded    simMode = iota // one host holds the image, the origin is gone, all start at once
	simStaggered                // the same, hosts starting one after another over half the lower bound
	simCold                     // nobody holds it; the origin serves at originRate host links
)

func (m simMode) String() string {
	return [...]string{"seeded", "staggered", "cold"}[m]
}

type simConfig struct {
	hosts, chunks, workers int
	mode                   simMode
	swarm                  bool    // false: main's policy (manifest order, own requests only, no super-seeding)
	originRate             float64 // cold: origin egress in host links
	churn                  float64 // share of hosts that leave at a third of the lower bound
	seed                   uint64
}

type simResult struct {
	lowerBound       float64 // chunk times
	p50, p99, last   float64 // completion ÷ lower bound, over hosts that stayed
	maxUp, seedUp    float64 // upload ÷ image
	origin           float64 // origin bytes ÷ image
	refusals, stuck  int
	completed, total int
	wall             time.Duration
}

type simHost struct {
	start     float64
	left      bool
	have      []bool
	pending   []bool // fetch in progress for itself or as an owner
	nhave     int
	served    []uint32
	upNow     []int // uploads of each chunk in progress
	total     uint64
	order     []int
	pos       int
	retry     []int
	busy      int // workers with a fetch
	deferred  int // requests deferred this step
	nUp       int
	nDown     int
	uploaded  float64
	done      float64
	rendScore []uint64
}

type simXfer struct {
	src, dst, c int // src -1: the origin
	left        float64
	worker      bool // dst's worker waits on it (else an owner's own fetch-through)
	waiters     []int
}

func runSim(cfg simConfig) simResult {
	began := time.Now()
	rng := rand.New(rand.NewPCG(cfg.seed, 7))
	n, C := cfg.hosts, cfg.chunks
	hosts := make([]*simHost, n)
	holders := make([][]int, C)
	for i := range hosts {
		h := &simHost{have: make([]bool, C), pending: make([]bool, C), served: make([]uint32, C), upNow: make([]int, C), done: -1}
		h.order = make([]int, C)
		for k := range h.order {
			h.order[k] = k
		}
		hosts[i] = h
	}
	// Rendezvous scores: the node's own hash over (CID, peer ID) is a uniform 64-bit value.
	owner := make([]int, C)
	for c := range C {
		best, bs := -1, uint64(0)
		for i, h := range hosts {
			if h.rendScore == nil {
				h.rendScore = make([]uint64, C)
			}
			h.rendScore[c] = rng.Uint64()
			if h.rendScore[c] >= bs {
				best, bs = i, h.rendScore[c]
			}
		}
		owner[c] = best
	}
	lb := float64(C) // every host must download the image over its own link
	if cfg.mode == simCold {
		lb = max(lb, float64(C)/cfg.originRate)
	}
	if cfg.mode != simCold {
		s := hosts[0]
		for c := range C {
			s.have[c] = true
			holders[c] = append(holders[c], 0)
		}
		s.nhave = C
		s.done = 0
	}
	for i, h := range hosts {
		if cfg.mode == simStaggered && i > 0 {
			h.start = float64(i) / float64(n) * lb / 2
		}
		if cfg.swarm {
			// demand's swarmOrder at the host's start: random, then rarest first. Every chunk has
			// the same holders at the start of these runs, so it is the random order.
			rng.Shuffle(C, func(a, b int) { h.order[a], h.order[b] = h.order[b], h.order[a] })
		}
	}
	var xfers []*simXfer
	var originBytes float64
	res := simResult{lowerBound: lb, total: n - 1}
	if cfg.mode == simCold {
		res.total = n
	}
	churnAt := lb / 3
	churned := false
	view := make([]int, 0, simView)
	const dt = 0.02

	// request starts host i's fetch of chunk c: from the best holder, else through the owner.
	request := func(i, c int) {
		h := hosts[i]
		h.pending[c] = true
		h.busy++
		view = view[:0]
		for _, k := range holders[c] {
			if k != i && !hosts[k].left {
				view = append(view, k)
			}
		}
		if len(view) > simView {
			rng.Shuffle(len(view), func(a, b int) { view[a], view[b] = view[b], view[a] })
			view = view[:simView]
		}
		if len(view) > 0 {
			rng.Shuffle(len(view), func(a, b int) { view[a], view[b] = view[b], view[a] })
			if cfg.swarm {
				sort.SliceStable(view, func(a, b int) bool {
					return holderQueue(0, hosts[view[a]].nUp, 0) < holderQueue(0, hosts[view[b]].nUp, 0)
				})
			}
			view = view[:min(len(view), 4)] // MaxAttempts
			src, refuser := -1, -1
			for k, p := range view {
				ph := hosts[p]
				others := k < len(view)-1
				if cfg.swarm && others && !superSeedServe(ph.served[c], ph.total, ph.nhave) {
					res.refusals++
					if refuser < 0 {
						refuser = p
					}
					continue
				}
				src = p
				break
			}
			if src < 0 {
				src = refuser
			}
			sh := hosts[src]
			if cfg.swarm && sh.upNow[c] > 0 && len(view) == 1 {
				// The only holder is uploading this chunk now: a prefetch takes another chunk
				// and comes back to this one (FlagDeferrable), when the host it is going to
				// has it too.
				res.refusals++
				h.pending[c] = false
				h.busy--
				h.retry = append(h.retry, c)
				h.deferred++
				return
			}
			sh.upNow[c]++
			sh.served[c]++
			sh.total++
			sh.nUp++
			h.nDown++
			xfers = append(xfers, &simXfer{src: src, dst: i, c: c, left: 1, worker: true})
			return
		}
		if cfg.mode != simCold {
			res.stuck++ // nobody holds it and there is no origin: retried later
			h.pending[c] = false
			h.busy--
			h.retry = append(h.retry, c)
			return
		}
		o := owner[c]
		if o == i {
			h.nDown++
			xfers = append(xfers, &simXfer{src: -1, dst: i, c: c, left: 1, worker: true})
			return
		}
		// Fetch-through: join the owner's origin fetch, or start it.
		for _, x := range xfers {
			if x.src == -1 && x.dst == o && x.c == c {
				x.waiters = append(x.waiters, i)
				return
			}
		}
		oh := hosts[o]
		oh.pending[c] = true
		oh.nDown++
		xfers = append(xfers, &simXfer{src: -1, dst: o, c: c, left: 1, waiters: []int{i}})
	}

	t := 0.0
	limit := 20*lb + 100
	for ; t < limit; t += dt {
		if cfg.churn > 0 && !churned && t >= churnAt {
			churned = true
			for _, i := range rng.Perm(n)[:int(cfg.churn*float64(n))] {
				if cfg.mode != simCold && i == 0 {
					continue
				}
				hosts[i].left = true
				res.total--
			}
			if cfg.mode == simCold { // owners move to the hosts that stayed
				for c := range C {
					best, bs := -1, uint64(0)
					for i, h := range hosts {
						if !h.left && h.rendScore[c] >= bs {
							best, bs = i, h.rendScore[c]
						}
					}
					owner[c] = best
				}
			}
		}
		// Workers pick their next chunks.
		for i, h := range hosts {
			if h.left || h.done >= 0 || t < h.start {
				continue
			}
			h.deferred = 0
			for h.busy < cfg.workers && h.deferred < cfg.workers {
				c := -1
				for c < 0 && len(h.retry) > 0 {
					if r := h.retry[0]; !h.have[r] && !h.pending[r] {
						c = r
					}
					h.retry = h.retry[1:]
				}
				for c < 0 && h.pos < C {
					if r := h.order[h.pos]; !h.have[r] && !h.pending[r] {
						c = r
					}
					h.pos++
				}
				if c < 0 {
					break
				}
				request(i, c)
			}
		}
		// Move bytes.
		nOrigin := 0
		for _, x := range xfers {
			if x.src == -1 {
				nOrigin++
			}
		}
		live := xfers[:0]
		var landed []*simXfer
		for _, x := range xfers {
			dst := hosts[x.dst]
			var srcGone bool
			if x.src >= 0 {
				srcGone = hosts[x.src].left
			}
			if dst.left || srcGone {
				// Aborted: the requester (if it stayed) asks again.
				if x.src >= 0 {
					hosts[x.src].nUp--
					hosts[x.src].upNow[x.c]--
				}
				dst.nDown--
				dst.pending[x.c] = false
				if x.worker {
					dst.busy--
					dst.retry = append(dst.retry, x.c)
				}
				for _, w := range x.waiters {
					hosts[w].pending[x.c] = false
					hosts[w].busy--
					hosts[w].retry = append(hosts[w].retry, x.c)
				}
				continue
			}
			rate := 1 / float64(dst.nDown)
			if x.src >= 0 {
				rate = min(rate, 1/float64(hosts[x.src].nUp))
			} else {
				rate = min(rate, cfg.originRate/float64(nOrigin))
			}
			step := min(rate*dt, x.left)
			x.left -= step
			if x.src >= 0 {
				hosts[x.src].uploaded += step
			} else {
				originBytes += step
			}
			if x.left <= 1e-9 {
				landed = append(landed, x)
				continue
			}
			live = append(live, x)
		}
		xfers = live
		for _, x := range landed {
			dst := hosts[x.dst]
			if x.src >= 0 {
				hosts[x.src].nUp--
				hosts[x.src].upNow[x.c]--
			}
			dst.nDown--
			dst.pending[x.c] = false
			if !dst.have[x.c] {
				dst.have[x.c] = true
				dst.nhave++
				holders[x.c] = append(holders[x.c], x.dst)
			}
			if x.worker {
				dst.busy--
			}
			for _, w := range x.waiters { // the owner streams it on to each asker
				dst.served[x.c]++
				dst.total++
				dst.nUp++
				dst.upNow[x.c]++
				hosts[w].nDown++
				xfers = append(xfers, &simXfer{src: x.dst, dst: w, c: x.c, left: 1, worker: true})
			}
			if dst.nhave == C && dst.done < 0 {
				dst.done = t - dst.start
			}
		}
		all := true
		for _, h := range hosts {
			if !h.left && h.done < 0 {
				all = false
				break
			}
		}
		if all {
			break
		}
	}
	var times []float64
	for i, h := range hosts {
		res.maxUp = max(res.maxUp, h.uploaded/float64(C))
		if i == 0 {
			res.seedUp = h.uploaded / float64(C)
		}
		if h.left || (cfg.mode != simCold && i == 0) {
			continue
		}
		if h.done >= 0 {
			res.completed++
			times = append(times, h.done/lb)
		}
	}
	slices.Sort(times)
	if len(times) > 0 {
		res.p50 = times[len(times)/2]
		res.p99 = times[min(len(times)-1, int(math.Ceil(0.99*float64(len(times))))-1)]
		res.last = times[len(times)-1]
	}
	res.origin = originBytes / float64(C)
	res.wall = time.Since(began)
	return res
}

// simRow runs one configuration and formats it as a Markdown table row.
func simRow(cfg simConfig) (simResult, string) {
	r := runSim(cfg)
	policy := "main (star)"
	if cfg.swarm {
		policy = "swarm"
	}
	churn := ""
	if cfg.churn > 0 {
		churn = fmt.Sprintf(", %.0f%% leave", 100*cfg.churn)
	}
	return r, fmt.Sprintf("| %d | %s%s | %s | %d/%d | %.2f | %.2f | %.2f | %.2f | %.2f | %.3f | %d | %v |",
		cfg.hosts, cfg.mode, churn, policy, r.completed, r.total, r.p50, r.p99, r.last, r.maxUp, r.seedUp, r.origin, r.refusals, r.wall.Round(time.Millisecond))
}

const simHeader = "| hosts | start | policy | completed | p50 ÷ bound | p99 ÷ bound | last ÷ bound | most uploaded ÷ image | seed uploaded ÷ image | origin ÷ image | busy refusals | sim wall time |\n|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"

func simConfigs(hosts int, chunks int) []simConfig {
	var out []simConfig
	for _, mode := range []simMode{simSeeded, simStaggered, simCold} {
		for _, swarm := range []bool{false, true} {
			out = append(out, simConfig{hosts: hosts, chunks: chunks, workers: 4, mode: mode, swarm: swarm, originRate: 10, seed: uint64(hosts)})
		}
	}
	out = append(out, simConfig{hosts: hosts, chunks: chunks, workers: 4, mode: simCold, swarm: true, originRate: 10, churn: 0.1, seed: uint64(hosts) + 1})
	return out
}

// TestSwarmSim: at 40 hosts every host completes under the swarm policy (main's policy does not
// within 20× the lower bound in a seeded start), the origin serves about one image in a cold
// start, and with a tenth of the hosts leaving mid-transfer
// every remaining host completes with the origin under 1.2 images.
func TestSwarmSim(t *testing.T) {
	hosts := 40
	var rows []string
	for _, cfg := range simConfigs(hosts, 64) {
		r, row := simRow(cfg)
		rows = append(rows, row)
		if cfg.swarm && r.completed != r.total {
			t.Errorf("%v (swarm %v): %d of %d hosts completed", cfg.mode, cfg.swarm, r.completed, r.total)
		}
		if !cfg.swarm {
			continue
		}
		switch {
		case cfg.mode == simCold && cfg.churn == 0 && r.origin > 1.05:
			t.Errorf("cold start: origin served %.3f× the image, want ≤ 1.05×", r.origin)
		case cfg.churn > 0 && r.origin > 1.2:
			t.Errorf("cold start with churn: origin served %.3f× the image, want ≤ 1.2×", r.origin)
		}
		// Seeded and staggered starts do not meet issue 16's targets yet (the seed uploads
		// about 4× the image at 40 hosts): reported, not asserted.
	}
	t.Log("\n" + simHeader + "\n" + strings.Join(rows, "\n"))
}

// BenchmarkSwarmSim prints the simulator's table for SHOAL_SIM_HOSTS (default 100,300,1000) hosts
// and an image of SHOAL_SIM_CHUNKS (default 128) chunks. make bench runs it once.
func BenchmarkSwarmSim(b *testing.B) {
	sizes := os.Getenv("SHOAL_SIM_HOSTS")
	if sizes == "" {
		sizes = "100,300,1000"
	}
	chunks := 128
	if s := os.Getenv("SHOAL_SIM_CHUNKS"); s != "" {
		var err error
		if chunks, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	for range b.N {
		fmt.Println(simHeader)
		for _, s := range strings.Split(sizes, ",") {
			hosts, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil {
				b.Fatal(err)
			}
			for _, cfg := range simConfigs(hosts, chunks) {
				_, row := simRow(cfg)
				fmt.Println(row)
			}
		}
	}
}
