package criproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/shoal-p2p/shoal/origin"
)

// Credentials keeps the credentials a pull brought, for the repository ("host/name") of its
// image; undo is called when the pull fails (the registry may have refused them).
type Credentials interface {
	Set(repo string, a origin.Auth) (undo func(), err error)
}

var _ Credentials = (*origin.PullSecrets)(nil)

// pullImageMethod is the one call whose request the proxy reads.
const pullImageMethod = "/runtime.v1.ImageService/PullImage"

// maxMsgSize is the kubelet's own limit on CRI messages (16 MiB): a node's image list can be large.
const maxMsgSize = 16 << 20

// Config holds the proxy's settings.
type Config struct {
	// Upstream is containerd's CRI socket (a path, or unix://PATH), e.g. /run/containerd/containerd.sock.
	Upstream string
	// Logger receives the proxy's logs; nil means slog.Default(). A "subsystem"="criproxy"
	// attribute is added.
	Logger *slog.Logger
	// Registerer receives shoal_criproxy_* metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Validate checks the settings.
func (c *Config) Validate() error {
	if strings.TrimPrefix(c.Upstream, "unix://") == "" {
		return errors.New("cri proxy: the upstream CRI socket (containerd's, e.g. /run/containerd/containerd.sock) must be given")
	}
	return nil
}

// Proxy forwards CRI calls to containerd, handing pulls' credentials to Credentials.
type Proxy struct {
	cfg   Config
	creds Credentials
	log   *slog.Logger
	calls *prometheus.CounterVec
	pulls *prometheus.CounterVec
}

// New returns a Proxy; it dials nothing until Serve.
func New(cfg Config, creds Credentials) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if creds == nil {
		return nil, errors.New("cri proxy: no credential store")
	}
	l := cfg.Logger
	if l == nil {
		l = slog.Default()
	}
	p := &Proxy{cfg: cfg, creds: creds, log: l.With("subsystem", "criproxy"),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "shoal_criproxy_calls_total",
			Help: "CRI calls forwarded to containerd, by gRPC status code of the answer."}, []string{"code"}),
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "shoal_criproxy_pulls_total",
			Help: "CRI PullImage calls, by whether they carried credentials the daemon kept (auth: kept, none, ignored) and their result (ok, error)."}, []string{"auth", "result"}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{p.calls, p.pulls} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("cri proxy metrics: %w", err)
			}
		}
	}
	return p, nil
}

// Listen opens the proxy's unix socket, root-only (the kubelet runs as root). A socket left by
// a killed process is removed; one something answers on is an error.
func Listen(path string) (net.Listener, error) {
	if len(path) > 107 {
		return nil, fmt.Errorf("cri proxy: socket path %q is longer than the 107 bytes a unix socket path may have", path)
	}
	if st, err := os.Stat(filepath.Dir(path)); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("cri proxy: directory %s of socket %s does not exist", filepath.Dir(path), path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("cri proxy: something is listening on %s already", path)
	}
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("cri proxy: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("cri proxy: %w", err)
	}
	return l, nil
}

// Serve forwards the calls that arrive on l until ctx ends; it closes l and removes a unix
// socket's file. Calls in flight are cancelled at the end.
func (p *Proxy) Serve(ctx context.Context, l net.Listener) error {
	up := p.cfg.Upstream
	if !strings.HasPrefix(up, "unix://") {
		up = "unix://" + up
	}
	conn, err := grpc.NewClient(up, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}), grpc.MaxCallRecvMsgSize(maxMsgSize), grpc.MaxCallSendMsgSize(maxMsgSize)))
	if err != nil {
		l.Close()
		return fmt.Errorf("cri proxy: upstream %s: %w", p.cfg.Upstream, err)
	}
	defer func() { _ = conn.Close() }()
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.MaxRecvMsgSize(maxMsgSize), grpc.MaxSendMsgSize(maxMsgSize),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error { return p.forward(conn, ss) }))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	p.log.Info("CRI image service proxy listening", "addr", l.Addr().String(), "upstream", p.cfg.Upstream)
	select {
	case <-ctx.Done():
		srv.Stop()                     // cancels the calls in flight (a pull in progress fails; the kubelet retries it)
		if err := <-errc; err != nil { // nil once stopped
			return fmt.Errorf("cri proxy: %w", err)
		}
		return nil
	case err := <-errc:
		return fmt.Errorf("cri proxy: %w", err)
	}
}

