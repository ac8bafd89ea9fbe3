package cachefiles

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"path/filepath"
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
	// fs/netfs/fscache_volume.c: the volume key as hashed is [u8 len][key][NUL], padded to 4 bytes.
	vk := make([]byte, 0, len(volumeKey)+5)
	vk = append(vk, byte(len(volumeKey)))
	vk = append(vk, volumeKey...)
	vk = append(vk, 0)
	vh := fscacheHash(0, pad4(vk))
	kh := fscacheHash(vh, pad4([]byte(cookieKey)))
	return filepath.Join(dir, "cache", "I"+volumeKey, fmt.Sprintf("@%02x", kh&0xff), "D"+cookieKey), nil
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// fscacheHash is fscache_hash() of fs/netfs/fscache_main.c (HASH_MIX and fold_hash of
// fs/namei.c on 64-bit kernels) over little-endian 32-bit words.
func fscacheHash(salt uint32, data []byte) uint32 {
	var x, y uint32 = 0, salt
	for i := 0; i+4 <= len(data); i += 4 {
		a := binary.LittleEndian.Uint32(data[i:])
		x ^= a
		y ^= x
		x = bits.RotateLeft32(x, 7)
		x += y
		y = bits.RotateLeft32(y, 20)
		y *= 9
	}
	const gr = 0x61C88647
	return (y ^ x*gr) * gr
}
