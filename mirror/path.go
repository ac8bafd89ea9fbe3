package mirror

import (
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/origin"
)

// Kinds of distribution API request the mirror answers.
const (
	kindBase     = iota // /v2/
	kindManifest        // /v2/NAME/manifests/REF
	kindBlob            // /v2/NAME/blobs/DIGEST
)

// apiPath is one parsed request path.
type apiPath struct {
	kind   int
	name   string        // repository, e.g. "library/alpine"
	tag    string        // manifests by tag
	digest digest.Digest // manifests by digest, blobs
}

// errBadPath: the path is not one the read-only API serves, or names an invalid repository, tag
// or digest.
var errBadPath = errors.New("not a distribution API path this mirror serves")

// maxPathLen bounds what is parsed: a repository of 255 bytes, a digest and the fixed parts fit.
const maxPathLen = 512

// parsePath parses the path of a distribution API request. The repository, tag and digest are
// checked as origin.ParseReference checks references (only sha256 digests), with host standing
// in for the registry so the same rules apply.
func parsePath(p string) (apiPath, error) {
	bad := func(why string) (apiPath, error) {
		if len(p) > 80 {
			p = p[:80] + "..."
		}
		return apiPath{}, fmt.Errorf("path %q: %s: %w", p, why, errBadPath)
	}
	if len(p) > maxPathLen {
		return bad("too long")
	}
	if p == "/v2/" || p == "/v2" {
		return apiPath{kind: kindBase}, nil
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return bad("not under /v2/")
	}
	var (
		ap  apiPath
		ref string
	)
	// The last separator wins: a repository may have "manifests" or "blobs" components.
	mi, bi := strings.LastIndex(rest, "/manifests/"), strings.LastIndex(rest, "/blobs/")
	switch {
	case mi > 0 && mi > bi:
		ap.kind, ap.name, ref = kindManifest, rest[:mi], rest[mi+len("/manifests/"):]
	case bi > 0:
		ap.kind, ap.name, ref = kindBlob, rest[:bi], rest[bi+len("/blobs/"):]
	default:
		return bad("want /v2/NAME/manifests/REF or /v2/NAME/blobs/DIGEST")
	}
	if ref == "" {
		return bad("empty reference")
	}
	sep := ":"
	if strings.Contains(ref, ":") {
		sep = "@" // a digest
	} else if ap.kind == kindBlob {
		return bad("a blob is named by its digest")
	}
	r, err := origin.ParseReference("mirror.invalid/" + ap.name + sep + ref)
	if err != nil || r.Repository != ap.name {
		return bad("invalid repository, tag or digest")
	}
	ap.tag, ap.digest = r.Tag, r.Digest
	if ap.digest != "" {
		ap.tag = "" // ParseReference fills "latest" only when neither is given
	}
	return ap, nil
}

// upstreamHost returns the registry a request is for: containerd's ns query parameter (sent to
// every mirror host), else the configured default. Docker Hub's canonical name is mapped to the
// host that serves its API.
func upstreamHost(ns, def string) (string, error) {
	h := ns
	if h == "" {
		h = def
	}
	if h == "" {
		return "", errors.New("no upstream registry: the request has no ?ns= and no default upstream is configured")
	}
	if h == "docker.io" || h == "index.docker.io" {
		h = "registry-1.docker.io"
	}
	if _, err := origin.ParseReference(h + "/x:y"); err != nil {
		return "", fmt.Errorf("upstream registry %q is not a host[:port]", truncate(h, 80))
	}
	return h, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
