package bootstrap

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types of a Shoal image's OCI manifest and its parts. The layers' types carry the
// prefix "application/vnd.oci.image.layer." because containerd (1.6 to 2.x) treats only such
// types (and Docker's) as layers: its unpacker then asks the snapshotter for each one, which
// answers that it is already there, instead of downloading it as a config-like blob and failing
// to apply it (package snapshotter).
const (
	// ArtifactType is the manifest's artifactType.
	ArtifactType = "application/vnd.shoal.image.v1"
	// MediaTypeBootstrap is the EROFS metadata image (superblock, inodes, chunk indexes).
	MediaTypeBootstrap = "application/vnd.oci.image.layer.v1.shoal.erofs.bootstrap"
	// MediaTypeBlob is an EROFS data blob: the device with device_id = AnnotationDevice.
	MediaTypeBlob = "application/vnd.oci.image.layer.v1.shoal.erofs.blob"
	// MediaTypeChunks is a chunk manifest (Manifest, JSON) of the blob named by AnnotationBlob.
	MediaTypeChunks = "application/vnd.oci.image.layer.v1.shoal.chunks+json"

	// AnnotationBlob on a chunk manifest layer names the blob digest it describes.
	AnnotationBlob = "dev.shoal.blob"
	// AnnotationDevice on a blob layer gives its EROFS device id (1 for the first extra device).
	AnnotationDevice = "dev.shoal.device"

	// AnnotationSnapshotRole on every layer of a runnable Shoal image says what the layer is
	// (RoleBootstrap, RoleBlob, RoleChunks). containerd passes layer annotations with the
	// prefix "containerd.io/snapshot/" to a remote snapshotter's Prepare, so a snapshotter
	// recognises a Shoal image from any of its layers.
	AnnotationSnapshotRole = "containerd.io/snapshot/shoal.layer"
	// AnnotationSnapshotBootstrap on every layer names the image's bootstrap digest.
	AnnotationSnapshotBootstrap = "containerd.io/snapshot/shoal.bootstrap"
	// AnnotationSourceLayer on a converted image's blob names the source layer it holds the
	// data of (`shoal image convert`).
	AnnotationSourceLayer = "dev.shoal.source.layer"

	// Values of AnnotationSnapshotRole.
	RoleBootstrap = "bootstrap"
	RoleBlob      = "blob"
	RoleChunks    = "chunks"

	// PlatformFeature is added to platform.os.features of a Shoal manifest's entry in an
	// index: other runtimes, which pick the first entry matching their platform, keep taking
	// the original image listed before it; Shoal picks the entry with this feature.
	PlatformFeature = "shoal.image.v1"

	// MaxMetadataSize bounds what is read into memory from an image: the OCI manifest, a chunk
	// manifest, index.json. A 16 MiB chunk manifest describes some 100,000 chunks.
	MaxMetadataSize = 16 << 20
)

// Blob is one data blob of an image with its chunk manifest.
type Blob struct {
	Digest   digest.Digest // of the blob as stored (the layer)
	Size     int64         // of the blob as stored; Manifest.BlobSize is the uncompressed size
	Device   int           // EROFS device id: 1 for the first extra device
	Manifest *chunk.Manifest
	// ManifestDigest is the digest of the chunk manifest's JSON as stored in the layout.
	ManifestDigest digest.Digest
	// ManifestZstd is the digest of the chunk manifest's compressed form
	// (MediaTypeChunksZstd), "" if the image has none.
	ManifestZstd digest.Digest
}

// Image is a Shoal image as described by its OCI manifest.
type Image struct {
	// Digest of the OCI manifest: the image's identity.
	Digest    digest.Digest
	Bootstrap Descriptor
	// BootstrapZstd is the bootstrap's compressed form (MediaTypeBootstrapZstd), zero if the
	// image has none; DecompressMeta turns it into the bootstrap.
	BootstrapZstd Descriptor
	Blobs         []Blob // in device order
}

// Descriptor names a piece of content.
type Descriptor struct {
	Digest digest.Digest
	Size   int64
}

// DataBytes is the sum of the image's chunk lengths: what a host fetches to hold all of it.
func (im *Image) DataBytes() int64 {
	var n int64
	for _, b := range im.Blobs {
		n += b.Manifest.DataBytes()
	}
	return n
}

// StoredBytes is the sum of the image's stored chunk lengths: what a host fetches from the
// origin to hold all of it (DataBytes for an uncompressed image).
func (im *Image) StoredBytes() int64 {
	var n int64
	for _, b := range im.Blobs {
		n += b.Manifest.StoredBytes()
	}
	return n
}

