package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/demand"
	"github.com/shoal-p2p/shoal/mount"
	"github.com/shoal-p2p/shoal/p2p"
)

// TestMountUmount: a mount reaches the mode's frontend, is reported, pinned and saved; its unmount
// undoes all three.
func TestMountUmount(t *testing.T) {
	x := testBlob("x", 4)
	f := newFixture(t, serviceConfig{}, testImage("reg/a:1", x))
	mp, code, msg := f.mount("reg/a:1", "fuse")
	if code != http.StatusOK {
		t.Fatalf("mount: %d %s", code, msg)
	}
	if got := f.frontend(mount.FUSE).mountpoints(); !slices.Equal(got, []string{mp}) {
		t.Fatalf("fuse frontend mounted %v, want %s", got, mp)
	}
	st := f.stats()
	if len(st.Images) != 1 || st.Images[0].Mounts[mp] != "fuse" || st.Images[0].Prefetch != "idle" || st.Images[0].Chunks != 4 {
		t.Fatalf("stats after mount: %+v", st.Images)
	}
	if p := f.store.pinned(); !slices.Equal(p, []digest.Digest{x.Digest}) {
		t.Errorf("pinned %v, want the mounted image's blob", p)
	}
	if s := f.savedState(); len(s.Images) != 1 || s.Images[0].Mounts[mp] != "fuse" {
		t.Errorf("state.json after mount: %+v", s)
	}

	if code, msg := f.call("POST", "/v1/umount", UmountRequest{Mountpoint: mp}, nil); code != http.StatusOK {
		t.Fatalf("umount: %d %s", code, msg)
	}
	if got := f.frontend(mount.FUSE).mountpoints(); len(got) != 0 {
		t.Errorf("still mounted in the frontend: %v", got)
	}
	if st := f.stats(); len(st.Images) != 1 || len(st.Images[0].Mounts) != 0 {
		t.Errorf("stats after umount: %+v", st.Images)
	}
	if p := f.store.pinned(); len(p) != 0 {
		t.Errorf("still pinned after umount: %v", p)
	}
	if s := f.savedState(); len(s.Images) != 1 || len(s.Images[0].Mounts) != 0 {
		t.Errorf("state.json after umount: %+v", s)
	}
	if code, _ := f.call("POST", "/v1/umount", UmountRequest{Mountpoint: mp}, nil); code != http.StatusNotFound {
		t.Errorf("second umount: %d, want 404", code)
	}
}

// TestMountRefusals: what the caller must fix is a 400 (or 404) saying what; nothing is mounted.
func TestMountRefusals(t *testing.T) {
	f := newFixture(t, serviceConfig{}, testImage("a", testBlob("x", 1)))
	f.probes[mount.Fanotify] = errors.New("kernel 6.1 has no pre-content events")
	mp, code, _ := f.mount("a", "fuse")
	if code != http.StatusOK {
		t.Fatal(code)
	}
	for _, tc := range []struct {
		name string
		req  any
		code int
		want string
	}{
		{"no ref", MountRequest{Mountpoint: t.TempDir()}, 400, "no image reference"},
		{"not a directory", MountRequest{Ref: "a", Mountpoint: filepath.Join(f.dir, "nodir")}, 400, "not a directory"},
		{"already mounted", MountRequest{Ref: "a", Mountpoint: mp, Mode: "fuse"}, 400, "already a Shoal mount"},
		{"unknown mode", MountRequest{Ref: "a", Mountpoint: t.TempDir(), Mode: "nfs"}, 400, `unknown mount mode "nfs"`},
		{"unavailable mode", MountRequest{Ref: "a", Mountpoint: t.TempDir(), Mode: "fanotify"}, 400, "fanotify mode is not available here: kernel 6.1 has no pre-content events"},
		{"unknown image", MountRequest{Ref: "nosuch", Mountpoint: t.TempDir()}, 404, "nosuch"},
		{"unknown field", map[string]string{"ref": "a", "mountpont": "/x"}, 400, "unknown field"},
	} {
		code, msg := f.call("POST", "/v1/images", tc.req, nil)
		if code != tc.code || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: %d %q, want %d and %q", tc.name, code, msg, tc.code, tc.want)
		}
	}
	if n := len(f.frontend(mount.FUSE).mountpoints()); n != 1 {
		t.Errorf("%d fuse mounts, want the first only", n)
	}
	if f.builds[mount.Fanotify] != 0 {
		t.Error("an unavailable mode's frontend was built")
	}
}

// TestMountFailureLeavesNoTrace: a frontend that fails to mount leaves no mount recorded, no pin
// and nothing in state.json; the mountpoint can be used again.
func TestMountFailureLeavesNoTrace(t *testing.T) {
	x := testBlob("x", 2)
	f := newFixture(t, serviceConfig{Prefetch: true}, testImage("a", x))
	fe := f.frontend(mount.FUSE)
	fe.mountErr = errors.New("EROFS said no")
	mp, code, msg := f.mount("a", "fuse")
	if code != http.StatusInternalServerError || !strings.Contains(msg, "EROFS said no") || !strings.Contains(msg, mp) {
		t.Fatalf("failed mount: %d %q", code, msg)
	}
	if p := f.store.pinned(); len(p) != 0 {
		t.Errorf("pinned after a failed mount: %v", p)
	}
	st := f.stats()
	if len(st.Images) != 1 || len(st.Images[0].Mounts) != 0 || st.Images[0].Prefetch != "idle" {
		t.Errorf("after a failed mount: %+v", st.Images) // the image stays known, unmounted, not prefetched
	}
	if s := f.savedState(); len(s.Images) != 1 || len(s.Images[0].Mounts) != 0 {
		t.Errorf("state.json after a failed mount: %+v", s)
	}
	fe.mu.Lock()
	fe.mountErr = nil
	fe.mu.Unlock()
	code, msg = f.call("POST", "/v1/images", MountRequest{Ref: "a", Mountpoint: mp, Mode: "fuse"}, nil)
	if code != http.StatusOK {
		t.Fatalf("mount again at %s: %d %s", mp, code, msg)
	}
	if p := f.store.pinned(); len(p) != 1 {
		t.Errorf("pinned %v after the retry", p)
	}
}

// TestRemove: a mounted image is refused; an unmounted one leaves the resolver and the node but
// for the blobs another image uses, its prefetch stops, and it leaves state.json.
func TestRemove(t *testing.T) {
	x, shared := testBlob("x", 2), testBlob("shared", 2)
	f := newFixture(t, serviceConfig{}, testImage("a", x, shared), testImage("b", shared))
	started := make(chan struct{}, 4)
	f.resolver.prefetch = func(ctx context.Context, blob digest.Digest) error {
		started <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}
	mp, code, msg := f.mount("a", "fuse")
	if code != 200 {
		t.Fatal(code, msg)
	}
	if code, msg := f.call("POST", "/v1/prefetch", PrefetchRequest{Ref: "a"}, nil); code != 200 {
		t.Fatal(code, msg)
	}
	<-started
	if code, msg := f.call("POST", "/v1/prefetch", PrefetchRequest{Ref: "b"}, nil); code != 200 {
		t.Fatal(code, msg)
	}
	<-started
	code, msg = f.call("POST", "/v1/images/remove", RemoveRequest{Image: "a"}, nil)
	if code != 400 || !strings.Contains(msg, "mounted at "+mp) || !strings.Contains(msg, "unmount it first") {
		t.Fatalf("removing a mounted image: %d %q", code, msg)
	}
	if code, msg := f.call("POST", "/v1/umount", UmountRequest{Mountpoint: mp}, nil); code != 200 {
		t.Fatal(code, msg)
	}
	if code, msg := f.call("POST", "/v1/images/remove", RemoveRequest{Image: "a"}, nil); code != 200 {
		t.Fatal(code, msg)
	}
	if f.resolver.has(x.Digest) || f.node.has(x.Digest) {
		t.Error("the removed image's own blob is still registered")
	}
	if !f.resolver.has(shared.Digest) || !f.node.has(shared.Digest) {
		t.Error("the blob b still uses was unregistered")
	}
	eventually(t, "a's prefetch to stop (b's runs on)", func() bool { return f.resolver.running() == 1 })
	st := f.stats()
	if len(st.Images) != 1 || st.Images[0].Ref != "b" || st.Images[0].Prefetch != "running" {
		t.Errorf("images after removing a: %+v", st.Images)
	}
	if s := f.savedState(); len(s.Images) != 1 || s.Images[0].Ref != "b" || !s.Images[0].Prefetch {
		t.Errorf("state.json after removing a: %+v", s)
	}
	if code, _ := f.call("POST", "/v1/images/remove", RemoveRequest{Image: "a"}, nil); code != 404 {
		t.Errorf("removing a again: %d, want 404", code)
	}
}