// forward sends one call to containerd as it came and its answers back as they come.
func (p *Proxy) forward(conn *grpc.ClientConn, ss grpc.ServerStream) (err error) {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "cri proxy: no method")
	}
	defer func() { p.calls.WithLabelValues(status.Code(err).String()).Inc() }()
	var req frame
	if err := ss.RecvMsg(&req); err != nil {
		return err
	}
	// CRI has no client-streaming call: the one request is all.
	var extra frame
	if err := ss.RecvMsg(&extra); !errors.Is(err, io.EOF) {
		if err == nil {
			return status.Errorf(codes.Unimplemented, "cri proxy: %s sent more than one request message (no CRI call does)", method)
		}
		return err
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	if md, ok := metadata.FromIncomingContext(ss.Context()); ok {
		ctx = metadata.NewOutgoingContext(ctx, forwardable(md))
	}
	if method == pullImageMethod {
		done := p.pulling(req)
		defer func() { done(err) }()
	}
	cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method)
	if err != nil {
		return err
	}
	if err := cs.SendMsg(&req); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if err := cs.CloseSend(); err != nil {
		return err
	}
	if md, err := cs.Header(); err == nil && len(md) > 0 {
		if err := ss.SendHeader(forwardable(md)); err != nil {
			return err
		}
	}
	for {
		var resp frame
		if err := cs.RecvMsg(&resp); err != nil {
			ss.SetTrailer(forwardable(cs.Trailer()))
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err // containerd's status, as it sent it
		}
		if err := ss.SendMsg(&resp); err != nil {
			return err
		}
	}
}

// pulling hands a PullImageRequest's credentials to the store before the pull goes to
// containerd, and returns what to do with its outcome.
func (p *Proxy) pulling(req frame) func(error) {
	var r runtimeapi.PullImageRequest
	if err := proto.Unmarshal(req.b, &r); err != nil {
		// containerd will say what is wrong with it.
		return func(error) {}
	}
	image := r.GetImage().GetImage()
	authLabel := "none"
	var undo func()
	if a := r.GetAuth(); a != nil && (a.Username != "" || a.Auth != "" || a.IdentityToken != "" || a.RegistryToken != "") {
		authLabel = "ignored"
		repo, u, err := p.keep(image, a)
		switch {
		case err != nil:
			p.log.Warn("credentials of a CRI pull not kept", "image", image, "err", err)
		case u != nil:
			authLabel, undo = "kept", u
			p.log.Info("CRI pull with credentials: kept for the repository", "image", image, "repository", repo)
		}
	}
	return func(err error) {
		result := "ok"
		if err != nil {
			result = "error"
			if undo != nil {
				undo() // perhaps refused: the next pull brings them again
			}
		}
		p.pulls.WithLabelValues(authLabel, result).Inc()
	}
}

// keep hands auth to the store for image's repository. As containerd does, credentials whose
// server address names another registry than the image's are not used (undo is nil).
func (p *Proxy) keep(image string, a *runtimeapi.AuthConfig) (repo string, undo func(), err error) {
	ref, err := origin.ParseReference(image)
	if err != nil {
		return "", nil, err
	}
	if a.ServerAddress != "" && !sameRegistry(serverHost(a.ServerAddress), ref.Registry) {
		p.log.Debug("credentials of a CRI pull are for another registry", "image", image, "server", serverHost(a.ServerAddress))
		return "", nil, nil
	}
	repo = origin.Repository(ref)
	undo, err = p.creds.Set(repo, origin.Auth{Username: a.Username, Password: a.Password, Auth: a.Auth,
		IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken})
	return repo, undo, err
}

// serverHost is the host[:port] of an auth's server address ("https://host/v1/", "host").
func serverHost(s string) string {
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Host
}

// sameRegistry compares registry hosts, Docker Hub's names as one.
func sameRegistry(a, b string) bool {
	hub := func(h string) string {
		switch h = strings.ToLower(h); h {
		case "index.docker.io", "registry-1.docker.io":
			return "docker.io"
		}
		return h
	}
	return hub(a) == hub(b)
}

// forwardable is the incoming metadata that may go on to containerd: not the transport's own
// headers, which gRPC sets for the new call.
func forwardable(md metadata.MD) metadata.MD {
	out := metadata.MD{}
	for k, v := range md {
		switch {
		case strings.HasPrefix(k, ":"), strings.HasPrefix(k, "grpc-"), k == "content-type", k == "user-agent", k == "te":
			continue
		}
		out[k] = v
	}
	return out
}

// frame is one gRPC message, undecoded.
type frame struct{ b []byte }

// rawCodec moves messages as they are. It is named "proto" so that both sides see the content
// type they expect (application/grpc+proto).
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("cri proxy codec: cannot marshal %T", v)
	}
	return f.b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("cri proxy codec: cannot unmarshal into %T", v)
	}
	f.b = append(f.b[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }
