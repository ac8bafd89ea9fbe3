package daemon

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"

	"github.com/shoal-p2p/shoal/mount"
)

// state is what survives a restart: the images this host knows (with their manifests, so no
// origin is needed to come back) and where they were mounted.
type state struct {
	Images []stateImage `json:"images"`
}

type stateImage struct {
	Ref      string            `json:"ref"`
	Manifest []byte            `json:"manifest"`
	Mounts   map[string]string `json:"mounts"` // mountpoint → mode
	Prefetch bool              `json:"prefetch"`
}

func (s *service) statePath() string { return filepath.Join(s.cfg.DataDir, "state.json") }

// saveState writes the state atomically (temp file, fsync, rename). Writes are serialized, so a
// snapshot taken earlier never replaces a newer one.
func (s *service) saveState() {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	var st state
	for _, im := range s.reg.Images() {
		mounts := map[string]string{}
		for mp, mode := range s.reg.Mounts(im.digest()) {
			mounts[mp] = string(mode)
		}
		pre, _ := s.prefetch.Status(im.digest())
		st.Images = append(st.Images, stateImage{Ref: im.Ref, Manifest: im.Manifest, Mounts: mounts, Prefetch: pre != ""})
	}
	sort.Slice(st.Images, func(i, j int) bool { return st.Images[i].Ref < st.Images[j].Ref })
	b, err := json.MarshalIndent(st, "", "  ")
	if err == nil {
		err = writeFileAtomic(s.statePath(), b)
	}
	if err != nil {
		s.log.Error("saving state", "err", err)
	}
}

func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".state-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// restore brings back the images and mounts of the last run. An image or mount that cannot be
// restored is logged and skipped; the others come back. A mount left by a killed daemon at a
// recorded mountpoint is unmounted first (or, for fscache under the supervisor, adopted).
func (s *service) restore(ctx context.Context) {
	defer s.restored.Store(true)
	if !s.begin() {
		return
	}
	defer s.ops.Done()
	b, err := os.ReadFile(s.statePath())
	if os.IsNotExist(err) {
		return
	}
	var st state
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil {
		s.log.Error("reading state: starting with no images", "path", s.statePath(), "err", err)
		return
	}
	// Every image is registered before any frontend starts: a supervised restart's fscache
	// frontend makes the kernel resend the requests it was waiting on, for any of them.
	type restored struct {
		si stateImage
		im *image
	}
	var ims []restored
	for _, si := range st.Images {
		if ctx.Err() != nil {
			return
		}
		im, err := s.loader.Reload(ctx, si.Ref, si.Manifest)
		if err == nil {
			im, err = s.reg.Add(ctx, im)
		}
		if err != nil {
			s.log.Error("restoring image", "ref", si.Ref, "err", err)
			continue
		}
		ims = append(ims, restored{si, im})
	}
	for _, r := range ims {
		mps := make([]string, 0, len(r.si.Mounts))
		for mp := range r.si.Mounts {
			mps = append(mps, mp)
		}
		sort.Strings(mps)
		for _, mp := range mps {
			if ctx.Err() != nil {
				return
			}
			mode := mount.Mode(r.si.Mounts[mp])
			if err := s.mount(ctx, r.im, mp, mode, true); err != nil {
				s.log.Error("restoring mount", "ref", r.si.Ref, "mountpoint", mp, "mode", mode, "err", err)
				continue
			}
			s.log.Info("mount restored", "ref", r.si.Ref, "mountpoint", mp, "mode", mode)
		}
		s.syncPins(r.im) // a mount that could not be restored no longer holds its data
		if r.si.Prefetch || (len(r.si.Mounts) > 0 && s.cfg.Prefetch) {
			s.prefetch.Start(ctx, r.im)
		}
	}
	// state.json is not written here: an image or mount that failed to come back (an origin down
	// for a moment) stays in it for the next start, until the next change rewrites it.
}
