package cachefiles

import (
	"fmt"
	"path/filepath"

	"github.com/shoal-p2p/shoal/chunkstore"
)

// BackingPath returns where the kernel keeps the backing file of a cookie under the cache dir
// given to Bind: <dir>/cache/I<volume key>/@<hh>/D<cookie key>, hh being the low byte of the
// cookie's key hash. The daemon never writes there (the kernel does, through the anonymous fd);
// the path is for inspecting or culling the cache. Only keys the kernel renders as plain text
// (every byte in 33..46 or 48..127, as Shoal's "sha256:<hex>" digests are) are supported.
func BackingPath(dir, volumeKey, cookieKey string) (string, error) {
	if len(volumeKey) == 0 || len(volumeKey) > 254 {
		return "", fmt.Errorf("%w: volume key %q: length %d", ErrBadKey, volumeKey, len(volumeKey))
	}
	if len(cookieKey) == 0 || len(cookieKey) > MaxCookieKey {
		return "", fmt.Errorf("%w: cookie key %q: length %d", ErrBadKey, cookieKey, len(cookieKey))
	}
	for i := 0; i < len(cookieKey); i++ {
		if c := cookieKey[i]; c < 33 || c == 47 || c > 127 {
			return "", fmt.Errorf("%w: cookie key %q is not stored in plain-text form", ErrBadKey, cookieKey)
		}
	}
	for i := 0; i < len(volumeKey); i++ {
		if c := volumeKey[i]; c == 0 || c == '/' {
			return "", fmt.Errorf("%w: volume key %q contains NUL or '/'", ErrBadKey, volumeKey)
		}
	}
	// The fan-out directory comes from the kernel's fscache hash, which the chunk store (owner of
	// this layout in the other modes) implements and tests against the kernel's vectors.
	return filepath.Join(dir, "cache", "I"+volumeKey, chunkstore.FanDir(volumeKey, cookieKey), "D"+cookieKey), nil
}
