package daemon

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/time/rate"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoal-p2p/shoal/origin"
)

type ocispecDescriptor = ocispec.Descriptor

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

func (d *Daemon) statePath() string { return filepath.Join(d.cfg.DataDir, "state.json") }

// saveState writes the state atomically (temp file, fsync, rename).
func (d *Daemon) saveState() {
	d.mu.Lock()
	var st state
	for _, im := range d.images {
		mounts := map[string]string{}
		for k, v := range im.mounts {
			mounts[k] = v
		}
		st.Images = append(st.Images, stateImage{Ref: im.Ref, Manifest: im.Manifest, Mounts: mounts,
			Prefetch: im.prefetch.State != ""})
	}
	d.mu.Unlock()
	sort.Slice(st.Images, func(i, j int) bool { return st.Images[i].Ref < st.Images[j].Ref })
	b, err := json.MarshalIndent(st, "", "  ")
	if err == nil {
		err = writeFileAtomic(d.statePath(), b)
	}
	if err != nil {
		d.log.Error("saving state", "err", err)
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

// restore brings back the images and mounts of the last run. Leftover mounts of a daemon that
// was killed are unmounted first, so they cannot block the new ones.
func (d *Daemon) restore(ctx context.Context) {
	b, err := os.ReadFile(d.statePath())
	if os.IsNotExist(err) {
		return
	}
	var st state
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil {
		d.log.Error("reading state: starting with no images", "path", d.statePath(), "err", err)
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
		src, err := origin.Open(si.Ref, d.originCf)
		if err == nil {
			var im *image
			if im, err = d.registerImage(ctx, si.Ref, src, si.Manifest); err == nil {
				ims = append(ims, restored{si, im})
				continue
			}
		}
		d.log.Error("restoring image", "ref", si.Ref, "err", err)
	}
	for _, r := range ims {
		for mp, mode := range r.si.Mounts {
			if ctx.Err() != nil {
				return
			}
			fe, err := d.frontend(mode)
			if err == nil {
				if mode == "fscache" && isFscacheMountOf(mp, r.im) {
					// Left by the previous worker under the same supervisor: the kernel's cache
					// lived on, so the mount did too.
					d.log.Info("fscache mount adopted", "ref", r.si.Ref, "mountpoint", mp)
				} else {
					cleanupStaleMount(d.log, mp)
					err = fe.Mount(ctx, r.im, mp)
				}
			}
			if err != nil {
				d.log.Error("restoring mount", "ref", r.si.Ref, "mountpoint", mp, "mode", mode, "err", err)
				continue
			}
			d.mu.Lock()
			r.im.mounts[mp] = mode
			d.mu.Unlock()
			d.log.Info("mount restored", "ref", r.si.Ref, "mountpoint", mp, "mode", mode)
		}
		d.mu.Lock()
		mounted := len(r.im.mounts) > 0
		d.mu.Unlock()
		d.pinImage(r.im, mounted) // a mount that could not be restored no longer holds its data
		if r.si.Prefetch || (len(r.si.Mounts) > 0 && d.cfg.Prefetch) {
			d.startPrefetch(r.im)
		}
	}
}

func newLimiter(bytesPerSec int64) *rate.Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bytesPerSec), int(min(bytesPerSec, 16<<20)))
}

func p2pPeerID(s string) (peer.ID, error) { return peer.Decode(s) }
