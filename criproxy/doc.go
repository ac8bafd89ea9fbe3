// Package criproxy is the CRI image-service proxy of `shoal daemon --cri-listen`: the kubelet
// dials it as its --image-service-endpoint, and it forwards every call, byte for byte, to
// containerd's CRI socket (Config.Upstream). On the way it reads one thing: the registry
// credentials of a PullImageRequest (the pod's image pull secret the kubelet chose for the
// image), which it hands to Credentials for the image's repository before containerd starts the
// pull, so that the daemon, which containerd's snapshotter asks to mount the image while the
// pull is under way, can pull the private image and prove its pull rights to peers
// (docs/privacy.md). containerd passes no credentials to snapshotters; nydus and stargz proxy the
// CRI image service for the same reason.
//
// Every call is forwarded, not only the image service's: an unknown service or method goes to
// containerd as it came (CRI has no client-streaming call; a call with more than one request
// message is refused). Messages are not decoded, except PullImageRequest, which is read only.
// Credentials are never logged; the log says which repository a pull brought credentials for.
//
// What it must not do: keep credentials itself (Credentials does), change a request or an
// answer, or answer for containerd.
//
//	p, _ := criproxy.New(criproxy.Config{Upstream: "/run/containerd/containerd.sock"}, secrets)
//	l, _ := criproxy.Listen("/run/shoal/cri.sock")
//	err := p.Serve(ctx, l)
package criproxy
