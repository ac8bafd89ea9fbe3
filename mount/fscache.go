package mount

import (
	"fmt"
	"strings"

	"github.com/shoal-p2p/shoal/chunkstore/layout"
)

// FscacheOptions returns the data argument of
//
//	mount("none", mnt, "erofs", MS_RDONLY, opts)
//
// for an fscache-mode mount: fsid= names the bootstrap (its cookie key), domain_id= the shared
// volume, and one device= per extra device, in device-table order. In fscache mode EROFS does not
// open device= as a path: the string becomes the cookie key of that blob (fs/erofs/super.c,
// erofs_init_device), and the number of device= options must equal the image's extra devices.
func FscacheOptions(bootstrap, domain string, blobs []string) (string, error) {
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
		return fmt.Errorf("%w: %s is empty", ErrBadOption, name)
	case len(v) > layout.MaxCookieKeyLen:
		return fmt.Errorf("%w: %s %q is longer than %d bytes", ErrBadOption, name, v, layout.MaxCookieKeyLen)
	case strings.ContainsAny(v, ",= \t\n\x00\"'\\"):
		return fmt.Errorf("%w: %s %q contains a separator, quote or whitespace", ErrBadOption, name, v)
	}
	return nil
}