// TestRestore: state.json's images and mounts come back; a mount whose frontend fails and an image
// whose origin is gone are skipped, the rest restored, pinned and prefetched; an fscache mount
// the previous worker left is adopted, not mounted again.
func TestRestore(t *testing.T) {
	x, y := testBlob("x", 2), testBlob("y", 2)
	a, b := testImage("a", x), testImage("b", y)
	f := newFixture(t, serviceConfig{Prefetch: true}, a, b)
	mpFuse, mpFan, mpFs, mpGone := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	st := state{Images: []stateImage{
		{Ref: "a", Manifest: a.Manifest, Mounts: map[string]string{mpFuse: "fuse", mpFan: "fanotify", mpFs: "fscache"}},
		{Ref: "b", Manifest: b.Manifest, Prefetch: true},
		{Ref: "gone", Manifest: []byte(`{}`), Mounts: map[string]string{mpGone: "fuse"}},
	}}
	js, _ := json.Marshal(st)
	if err := os.WriteFile(filepath.Join(f.dir, "state.json"), js, 0o600); err != nil {
		t.Fatal(err)
	}
	f.frontend(mount.Fanotify).mountErr = errors.New("fanotify_mark: ENODEV")
	f.frontend(mount.Fscache).adopt[mpFs] = true
	if f.svc.Status().Restored {
		t.Error("Status reports Restored before the restore ran")
	}
	f.svc.restore(context.Background())
	if !f.svc.Status().Restored {
		t.Error("Status does not report Restored after the restore (the snapshotter waits for it)")
	}

	rep := f.stats()
	if len(rep.Images) != 2 || rep.Images[0].Ref != "a" || rep.Images[1].Ref != "b" {
		t.Fatalf("restored images: %+v", rep.Images)
	}
	want := map[string]string{mpFuse: "fuse", mpFs: "fscache"}
	if got := rep.Images[0].Mounts; len(got) != 2 || got[mpFuse] != "fuse" || got[mpFs] != "fscache" {
		t.Errorf("a's mounts %v, want %v (the fanotify one failed)", got, want)
	}
	if fs := f.frontend(mount.Fscache); fs.mounts != 0 || !slices.Equal(fs.mountpoints(), []string{mpFs}) {
		t.Errorf("fscache: %d Mount calls, mounts %v; want the mount adopted", fs.mounts, fs.mountpoints())
	}
	if !slices.Equal(f.stale, []string{mpFuse, mpFan}) {
		t.Errorf("stale mounts cleaned at %v, want the two mountpoints mounted again", f.stale)
	}
	if p := f.store.pinned(); !slices.Equal(p, []digest.Digest{x.Digest}) {
		t.Errorf("pinned %v, want a's blob only", p)
	}
	if !f.resolver.has(y.Digest) || !f.node.has(y.Digest) {
		t.Error("b's blob not registered")
	}
	for i, want := range []string{"done", "done"} { // a: mounted with prefetch on; b: was prefetching
		if got := rep.Images[i].Prefetch; got != want && got != "running" {
			t.Errorf("%s prefetch %q", rep.Images[i].Ref, got)
		}
	}
	// state.json is left as it was: the failed mount and image are tried again at the next start.
	if s := f.savedState(); len(s.Images) != 3 {
		t.Errorf("state.json rewritten at restore: %+v", s)
	}
}

