package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/shoal-p2p/shoal/internal/registrytest"
	"github.com/shoal-p2p/shoal/origin"
)

// TestCRIPullSecrets: a pod's image pull secret reaches the daemon through its CRI proxy. The
// real distribution registry with token authentication holds a private Shoal image; a real
// containerd 2.4.2 with CRI and the shoal snapshotter, and a daemon with no credentials of its
// own (no Docker config, no user), serve it. The test plays the kubelet: its CRI calls carry
// the pull secret as PullImageRequest.Auth, as the kubelet sends the secret it chose.
//
//   - Straight to containerd (no proxy), the pull fails in the snapshotter: the daemon has no
//     credentials, and says so, naming the repository and the proxy.
//   - Through the proxy without auth, containerd itself is refused by the registry.
//   - Through the proxy with auth, the pull works: the daemon mounts the image and can fetch
//     all of it from the registry with the secret it was handed.
//   - A second daemon with rights of its own gets the chunks from the first, which checks its
//     token at the registry; the registry serves the image's data about once.
//
// The secret never appears in the daemon's log.
func TestCRIPullSecrets(t *testing.T) {
	binDir := containerd2Bin(t)
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs not installed (erofs-utils)")
	}
	reg := registrytest.Start(t)
	reg.AddUser("alice", "pw-alice-secret")
	reg.AddUser("bob", "pw-bob")
	reg.Grant("alice", "team/app")
	reg.Grant("bob", "team/app")
	privRepo := reg.Host + "/team/app"
	ref := privRepo + ":shoal"

	// The image, pushed and converted by the registry's admin.
	dir := t.TempDir()
	adminUser, adminPw := reg.Admin()
	adminDocker := filepath.Join(dir, "admin-docker.json")
	writeDockerConfig(t, adminDocker, reg.Host, adminUser, adminPw)
	admin := origin.DefaultConfig()
	admin.Insecure, admin.DockerConfig = []string{reg.Host}, adminDocker
	pushBusyboxWith(t, reg.Host+"/team/src:v1", admin)
	run(t, "image", "convert", reg.Host+"/team/src:v1", ref, "--insecure", reg.Host, "--docker-config", adminDocker)

	noCreds := filepath.Join(dir, "no-docker-config.json") // absent: no credentials
	s := newStackWith(t, stackOpts{host: reg.Host, binDir: binDir, criProxy: true,
		daemonArgs: []string{"--docker-config", noCreds, "--rights-ttl", "1m"}})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	secret := &runtimeapi.AuthConfig{Username: "alice", Password: "pw-alice-secret"}
	direct := criImages(t, s.sock)
	proxied := criImages(t, s.criSock)

	// Straight to containerd: containerd may pull the manifest, the daemon may not.
	_, err := direct.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Auth: secret})
	if err == nil || !strings.Contains(err.Error(), "no credentials that may pull "+privRepo) || !strings.Contains(err.Error(), "cri_listen") {
		t.Fatalf("CRI pull of the private image straight at containerd: %v\nwant the daemon's error naming the repository and the CRI proxy", err)
	}

	// Through the proxy, without the secret: the registry refuses containerd.
	_, err = proxied.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err == nil || !strings.Contains(err.Error(), "pull access denied") {
		t.Fatalf("CRI pull of the private image through the proxy without auth: %v, want the registry's refusal", err)
	}

	// Through the proxy with the secret: the pull works, the daemon mounts the image.
	resp, err := proxied.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Auth: secret})
	if err != nil {
		t.Fatalf("CRI pull of the private image through the proxy with the pull secret: %v", err)
	}
	if ms := s.imageMounts(); len(ms) != 1 {
		t.Errorf("snapshotter image mounts after the pull: %v, want the image's", ms)
	}
	// Other calls go through as they are: the image is listed, by the same ID.
	st, err := proxied.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil || st.GetImage().GetId() != resp.ImageRef {
		t.Errorf("CRI ImageStatus through the proxy: %v, %v; want image %s", st.GetImage(), err, resp.ImageRef)
	}
	if v, err := runtimeapi.NewRuntimeServiceClient(dialCRI(t, s.criSock)).Version(ctx, &runtimeapi.VersionRequest{}); err != nil || v.RuntimeName != "containerd" {
		t.Errorf("CRI Version through the proxy: %v, %v", v, err)
	}
	// The daemon reads the whole image from the registry with the secret it was handed.
	run(t, "prefetch", ref, "--wait", "--api", s.daemon.sock)
	sa := s.cluster.rightsStats(s.daemon)
	if sa.Bytes.Origin == 0 {
		t.Fatalf("daemon A fetched nothing from the registry: %+v", sa.Bytes)
	}
	afterA := reg.BlobBytes()

	// B has rights of its own and gets the image from A.
	bc := &cluster{t: t, dir: t.TempDir(), origin: reg.Host}
	pw := filepath.Join(bc.dir, "bob.pw")
	if err := os.WriteFile(pw, []byte("pw-bob\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bc.extra = []string{"--docker-config", noCreds, "--registry-username", "bob", "--registry-password-file", pw}
	b := bc.startDaemon(2, []string{s.daemon.addr})
	run(t, "prefetch", ref, "--wait", "--api", b.sock)
	sb := bc.rightsStats(b)
	if sb.Bytes.Peers+sb.Bytes.Origin != sa.Bytes.Origin || float64(sb.Bytes.Origin) > 0.05*float64(sa.Bytes.Origin) {
		t.Errorf("B's pull: %d bytes from A, %d from its origin; want the %d bytes of the image, nearly all from A", sb.Bytes.Peers, sb.Bytes.Origin, sa.Bytes.Origin)
	}
	if g := s.cluster.rightsStats(s.daemon).Rights.Granted; g == 0 {
		t.Error("A granted B no pull rights")
	}
	t.Logf("B: %d bytes from A, %d from its origin; the registry served B %d blob bytes (A %d)", sb.Bytes.Peers, sb.Bytes.Origin, reg.BlobBytes()-afterA, afterA)
	if strings.Contains(s.daemon.log.String(), "pw-alice-secret") {
		t.Error("daemon A logged the pull secret's password")
	}
}

// writeDockerConfig writes a Docker config.json with user's credentials for host.
func writeDockerConfig(t *testing.T, path, host, user, pw string) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{host: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pw))}}})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func dialCRI(t *testing.T, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func criImages(t *testing.T, sock string) runtimeapi.ImageServiceClient {
	return runtimeapi.NewImageServiceClient(dialCRI(t, sock))
}
