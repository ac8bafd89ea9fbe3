package e2e

import (
	"archive/tar"
	"context"
	"crypto/md5"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/shoal-p2p/shoal/convert/converttest"
	"github.com/shoal-p2p/shoal/origin"
)

// The containerd tests: a real containerd (Debian's 1.6, and 2.x built by
// scripts/containerd/build.sh) with its own root, state and socket, Debian's runc, the shoal
// snapshotter as its proxy plugin and a shoal daemon, all started by the test. A busybox image
// in the real distribution registry is converted by `shoal image convert`, pulled (through CRI
// on 1.6, as kubelet pulls; through ctr and the transfer service on 2.x) and run with ctr, or as
// a CRI pod (cri_test.go); snapshotter_hosts_test.go runs three such stacks as peered hosts and
// readme_test.go the README's containerd commands.

const helloText = "hello from a Shoal image\n"

// coldData is a file no container reads before the daemon restarts (1.5 MiB, several chunks).
func coldData() []byte {
	b := make([]byte, 3<<19)
	rand.New(rand.NewSource(7)).Read(b)
	return b
}

func coldSum() string { return fmt.Sprintf("%x  /data/cold.bin\n", md5.Sum(coldData())) }

// busyboxImage pushes a small runnable image (static busybox, a data file) and converts it;
// it returns the Shoal image's reference and its layer digests.
func busyboxImage(t *testing.T, host string) (string, []string) {
	t.Helper()
	pushBusybox(t, host+"/bb:v1")
	ref := host + "/bb:shoal"
	run(t, "image", "convert", host+"/bb:v1", ref, "--insecure", host, "--docker-config", "-")
	req, _ := http.NewRequest(http.MethodGet, "http://"+host+"/v2/bb/manifests/shoal", nil)
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m ocispec.Manifest
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	var layers []string
	for _, l := range m.Layers {
		layers = append(layers, l.Digest.String())
	}
	if len(layers) < 2 {
		t.Fatalf("converted manifest has layers %v", layers)
	}
	return ref, layers
}

// pushBusybox pushes the small runnable image (static busybox and its applets in /bin, the
// data files; it prints /data/hello.txt) as ref, HOST:PORT/NAME:TAG on a plain-HTTP registry.
func pushBusybox(t *testing.T, ref string) {
	t.Helper()
	cfg := origin.DefaultConfig()
	cfg.Insecure, cfg.DockerConfig = []string{strings.SplitN(ref, "/", 2)[0]}, "-"
	pushBusyboxWith(t, ref, cfg)
}

// pushBusyboxWith is pushBusybox with cfg's registry settings (credentials).
func pushBusyboxWith(t *testing.T, ref string, cfg origin.Config) {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("no static busybox (apt-get install busybox-static)")
	}
	entries := []converttest.Entry{
		{Name: "bin/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "bin/busybox", Type: tar.TypeReg, Mode: 0o755, Data: bb},
		{Name: "data/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "data/hello.txt", Type: tar.TypeReg, Mode: 0o644, Data: []byte(helloText)},
		{Name: "data/cold.bin", Type: tar.TypeReg, Mode: 0o644, Data: coldData()},
		{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
	}
	for _, n := range []string{"sh", "cat", "echo", "sleep", "ls", "test", "md5sum"} {
		entries = append(entries, converttest.Entry{Name: "bin/" + n, Type: tar.TypeSymlink, Link: "busybox"})
	}
	ld := filepath.Join(t.TempDir(), "src")
	w := converttest.NewWriter(t, ld)
	w.Index([]ocispec.Descriptor{w.Put(converttest.Image{Platform: origin.HostPlatform(),
		Layers: []converttest.Layer{{Compression: "gzip", Tar: converttest.Tar(t, entries)}},
		Config: ocispec.ImageConfig{Cmd: []string{"/bin/cat", "/data/hello.txt"}, Env: []string{"PATH=/bin"}}})}, false)
	if _, err := origin.PushIndex(context.Background(), ld, ref, nil, cfg, origin.PushOptions{}); err != nil {
		t.Fatal(err)
	}
}

// proc is a background process of a test, stopped (SIGTERM, then SIGKILL) at cleanup.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

func startProc(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s log:\n%s", name, p.log.String())
		}
	})
	return p
}

