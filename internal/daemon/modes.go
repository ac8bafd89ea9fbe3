package daemon

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/shoal-p2p/shoal/demand/cachefiles"
	"github.com/shoal-p2p/shoal/demand/fanotify"
	"github.com/shoal-p2p/shoal/demand/fusefs"
	"github.com/shoal-p2p/shoal/demand/fusetree"
	"github.com/shoal-p2p/shoal/mount"
)

// modeOrder is the order `auto` tries the modes in: the kernel's own cache first, and last
// fusetree, which needs nothing of the kernel but FUSE.
var modeOrder = []mount.Mode{mount.Fscache, mount.Fanotify, mount.FUSE, mount.FUSETree}

// probeMode reports whether mode m can run on this machine with the cache directory dataDir; nil
// means it can, otherwise the error says why. Each frontend probes itself; the file-backed modes
// also need EROFS file-backed mounts.
func probeMode(dataDir string, m mount.Mode) error {
	switch m {
	case mount.Fscache:
		return cachefiles.Probe(dataDir) // opens /dev/cachefiles and binds a scratch cache
	case mount.Fanotify:
		return errors.Join(mount.ProbeFileBacked(), fanotify.Probe(dataDir))
	case mount.FUSE:
		return errors.Join(mount.ProbeFileBacked(), fusefs.Probe())
	case mount.FUSETree:
		return fusetree.Probe()
	}
	return fmt.Errorf("unknown mount mode %q", m)
}

// chooseMode resolves a requested mode ("auto", "" for auto, or a mode name) against probe,
// which says whether a mode can run here (nil) or why not. "auto" takes the first available mode
// in modeOrder and says why the ones before it were passed over; an explicit mode that cannot run
// is the caller's to fix (errBadRequest), with the probe's reason.
func chooseMode(requested string, probe func(mount.Mode) error) (mount.Mode, string, error) {
	if requested == "" || requested == "auto" {
		var why string
		for _, m := range modeOrder {
			if err := probe(m); err != nil {
				why += fmt.Sprintf("%s: %v; ", m, err)
				continue
			}
			return m, "auto: " + why + string(m) + " available", nil
		}
		return "", "", fmt.Errorf("no mount mode works on this host: %s", strings.TrimSuffix(why, "; "))
	}
	m := mount.Mode(requested)
	if !slices.Contains(modeOrder, m) {
		return "", "", fmt.Errorf("%w: unknown mount mode %q: use auto, fscache, fanotify, fuse or fusetree", errBadRequest, requested)
	}
	if err := probe(m); err != nil {
		return "", "", fmt.Errorf("%w: %s mode is not available here: %v", errBadRequest, m, err)
	}
	return m, "requested", nil
}

// ModeStatus says whether one mode can run here, and why not.
type ModeStatus struct {
	Mode      mount.Mode
	Available bool
	Reason    string // why it is unavailable; empty when available
}

// ProbeResult is what ProbeModes found.
type ProbeResult struct {
	// Best is the first available mode in order of preference (fscache, fanotify, FUSE,
	// fusetree), or ""
	// when none is.
	Best  mount.Mode
	Modes []ModeStatus // every mode, in order of preference
}

// String is a one-line summary for logs.
func (p ProbeResult) String() string {
	var parts []string
	for _, m := range p.Modes {
		if m.Available {
			parts = append(parts, string(m.Mode)+": available")
		} else {
			parts = append(parts, string(m.Mode)+": "+m.Reason)
		}
	}
	best := string(p.Best)
	if best == "" {
		best = "none"
	}
	return "mode " + best + " (" + strings.Join(parts, "; ") + ")"
}

// ProbeModes checks every mode with the cache directory dataDir and picks the best. Probing
// fscache opens /dev/cachefiles (exclusive) for a moment, so do not probe while a cachefiles
// daemon of this host is starting.
func ProbeModes(dataDir string) ProbeResult {
	var res ProbeResult
	for _, m := range modeOrder {
		st := ModeStatus{Mode: m, Available: true}
		if err := probeMode(dataDir, m); err != nil {
			st = ModeStatus{Mode: m, Reason: err.Error()}
		}
		res.Modes = append(res.Modes, st)
		if st.Available && res.Best == "" {
			res.Best = m
		}
	}
	return res
}
