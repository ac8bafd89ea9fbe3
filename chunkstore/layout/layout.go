package layout

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"path/filepath"

	"github.com/opencontainers/go-digest"
)

// ErrInvalid is wrapped by errors about keys and xattrs that do not fit the layout.
var ErrInvalid = errors.New("not in the cachefiles layout")

// DefaultDomain is the fscache domain (the volume key is "erofs,<domain>") used when
// Config.Domain is empty. The fscache frontend mounts with domain_id=<domain>.
const DefaultDomain = "shoal"

// MaxCookieKeyLen is the longest cookie key the kernel handles safely: longer keys hit a BUG_ON in
// fs/cachefiles/key.c when they are cooked into a file name.
const MaxCookieKeyLen = 252

// XattrName is the extended attribute cachefiles keeps on its volume directories and data files.
const XattrName = "user.CacheFiles.cache"

// cacheTypeData is CACHEFILES_COOKIE_TYPE_DATA; contentNoData is CACHEFILES_CONTENT_NO_DATA.
// The kernel refuses (and discards) a file whose content byte is CACHEFILES_CONTENT_DIRTY (4).
const (
	cacheTypeData = 1
	contentNoData = 0
)

// VolumeKey is the fscache volume key of a domain: what EROFS passes for fsid/domain_id mounts.
func VolumeKey(domain string) string { return "erofs," + domain }

// CookieKey is the fscache cookie key of a blob or bootstrap: its digest string exactly (a
// decision shared by every frontend: the fscache mount passes fsid=<bootstrap digest> and
// device=<blob digest>). It fails if the key would not be stored in the kernel's plain "D" form
// or is longer than MaxCookieKeyLen.
func CookieKey(d digest.Digest) (string, error) {
	k := string(d)
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("cookie key of %q: %w: %w", k, ErrInvalid, err)
	}
	if !PlainKey(k) {
		return "", fmt.Errorf("cookie key %q: not storable in cachefiles' plain D form: %w", k, ErrInvalid)
	}
	return k, nil
}

// PlainKey reports whether cachefiles stores key as "D"+key: every byte in 33..46 or 48..127
// (printable, no '/') and at most MaxCookieKeyLen bytes.
func PlainKey(k string) bool {
	if len(k) == 0 || len(k) > MaxCookieKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c < 33 || c == '/' || c > 127 {
			return false
		}
	}
	return true
}

// FscacheHash is the kernel's fscache_hash (fs/fscache/main.c): data is read as little-endian
// u32 words (len(data) must be a multiple of 4; callers zero-pad) and mixed with salt.
func FscacheHash(salt uint32, data []byte) uint32 {
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
	const golden = 0x61C88647
	return (y ^ x*golden) * golden
}

// VolumeHash is the hash fscache gives a volume key: fscache_hash(0, [u8 len][key][NUL] padded
// with zeros to a multiple of 4).
func VolumeHash(volumeKey string) uint32 {
	n := (1 + len(volumeKey) + 1 + 3) &^ 3
	buf := make([]byte, n)
	buf[0] = byte(len(volumeKey))
	copy(buf[1:], volumeKey)
	return FscacheHash(0, buf)
}

// CookieHash is the hash of a cookie key within a volume: fscache_hash(volume hash, key padded
// with zeros to a multiple of 4).
func CookieHash(volumeKey, cookieKey string) uint32 {
	buf := make([]byte, (len(cookieKey)+3)&^3)
	copy(buf, cookieKey)
	return FscacheHash(VolumeHash(volumeKey), buf)
}

// FanDir is the name of the fan-out directory ("@hh") a cookie's backing file lives in.
func FanDir(volumeKey, cookieKey string) string {
	return fmt.Sprintf("@%02x", uint8(CookieHash(volumeKey, cookieKey)))
}

// VolumeDir is the volume directory under a cachefiles cache directory (the `dir` given to
// /dev/cachefiles): <cacheDir>/cache/I<volume key>.
func VolumeDir(cacheDir, domain string) string {
	return filepath.Join(cacheDir, "cache", "I"+VolumeKey(domain))
}

// BackingPath is where cachefiles keeps the data of digest d for the given domain:
// <cacheDir>/cache/I<volume key>/@<hh>/D<cookie key>.
func BackingPath(cacheDir, domain string, d digest.Digest) (string, error) {
	key, err := CookieKey(d)
	if err != nil {
		return "", err
	}
	vk := VolumeKey(domain)
	return filepath.Join(VolumeDir(cacheDir, domain), FanDir(vk, key), "D"+key), nil
}

// DataXattr is the 18-byte user.CacheFiles.cache value of a data file holding an object of the
// given size: be64 object_size, be64 zero_point, u8 type (data), u8 content (no data). EROFS
// cookies carry no auxiliary coherency data, so nothing follows.
func DataXattr(size int64) []byte {
	b := make([]byte, 18)
	binary.BigEndian.PutUint64(b[0:], uint64(size))
	binary.BigEndian.PutUint64(b[8:], uint64(size))
	b[16] = cacheTypeData
	b[17] = contentNoData
	return b
}

// VolumeXattr is the 4-byte user.CacheFiles.cache value of a volume directory (be32 reserved = 0,
// no coherency data for EROFS volumes).
func VolumeXattr() []byte { return []byte{0, 0, 0, 0} }

// ParseDataXattr decodes a data file's user.CacheFiles.cache value and returns the object size.
// The kernel discards files whose xattr does not match the cookie, so anything but the exact
// 18-byte data form is an error.
func ParseDataXattr(b []byte) (int64, error) {
	if len(b) != 18 {
		return 0, fmt.Errorf("cachefiles xattr: %d bytes, want 18: %w", len(b), ErrInvalid)
	}
	if b[16] != cacheTypeData {
		return 0, fmt.Errorf("cachefiles xattr: type %d, want %d: %w", b[16], cacheTypeData, ErrInvalid)
	}
	if b[17] == 4 {
		return 0, fmt.Errorf("cachefiles xattr: content marked dirty: %w", ErrInvalid)
	}
	size := binary.BigEndian.Uint64(b[0:])
	if size > 1<<62 {
		return 0, fmt.Errorf("cachefiles xattr: object size %d out of range: %w", size, ErrInvalid)
	}
	return int64(size), nil
}