func (p *proc) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not stop on SIGTERM within 15s", p.name)
	}
}

func waitSocket(t *testing.T, p *proc, sock string) {
	t.Helper()
	for range 300 {
		if _, err := os.Stat(sock); err == nil {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited:\n%s", p.name, p.log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("%s never opened %s:\n%s", p.name, sock, p.log.String())
}

// stack is one host: a daemon, a snapshotter and a containerd.
type stack struct {
	t        *testing.T
	dir      string
	ctr      string // ctr binary
	sock     string // containerd's socket
	ns       string
	snSock   string
	snRoot   string
	sn       *proc
	daemon   *daemonProc
	host     string
	pathEnv  []string
	ctrdProc *proc
	cluster  *cluster
	mode     string   // the snapshotter's --mode ("": its default, auto)
	peers    []string // the daemon's --peer addresses
	criSock  string   // the daemon's CRI proxy ("": none)
}

// stackOpts are newStackWith's settings; the zero value of each is newStack's.
type stackOpts struct {
	host   string // the registry, host:port (plain HTTP)
	binDir string // containerd 2.x's binaries ("" for Debian's 1.6 on PATH)
	pause  string // CRI's sandbox image ("": containerd's default, never pulled unless a pod sandbox is run)
	mode   string // the snapshotter's --mode ("": auto)
	// listenIP is the loopback address the daemon's libp2p host listens on (default
	// 127.0.0.1): stacks that stand for separate hosts each take their own 127.0.0.N.
	listenIP string
	peers    []string // the daemon's --peer multiaddrs (other stacks' daemon.addr)
	// daemonArgs are more flags for the daemon; criProxy has it serve its CRI proxy at
	// stack.criSock, forwarding to this stack's containerd.
	daemonArgs []string
	criProxy   bool
}

// newStack starts the three. binDir holds containerd 2.x's binaries ("" for Debian's 1.6);
// pause is CRI's sandbox image ("": containerd's default, which is never pulled unless a pod
// sandbox is run).
func newStack(t *testing.T, host, binDir, pause string) *stack {
	return newStackWith(t, stackOpts{host: host, binDir: binDir, pause: pause})
}

// newStackWith starts a daemon, a snapshotter and a containerd as one host with its own
// directories and sockets.
func newStackWith(t *testing.T, o stackOpts) *stack {
	host, binDir, pause := o.host, o.binDir, o.pause
	dir := t.TempDir()
	c := &cluster{t: t, dir: dir, origin: host, listenIP: o.listenIP, extra: o.daemonArgs}
	criSock := ""
	if o.criProxy {
		criSock = filepath.Join(dir, "cri.sock")
		c.extra = append(c.extra, "--cri-listen", criSock, "--cri-upstream", filepath.Join(dir, "containerd.sock"))
	}
	s := &stack{t: t, dir: dir, host: host, daemon: c.startDaemon(1, o.peers), cluster: c, mode: o.mode, peers: o.peers, criSock: criSock,
		sock: filepath.Join(dir, "containerd.sock"), snSock: filepath.Join(dir, "sn.sock"), snRoot: filepath.Join(dir, "sn")}
	s.startSnapshotter()
	version, ctrd := 2, "containerd"
	s.ctr, s.ns = "ctr", "k8s.io"
	if binDir != "" {
		version, ctrd, s.ctr, s.ns = 3, filepath.Join(binDir, "containerd"), filepath.Join(binDir, "ctr"), "default"
		s.pathEnv = []string{"PATH=" + binDir + ":" + os.Getenv("PATH")}
	}
	cfg := fmt.Sprintf(`version = %d
root = %q
state = %q
[grpc]
  address = %q
[proxy_plugins.shoal]
  type = "snapshot"
  address = %q
  [proxy_plugins.shoal.exports]
    enable_remote_snapshot_annotations = "true"
`, version, filepath.Join(dir, "root"), filepath.Join(dir, "state"), s.sock, s.snSock)
	if version == 2 {
		// restrict_oom_score_adj: these machines give root no CAP_SYS_RESOURCE, and a pod
		// sandbox's oom_score_adj of -998 cannot be set without it (runc fails "can't get final
		// child's PID from pipe").
		sandbox := ""
		if pause != "" {
			sandbox = fmt.Sprintf("  sandbox_image = %q\n", pause)
		}
		cfg += fmt.Sprintf(`[plugins."io.containerd.internal.v1.opt"]
  path = %q
[plugins."io.containerd.grpc.v1.cri"]
  disable_apparmor = true
  restrict_oom_score_adj = true
%s  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "shoal"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors.%q]
    endpoint = ["http://%s"]
`, filepath.Join(dir, "opt"), sandbox, filepath.Join(dir, "cni"), filepath.Join(dir, "cni"), host, host)
	} else {
		cfg += fmt.Sprintf(`[plugins."io.containerd.internal.v1.opt"]
  path = %q
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/amd64"
  snapshotter = "shoal"
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/amd64"
  snapshotter = "overlayfs"
`, filepath.Join(dir, "opt"))
		// CRI (kubelet's path): the shoal snapshotter for every image, the registry over plain
		// HTTP through a hosts.toml, the sandbox (pause) image pinned.
		hostsDir := filepath.Join(dir, "certs.d")
		if err := os.MkdirAll(filepath.Join(hostsDir, host), 0o755); err != nil {
			t.Fatal(err)
		}
		hosts := fmt.Sprintf("server = \"http://%s\"\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host, host)
		if err := os.WriteFile(filepath.Join(hostsDir, host, "hosts.toml"), []byte(hosts), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg += fmt.Sprintf(`[plugins."io.containerd.cri.v1.images"]
  snapshotter = "shoal"
  disable_snapshot_annotations = false
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = %q
[plugins."io.containerd.cri.v1.runtime"]
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%q]
    conf_dir = %q
`, hostsDir, filepath.Join(dir, "cni"), filepath.Join(dir, "cni"))
		if pause != "" {
			cfg += fmt.Sprintf("[plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = %q\n", pause)
		}
	}
	conf := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s.ctrdProc = startProc(t, "containerd", s.pathEnv, ctrd, "--config", conf)
	waitSocket(t, s.ctrdProc, s.sock)
	for range 100 {
		if out, err := s.ctrOut("version"); err == nil && strings.Contains(out, "Server:") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Cleanup(func() {
		// Containers first, so that the image mounts are free when the daemon stops.
		out, _ := s.ctrOut("containers", "ls", "-q")
		for _, id := range strings.Fields(out) {
			_, _ = s.ctrOut("task", "kill", "-s", "KILL", id)
			time.Sleep(200 * time.Millisecond)
			_, _ = s.ctrOut("task", "rm", "-f", id)
			_, _ = s.ctrOut("containers", "rm", id)
		}
	})
	return s
}

// startSnapshotter starts the snapshotter and, once containerd runs, waits until containerd
// reaches it again: containerd's proxy-plugin connection retries with a backoff (up to a few
// seconds), and calls in between fail with "connection refused" as kubelet would retry them.
func (s *stack) startSnapshotter() {
	args := []string{"snapshotter", "--address", s.snSock, "--root", s.snRoot, "--api", s.daemon.sock}
	if s.mode != "" {
		args = append(args, "--mode", s.mode)
	}
	s.sn = startProc(s.t, "snapshotter", nil, shoalBin, args...)
	waitSocket(s.t, s.sn, s.snSock)
	if s.ctrdProc == nil {
		return
	}
	var err error
	for range 150 {
		if _, err = s.ctrOut("snapshots", "--snapshotter", "shoal", "ls"); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("containerd does not reach the restarted snapshotter: %v", err)
}

// rebootBoth stops the snapshotter and the daemon, removes what a reboot would (the image
// mount), and starts both again.
func (s *stack) rebootBoth() {
	t := s.t
	s.sn.stop(t)
	s.stopDaemon()
	for _, m := range s.imageMounts() {
		if err := exec.Command("umount", "-l", strings.Fields(m)[0]).Run(); err != nil {
			t.Fatalf("umount %s: %v", m, err)
		}
	}
	if ms := s.imageMounts(); len(ms) != 0 {
		t.Fatalf("image still mounted after the 'reboot': %v", ms)
	}
	s.daemon = s.cluster.startDaemon(1, s.peers)
	s.startSnapshotter()
}

// restartDaemon stops the daemon and starts it again on the same data and socket.
func (s *stack) restartDaemon() {
	s.stopDaemon()
	s.daemon = s.cluster.startDaemon(1, s.peers)
}

// stopDaemon stops the daemon with SIGINT, as its cleanup would.
func (s *stack) stopDaemon() {
	_ = s.daemon.cmd.Process.Signal(os.Interrupt)
	_ = s.daemon.cmd.Wait()
}

func (s *stack) ctrOut(args ...string) (string, error) {
	out, stderr, err := s.ctrRun(args...)
	if err != nil {
		err = fmt.Errorf("%w: %s", err, stderr)
	}
	return out, err
}

// ctrRun runs ctr and returns its stdout and stderr apart: ctr 2.x warns on stderr (cgroup v1
// is deprecated), and containers print to stdout.
func (s *stack) ctrRun(args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(s.ctr, append([]string{"-a", s.sock, "-n", s.ns}, args...)...)
	cmd.Env = append(os.Environ(), s.pathEnv...)
	var so, se strings.Builder
	cmd.Stdout, cmd.Stderr = &so, &se
	err = cmd.Run()
	return so.String(), se.String(), err
}

func (s *stack) mustCtr(args ...string) string {
	s.t.Helper()
	out, err := s.ctrOut(args...)
	if err != nil {
		s.t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// criPull pulls through the CRI image service, as kubelet does.
func (s *stack) criPull(ref string) {
	s.t.Helper()
	conn, err := grpc.NewClient("unix://"+s.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		s.t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := runtimeapi.NewImageServiceClient(conn).PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		s.t.Fatalf("CRI PullImage %s: %v", ref, err)
	}
	s.t.Logf("CRI pulled %s as %s", ref, resp.ImageRef)
}

// checkNoLayerContent fails if containerd's content store holds any layer of the Shoal image.
func (s *stack) checkNoLayerContent(layers []string) {
	s.t.Helper()
	out := s.mustCtr("content", "ls", "-q")
	for _, l := range layers {
		if strings.Contains(out, l) {
			s.t.Errorf("containerd downloaded layer %s of the Shoal image:\n%s", l, out)
		}
	}
}

// imageMounts lists the image mount points the snapshotter holds.
func (s *stack) imageMounts() []string {
	var out []string
	for _, m := range shoalMounts(s.t, s.snRoot) {
		if strings.HasPrefix(m, filepath.Join(s.snRoot, "images")) {
			out = append(out, m)
		}
	}
	return out
}

func containerdSkips(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("containerd, runc and the mounts need root")
	}
	for _, b := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (apt-get install containerd runc)", b)
		}
	}
}

// containerd16Skips skips where containerd, runc or root is missing, or containerd on PATH is
// not 1.6 (Debian bookworm's).
func containerd16Skips(t *testing.T) {
	containerdSkips(t)
	if out, err := exec.Command("containerd", "--version").Output(); err != nil || !strings.Contains(string(out), " 1.6") {
		t.Skipf("containerd on PATH is not 1.6 (%s)", strings.TrimSpace(string(out)))
	}
}

// runAndCheck runs the image with ctr through the snapshotter and checks what it prints and
// writes: the container's write lands in its upper directory, never in the image.
func (s *stack) runAndCheck(layers []string, imageRef string) {
	t := s.t
	s.checkNoLayerContent(layers)
	if ms := s.imageMounts(); len(ms) != 1 {
		t.Fatalf("after the pull the snapshotter holds image mounts %v, want one", ms)
	}
	out := s.mustCtr("run", "--rm", "--snapshotter", "shoal", imageRef, "hello")
	if out != helloText {
		t.Errorf("container printed %q, want %q", out, helloText)
	}
	// A container that writes and stays up.
	s.mustCtr("run", "-d", "--snapshotter", "shoal", imageRef, "writer", "/bin/sh", "-c", "echo written > /tmp/w && exec sleep 600")
	var upper string
	for range 100 {
		m, _ := filepath.Glob(filepath.Join(s.snRoot, "snapshots", "*", "fs", "tmp", "w"))
		if len(m) == 1 {
			upper = m[0]
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if upper == "" {
		t.Fatal("the container's write is in no upper directory of the snapshotter")
	}
	if b, _ := os.ReadFile(upper); string(b) != "written\n" {
		t.Errorf("upper directory holds %q", b)
	}
	img := s.imageMounts()[0]
	if _, err := os.Stat(filepath.Join(img, "tmp", "w")); !os.IsNotExist(err) {
		t.Errorf("the container's write reached the image mount: %v", err)
	}

	// The snapshotter restarts while the container runs: the container keeps reading its
	// image, and new containers start after it is back.
	s.sn.stop(t)
	if out := s.mustCtr("task", "exec", "--exec-id", "e1", "writer", "/bin/cat", "/data/hello.txt", "/tmp/w"); out != helloText+"written\n" {
		t.Errorf("with the snapshotter stopped, the running container read %q", out)
	}
	s.startSnapshotter()
	if out := s.mustCtr("task", "exec", "--exec-id", "e2", "writer", "/bin/cat", "/data/hello.txt"); out != helloText {
		t.Errorf("after the snapshotter restart, the running container read %q", out)
	}
	if out := s.mustCtr("run", "--rm", "--snapshotter", "shoal", imageRef, "hello2"); out != helloText {
		t.Errorf("a container started after the snapshotter restart printed %q", out)
	}
	st := s.cluster.stats(s.daemon)
	if len(st.Images) != 1 || st.Images[0].BytesPresent >= st.Images[0].Bytes {
		t.Fatalf("before the daemon restart: images %+v, want one image not wholly local", st.Images)
	}
	// In fusetree mode the daemon is the image's FUSE server: it cannot stop while a container
	// uses the image (docs/snapshotter.md), so it restarts once the container is gone.
	if s.mode != "fusetree" {
		// The daemon restarts while the container runs: the container then reads a file it
		// never read before (its chunks are not local), and gets the right bytes.
		s.restartDaemon()
		if out := s.mustCtr("task", "exec", "--exec-id", "e3", "writer", "/bin/md5sum", "/data/cold.bin"); out != coldSum() {
			t.Errorf("after the daemon restart, the running container read cold data as %q, want %q", out, coldSum())
		}
		if out := s.mustCtr("run", "--rm", "--snapshotter", "shoal", imageRef, "hello3"); out != helloText {
			t.Errorf("a container started after the daemon restart printed %q", out)
		}
	}
	_, _ = s.ctrOut("task", "kill", "-s", "KILL", "writer")
	for range 100 {
		if _, err := s.ctrOut("task", "rm", "writer"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.mustCtr("containers", "rm", "writer")
	if s.mode == "fusetree" {
		// The daemon restarts with no container running; it mounts the image again from its
		// state, and a new container reads data no container read before.
		s.restartDaemon()
		if out := s.mustCtr("run", "--rm", "--snapshotter", "shoal", imageRef, "cold3", "/bin/md5sum", "/data/cold.bin"); out != coldSum() {
			t.Errorf("a container started after the daemon restart read cold data as %q, want %q", out, coldSum())
		}
	}

	// A reboot-like restart of both: the snapshotter and the daemon stop, the image mount is
	// gone; once both are back (the daemon restoring its mounts while the snapshotter starts),
	// a container starts from the snapshots containerd still has.
	// SHOAL_SNAPSHOTTER_REBOOTS=N repeats it N times (a stress run, not in the default run).
	reboots := 1
	if n, err := strconv.Atoi(os.Getenv("SHOAL_SNAPSHOTTER_REBOOTS")); err == nil && n > 1 {
		reboots = n
	}
	for i := range reboots {
		s.rebootBoth()
		id := fmt.Sprintf("hello-reboot-%d", i)
		stdout, stderr, err := s.ctrRun("run", "--rm", "--snapshotter", "shoal", imageRef, id)
		if err != nil || stdout != helloText {
			t.Fatalf("reboot %d: a container started after a restart of both printed %q (%v), want %q; ctr's stderr:\n%s\ndaemon log:\n%s\nsnapshotter log:\n%s",
				i, stdout, err, helloText, stderr, s.daemon.log.String(), s.sn.log.String())
		}
	}
	if ms := s.imageMounts(); len(ms) != 1 {
		t.Errorf("after a restart of both, image mounts %v, want the image again", ms)
	}

	// The last user gone (containers and image removed, containerd's GC run), the image is
	// unmounted.
	// CRI names the image by tag, digest and ID: remove every name.
	s.mustCtr(append([]string{"images", "rm", "--sync"}, strings.Fields(s.mustCtr("images", "ls", "-q"))...)...)
	for range 100 {
		if len(s.imageMounts()) == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ms := s.imageMounts(); len(ms) != 0 {
		t.Errorf("image still mounted after the image and its containers were removed: %v", ms)
	}
	out = s.mustCtr("snapshots", "--snapshotter", "shoal", "ls")
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] != "KEY" && !strings.Contains(line, "level=") {
			t.Errorf("snapshots left after the image was removed:\n%q", out)
			break
		}
	}
}

// TestContainerd16CRI: Debian's containerd 1.6 pulls the Shoal image through CRI (kubelet's
// path) with the shoal snapshotter; no layer reaches containerd's content store; ctr runs it.
func TestContainerd16CRI(t *testing.T) {
	containerd16Skips(t)
	host := converttest.StartRegistry(t)
	ref, layers := busyboxImage(t, host)
	s := newStack(t, host, "", "")
	s.criPull(ref)
	s.runAndCheck(layers, ref)
}

// TestContainerd2Ctr: containerd 2.x pulls with plain `ctr images pull` (the transfer service,
// with enable_remote_snapshot_annotations exported by the proxy plugin) and runs the image.
func TestContainerd2Ctr(t *testing.T) {
	binDir := containerd2Bin(t)
	host := converttest.StartRegistry(t)
	ref, layers := busyboxImage(t, host)
	s := newStack(t, host, binDir, "")
	s.mustCtr("images", "pull", "--plain-http", "--snapshotter", "shoal", ref)
	s.runAndCheck(layers, ref)
}

// TestContainerd16Fusetree: as TestContainerd16CRI with the snapshotter asking the daemon for
// fusetree mounts (`shoal snapshotter --mode fusetree`): the image's tree is served over FUSE
// from its bootstrap, no EROFS, and is the overlay's lower for every container.
func TestContainerd16Fusetree(t *testing.T) {
	containerd16Skips(t)
	host := converttest.StartRegistry(t)
	ref, layers := busyboxImage(t, host)
	s := newStackWith(t, stackOpts{host: host, mode: "fusetree"})
	s.criPull(ref)
	st := s.cluster.stats(s.daemon)
	if len(st.Images) != 1 || len(st.Images[0].Mounts) != 1 {
		t.Fatalf("daemon images after the pull: %+v, want one image mounted once", st.Images)
	}
	for mp, mode := range st.Images[0].Mounts {
		if mode != "fusetree" {
			t.Fatalf("the image is mounted at %s in %s mode, want fusetree", mp, mode)
		}
	}
	if ms := s.imageMounts(); len(ms) != 1 || !strings.Contains(ms[0], "(fuse") {
		t.Fatalf("snapshotter image mounts %v, want one FUSE mount", ms)
	}
	s.runAndCheck(layers, ref)
}

// containerd2Bin skips where containerd, runc or root is missing, and returns the directory of
// containerd 2.x's binaries, built by scripts/containerd/build.sh once and cached (a skip where
// it cannot be built).
func containerd2Bin(t *testing.T) string {
	t.Helper()
	containerdSkips(t)
	if testing.Short() {
		t.Skip("builds containerd 2.x (once, cached)")
	}
	out, err := exec.Command("../scripts/containerd/build.sh").Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Skipf("containerd 2.x could not be built here (scripts/containerd/build.sh): %v\n%s", err, msg)
	}
	return strings.TrimSpace(string(out))
}
