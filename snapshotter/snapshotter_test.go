package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shoal-p2p/shoal/bootstrap"
)

// fakeDaemon stands in for `shoal daemon` in tests without root: a "mount" is an entry in a map
// that the snapshotter's mount check reads (the e2e tests run the real daemon and kernel).
type fakeDaemon struct {
	mu      sync.Mutex
	mounted map[string]string // mountpoint → ref
	mounts  []string          // every Mount call's ref, in order
	modes   []string          // every Mount call's mode, in order
	umounts []string
	fail    error
	// restoring, while set, is a restore of the last run in progress, as the real daemon runs
	// one at start: Restored answers false, and Mount at a mountpoint in it fails as the
	// daemon's does at a reserved one. finishRestore mounts them.
	restoring   map[string]string // mountpoint → ref
	statusCalls int
}

// startRestore makes the daemon restore ref at mp, as it does at start from state.json.
func (f *fakeDaemon) startRestore(mp, ref string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.restoring == nil {
		f.restoring = map[string]string{}
	}
	f.restoring[mp] = ref
}

func (f *fakeDaemon) finishRestore() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for mp, ref := range f.restoring {
		f.mounted[mp] = ref
	}
	f.restoring = nil
}

func (f *fakeDaemon) Restored(context.Context) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statusCalls++
	return f.restoring == nil, nil
}

func newFakeDaemon() *fakeDaemon { return &fakeDaemon{mounted: map[string]string{}} }

func (f *fakeDaemon) Mount(_ context.Context, ref, mp, mode string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	if _, ok := f.mounted[mp]; ok {
		return fmt.Errorf("%s is already a Shoal mount", mp)
	}
	if _, ok := f.restoring[mp]; ok {
		return fmt.Errorf("%s is already a Shoal mount (being restored)", mp)
	}
	f.mounted[mp] = ref
	f.mounts = append(f.mounts, ref)
	f.modes = append(f.modes, mode)
	return nil
}

func (f *fakeDaemon) Umount(_ context.Context, mp string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.mounted[mp]; !ok {
		return fmt.Errorf("%s is not mounted", mp)
	}
	delete(f.mounted, mp)
	f.umounts = append(f.umounts, mp)
	return nil
}

func (f *fakeDaemon) isMounted(mp string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.mounted[mp]
	return ok, nil
}

