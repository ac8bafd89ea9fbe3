package daemon

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/mount"
)

type registryFixture struct {
	store    *fakeStore
	resolver *fakeResolver
	node     *fakeNode
	forgot   []digest.Digest
	reg      *registry
}

func newRegistryFixture() *registryFixture {
	f := &registryFixture{store: newFakeStore(), resolver: newFakeResolver(), node: newFakeNode()}
	f.reg = newRegistry(f.store, f.resolver, f.node, func(b digest.Digest) { f.forgot = append(f.forgot, b) }, slogDiscard())
	return f
}

// registered checks that the resolver and the node agree that blob is (or is not) registered.
func (f *registryFixture) registered(t *testing.T, blob digest.Digest, want bool, what string) {
	t.Helper()
	if f.resolver.has(blob) != want || f.node.has(blob) != want {
		t.Errorf("%s: blob %s in resolver %v, in node %v; want %v", what, blob.Encoded()[:8], f.resolver.has(blob), f.node.has(blob), want)
	}
}

// TestRegistrySharedBlobs: a blob two images use stays registered until the second is removed;
// re-adding an image does not count it twice; present chunks are announced.
func TestRegistrySharedBlobs(t *testing.T) {
	ctx := context.Background()
	f := newRegistryFixture()
	x, y, z := testBlob("x", 3), testBlob("y", 2), testBlob("z", 1)
	a, b := testImage("a", x, y), testImage("b", y, z)
	f.store.present[x.Digest] = 2
	for _, im := range []*image{a, b, a} { // a twice: a refresh, not a second user
		if _, err := f.reg.Add(ctx, im); err != nil {
			t.Fatal(err)
		}
	}
	for _, bl := range []digest.Digest{x.Digest, y.Digest, z.Digest} {
		f.registered(t, bl, true, "after adding a and b")
	}
	if f.node.announced[x.Digest] == 0 || f.node.announced[z.Digest] != 0 {
		t.Errorf("announced %v: want x's present chunks, nothing of z", f.node.announced)
	}
	if got := f.resolver.origin(y.Digest); got != "a" {
		t.Errorf("shared blob y reads from %q's origin, want the last image added (a)", got)
	}
	if _, err := f.reg.Remove("a"); err != nil {
		t.Fatal(err)
	}
	f.registered(t, x.Digest, false, "x after removing a")
	f.registered(t, y.Digest, true, "y (shared with b) after removing a")
	if len(f.forgot) != 1 || f.forgot[0] != x.Digest {
		t.Errorf("frontends told to forget %v, want only x", f.forgot)
	}
	if _, err := f.reg.Remove(b.digest().String()); err != nil { // by digest
		t.Fatal(err)
	}
	f.registered(t, y.Digest, false, "y after removing b")
	f.registered(t, z.Digest, false, "z after removing b")
	if _, err := f.reg.Remove("b"); !errors.Is(err, errNotFound) {
		t.Errorf("removing b again: %v, want not found", err)
	}
	if len(f.reg.Blobs()) != 0 || len(f.reg.Images()) != 0 {
		t.Errorf("left: blobs %v images %v", f.reg.Blobs(), f.reg.Images())
	}
}

