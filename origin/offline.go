package origin

import ocispec "github.com/opencontainers/image-spec/specs-go/v1"

// ChooseManifest picks, from an image index's bytes, the manifest Resolve would take: the Shoal
// image for this host's platform, else the index's only manifest. It lets a caller that got the
// index elsewhere (from peers, while the registry is down) resolve it the same way.
func ChooseManifest(indexJSON []byte) (ocispec.Descriptor, error) {
	return chooseManifest(indexJSON, "")
}
