package bootstrap

import (
	"github.com/opencontainers/go-digest"
)

// Media types of a Shoal image's OCI manifest and its parts.
const (
	// ArtifactType is the manifest's artifactType (and its config's media type).
	ArtifactType = "application/vnd.shoal.image.v1"
	// MediaTypeBootstrap is the EROFS metadata image (superblock, inodes, chunk indexes).
	MediaTypeBootstrap = "application/vnd.shoal.erofs.bootstrap.v1"
	// MediaTypeBlob is an EROFS data blob: the device with device_id = its index + 1.
	MediaTypeBlob = "application/vnd.shoal.erofs.blob.v1"
	// MediaTypeChunks is a chunk manifest (Manifest, JSON) of the blob named by AnnotationBlob.
	MediaTypeChunks = "application/vnd.shoal.chunks.v1+json"

	// AnnotationBlob on a chunk manifest layer names the blob digest it describes.
	AnnotationBlob = "dev.shoal.blob"
	// AnnotationDevice on a blob layer gives its EROFS device id (1 for the first extra device).
	AnnotationDevice = "dev.shoal.device"
)

// Blob is one data blob of an image with its chunk manifest.
type Blob struct {
	Digest   digest.Digest
	Size     int64
	Device   int // EROFS device id: 1 for the first extra device
	Manifest *Manifest
	// ManifestDigest is the digest of the chunk manifest's JSON as stored in the layout.
	ManifestDigest digest.Digest
}

// Image is a Shoal image as described by its OCI manifest.
type Image struct {
	// Digest of the OCI manifest: the image's identity.
	Digest    digest.Digest
	Bootstrap Descriptor
	Blobs     []Blob // in device order
}

// Descriptor names a piece of content.
type Descriptor struct {
	Digest digest.Digest
	Size   int64
}