// FetchFunc returns the bytes of a descriptor's content (at most MaxMetadataSize). ParseImage
// verifies them against the descriptor's digest.
type FetchFunc func(desc ocispec.Descriptor) ([]byte, error)

// ParseImage checks a Shoal OCI manifest and loads its chunk manifests through fetch.
func ParseImage(manifestJSON []byte, fetch FetchFunc) (*Image, error) {
	if len(manifestJSON) > MaxMetadataSize {
		return nil, fmt.Errorf("image manifest of %d bytes is larger than %d", len(manifestJSON), MaxMetadataSize)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(manifestJSON, &m); err != nil {
		return nil, fmt.Errorf("image manifest: %w", err)
	}
	im := &Image{Digest: digest.FromBytes(manifestJSON)}
	if m.SchemaVersion != 2 {
		return nil, fmt.Errorf("image manifest %s: schemaVersion %d, want 2", im.Digest, m.SchemaVersion)
	}
	if m.ArtifactType != ArtifactType {
		return nil, fmt.Errorf("image manifest %s: artifactType %q is not a Shoal image (%s)", im.Digest, m.ArtifactType, ArtifactType)
	}
	chunkLayers := map[digest.Digest]ocispec.Descriptor{}
	compressed := map[digest.Digest]ocispec.Descriptor{} // by the plain object's digest
	var boots int
	for i, l := range m.Layers {
		if err := l.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("image manifest %s: layer %d: %w", im.Digest, i, err)
		}
		if l.Size < 0 {
			return nil, fmt.Errorf("image manifest %s: layer %d: negative size", im.Digest, i)
		}
		switch l.MediaType {
		case MediaTypeBootstrap:
			boots++
			im.Bootstrap = Descriptor{Digest: l.Digest, Size: l.Size}
		case MediaTypeBlob:
			dev, err := strconv.Atoi(l.Annotations[AnnotationDevice])
			if err != nil || dev < 1 || dev > 1<<16-1 {
				return nil, fmt.Errorf("image manifest %s: blob %s: bad %s annotation %q", im.Digest, l.Digest, AnnotationDevice, l.Annotations[AnnotationDevice])
			}
			im.Blobs = append(im.Blobs, Blob{Digest: l.Digest, Size: l.Size, Device: dev})
		case MediaTypeChunks:
			b := digest.Digest(l.Annotations[AnnotationBlob])
			if err := b.Validate(); err != nil {
				return nil, fmt.Errorf("image manifest %s: chunk manifest %s: bad %s annotation: %w", im.Digest, l.Digest, AnnotationBlob, err)
			}
			chunkLayers[b] = l
		case MediaTypeChunksZstd, MediaTypeBootstrapZstd:
			if d := digest.Digest(l.Annotations[AnnotationUncompressed]); d.Validate() == nil {
				compressed[d] = l
			}
		}
	}
	if boots != 1 {
		return nil, fmt.Errorf("image manifest %s: %d bootstrap layers, want 1", im.Digest, boots)
	}
	if z, ok := compressed[im.Bootstrap.Digest]; ok && z.MediaType == MediaTypeBootstrapZstd && z.Size <= im.Bootstrap.Size {
		im.BootstrapZstd = Descriptor{Digest: z.Digest, Size: z.Size}
	}
	sort.Slice(im.Blobs, func(i, j int) bool { return im.Blobs[i].Device < im.Blobs[j].Device })
	for i := range im.Blobs {
		b := &im.Blobs[i]
		if b.Device != i+1 {
			return nil, fmt.Errorf("image manifest %s: blob devices are not 1..%d (found %d at position %d)", im.Digest, len(im.Blobs), b.Device, i+1)
		}
		l, ok := chunkLayers[b.Digest]
		if !ok {
			return nil, fmt.Errorf("image manifest %s: blob %s has no chunk manifest", im.Digest, b.Digest)
		}
		if l.Size > MaxMetadataSize {
			return nil, fmt.Errorf("image manifest %s: chunk manifest %s is %d bytes, more than %d", im.Digest, l.Digest, l.Size, MaxMetadataSize)
		}
		var z *ocispec.Descriptor
		if zl, ok := compressed[l.Digest]; ok && zl.MediaType == MediaTypeChunksZstd && zl.Size <= l.Size {
			z = &zl
		}
		data, err := fetchMeta(fetch, l, z)
		if err != nil {
			return nil, fmt.Errorf("fetching chunk manifest %s: %w", l.Digest, err)
		}
		if got := digest.FromBytes(data); got != l.Digest || int64(len(data)) != l.Size {
			return nil, fmt.Errorf("chunk manifest %s: content has digest %s and %d bytes: %w", l.Digest, got, len(data), chunk.ErrCorrupt)
		}
		cm, err := chunk.ParseManifest(data)
		if err != nil {
			return nil, err
		}
		if _, err := zchunk.DictOf(cm); err != nil { // checked (and parsed, once) before any chunk needs it
			return nil, err
		}
		if cm.Blob != b.Digest || cm.StoredBlobSize() != b.Size {
			return nil, fmt.Errorf("chunk manifest %s describes %s (%d bytes), layer is %s (%d bytes)", l.Digest, cm.Blob, cm.StoredBlobSize(), b.Digest, b.Size)
		}
		b.Manifest, b.ManifestDigest = cm, l.Digest
		if z != nil {
			b.ManifestZstd = z.Digest
		}
	}
	return im, nil
}