// TestRegistryRollback: when the node refuses a blob after the resolver took it, nothing of that
// add stays registered: new blobs leave the resolver and the node, blobs another image had
// registered get that image's origin back.
func TestRegistryRollback(t *testing.T) {
	ctx := context.Background()
	f := newRegistryFixture()
	x, y, z := testBlob("x", 1), testBlob("y", 1), testBlob("z", 1)
	if _, err := f.reg.Add(ctx, testImage("old", x)); err != nil {
		t.Fatal(err)
	}
	f.node.setFail(z.Digest, errors.New("swarm full"))
	_, err := f.reg.Add(ctx, testImage("new", x, y, z))
	if err == nil || !errorsContain(err, "swarm full", z.Digest.String()) {
		t.Fatalf("add with a refused blob: %v", err)
	}
	f.registered(t, y.Digest, false, "y, registered by the failed add")
	f.registered(t, z.Digest, false, "z, refused by the node")
	f.registered(t, x.Digest, true, "x, registered by the earlier image")
	if r, n := f.resolver.origin(x.Digest), f.node.origin(x.Digest); r != "old" || n != "old" {
		t.Errorf("x reads from %q (resolver) and %q (node), want the earlier image's origin back", r, n)
	}
	if f.reg.Get(testImage("new").digest()) != nil {
		t.Error("the failed image is registered")
	}
	// The same image once the node accepts: registered, and removing it keeps x for "old".
	f.node.setFail(z.Digest, nil)
	if _, err := f.reg.Add(ctx, testImage("new", x, y, z)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Remove("new"); err != nil {
		t.Fatal(err)
	}
	f.registered(t, x.Digest, true, "x after removing new")
	f.registered(t, y.Digest, false, "y after removing new")
}

// TestRegistryStoreRefusal: a manifest the store refuses (another manifest for the same blob)
// fails the add before anything is registered.
func TestRegistryStoreRefusal(t *testing.T) {
	f := newRegistryFixture()
	x, y := testBlob("x", 1), testBlob("y", 1)
	f.store.failAdd[y.Digest] = errors.New("different manifest")
	if _, err := f.reg.Add(context.Background(), testImage("a", x, y)); err == nil {
		t.Fatal("add succeeded")
	}
	f.registered(t, x.Digest, false, "x")
	f.registered(t, y.Digest, false, "y")
}

// TestRegistryMountRecords: a reserved mountpoint is taken; a mounted image cannot be removed;
// an unmount in progress refuses another.
func TestRegistryMountRecords(t *testing.T) {
	f := newRegistryFixture()
	a := testImage("a", testBlob("x", 1))
	if _, err := f.reg.Add(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	if err := f.reg.ReserveMount(a.digest(), "/m", mount.FUSE); err != nil {
		t.Fatal(err)
	}
	if err := f.reg.ReserveMount(a.digest(), "/m", mount.FUSE); !errors.Is(err, errBadRequest) {
		t.Errorf("second reservation: %v", err)
	}
	if len(f.reg.Mounts(a.digest())) != 0 {
		t.Error("a pending mount is reported as made")
	}
	if _, err := f.reg.Remove("a"); !errors.Is(err, errBadRequest) {
		t.Errorf("removing an image being mounted: %v", err)
	}
	if _, err := f.reg.BeginUnmount("/m"); !errors.Is(err, errBadRequest) {
		t.Errorf("unmounting a pending mount: %v", err)
	}
	f.reg.CommitMount("/m")
	if _, err := f.reg.BeginUnmount("/m"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.BeginUnmount("/m"); !errors.Is(err, errBadRequest) {
		t.Errorf("unmounting twice at once: %v", err)
	}
	f.reg.EndUnmount("/m", false) // failed: still mounted
	if got := f.reg.Mounts(a.digest()); got["/m"] != mount.FUSE {
		t.Errorf("after a failed unmount: %v", got)
	}
	if _, err := f.reg.BeginUnmount("/m"); err != nil {
		t.Fatal(err)
	}
	f.reg.EndUnmount("/m", true)
	if f.reg.MountedAt("/m") {
		t.Error("still recorded after unmount")
	}
	if _, err := f.reg.Remove("a"); err != nil {
		t.Errorf("removing an unmounted image: %v", err)
	}
	if err := f.reg.ReserveMount(a.digest(), "/m", mount.FUSE); !errors.Is(err, errNotFound) {
		t.Errorf("reserving a mount of a removed image: %v", err)
	}
}

func errorsContain(err error, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			return false
		}
	}
	return true
}

// TestRegistryPrivacy: a private image's blobs are marked private to its repository before the
// swarm has them; a blob a public image also holds is public; two private images' shared blob
// is private to both repositories; removing an image recomputes what is left, and a blob no
// image holds loses its mark (the swarm no longer serves it at all).
func TestRegistryPrivacy(t *testing.T) {
	ctx := context.Background()
	f := newRegistryFixture()
	x, y, z := testBlob("x", 3), testBlob("y", 2), testBlob("z", 1)
	a, b, c := testImage("a", x, y), testImage("b", y, z), testImage("c", z)
	a.Repo, a.Private = "reg/team/a", true
	b.Repo, b.Private = "reg/team/b", true
	c.Repo = "reg/pub/c"
	f.node.failReg[x.Digest] = errors.New("marked?")
	if _, err := f.reg.Add(ctx, a); err == nil {
		t.Fatal("the node's refusal did not fail the add")
	}
	if got := f.node.privateTo(x.Digest); len(got) != 1 || got[0] != "reg/team/a" {
		t.Errorf("x of a failed add: private to %v, want still reg/team/a (nothing of it is served)", got)
	}
	delete(f.node.failReg, x.Digest)
	for _, im := range []*image{a, b} {
		if _, err := f.reg.Add(ctx, im); err != nil {
			t.Fatal(err)
		}
	}
	want := func(d digest.Digest, what string, repos ...string) {
		t.Helper()
		if got := f.node.privateTo(d); strings.Join(got, ",") != strings.Join(repos, ",") {
			t.Errorf("%s: private to %v, want %v", what, got, repos)
		}
	}
	want(x.Digest, "x (a only)", "reg/team/a")
	want(y.Digest, "y (a and b)", "reg/team/a", "reg/team/b")
	want(z.Digest, "z (b only)", "reg/team/b")
	if _, err := f.reg.Add(ctx, c); err != nil {
		t.Fatal(err)
	}
	want(z.Digest, "z once public image c holds it")
	if _, err := f.reg.Remove("c"); err != nil {
		t.Fatal(err)
	}
	want(z.Digest, "z after removing c", "reg/team/b")
	if _, err := f.reg.Remove("a"); err != nil {
		t.Fatal(err)
	}
	want(x.Digest, "x, of no image")
	want(y.Digest, "y after removing a", "reg/team/b")
}