// TestModeChoice: auto takes the first available mode in order and says why it passed over the
// others; an explicit mode that cannot run is the caller's error, with the probe's reason.
func TestModeChoice(t *testing.T) {
	probes := func(errs map[mount.Mode]string) func(mount.Mode) error {
		return func(m mount.Mode) error {
			if e := errs[m]; e != "" {
				return errors.New(e)
			}
			return nil
		}
	}
	for _, tc := range []struct {
		name      string
		requested string
		errs      map[mount.Mode]string
		mode      mount.Mode
		reason    []string // substrings
		bad       bool     // errBadRequest
		fail      string   // substring of the error
	}{
		{"auto, all available", "auto", nil, mount.Fscache, []string{"fscache available"}, false, ""},
		{"empty is auto", "", map[mount.Mode]string{mount.Fscache: "no /dev/cachefiles"}, mount.Fanotify,
			[]string{"fscache: no /dev/cachefiles", "fanotify available"}, false, ""},
		{"auto falls to fuse", "auto", map[mount.Mode]string{mount.Fscache: "no device", mount.Fanotify: "tmpfs"}, mount.FUSE,
			[]string{"fscache: no device", "fanotify: tmpfs", "fuse available"}, false, ""},
		{"auto falls to fusetree", "auto", map[mount.Mode]string{mount.Fscache: "a", mount.Fanotify: "b", mount.FUSE: "kernel 5.15 is older than 6.12"}, mount.FUSETree,
			[]string{"fuse: kernel 5.15 is older than 6.12", "fusetree available"}, false, ""},
		{"auto, none", "auto", map[mount.Mode]string{mount.Fscache: "a", mount.Fanotify: "b", mount.FUSE: "no /dev/fuse", mount.FUSETree: "no /dev/fuse"}, "", nil,
			false, "no mount mode works on this host: fscache: a; fanotify: b; fuse: no /dev/fuse; fusetree: no /dev/fuse"},
		{"explicit fusetree", "fusetree", map[mount.Mode]string{mount.Fscache: "a", mount.FUSE: "no erofs"}, mount.FUSETree, []string{"requested"}, false, ""},
		{"explicit available", "fanotify", map[mount.Mode]string{mount.Fscache: "no device"}, mount.Fanotify, []string{"requested"}, false, ""},
		{"explicit unavailable", "fscache", map[mount.Mode]string{mount.Fscache: "no device"}, "", nil, true, "fscache mode is not available here: no device"},
		{"unknown", "nfs", nil, "", nil, true, `unknown mount mode "nfs"`},
	} {
		m, reason, err := chooseMode(tc.requested, probes(tc.errs))
		if tc.fail != "" {
			if err == nil || !strings.Contains(err.Error(), tc.fail) || errors.Is(err, errBadRequest) != tc.bad {
				t.Errorf("%s: %v, want an error with %q (bad request %v)", tc.name, err, tc.fail, tc.bad)
			}
			continue
		}
		if err != nil || m != tc.mode {
			t.Errorf("%s: %q %v, want %q", tc.name, m, err, tc.mode)
			continue
		}
		for _, r := range tc.reason {
			if !strings.Contains(reason, r) {
				t.Errorf("%s: reason %q lacks %q", tc.name, reason, r)
			}
		}
	}
}

// TestAutoModeOverAPI: `auto` goes through the probes; once a mode's frontend runs it is not
// probed again (probing fscache would open the device the frontend holds).
func TestAutoModeOverAPI(t *testing.T) {
	f := newFixture(t, serviceConfig{}, testImage("a", testBlob("x", 1)), testImage("b", testBlob("y", 1)))
	f.probes[mount.Fscache] = errors.New("no /dev/cachefiles")
	var resp MountResponse
	code, msg := f.call("POST", "/v1/images", MountRequest{Ref: "a", Mountpoint: t.TempDir()}, &resp)
	if code != 200 || resp.Mode != "fanotify" || !strings.Contains(resp.Reason, "fscache: no /dev/cachefiles") {
		t.Fatalf("auto mount: %d %s %+v", code, msg, resp)
	}
	f.probes[mount.Fanotify] = errors.New("would fail now")
	code, msg = f.call("POST", "/v1/images", MountRequest{Ref: "b", Mountpoint: t.TempDir(), Mode: "fanotify"}, &resp)
	if code != 200 || resp.Mode != "fanotify" {
		t.Errorf("explicit mode with its frontend running: %d %s %+v", code, msg, resp)
	}
}