// Layout is an OCI image layout directory (oci-layout, index.json, blobs/sha256/...).
type Layout struct{ Dir string }

// BlobPath is where content with digest d lives in the layout.
func (l Layout) BlobPath(d digest.Digest) string {
	return filepath.Join(l.Dir, "blobs", d.Algorithm().String(), d.Encoded())
}

// ReadIndex reads and checks index.json.
func (l Layout) ReadIndex() (*ocispec.Index, error) {
	b, err := readLimited(filepath.Join(l.Dir, ocispec.ImageIndexFile), MaxMetadataSize)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", l.Dir, err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("OCI layout %s: index.json: %w", l.Dir, err)
	}
	if _, err := os.Stat(filepath.Join(l.Dir, ocispec.ImageLayoutFile)); err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", l.Dir, err)
	}
	return &idx, nil
}

// Fetch reads a descriptor's content from the layout (at most MaxMetadataSize bytes) and checks
// its digest.
func (l Layout) Fetch(desc ocispec.Descriptor) ([]byte, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, err
	}
	b, err := readLimited(l.BlobPath(desc.Digest), MaxMetadataSize)
	if err != nil {
		return nil, err
	}
	if got := digest.FromBytes(b); got != desc.Digest {
		return nil, fmt.Errorf("layout blob %s has digest %s: %w", desc.Digest, got, chunk.ErrCorrupt)
	}
	return b, nil
}

// ReadImage loads the Shoal image of the layout. ref selects a manifest by its
// org.opencontainers.image.ref.name annotation; "" takes the only Shoal manifest.
func (l Layout) ReadImage(ref string) (*Image, []byte, error) {
	idx, err := l.ReadIndex()
	if err != nil {
		return nil, nil, err
	}
	var pick []ocispec.Descriptor
	for _, d := range idx.Manifests {
		if d.MediaType != ocispec.MediaTypeImageManifest {
			continue
		}
		if ref == "" && (d.ArtifactType == ArtifactType || d.ArtifactType == "") || ref != "" && d.Annotations[ocispec.AnnotationRefName] == ref {
			pick = append(pick, d)
		}
	}
	if len(pick) > 1 {
		// Several platforms (`shoal image convert --all-platforms`): this host's.
		host := HostPlatform()
		var mine []ocispec.Descriptor
		for _, d := range pick {
			if d.Platform != nil && d.Platform.OS == host.OS && d.Platform.Architecture == host.Architecture {
				mine = append(mine, d)
			}
		}
		if len(mine) == 1 {
			pick = mine
		}
	}
	if len(pick) != 1 {
		return nil, nil, fmt.Errorf("OCI layout %s: %d image manifests match ref %q, want exactly 1", l.Dir, len(pick), ref)
	}
	mb, err := l.Fetch(pick[0])
	if err != nil {
		return nil, nil, fmt.Errorf("OCI layout %s: manifest: %w", l.Dir, err)
	}
	im, err := ParseImage(mb, l.Fetch)
	if err != nil {
		return nil, nil, fmt.Errorf("OCI layout %s: %w", l.Dir, err)
	}
	return im, mb, nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadAllLimited(f, limit, path)
}

// ReadAllLimited reads r to the end, failing (naming what) rather than reading more than limit
// bytes: metadata from an origin or a peer never sizes an allocation by itself.
func ReadAllLimited(r io.Reader, limit int64, what string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", what, limit)
	}
	return b, nil
}

// LayoutWriter builds an OCI image layout directory: content goes in by digest, then one or more
// Shoal image manifests (WriteImage), then index.json (WriteIndex) last, so that a layout with an
// index.json is complete.
type LayoutWriter struct{ l Layout }

