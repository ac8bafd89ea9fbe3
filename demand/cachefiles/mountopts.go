package cachefiles

import (
	"fmt"
	"strings"
)

// DefaultDomain is the EROFS domain_id Shoal mounts with: every image shares one fscache volume,
// so a blob used by two images is one cookie and one backing file.
const DefaultDomain = "shoal"

// VolumeKey is the volume key the kernel sends in OPEN for images mounted with domain_id=domain.
func VolumeKey(domain string) string { return "erofs," + domain }

// MountOptions returns the data argument of
//
//	mount("none", mnt, "erofs", MS_RDONLY, opts)
//
// for an fscache-mode mount: fsid= names the bootstrap (its cookie key), domain_id= the shared
// volume, and one device= per extra device, in device-table order. In fscache mode EROFS does not
// open device= as a path: the string becomes the cookie key of that blob (fs/erofs/super.c,
// erofs_init_device), and the number of device= options must equal the image's extra devices.
// An empty domain means DefaultDomain.
func MountOptions(bootstrap, domain string, blobs []string) (string, error) {
	if domain == "" {
		domain = DefaultDomain
	}
	if err := checkMountValue("domain_id", domain); err != nil {
		return "", err
	}
	if err := checkMountValue("fsid", bootstrap); err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("fsid=" + bootstrap + ",domain_id=" + domain)
	for _, blob := range blobs {
		if err := checkMountValue("device", blob); err != nil {
			return "", err
		}
		b.WriteString(",device=" + blob)
	}
	return b.String(), nil
}

// checkMountValue rejects values that the option parser would split or the kernel would choke on.
func checkMountValue(name, v string) error {
	switch {
	case v == "":
		return fmt.Errorf("%w: %s is empty", ErrBadMountOption, name)
	case len(v) > MaxCookieKey:
		return fmt.Errorf("%w: %s %q is longer than %d bytes", ErrBadMountOption, name, v, MaxCookieKey)
	case strings.ContainsAny(v, ",= \t\n\x00\"'\\"):
		return fmt.Errorf("%w: %s %q contains a separator, quote or whitespace", ErrBadMountOption, name, v)
	}
	return nil
}
