package origin

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Reference names an image in a registry: Registry/Repository followed by :Tag, @Digest or both.
type Reference struct {
	Registry   string // host[:port], e.g. "127.0.0.1:5000" or "ghcr.io"
	Repository string // path components, e.g. "library/alpine"
	Tag        string // empty when only a digest was given
	Digest     digest.Digest
}

// String returns the reference in its canonical text form.
func (r Reference) String() string {
	s := r.Registry + "/" + r.Repository
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest.String()
	}
	return s
}

// manifestRef is what goes in /v2/<name>/manifests/<ref>: the digest when known, else the tag.
func (r Reference) manifestRef() string {
	if r.Digest != "" {
		return r.Digest.String()
	}
	return r.Tag
}

var (
	// From the distribution spec: path components and tags.
	repoComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$`)
	tagPattern    = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	hostPattern   = regexp.MustCompile(`^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$`)
)

// maxReferenceLen bounds what is parsed; real references are far shorter.
const maxReferenceLen = 4096

// ParseReference parses "host[:port]/name[:tag][@sha256:...]". The registry host is required:
// Shoal does not guess a default registry. A reference with neither tag nor digest means
// ":latest". Only sha256 digests are accepted.
func ParseReference(s string) (Reference, error) {
	bad := func(why string) (Reference, error) {
		if len(s) > 80 {
			s = s[:80] + "..."
		}
		return Reference{}, fmt.Errorf("reference %q: %s: %w", s, why, ErrInvalidReference)
	}
	if s == "" || len(s) > maxReferenceLen {
		return bad("empty or too long")
	}
	var r Reference
	rest := s
	if i := strings.IndexByte(rest, '@'); i >= 0 {
		d, err := digest.Parse(rest[i+1:])
		if err != nil {
			return bad("bad digest")
		}
		if d.Algorithm() != digest.SHA256 {
			return bad("only sha256 digests are supported")
		}
		r.Digest = d
		rest = rest[:i]
	}
	host, path, ok := strings.Cut(rest, "/")
	if !ok || host == "" {
		return bad("want host[:port]/name")
	}
	if !hostPattern.MatchString(host) || !(strings.ContainsAny(host, ".:[") || host == "localhost") {
		return bad("first component is not a registry host")
	}
	r.Registry = host
	// A tag is after the last colon of the path (the host's port colon is already gone).
	if i := strings.LastIndexByte(path, ':'); i >= 0 {
		r.Tag = path[i+1:]
		path = path[:i]
		if !tagPattern.MatchString(r.Tag) {
			return bad("bad tag")
		}
	}
	if path == "" || len(path) > 255 {
		return bad("bad repository name")
	}
	for _, c := range strings.Split(path, "/") {
		if !repoComponent.MatchString(c) {
			return bad("bad repository name component " + fmt.Sprintf("%q", c))
		}
	}
	r.Repository = path
	if r.Tag == "" && r.Digest == "" {
		r.Tag = "latest"
	}
	return r, nil
}