// NewLayoutWriter creates dir (and its blobs/sha256 and oci-layout).
func NewLayoutWriter(dir string) (*LayoutWriter, error) {
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return nil, err
	}
	lay, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err := os.WriteFile(filepath.Join(dir, ocispec.ImageLayoutFile), lay, 0o644); err != nil {
		return nil, err
	}
	return &LayoutWriter{Layout{dir}}, nil
}

// Layout is the layout being written.
func (w *LayoutWriter) Layout() Layout { return w.l }

// PutFile moves the file at path into the layout under its sha256 and returns its descriptor.
// path must be on the same filesystem (it is renamed, not copied). Content already in the layout
// (the same blob from another image) is kept and path removed.
func (w *LayoutWriter) PutFile(path, mediaType string) (ocispec.Descriptor, error) {
	f, err := os.Open(path)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	f.Close()
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("hashing %s: %w", path, err)
	}
	d := digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(h.Sum(nil)))
	return w.PutFileAs(path, mediaType, d, n)
}

// PutFileAs is PutFile for a file whose digest and size the caller computed while writing it.
func (w *LayoutWriter) PutFileAs(path, mediaType string, d digest.Digest, size int64) (ocispec.Descriptor, error) {
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: size}
	if st, err := os.Stat(w.l.BlobPath(d)); err == nil && st.Size() == size {
		return desc, os.Remove(path)
	}
	return desc, os.Rename(path, w.l.BlobPath(d))
}

// PutBytes stores b and returns its descriptor.
func (w *LayoutWriter) PutBytes(b []byte, mediaType string) (ocispec.Descriptor, error) {
	d := digest.FromBytes(b)
	if err := os.WriteFile(w.l.BlobPath(d), b, 0o644); err != nil {
		return ocispec.Descriptor{}, err
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}, nil
}

// ImageSpec is what WriteImage needs of a Shoal image whose bootstrap and blobs are already in
// the layout.
type ImageSpec struct {
	Bootstrap ocispec.Descriptor
	Blobs     []ocispec.Descriptor // device order; their annotations are kept and Shoal's added
	Manifests []*chunk.Manifest    // Manifests[i] describes Blobs[i]
	// SourceConfig is the image config (OCI or Docker JSON) the image runs with; nil gives a
	// minimal config for Platform. Its rootfs and history are rewritten (RunnableConfig).
	SourceConfig []byte
	Platform     ocispec.Platform
	// Annotations go on the manifest.
	Annotations map[string]string
}

// WriteImage writes the image's chunk manifests, config and manifest, and returns the manifest's
// descriptor (with artifactType and platform, ready for an index) and bytes.
//
// The manifest is a runnable OCI image manifest: its config is the source image's config with
// rootfs.diff_ids listing one digest per layer (the layer's own: none is a tar), and its layers,
// in order, are the blobs (device 1..n), their chunk manifests and the bootstrap last, each
// annotated for a snapshotter (AnnotationSnapshotRole, AnnotationSnapshotBootstrap). The manifest
// keeps artifactType ArtifactType, as images built before the runnable form had.
func (w *LayoutWriter) WriteImage(spec ImageSpec) (ocispec.Descriptor, []byte, error) {
	if len(spec.Blobs) != len(spec.Manifests) {
		return ocispec.Descriptor{}, nil, errors.New("WriteImage: blobs and manifests differ in number")
	}
	boot := spec.Bootstrap
	role := func(d ocispec.Descriptor, r string, extra ...string) ocispec.Descriptor {
		a := map[string]string{AnnotationSnapshotRole: r, AnnotationSnapshotBootstrap: boot.Digest.String()}
		for k, v := range d.Annotations {
			a[k] = v
		}
		for i := 0; i+1 < len(extra); i += 2 {
			a[extra[i]] = extra[i+1]
		}
		d.Annotations = a
		return d
	}
	var blobs, chunkLayers []ocispec.Descriptor
	for i, b := range spec.Blobs {
		b.MediaType = MediaTypeBlob
		blobs = append(blobs, role(b, RoleBlob, AnnotationDevice, strconv.Itoa(i+1)))
		mj, err := json.Marshal(spec.Manifests[i])
		if err != nil {
			return ocispec.Descriptor{}, nil, err
		}
		cd, err := w.PutBytes(mj, MediaTypeChunks)
		if err != nil {
			return ocispec.Descriptor{}, nil, err
		}
		chunkLayers = append(chunkLayers, role(cd, RoleChunks, AnnotationBlob, b.Digest.String()))
		if z := compressMeta(mj); z != nil {
			zd, err := w.PutBytes(z, MediaTypeChunksZstd)
			if err != nil {
				return ocispec.Descriptor{}, nil, err
			}
			// Role chunks: to a snapshotter, old or new, metadata it only records as present.
			chunkLayers = append(chunkLayers, role(zd, RoleChunks, AnnotationBlob, b.Digest.String(), AnnotationUncompressed, cd.Digest.String()))
		}
	}
	if bb, err := readLimited(w.l.BlobPath(boot.Digest), MaxMetadataSize); err == nil {
		if z := compressMeta(bb); z != nil {
			zd, err := w.PutBytes(z, MediaTypeBootstrapZstd)
			if err != nil {
				return ocispec.Descriptor{}, nil, err
			}
			chunkLayers = append(chunkLayers, role(zd, RoleChunks, AnnotationUncompressed, boot.Digest.String()))
		}
	} // a bootstrap over MaxMetadataSize goes plain only
	boot.MediaType = MediaTypeBootstrap
	layers := append(append(blobs, chunkLayers...), role(boot, RoleBootstrap))
	cfg, err := RunnableConfig(spec.SourceConfig, layers, spec.Platform)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	cd, err := w.PutBytes(cfg, ocispec.MediaTypeImageConfig)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	m := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType,
		Config:       cd,
		Layers:       layers,
		Annotations:  spec.Annotations,
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	md, err := w.PutBytes(mb, ocispec.MediaTypeImageManifest)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	md.ArtifactType = ArtifactType
	p := spec.Platform
	p.OSFeatures = append(append([]string(nil), p.OSFeatures...), PlatformFeature)
	md.Platform = &p
	return md, mb, nil
}