// TestFrontendConstructionDoesNotBlock: while one mode's frontend is being built (the fscache
// handover can take 30 s), stats and mounts of other images in other modes complete; a second
// mount in the building mode waits for that one construction.
func TestFrontendConstructionDoesNotBlock(t *testing.T) {
	f := newFixture(t, serviceConfig{}, testImage("a", testBlob("x", 1)), testImage("b", testBlob("y", 1)), testImage("c", testBlob("z", 1)))
	release := make(chan struct{})
	f.block[mount.Fscache] = release
	type result struct {
		code int
		msg  string
	}
	fscache := make(chan result, 2)
	for _, ref := range []string{"a", "c"} {
		go func() {
			_, code, msg := f.mount(ref, "fscache")
			fscache <- result{code, msg}
		}()
	}
	if m := <-f.building; m != mount.Fscache {
		t.Fatalf("building %s", m)
	}
	done := make(chan result, 1)
	go func() {
		f.stats()
		_, code, msg := f.mount("b", "fuse")
		done <- result{code, msg}
	}()
	select {
	case r := <-done:
		if r.code != 200 {
			t.Fatalf("fuse mount while fscache starts: %d %s", r.code, r.msg)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stats and a fuse mount did not complete while the fscache frontend was being built")
	}
	select {
	case r := <-fscache:
		t.Fatalf("an fscache mount finished before its frontend was built: %+v", r)
	default:
	}
	close(release)
	for range 2 {
		if r := <-fscache; r.code != 200 {
			t.Errorf("fscache mount: %d %s", r.code, r.msg)
		}
	}
	if f.builds[mount.Fscache] != 1 {
		t.Errorf("fscache frontend built %d times, want once", f.builds[mount.Fscache])
	}
}

// TestFrontendSetRetries: a failed construction is not kept; one whose caller gave up does not
// fail the callers waiting for it.
func TestFrontendSetRetries(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	started := make(chan struct{}, 4)
	s := newFrontendSet(func(ctx context.Context, m mount.Mode) (frontend, error) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		started <- struct{}{}
		switch n {
		case 1:
			return nil, errors.New("device busy")
		case 2:
			<-ctx.Done() // its caller gives up
			return nil, ctx.Err()
		}
		return &fakeFrontend{mounted: map[string]digest.Digest{}}, nil
	})
	defer s.Close(slogDiscard())
	ctx := context.Background()
	if _, err := s.Get(ctx, mount.FUSE); err == nil || !strings.Contains(err.Error(), "device busy") {
		t.Fatalf("first: %v", err)
	}
	<-started
	cctx, cancel := context.WithCancel(ctx)
	first := make(chan error, 1)
	go func() { _, err := s.Get(cctx, mount.FUSE); first <- err }()
	<-started
	second := make(chan error, 1)
	go func() { _, err := s.Get(ctx, mount.FUSE); second <- err }()
	time.Sleep(20 * time.Millisecond) // let the second wait on the first's construction
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Errorf("the caller that gave up: %v", err)
	}
	if err := <-second; err != nil {
		t.Errorf("the waiting caller: %v, want the frontend built anew", err)
	}
	if s.Running(mount.FUSE) == nil || calls != 3 {
		t.Errorf("running %v after %d constructions", s.Running(mount.FUSE), calls)
	}
}