func newTest(t *testing.T, root string, d *fakeDaemon) *Snapshotter {
	t.Helper()
	s, err := New(root, d, Config{})
	if err != nil {
		t.Fatal(err)
	}
	s.mounted = d.isMounted
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// shoalImage is the layer list of a runnable Shoal image as WriteImage lays it out: blobs,
// chunk manifests, bootstrap last; the same annotations on each.
type shoalImage struct {
	boot    digest.Digest
	roles   []string
	diffIDs []digest.Digest
}

func newShoalImage(name string) shoalImage {
	im := shoalImage{boot: digest.FromString("bootstrap " + name)}
	for i, r := range []string{bootstrap.RoleBlob, bootstrap.RoleBlob, bootstrap.RoleChunks, bootstrap.RoleChunks, bootstrap.RoleBootstrap} {
		im.roles = append(im.roles, r)
		im.diffIDs = append(im.diffIDs, digest.FromString(fmt.Sprintf("%s layer %d", name, i)))
	}
	return im
}

// chain returns the chain ID of layer i.
func (im shoalImage) chain(i int) string { return identity.ChainID(im.diffIDs[:i+1]).String() }

// labels are what containerd's unpacker passes to Prepare for layer i (ref: the CRI label).
func (im shoalImage) labels(i int, ref string) map[string]string {
	l := map[string]string{
		snapshots.LabelSnapshotRef:            im.chain(i),
		bootstrap.AnnotationSnapshotRole:      im.roles[i],
		bootstrap.AnnotationSnapshotBootstrap: im.boot.String(),
	}
	if ref != "" {
		l[LabelImageRef] = ref
	}
	return l
}

// unpack runs the unpacker's Prepare sequence and checks each answer is ErrAlreadyExists.
func (im shoalImage) unpack(t *testing.T, sn snapshots.Snapshotter, ref string) {
	t.Helper()
	ctx := context.Background()
	parent := ""
	for i := range im.roles {
		_, err := sn.Prepare(ctx, fmt.Sprintf("extract-%d %s", i, im.chain(i)), parent, snapshots.WithLabels(im.labels(i, ref)))
		if !errdefs.IsAlreadyExists(err) {
			t.Fatalf("Prepare of layer %d (%s): %v, want ErrAlreadyExists", i, im.roles[i], err)
		}
		info, err := sn.Stat(ctx, im.chain(i))
		if err != nil {
			t.Fatalf("Stat of layer %d: %v", i, err)
		}
		if info.Kind != snapshots.KindCommitted || info.Parent != parent {
			t.Fatalf("layer %d: kind %v parent %q, want committed over %q", i, info.Kind, info.Parent, parent)
		}
		parent = im.chain(i)
	}
}

func option(m mount.Mount, key string) string {
	for _, o := range m.Options {
		if v, ok := strings.CutPrefix(o, key+"="); ok {
			return v
		}
	}
	return ""
}

func TestShoalImageIsMountedNotUnpacked(t *testing.T) {
	ctx := context.Background()
	d := newFakeDaemon()
	root := t.TempDir()
	s := newTest(t, root, d)
	im := newShoalImage("app")
	im.unpack(t, s, "registry.test/app:shoal")

	top := im.chain(len(im.roles) - 1)
	mp := filepath.Join(root, "images", im.boot.Encoded())
	if !slices.Equal(d.mounts, []string{"registry.test/app:shoal"}) {
		t.Fatalf("daemon mounts %v, want the image once", d.mounts)
	}
	if d.mounted[mp] == "" {
		t.Fatalf("image not mounted at %s: %v", mp, d.mounted)
	}
	// A container's rootfs: overlay, the image as the only lower (blob and chunk layers are empty).
	ms, err := s.Prepare(ctx, "container", top)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Type != "overlay" {
		t.Fatalf("container mounts %+v, want one overlay", ms)
	}
	if got := option(ms[0], "lowerdir"); got != mp {
		t.Errorf("lowerdir %q, want the image mount point %q", got, mp)
	}
	for _, k := range []string{"upperdir", "workdir"} {
		dir := option(ms[0], k)
		if st, err := os.Stat(dir); err != nil || !st.IsDir() || !strings.HasPrefix(dir, filepath.Join(root, "snapshots")) {
			t.Errorf("%s %q: not a directory under the snapshotter's root (%v)", k, dir, err)
		}
	}
	again, err := s.Mounts(ctx, "container")
	if err != nil || !slices.EqualFunc(again, ms, func(a, b mount.Mount) bool { return slices.Equal(a.Options, b.Options) }) {
		t.Errorf("Mounts = %+v, %v; want what Prepare gave", again, err)
	}
	// A view is the image itself, read-only.
	vs, err := s.View(ctx, "view", top)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || vs[0].Type != "bind" || vs[0].Source != mp || !slices.Contains(vs[0].Options, "ro") {
		t.Errorf("view mounts %+v, want a read-only bind of %s", vs, mp)
	}
	// The same layers unpacked again (another namespace, a second pull) are already there.
	im.unpack(t, s, "registry.test/app:shoal")
	if len(d.mounts) != 1 {
		t.Errorf("second unpack mounted the image again: %v", d.mounts)
	}
	if u, err := s.Usage(ctx, top); err != nil || u.Size != 0 {
		t.Errorf("Usage of the bootstrap layer = %+v, %v; want zero (the data is the daemon's)", u, err)
	}
}

func TestRemoveUnmountsWithTheLastUser(t *testing.T) {
	ctx := context.Background()
	d := newFakeDaemon()
	root := t.TempDir()
	s := newTest(t, root, d)
	im := newShoalImage("app")
	im.unpack(t, s, "registry.test/app:shoal")
	top := im.chain(len(im.roles) - 1)
	if _, err := s.Prepare(ctx, "c1", top); err != nil {
		t.Fatal(err)
	}
	if _, err := s.View(ctx, "v1", top); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, top); err == nil {
		t.Fatal("removing the image's layer under a container succeeded")
	}
	for _, k := range []string{"c1", "v1"} {
		if err := s.Remove(ctx, k); err != nil {
			t.Fatal(err)
		}
		if len(d.umounts) != 0 {
			t.Fatalf("image unmounted while %s's sibling still used it", k)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "snapshots")); len(entries) != 0 {
		t.Errorf("snapshot directories left after Remove: %v", entries)
	}
	for i := len(im.roles) - 1; i >= 0; i-- {
		if err := s.Remove(ctx, im.chain(i)); err != nil {
			t.Fatalf("remove layer %d: %v", i, err)
		}
	}
	mp := filepath.Join(root, "images", im.boot.Encoded())
	if !slices.Equal(d.umounts, []string{mp}) {
		t.Errorf("umounts %v, want %s once", d.umounts, mp)
	}
	if _, err := os.Stat(mp); !os.IsNotExist(err) {
		t.Errorf("image mount point left: %v", err)
	}
}

func TestShoalLayerWithoutImageRef(t *testing.T) {
	ctx := context.Background()
	d := newFakeDaemon()
	s := newTest(t, t.TempDir(), d)
	im := newShoalImage("app")
	parent := ""
	for i := range im.roles {
		_, err := s.Prepare(ctx, "extract "+im.chain(i), parent, snapshots.WithLabels(im.labels(i, "")))
		if im.roles[i] != bootstrap.RoleBootstrap {
			if !errdefs.IsAlreadyExists(err) {
				t.Fatalf("layer %d: %v", i, err)
			}
			parent = im.chain(i)
			continue
		}
		if !errors.Is(err, ErrNoImageRef) || !strings.Contains(err.Error(), LabelImageRef) {
			t.Fatalf("bootstrap layer without a ref: %v, want ErrNoImageRef naming %s", err, LabelImageRef)
		}
		if _, err := s.Stat(ctx, im.chain(i)); !errdefs.IsNotFound(err) {
			t.Errorf("bootstrap layer committed anyway: %v", err)
		}
	}
	if len(d.mounts) != 0 {
		t.Errorf("daemon asked to mount %v", d.mounts)
	}
}

func TestDaemonFailureIsPrepareError(t *testing.T) {
	ctx := context.Background()
	d := newFakeDaemon()
	d.fail = errors.New("manifest unknown")
	s := newTest(t, t.TempDir(), d)
	im := newShoalImage("app")
	parent := ""
	for i := range im.roles {
		_, err := s.Prepare(ctx, "extract "+im.chain(i), parent, snapshots.WithLabels(im.labels(i, "registry.test/app:shoal")))
		if im.roles[i] == bootstrap.RoleBootstrap {
			if err == nil || errdefs.IsAlreadyExists(err) || !strings.Contains(err.Error(), "manifest unknown") {
				t.Fatalf("bootstrap with a failing daemon: %v", err)
			}
		}
		parent = im.chain(i)
	}
	// Once the daemon works, the unpack goes through.
	d.fail = nil
	im.unpack(t, s, "registry.test/app:shoal")
}

func TestBadShoalLabels(t *testing.T) {
	ctx := context.Background()
	s := newTest(t, t.TempDir(), newFakeDaemon())
	for name, labels := range map[string]map[string]string{
		"role":      {snapshots.LabelSnapshotRef: "x", bootstrap.AnnotationSnapshotRole: "kernel", bootstrap.AnnotationSnapshotBootstrap: digest.FromString("b").String()},
		"bootstrap": {snapshots.LabelSnapshotRef: "x", bootstrap.AnnotationSnapshotRole: bootstrap.RoleBlob, bootstrap.AnnotationSnapshotBootstrap: "sha256:nothex"},
		"missing":   {snapshots.LabelSnapshotRef: "x", bootstrap.AnnotationSnapshotRole: bootstrap.RoleBlob},
	} {
		if _, err := s.Prepare(ctx, "k-"+name, "", snapshots.WithLabels(labels)); !errors.Is(err, ErrBadLabels) {
			t.Errorf("%s: %v, want ErrBadLabels", name, err)
		}
	}
}

