package criproxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/shoal-p2p/shoal/origin"
)

// upstream stands in for containerd's CRI service (a real gRPC server on a unix socket; the
// e2e test TestCRIPullSecrets runs the real containerd). It records what it was sent and, for a
// pull, what the credential store held when the pull reached it.
type upstream struct {
	runtimeapi.UnimplementedImageServiceServer
	runtimeapi.UnimplementedRuntimeServiceServer
	creds *fakeCreds

	mu       sync.Mutex
	pulls    []*runtimeapi.PullImageRequest
	keptThen []int // len(creds.kept) when each pull arrived
	md       []metadata.MD
}

func (u *upstream) PullImage(ctx context.Context, r *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	u.mu.Lock()
	u.pulls = append(u.pulls, r)
	u.keptThen = append(u.keptThen, u.creds.len())
	md, _ := metadata.FromIncomingContext(ctx)
	u.md = append(u.md, md)
	u.mu.Unlock()
	if r.GetImage().GetImage() == "reg.example:5000/team/missing:v1" {
		return nil, status.Error(codes.NotFound, "no such image at the registry")
	}
	return &runtimeapi.PullImageResponse{ImageRef: "sha256:abc"}, nil
}

func (u *upstream) ImageStatus(_ context.Context, r *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	return &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{Id: "sha256:abc", RepoTags: []string{r.GetImage().GetImage()}}}, nil
}

func (u *upstream) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{RuntimeName: "containerd", RuntimeApiVersion: "v1"}, nil
}

// GetContainerEvents is CRI's server-streaming call.
func (u *upstream) GetContainerEvents(_ *runtimeapi.GetEventsRequest, s runtimeapi.RuntimeService_GetContainerEventsServer) error {
	for _, id := range []string{"c1", "c2"} {
		if err := s.Send(&runtimeapi.ContainerEventResponse{ContainerId: id}); err != nil {
			return err
		}
	}
	return nil
}

type fakeCreds struct {
	mu     sync.Mutex
	kept   map[string]origin.Auth
	undone []string
}

func (f *fakeCreds) Set(repo string, a origin.Auth) (func(), error) {
	if a.Auth == "bad" {
		return nil, errors.New("auth is not base64")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kept[repo] = a
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.kept, repo)
		f.undone = append(f.undone, repo)
	}, nil
}

func (f *fakeCreds) len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.kept)
}