// TestShutdown: stopping waits for prefetches, unmounts every image (on a supervised restart,
// all but fscache ones), closes the frontends and refuses new operations.
func TestShutdown(t *testing.T) {
	for _, restart := range []bool{false, true} {
		f := newFixture(t, serviceConfig{Prefetch: true, Supervised: true}, testImage("a", testBlob("x", 1)), testImage("b", testBlob("y", 1)))
		f.resolver.prefetch = func(ctx context.Context, blob digest.Digest) error {
			<-ctx.Done()
			return ctx.Err()
		}
		mpA, code, _ := f.mount("a", "fuse")
		mpB, code2, _ := f.mount("b", "fscache")
		if code != 200 || code2 != 200 {
			t.Fatal(code, code2)
		}
		eventually(t, "prefetches to start", func() bool { return f.resolver.running() == 2 })
		f.svc.shutdown(restart)
		if n := f.resolver.running(); n != 0 {
			t.Errorf("restart=%v: %d prefetches still running after shutdown", restart, n)
		}
		if got := f.frontend(mount.FUSE).mountpoints(); len(got) != 0 {
			t.Errorf("restart=%v: fuse mounts left: %v", restart, got)
		}
		if got, want := f.frontend(mount.Fscache).mountpoints(), []string{mpB}; restart != slices.Equal(got, want) {
			t.Errorf("restart=%v: fscache mounts left: %v", restart, got)
		}
		if !f.frontend(mount.FUSE).closed || !f.frontend(mount.Fscache).closed {
			t.Errorf("restart=%v: frontends not closed", restart)
		}
		if s := f.savedState(); len(s.Images) != 2 || s.Images[0].Mounts[mpA] != "fuse" {
			t.Errorf("restart=%v: state.json lost the mounts: %+v", restart, s)
		}
		if code, _ := f.call("POST", "/v1/prefetch", PrefetchRequest{Ref: "a"}, nil); code != http.StatusServiceUnavailable {
			t.Errorf("restart=%v: prefetch after shutdown: %d", restart, code)
		}
	}
}

// TestPrefetchStates: a prefetch that leaves chunks out (an image larger than the cache) says
// so, with how much is local and why; one that fails says so; one that completes is done.
func TestPrefetchStates(t *testing.T) {
	for _, tc := range []struct {
		name, wantState, wantErr string
		err                      error
	}{
		{"complete", prefetchDone, "", nil},
		{"incomplete", prefetchIncomplete, "evicted", demand.ErrIncomplete},
		{"failed", prefetchFailed, "registry unavailable", errors.New("registry unavailable (test)")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, serviceConfig{}, testImage("a", testBlob("x", 2)))
			f.resolver.prefetch = func(ctx context.Context, blob digest.Digest) error { return tc.err }
			if code, msg := f.call("POST", "/v1/prefetch", PrefetchRequest{Ref: "a"}, nil); code != 200 {
				t.Fatal(code, msg)
			}
			var im ImageReport
			eventually(t, "prefetch to end", func() bool {
				for _, x := range f.stats().Images {
					if x.Ref == "a" {
						im = x
					}
				}
				return im.Prefetch != prefetchRunning && im.Prefetch != ""
			})
			if im.Prefetch != tc.wantState || !strings.Contains(im.PrefetchError, tc.wantErr) {
				t.Fatalf("prefetch state %q error %q, want %q with %q", im.Prefetch, im.PrefetchError, tc.wantState, tc.wantErr)
			}
		})
	}
}

// verifyFailures counts every source, as docs/stats.md says (issue 12: it counted only the
// store's own checks): the store's, each peer's wrong answers, and the origin's refused ones.
func TestStatsVerifyFailuresBySource(t *testing.T) {
	f := newFixture(t, serviceConfig{})
	f.store.mu.Lock()
	f.store.verifyFailures = 1
	f.store.mu.Unlock()
	f.resolver.mu.Lock()
	f.resolver.originCorrupt = 4
	f.resolver.mu.Unlock()
	f.node.mu.Lock()
	f.node.peers = []p2p.PeerStats{{ID: peer.ID("a"), Corrupt: 5, Banned: true}, {ID: peer.ID("b"), Corrupt: 2}}
	f.node.mu.Unlock()
	st := f.stats()
	if want := (VerifyBySource{Local: 1, Peers: 7, Origin: 4}); st.VerifyFailuresBy != want {
		t.Fatalf("verify failures by source %+v, want %+v", st.VerifyFailuresBy, want)
	}
	if st.VerifyFailures != 12 || st.Bans != 1 {
		t.Fatalf("verifyFailures %d (want 12), bans %d (want 1)", st.VerifyFailures, st.Bans)
	}
}