// Layers of other images are unpacked by containerd into plain overlayfs snapshots.
func TestPlainLayers(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := newTest(t, root, newFakeDaemon())
	ms, err := s.Prepare(ctx, "extract-1", "", snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "chain1"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Type != "bind" || !slices.Contains(ms[0].Options, "rw") {
		t.Fatalf("first layer mounts %+v, want a writable bind", ms)
	}
	if err := os.WriteFile(filepath.Join(ms[0].Source, "hello"), make([]byte, 10000), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, "chain1", "extract-1"); err != nil {
		t.Fatal(err)
	}
	if u, err := s.Usage(ctx, "chain1"); err != nil || u.Size < 10000 || u.Inodes < 2 {
		t.Errorf("Usage = %+v, %v; want the file counted", u, err)
	}
	ms2, err := s.Prepare(ctx, "extract-2", "chain1")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, "chain2", "extract-2"); err != nil {
		t.Fatal(err)
	}
	if got := option(ms2[0], "lowerdir"); got != ms[0].Source {
		t.Errorf("second layer's lowerdir %q, want the first's %q", got, ms[0].Source)
	}
	cm, err := s.Prepare(ctx, "container", "chain2")
	if err != nil {
		t.Fatal(err)
	}
	lowers := strings.Split(option(cm[0], "lowerdir"), ":")
	if len(lowers) != 2 || lowers[1] != ms[0].Source {
		t.Errorf("container lowerdir %v: want two layers, the first last", lowers)
	}
	if !slices.Contains(cm[0].Options, "index=off") && fileExists("/sys/module/overlay/parameters/index") {
		t.Errorf("overlay options %v lack index=off", cm[0].Options)
	}
	var names []string
	if err := s.Walk(ctx, func(_ context.Context, i snapshots.Info) error { names = append(names, i.Name); return nil }, "kind==committed"); err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"chain1", "chain2"}) {
		t.Errorf("Walk(kind==committed) = %v", names)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// A Shoal image under plain layers (a Dockerfile FROM a Shoal image, built by containerd).
func TestPlainLayerOverShoalImage(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := newTest(t, root, newFakeDaemon())
	im := newShoalImage("base")
	im.unpack(t, s, "registry.test/base:shoal")
	top := im.chain(len(im.roles) - 1)
	ms, err := s.Prepare(ctx, "extract-app", top)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, "app", "extract-app"); err != nil {
		t.Fatal(err)
	}
	cm, err := s.Prepare(ctx, "container", "app")
	if err != nil {
		t.Fatal(err)
	}
	want := option(ms[0], "upperdir") + ":" + filepath.Join(root, "images", im.boot.Encoded())
	if got := option(cm[0], "lowerdir"); got != want {
		t.Errorf("lowerdir %q, want %q", got, want)
	}
}

func TestUpdateKeepsShoalLabels(t *testing.T) {
	ctx := context.Background()
	s := newTest(t, t.TempDir(), newFakeDaemon())
	im := newShoalImage("app")
	im.unpack(t, s, "registry.test/app:shoal")
	top := im.chain(len(im.roles) - 1)
	info, err := s.Update(ctx, snapshots.Info{Name: top, Labels: map[string]string{"containerd.io/gc.root": "x"}}, "labels")
	if err != nil {
		t.Fatal(err)
	}
	if info.Labels["containerd.io/gc.root"] != "x" || info.Labels[bootstrap.AnnotationSnapshotRole] != bootstrap.RoleBootstrap || info.Labels[LabelShoalRef] == "" {
		t.Errorf("labels after update: %v", info.Labels)
	}
	if _, err := s.Update(ctx, snapshots.Info{Name: top, Labels: map[string]string{"a": "b"}}, "labels.a"); err != nil {
		t.Fatal(err)
	}
	if info, _ := s.Stat(ctx, top); info.Labels["a"] != "b" || info.Labels["containerd.io/gc.root"] != "x" {
		t.Errorf("labels after a single-label update: %v", info.Labels)
	}
}

// After a restart of both the snapshotter and the daemon (a reboot: nothing mounted), the
// snapshots are still there and the image is mounted again when a container needs it.
func TestRestartRecoversImageMounts(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	d := newFakeDaemon()
	s, err := New(root, d, Config{})
	if err != nil {
		t.Fatal(err)
	}
	s.mounted = d.isMounted
	im := newShoalImage("app")
	im.unpack(t, s, "registry.test/app:shoal")
	top := im.chain(len(im.roles) - 1)
	if _, err := s.Prepare(ctx, "container", top); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	d2 := newFakeDaemon() // the daemon came back with nothing mounted
	s2 := newTest(t, root, d2)
	ms, err := s2.Mounts(ctx, "container")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d2.mounts, []string{"registry.test/app:shoal"}) {
		t.Errorf("after restart the daemon mounted %v, want the image again", d2.mounts)
	}
	if got := option(ms[0], "lowerdir"); got != filepath.Join(root, "images", im.boot.Encoded()) {
		t.Errorf("lowerdir %q", got)
	}
	// Recover mounts nothing twice.
	s2.Recover(ctx)
	if len(d2.mounts) != 1 {
		t.Errorf("Recover mounted again: %v", d2.mounts)
	}
}

