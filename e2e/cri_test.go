package e2e

import (
	"archive/tar"
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/shoal-p2p/shoal/convert/converttest"
	"github.com/shoal-p2p/shoal/origin"
)

// pauseImage pushes a tiny pod sandbox ("pause") image to the test registry: static busybox
// sleeping forever. It is a plain OCI image, so the shoal snapshotter serves it as plain
// overlayfs, and the test reaches no registry but its own.
func pauseImage(t *testing.T, host string) string {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("no static busybox (apt-get install busybox-static)")
	}
	entries := []converttest.Entry{
		{Name: "bin/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "bin/busybox", Type: tar.TypeReg, Mode: 0o755, Data: bb},
		{Name: "bin/sleep", Type: tar.TypeSymlink, Link: "busybox"},
	}
	ld := filepath.Join(t.TempDir(), "pause")
	w := converttest.NewWriter(t, ld)
	w.Index([]ocispec.Descriptor{w.Put(converttest.Image{Platform: origin.HostPlatform(),
		Layers: []converttest.Layer{{Compression: "gzip", Tar: converttest.Tar(t, entries)}},
		Config: ocispec.ImageConfig{Entrypoint: []string{"/bin/sleep", "2147483647"}}})}, false)
	cfg := origin.DefaultConfig()
	cfg.Insecure, cfg.DockerConfig = []string{host}, "-"
	ref := host + "/pause:v1"
	if _, err := origin.PushIndex(context.Background(), ld, ref, nil, cfg, origin.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	return ref
}

// criClients dials containerd's CRI services, as kubelet does.
func (s *stack) criClients() (runtimeapi.RuntimeServiceClient, runtimeapi.ImageServiceClient) {
	conn, err := grpc.NewClient("unix://"+s.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { _ = conn.Close() })
	return runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
}

// TestContainerd16CRIPod: the whole kubelet path on containerd 1.6 with the shoal snapshotter
// as CRI's snapshotter: pull the Shoal image, run a pod sandbox (its pause image a plain image
// from the same registry, so plain overlayfs), create and start a container from the Shoal
// image in it. The container's output is read from CRI's log file, as `kubectl logs` does; it
// comes from the image mounted by the daemon (the container's rootfs is an overlay on the image
// mount), and containerd's content store holds no layer of the Shoal image. The pod uses the
// host network: CNI plugins are not what is tested here.
func TestContainerd16CRIPod(t *testing.T) {
	containerd16Skips(t)
	host := converttest.StartRegistry(t)
	ref, layers := busyboxImage(t, host)
	pause := pauseImage(t, host)
	s := newStack(t, host, "", pause)
	rt, img := s.criClients()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Plain `ctr images pull` on 1.6 is not a supported client (docs/snapshotter.md): it fetches
	// every layer, then unpacks through Image.Unpack, which passes the snapshotter no layer
	// annotation, so the Shoal layers look like tars nobody can apply. If this starts to work,
	// the doc is out of date. Another namespace, so that what it fetched is not counted below.
	plain := exec.Command(s.ctr, "-a", s.sock, "-n", "plain-ctr", "images", "pull", "--plain-http", "--snapshotter", "shoal", ref)
	if out, err := plain.CombinedOutput(); err == nil || !strings.Contains(string(out), "no processor for media-type: unknown") {
		t.Errorf("ctr images pull of a Shoal image on containerd 1.6: %v, want it to fail applying a Shoal layer as docs/snapshotter.md says:\n%s", err, out)
	}

	s.criPod(ctx, rt, img, ref, layers)
}

// TestContainerd2CRIPod: the kubelet path of TestContainerd16CRIPod on containerd 2.x, whose CRI
// pulls through the transfer service (the proxy plugin exports enable_remote_snapshot_annotations)
// and reads the registry's plain-HTTP endpoint from a hosts.toml (config_path).
func TestContainerd2CRIPod(t *testing.T) {
	binDir := containerd2Bin(t)
	host := converttest.StartRegistry(t)
	ref, layers := busyboxImage(t, host)
	pause := pauseImage(t, host)
	s := newStackWith(t, stackOpts{host: host, binDir: binDir, pause: pause})
	rt, img := s.criClients()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s.criPod(ctx, rt, img, ref, layers)
}

// criPod pulls ref through CRI, runs a pod sandbox (host network) and a container from ref in
// it, and checks the container's output (CRI's log file), that its rootfs is an overlay over the
// image mounted by the daemon, that the image is read lazily and that containerd's content
// store holds none of its layers; then stops and removes the container as kubelet does.
func (s *stack) criPod(ctx context.Context, rt runtimeapi.RuntimeServiceClient, img runtimeapi.ImageServiceClient, ref string, layers []string) {
	t := s.t
	if _, err := img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		t.Fatalf("CRI PullImage %s: %v", ref, err)
	}
	logDir := filepath.Join(s.dir, "pod-logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "shoal-pod", Namespace: "default", Uid: "shoal-pod-uid", Attempt: 0},
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
		}},
	}
	pod, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		t.Fatalf("CRI RunPodSandbox: %v", err)
	}
	podID := pod.PodSandboxId
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), time.Minute)
		defer ccancel()
		if _, err := rt.StopPodSandbox(cctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
			t.Errorf("CRI StopPodSandbox: %v", err)
		}
		if _, err := rt.RemovePodSandbox(cctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
			t.Errorf("CRI RemovePodSandbox: %v", err)
		}
	})

	// The container prints the image's file, then stays up so that its rootfs can be looked at.
	c, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId:  podID,
		SandboxConfig: podCfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
			Image:    &runtimeapi.ImageSpec{Image: ref},
			Command:  []string{"/bin/sh", "-c", "cat /data/hello.txt && exec sleep 600"},
			LogPath:  "app.log",
		},
	})
	if err != nil {
		t.Fatalf("CRI CreateContainer: %v", err)
	}
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		t.Fatalf("CRI StartContainer: %v", err)
	}
	logPath := filepath.Join(logDir, "app.log")
	var got string
	for range 200 {
		if got = criLogText(t, logPath); got == helloText {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got != helloText {
		st, _ := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.ContainerId})
		t.Fatalf("container log %s holds %q, want %q (status %+v)", logPath, got, helloText, st.GetStatus())
	}

	// Its rootfs is an overlay whose lower is the image mounted by the daemon.
	imgMounts := s.imageMounts()
	if len(imgMounts) != 1 {
		t.Fatalf("snapshotter image mounts %v, want one", imgMounts)
	}
	imgMP := strings.Fields(imgMounts[0])[0]
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var overlays int
	for _, line := range strings.Split(string(mi), "\n") {
		if strings.Contains(line, " - overlay ") && strings.Contains(line, "lowerdir="+imgMP) && strings.Contains(line, c.ContainerId) {
			overlays++
		}
	}
	if overlays != 1 {
		t.Errorf("no overlay of container %s over the image mount %s in mountinfo", c.ContainerId, imgMP)
	}
	st := s.cluster.stats(s.daemon)
	if len(st.Images) != 1 || st.Images[0].BytesPresent >= st.Images[0].Bytes {
		t.Errorf("daemon images %+v: want the one image, not wholly local (read lazily)", st.Images)
	}
	s.checkNoLayerContent(layers)

	// The container stops and goes as kubelet makes it go.
	if _, err := rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: c.ContainerId, Timeout: 1}); err != nil {
		t.Fatalf("CRI StopContainer: %v", err)
	}
	if _, err := rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: c.ContainerId}); err != nil {
		t.Fatalf("CRI RemoveContainer: %v", err)
	}
}

// criLogText returns what a container wrote to stdout and stderr, from CRI's log file
// ("TIMESTAMP STREAM P|F TEXT" lines; P marks a partial line).
func criLogText(t *testing.T, path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var b strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), " ", 4)
		if len(parts) < 3 {
			t.Fatalf("CRI log line %q is not TIMESTAMP STREAM TAG TEXT", sc.Text())
		}
		text := ""
		if len(parts) == 4 {
			text = parts[3]
		}
		b.WriteString(text)
		if parts[2] != "P" {
			b.WriteString("\n")
		}
	}
	return b.String()
}
