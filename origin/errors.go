package origin

import "errors"

// Sentinel errors. Every error returned by this package that means one of these wraps it, so
// callers test with errors.Is; the message names the registry, repository and digest involved.
var (
	// ErrNotFound: the registry or layout has no such repository, tag, manifest or blob.
	ErrNotFound = errors.New("not found")
	// ErrUnauthorized: the registry refused the credentials, or there were none and it wants some.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrCorrupt: content does not match its digest, or a response is not what was asked for (a
	// body shorter or longer than promised, a range other than the one requested).
	ErrCorrupt = errors.New("content does not match its digest")
	// ErrBadResponse: the registry answered in a way the distribution spec does not allow.
	ErrBadResponse = errors.New("bad response from registry")
	// ErrRange: a byte range outside the blob was asked for.
	ErrRange = errors.New("range not satisfiable")
	// ErrInvalidReference: a reference that cannot be parsed.
	ErrInvalidReference = errors.New("invalid reference")
	// ErrUnsupported: the content is of a kind this package cannot use (e.g. an index with no
	// manifest to choose, a digest algorithm other than sha256).
	ErrUnsupported = errors.New("unsupported")
	// ErrUnavailable: the registry kept failing (5xx, 429, connection errors) after every retry.
	ErrUnavailable = errors.New("registry unavailable")
)