// WriteIndex writes index.json listing the given manifests (written last: a layout with an
// index.json is whole). ref, when set, becomes every entry's ref name.
func (w *LayoutWriter) WriteIndex(manifests []ocispec.Descriptor, ref string) error {
	var ms []ocispec.Descriptor
	for _, d := range manifests {
		if ref != "" {
			a := map[string]string{ocispec.AnnotationRefName: ref}
			for k, v := range d.Annotations {
				a[k] = v
			}
			d.Annotations = a
		}
		ms = append(ms, d)
	}
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: ms}
	ib, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(w.l.Dir, ".index.json.tmp")
	if err := os.WriteFile(tmp, ib, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(w.l.Dir, ocispec.ImageIndexFile))
}

// RunnableConfig returns the config of a Shoal image: the source config (every field kept as it
// is) with rootfs.diff_ids naming the Shoal layers (each layer's own digest: a snapshotter
// presents them as they are, none is a tar to unpack), and the history's entries marked empty
// with one entry per Shoal layer appended, so that tools that pair non-empty history entries
// with layers still agree. Without a source, the config is the minimal one for platform.
func RunnableConfig(source []byte, layers []ocispec.Descriptor, platform ocispec.Platform) ([]byte, error) {
	cfg := map[string]json.RawMessage{}
	if source != nil {
		if err := json.Unmarshal(source, &cfg); err != nil {
			return nil, fmt.Errorf("image config: %w", err)
		}
		if cfg == nil {
			return nil, errors.New("image config: not a JSON object")
		}
	} else {
		set := func(k, v string) {
			if v != "" {
				cfg[k], _ = json.Marshal(v)
			}
		}
		set("architecture", platform.Architecture)
		set("os", platform.OS)
		set("variant", platform.Variant)
		cfg["config"] = json.RawMessage(`{}`)
	}
	diffIDs := make([]digest.Digest, len(layers))
	for i, l := range layers {
		diffIDs[i] = l.Digest
	}
	rootfs, _ := json.Marshal(ocispec.RootFS{Type: "layers", DiffIDs: diffIDs})
	cfg["rootfs"] = rootfs
	var history []map[string]json.RawMessage
	if h, ok := cfg["history"]; ok && string(h) != "null" {
		if err := json.Unmarshal(h, &history); err != nil {
			return nil, fmt.Errorf("image config: history: %w", err)
		}
	}
	for _, e := range history {
		e["empty_layer"] = json.RawMessage("true")
	}
	for _, l := range layers {
		by, _ := json.Marshal("shoal: " + l.Annotations[AnnotationSnapshotRole] + " " + l.Digest.String())
		history = append(history, map[string]json.RawMessage{"created_by": by, "comment": json.RawMessage(`"shoal image"`)})
	}
	hb, err := json.Marshal(history)
	if err != nil {
		return nil, err
	}
	cfg["history"] = hb
	return json.Marshal(cfg)
}