// TestProxy: every call reaches the upstream unchanged (unary calls of both services, a
// server-streaming call, an error status, metadata); a pull's credentials are kept for its
// repository before the upstream sees the pull and undone if it fails; credentials for another
// registry, or that cannot be read, are not kept, and the pull goes on.
func TestProxy(t *testing.T) {
	dir := t.TempDir()
	creds := &fakeCreds{kept: map[string]origin.Auth{}}
	up := &upstream{creds: creds}
	upSock := filepath.Join(dir, "containerd.sock")
	ul, err := net.Listen("unix", upSock)
	if err != nil {
		t.Fatal(err)
	}
	us := grpc.NewServer()
	runtimeapi.RegisterImageServiceServer(us, up)
	runtimeapi.RegisterRuntimeServiceServer(us, up)
	go func() { _ = us.Serve(ul) }()
	t.Cleanup(us.Stop)

	reg := prometheus.NewRegistry()
	p, err := New(Config{Upstream: upSock, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: reg}, creds)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "cri.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, l) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	img, rt := runtimeapi.NewImageServiceClient(conn), runtimeapi.NewRuntimeServiceClient(conn)

	const image = "reg.example:5000/team/app:v1"
	auth := &runtimeapi.AuthConfig{Username: "alice", Password: "pw", ServerAddress: "https://reg.example:5000/v1/"}
	octx := metadata.AppendToOutgoingContext(ctx, "x-test", "kept")
	resp, err := img.PullImage(octx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: image}, Auth: auth})
	if err != nil || resp.ImageRef != "sha256:abc" {
		t.Fatalf("PullImage: %v, %v", resp, err)
	}
	if got := creds.kept["reg.example:5000/team/app"]; got.Username != "alice" || got.Password != "pw" {
		t.Errorf("kept %+v for the repository, want alice's", creds.kept)
	}
	up.mu.Lock()
	if len(up.pulls) != 1 || !proto.Equal(up.pulls[0].GetAuth(), auth) || up.keptThen[0] != 1 {
		t.Errorf("upstream got %v (credentials kept before it: %v), want the request as sent, after they were kept", up.pulls, up.keptThen)
	}
	if v := up.md[0].Get("x-test"); len(v) != 1 || v[0] != "kept" {
		t.Errorf("upstream metadata %v, want x-test forwarded", up.md[0])
	}
	up.mu.Unlock()

	// A failed pull: the upstream's status comes back as it was; the credentials are undone.
	_, err = img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "reg.example:5000/team/missing:v1"},
		Auth: &runtimeapi.AuthConfig{Username: "bob", Password: "x"}})
	if status.Code(err) != codes.NotFound || status.Convert(err).Message() != "no such image at the registry" {
		t.Errorf("failed pull: %v, want the upstream's NotFound", err)
	}
	if _, ok := creds.kept["reg.example:5000/team/missing"]; ok || len(creds.undone) != 1 {
		t.Errorf("after a failed pull: kept %v, undone %v", creds.kept, creds.undone)
	}

	// Credentials for another registry, or unreadable ones, are not kept; the pull goes on.
	for _, a := range []*runtimeapi.AuthConfig{
		{Username: "eve", Password: "x", ServerAddress: "other.example"},
		{Auth: "bad"},
	} {
		if _, err := img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "reg.example:5000/team/b:v1"}, Auth: a}); err != nil {
			t.Errorf("pull with %v: %v", a, err)
		}
	}
	if _, ok := creds.kept["reg.example:5000/team/b"]; ok {
		t.Errorf("kept credentials for another registry or unreadable ones: %v", creds.kept)
	}
	if _, err := img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "reg.example:5000/team/c:v1"}}); err != nil {
		t.Errorf("pull without auth: %v", err)
	}

	if st, err := img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: image}}); err != nil || st.GetImage().GetRepoTags()[0] != image {
		t.Errorf("ImageStatus: %v, %v", st, err)
	}
	if v, err := rt.Version(ctx, &runtimeapi.VersionRequest{}); err != nil || v.RuntimeName != "containerd" {
		t.Errorf("Version: %v, %v", v, err)
	}
	if _, err := rt.Status(ctx, &runtimeapi.StatusRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("a call the upstream does not implement: %v, want its Unimplemented", err)
	}
	ev, err := rt.GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for {
		e, err := ev.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("events: %v", err)
		}
		ids = append(ids, e.ContainerId)
	}
	if len(ids) != 2 || ids[0] != "c1" || ids[1] != "c2" {
		t.Errorf("events %v, want c1 c2", ids)
	}
	if got := testutil.ToFloat64(p.pulls.WithLabelValues("kept", "ok")); got != 1 {
		t.Errorf("pulls kept/ok %v, want 1", got)
	}
	if got := testutil.ToFloat64(p.pulls.WithLabelValues("ignored", "ok")); got != 2 {
		t.Errorf("pulls ignored/ok %v, want 2", got)
	}
}

// TestListenRefusesLiveSocket: a second proxy on a socket one answers on fails, naming it.
func TestListenRefusesLiveSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cri.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := Listen(sock); err == nil {
		t.Error("a second Listen on a live socket succeeded")
	}
	if _, err := New(Config{}, &fakeCreds{}); err == nil {
		t.Error("New without an upstream succeeded")
	}
}

// FuzzPulling: any request bytes of a PullImage call (the one message the proxy decodes) are
// forwarded without a panic, and credentials are kept only under a repository they name.
func FuzzPulling(f *testing.F) {
	good, _ := proto.Marshal(&runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "reg.example/a:v1"},
		Auth: &runtimeapi.AuthConfig{Username: "u", Password: "p", ServerAddress: "reg.example"}})
	f.Add(good)
	f.Add([]byte{0x0a, 0x02, 0x0a})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		creds := &fakeCreds{kept: map[string]origin.Auth{}}
		p, err := New(Config{Upstream: "/nonexistent", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, creds)
		if err != nil {
			t.Fatal(err)
		}
		done := p.pulling(frame{b: b})
		done(errors.New("failed"))
		if len(creds.kept) != 0 {
			t.Errorf("credentials of a failed pull kept: %v", creds.kept)
		}
	})
}