// After a reboot the daemon mounts its last run's images at their old mount points itself,
// while the snapshotter may already be asked for a container's mounts: the snapshotter waits
// for that restore instead of racing it (a Mount that fails, or an overlay built on the empty
// directory under a mount point about to be mounted).
func TestMountsWaitForTheDaemonsRestore(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	d := newFakeDaemon()
	s, err := New(root, d, Config{})
	if err != nil {
		t.Fatal(err)
	}
	s.mounted = d.isMounted
	im := newShoalImage("app")
	im.unpack(t, s, "registry.test/app:shoal")
	top := im.chain(len(im.roles) - 1)
	if _, err := s.Prepare(ctx, "container", top); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	mp := filepath.Join(root, "images", im.boot.Encoded())
	d2 := newFakeDaemon()
	d2.startRestore(mp, "registry.test/app:shoal")
	s2 := newTest(t, root, d2)
	go func() {
		time.Sleep(300 * time.Millisecond)
		d2.finishRestore()
	}()
	ms, err := s2.Mounts(ctx, "container")
	if err != nil {
		t.Fatalf("Mounts during the daemon's restore: %v", err)
	}
	if ok, _ := d2.isMounted(mp); !ok {
		t.Fatalf("Mounts returned %+v before the image was mounted at %s", ms, mp)
	}
	if len(d2.mounts) != 0 {
		t.Errorf("the snapshotter asked the restoring daemon to mount %v; the restore mounts it", d2.mounts)
	}
	// A daemon that restored nothing (its state lost) is asked to mount, once.
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	d3 := newFakeDaemon()
	s3 := newTest(t, root, d3)
	if _, err := s3.Mounts(ctx, "container"); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d3.mounts, []string{"registry.test/app:shoal"}) {
		t.Errorf("daemon with nothing restored was asked to mount %v, want the image once", d3.mounts)
	}
}

func TestCleanup(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	d := newFakeDaemon()
	s := newTest(t, root, d)
	stray := filepath.Join(root, "snapshots", "new-crashed")
	if err := os.MkdirAll(filepath.Join(stray, "fs"), 0o755); err != nil {
		t.Fatal(err)
	}
	// An image mounted for a bootstrap layer whose commit never happened.
	orphan := digest.FromString("orphan")
	if err := s.ensureImage(ctx, orphan, "registry.test/orphan:1"); err != nil {
		t.Fatal(err)
	}
	im := newShoalImage("kept")
	im.unpack(t, s, "registry.test/kept:1")
	if err := s.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if fileExists(stray) {
		t.Error("stray snapshot directory survived Cleanup")
	}
	if !slices.Equal(d.umounts, []string{filepath.Join(root, "images", orphan.Encoded())}) {
		t.Errorf("Cleanup unmounted %v, want only the orphan image", d.umounts)
	}
}

// The snapshotter through containerd's own proxy client over gRPC, as containerd calls it: the
// ErrAlreadyExists of a Shoal layer and the mounts survive the wire.
func TestGRPCProxy(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	d := newFakeDaemon()
	s := newTest(t, filepath.Join(dir, "root"), d)
	sock := filepath.Join(dir, "s.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, s, l) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "shoal")
	im := newShoalImage("app")
	im.unpack(t, sn, "registry.test/app:shoal")
	ms, err := sn.Prepare(ctx, "container", im.chain(len(im.roles)-1))
	if err != nil {
		t.Fatal(err)
	}
	if option(ms[0], "lowerdir") != filepath.Join(dir, "root", "images", im.boot.Encoded()) {
		t.Errorf("mounts over gRPC: %+v", ms)
	}
	if _, err := Listen(sock); err == nil {
		t.Error("a second Listen on a served socket succeeded")
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// TestModeReachesTheDaemon: the configured mount mode (fusetree here) is what the daemon is
// asked for; an unknown one is refused at New, naming the choices.
func TestModeReachesTheDaemon(t *testing.T) {
	d := newFakeDaemon()
	s, err := New(t.TempDir(), d, Config{Mode: "fusetree"})
	if err != nil {
		t.Fatal(err)
	}
	s.mounted = d.isMounted
	t.Cleanup(func() { _ = s.Close() })
	newShoalImage("img").unpack(t, s, "reg.example/img:v1")
	if len(d.modes) != 1 || d.modes[0] != "fusetree" {
		t.Fatalf("daemon asked for modes %v, want [fusetree]", d.modes)
	}
	if _, err := New(t.TempDir(), d, Config{Mode: "erofs"}); err == nil || !strings.Contains(err.Error(), "fusetree") {
		t.Fatalf("New with mode erofs: %v, want an error listing the modes", err)
	}
}
