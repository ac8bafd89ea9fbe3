package convert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
	"github.com/shoal-p2p/shoal/internal/units"
	"github.com/shoal-p2p/shoal/origin"
)

// Source is where the image to convert is read from: origin.Registry or origin.Layout.
type Source interface {
	origin.ManifestReader
	// Open streams a whole blob; Read returns io.EOF only once its digest matched.
	Open(ctx context.Context, d digest.Digest) (io.ReadCloser, error)
}

// Options configures Convert.
type Options struct {
	// Platforms to convert from an index; empty means the host's. Ignored for a source that is a
	// single manifest (its config says its platform).
	Platforms []ocispec.Platform
	// AllPlatforms converts every platform of an index.
	AllPlatforms bool
	// ChunkSize of the Shoal image; 0 means bootstrap.DefaultChunkSize.
	ChunkSize int64
	// Parallel is how many layers are read at once; 0 means GOMAXPROCS.
	Parallel int
	// Ref is the ref name recorded in the layout's index.json; "" means "latest".
	Ref string
	// Progress receives progress lines (layers and bytes, about once a second); nil for none.
	Progress io.Writer
	// Compression of the data blobs' chunks: bootstrap.CompressionZstd or CompressionNone / ""
	// (uncompressed; the CLI's default is zstd), and the zstd level (0: zchunk.DefaultLevel).
	// A compressed blob has a schema 2 chunk manifest; layer media types do not change.
	Compression      string
	CompressionLevel int
	// DictSize, with zstd, trains a zstd dictionary of about this many bytes per blob on a
	// sample of its chunks and compresses them with it (bootstrap.BuildOptions.DictSize); 0:
	// none. The layer is then written uncompressed first and encoded once the dictionary is
	// trained (the source is read once; the blob is written twice).
	DictSize int

	enc *zchunk.Encoder // from Compression, made by Convert
}

// Validate checks the options.
func (o *Options) Validate() error {
	if c := o.ChunkSize; c != 0 && (c < chunk.BlockSize || c > bootstrap.MaxChunkSize || c&(c-1) != 0) {
		return fmt.Errorf("chunk size %d: must be a power of two from %d to %d", c, chunk.BlockSize, bootstrap.MaxChunkSize)
	}
	if o.Parallel < 0 {
		return fmt.Errorf("parallel %d must not be negative", o.Parallel)
	}
	if o.AllPlatforms && len(o.Platforms) > 0 {
		return errors.New("choose platforms or all platforms, not both")
	}
	if _, err := bootstrap.ChunkEncoder(o.Compression, o.CompressionLevel); err != nil {
		return err
	}
	if o.DictSize != 0 && (o.DictSize < zchunk.MinDictSize || o.DictSize > chunk.MaxDictSize) {
		return fmt.Errorf("dictionary size %d: want 0 or %d to %d", o.DictSize, zchunk.MinDictSize, chunk.MaxDictSize)
	}
	return nil
}

// Result describes a conversion.
type Result struct {
	// Source is the manifest or index the source reference named.
	Source ocispec.Descriptor
	// SourceManifests are the source's image manifests as an index lists them (with platforms):
	// the index's entries, or one entry for a single-manifest source. `--into-index` lists
	// them before the Shoal entries.
	SourceManifests []ocispec.Descriptor
	Images          []ImageResult
}

// ImageResult describes one converted platform.
type ImageResult struct {
	Platform       ocispec.Platform
	SourceManifest digest.Digest
	Manifest       ocispec.Descriptor // the Shoal manifest, as the layout's index lists it
	Layers         int                // source layers
	Blobs          int                // data blobs of the Shoal image
	Files          int                // regular files in the final tree
	FileBytes      int64              // their bytes
	LayerBytes     int64              // compressed source bytes read
	ChunkBytes     int64              // bytes of chunks over all blobs
	StoredBytes    int64              // bytes of the blobs as stored (compressed, if they are)
	Bootstrap      int64
	Notes          []string
}

// maxConfigSize bounds an image config read into memory.
const maxConfigSize = 16 << 20

// Convert reads the image src names and writes its Shoal image(s) as the OCI layout out, which
// must not exist. Nothing is left at out on error.
func Convert(ctx context.Context, src Source, out string, opts Options) (*Result, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.ChunkSize == 0 {
		opts.ChunkSize = bootstrap.DefaultChunkSize
	}
	var err error
	if opts.enc, err = bootstrap.ChunkEncoder(opts.Compression, opts.CompressionLevel); err != nil {
		return nil, err
	}
	if opts.Parallel == 0 {
		opts.Parallel = runtime.GOMAXPROCS(0)
	}
	if opts.Ref == "" {
		opts.Ref = "latest"
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if _, err := os.Lstat(out); err == nil {
		return nil, fmt.Errorf("output %s already exists: choose a new directory", out)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("output: %w", err)
	}
	stage, err := os.MkdirTemp(filepath.Dir(filepath.Clean(out)), "."+filepath.Base(out)+".converting-")
	if err != nil {
		return nil, fmt.Errorf("output: %w", err)
	}
	defer os.RemoveAll(stage)
	lw, err := bootstrap.NewLayoutWriter(filepath.Join(stage, "layout"))
	if err != nil {
		return nil, err
	}
	res, err := convertInto(ctx, src, lw, stage, opts)
	if err != nil {
		return nil, err
	}
	var descs []ocispec.Descriptor
	for _, im := range res.Images {
		descs = append(descs, im.Manifest)
	}
	if err := lw.WriteIndex(descs, opts.Ref); err != nil {
		return nil, err
	}
	if err := os.Rename(lw.Layout().Dir, out); err != nil {
		return nil, fmt.Errorf("output: %w", err)
	}
	return res, nil
}

func convertInto(ctx context.Context, src Source, lw *bootstrap.LayoutWriter, stage string, opts Options) (*Result, error) {
	root, body, err := src.Root(ctx)
	if err != nil {
		return nil, err
	}
	// A layout's index.json often names one image index (the tag's) rather than the images.
	for depth := 0; origin.IsIndex(root.MediaType); depth++ {
		idx, err := origin.ParseIndex(body)
		if err != nil {
			return nil, err
		}
		if len(idx.Manifests) != 1 || !origin.IsIndex(idx.Manifests[0].MediaType) || depth > 2 {
			break
		}
		if root, body, err = src.Manifest(ctx, idx.Manifests[0].Digest); err != nil {
			return nil, err
		}
	}
	res := &Result{Source: root}
	type job struct {
		desc     ocispec.Descriptor
		manifest []byte
		platform *ocispec.Platform // from the index, nil for a single manifest
	}
	var jobs []job
	if origin.IsIndex(root.MediaType) {
		idx, err := origin.ParseIndex(body)
		if err != nil {
			return nil, err
		}
		var avail []string
		var unplatformed []job // entries without a platform (common in OCI layouts): their config says
		for _, d := range idx.Manifests {
			if origin.IsShoalEntry(d) {
				continue // converted before: this conversion's entries replace it
			}
			// Everything else stays in an --into-index index, attestations included.
			res.SourceManifests = append(res.SourceManifests, d)
			if d.Platform == nil && !origin.IsIndex(d.MediaType) {
				unplatformed = append(unplatformed, job{desc: d})
				continue
			}
			if origin.IsIndex(d.MediaType) || d.Platform.OS == "unknown" {
				continue // nested indexes, attestations and the like are not images to convert
			}
			avail = append(avail, origin.PlatformString(*d.Platform))
			if opts.AllPlatforms || wanted(opts.Platforms, *d.Platform) {
				jobs = append(jobs, job{desc: d, platform: d.Platform})
			}
		}
		if len(jobs) == 0 && len(avail) == 0 && len(unplatformed) == 1 || opts.AllPlatforms {
			jobs = append(jobs, unplatformed...)
		}
		if len(jobs) == 0 {
			want := opts.Platforms
			if len(want) == 0 {
				want = []ocispec.Platform{origin.HostPlatform()}
			}
			return nil, fmt.Errorf("index %s has no image for %v (it has %v): %w", root.Digest, platformList(want), avail, origin.ErrNotFound)
		}
	} else {
		jobs = []job{{desc: root, manifest: body}}
	}
	for _, j := range jobs {
		mb := j.manifest
		desc := j.desc
		if mb == nil {
			if desc, mb, err = src.Manifest(ctx, j.desc.Digest); err != nil {
				return nil, err
			}
			if origin.IsIndex(desc.MediaType) {
				return nil, fmt.Errorf("manifest %s is an index inside an index: %w", desc.Digest, origin.ErrUnsupported)
			}
		}
		im, err := convertImage(ctx, src, lw, stage, desc, mb, j.platform, opts)
		if err != nil {
			return nil, fmt.Errorf("converting %s: %w", desc.Digest, err)
		}
		res.Images = append(res.Images, *im)
		if !origin.IsIndex(root.MediaType) {
			d := ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size, Platform: &im.Platform}
			res.SourceManifests = []ocispec.Descriptor{d}
		}
	}
	return res, nil
}

func wanted(ps []ocispec.Platform, p ocispec.Platform) bool {
	if len(ps) == 0 {
		return origin.PlatformMatch(origin.HostPlatform(), p)
	}
	for _, w := range ps {
		if origin.PlatformMatch(w, p) {
			return true
		}
	}
	return false
}

func platformList(ps []ocispec.Platform) []string {
	var out []string
	for _, p := range ps {
		out = append(out, origin.PlatformString(p))
	}
	return out
}

// Layer media types a source image may have: OCI (with or without gzip/zstd, distributable or
// not) and Docker schema 2.
var layerTypes = map[string]bool{
	ocispec.MediaTypeImageLayer:                                    true,
	ocispec.MediaTypeImageLayerGzip:                                true,
	ocispec.MediaTypeImageLayerZstd:                                true,
	"application/vnd.oci.image.layer.nondistributable.v1.tar":      true,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": true,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": true,
	"application/vnd.docker.image.rootfs.diff.tar.gzip":            true,
	"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":    true,
	"application/vnd.docker.image.rootfs.diff.tar":                 true,
}

const mediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"

// sourceConfig is the part of an image config the converter reads.
type sourceConfig struct {
	Architecture string         `json:"architecture"`
	OS           string         `json:"os"`
	Variant      string         `json:"variant"`
	RootFS       ocispec.RootFS `json:"rootfs"`
}

func convertImage(ctx context.Context, src Source, lw *bootstrap.LayoutWriter, stage string, desc ocispec.Descriptor, mb []byte, platform *ocispec.Platform, opts Options) (*ImageResult, error) {
	if desc.MediaType != ocispec.MediaTypeImageManifest && desc.MediaType != mediaTypeDockerManifest {
		return nil, fmt.Errorf("manifest media type %q is not an OCI or Docker schema 2 image: %w", desc.MediaType, origin.ErrUnsupported)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if m.ArtifactType == bootstrap.ArtifactType {
		return nil, fmt.Errorf("manifest is a Shoal image already: %w", origin.ErrUnsupported)
	}
	if m.Config.Size > maxConfigSize {
		return nil, fmt.Errorf("config %s of %d bytes is larger than %d: %w", m.Config.Digest, m.Config.Size, maxConfigSize, origin.ErrUnsupported)
	}
	cfgJSON, err := readBlob(ctx, src, m.Config.Digest, maxConfigSize)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var cfg sourceConfig
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("config %s lists %d diff_ids for %d layers: %w", m.Config.Digest, len(cfg.RootFS.DiffIDs), len(m.Layers), ErrBadLayer)
	}
	for i, l := range m.Layers {
		if !layerTypes[l.MediaType] {
			return nil, fmt.Errorf("layer %d (%s): media type %q is not a tar layer: %w", i+1, l.Digest, l.MediaType, origin.ErrUnsupported)
		}
		if err := l.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
	}
	p := ocispec.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
	if platform != nil {
		p = *platform
		p.OSFeatures = nil
	}
	im := &ImageResult{Platform: p, SourceManifest: desc.Digest, Layers: len(m.Layers)}

	// Read the layers, several at once: each has its own blob and chunk manifest, computed from
	// the layer alone.
	prog := newProgress(opts.Progress, origin.PlatformString(p), m.Layers)
	diffs := make([]*layerDiff, len(m.Layers))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Parallel)
	stopProgress := prog.run()
	for i, l := range m.Layers {
		g.Go(func() error {
			d, err := convertLayer(gctx, src, filepath.Join(stage, fmt.Sprintf("%.16s-%d.blob", desc.Digest.Encoded(), i)), i, l, cfg.RootFS.DiffIDs[i], opts.ChunkSize, opts.enc, opts.DictSize, prog)
			if err != nil {
				return fmt.Errorf("layer %d of %d (%s): %w", i+1, len(m.Layers), l.Digest, err)
			}
			diffs[i] = d
			return nil
		})
	}
	err = g.Wait()
	stopProgress()
	if err != nil {
		return nil, err
	}
	tree := bootstrap.NewTree()
	for i, d := range diffs {
		if err := apply(tree, d); err != nil {
			return nil, fmt.Errorf("applying layer %d (%s): %w", i+1, m.Layers[i].Digest, err)
		}
		im.Notes = append(im.Notes, d.notes...)
		im.LayerBytes += m.Layers[i].Size
	}
	// Only blobs the final tree reads from become devices, in layer order.
	used := map[int]bool{}
	seen := map[*bootstrap.Node]bool{}
	var walk func(n *bootstrap.Node)
	walk = func(n *bootstrap.Node) {
		if seen[n] {
			return
		}
		seen[n] = true
		if n.IsRegular() {
			im.Files++
			im.FileBytes += n.Size
		}
		for _, c := range n.Chunks {
			if !c.Hole {
				used[c.Device] = true
			}
		}
		for _, c := range n.Children {
			walk(c)
		}
	}
	walk(tree.Root)
	remap := map[int]int{}
	var devices []bootstrap.DeviceSpec
	var blobs []ocispec.Descriptor
	var manifests []*chunk.Manifest
	for i, d := range diffs {
		if d.manifest == nil {
			continue
		}
		if !used[i+1] {
			os.Remove(d.blobPath)
			continue
		}
		remap[i+1] = len(devices) + 1
		devices = append(devices, bootstrap.DeviceSpec{Tag: d.blob.Encoded(), Size: d.manifest.BlobSize})
		bd, err := lw.PutFileAs(d.blobPath, bootstrap.MediaTypeBlob, d.blob, d.manifest.StoredBlobSize())
		if err != nil {
			return nil, err
		}
		bd.Annotations = map[string]string{bootstrap.AnnotationSourceLayer: m.Layers[i].Digest.String()}
		blobs = append(blobs, bd)
		manifests = append(manifests, d.manifest)
		im.ChunkBytes += d.manifest.DataBytes()
		im.StoredBytes += d.manifest.StoredBlobSize()
	}
	for n := range seen {
		for k, c := range n.Chunks {
			if !c.Hole {
				n.Chunks[k].Device = remap[c.Device]
			}
		}
	}
	img, err := bootstrap.WriteEROFS(tree, bootstrap.WriteOptions{ChunkSize: opts.ChunkSize, Devices: devices})
	if err != nil {
		return nil, err
	}
	im.Bootstrap = int64(len(img))
	im.Blobs = len(blobs)
	boot, err := lw.PutBytes(img, bootstrap.MediaTypeBootstrap)
	if err != nil {
		return nil, err
	}
	md, _, err := lw.WriteImage(bootstrap.ImageSpec{
		Bootstrap: boot, Blobs: blobs, Manifests: manifests, SourceConfig: cfgJSON, Platform: p,
		Annotations: map[string]string{"dev.shoal.source.manifest": desc.Digest.String()},
	})
	if err != nil {
		return nil, err
	}
	im.Manifest = md
	fmt.Fprintf(opts.Progress, "%s: %d layers → %d blobs, %d files (%s), bootstrap %s\n", origin.PlatformString(p),
		len(m.Layers), len(blobs), im.Files, units.Bytes(im.FileBytes), units.Bytes(im.Bootstrap))
	return im, nil
}

// convertLayer streams one source layer into its own data blob. With a dictionary size, the
// blob is written uncompressed, a dictionary trained on a sample of its chunks, and the blob
// encoded with it (trainAndEncode).
func convertLayer(ctx context.Context, src Source, blobPath string, i int, l ocispec.Descriptor, diffID digest.Digest, chunkSize int64, enc *zchunk.Encoder, dictSize int, prog *progress) (*layerDiff, error) {
	rc, err := src.Open(ctx, l.Digest)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	writeEnc := enc
	if enc != nil && dictSize != 0 {
		writeEnc = nil
	}
	bw, err := bootstrap.NewStoredBlobWriter(blobPath, i+1, chunkSize, writeEnc)
	if err != nil {
		return nil, err
	}
	ch := bootstrap.NewChunker(bw, chunkSize)
	d, err := readLayer(countingReader{ctx: ctx, r: rc, n: &prog.read}, diffID, ch)
	if werr := ch.Wait(); err == nil {
		err = werr
	}
	if err != nil {
		bw.Abort()
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, err
	}
	prog.layerDone()
	if bw.Size() == 0 {
		bw.Abort()
		return d, nil
	}
	d.blob, d.manifest, err = bw.Finish()
	if err == nil && writeEnc != enc {
		d.blob, d.manifest, err = trainAndEncode(blobPath, d.manifest, enc, dictSize)
	}
	if err != nil {
		os.Remove(blobPath)
		return nil, err
	}
	d.blobPath = blobPath
	return d, nil
}

// trainAndEncode replaces the uncompressed blob at path (m, schema 1) by its stored form:
// a dictionary trained on the start of evenly spaced chunks (bootstrap.Sampler), then every
// chunk encoded with it (bootstrap.EncodeBlob).
func trainAndEncode(path string, m *chunk.Manifest, enc *zchunk.Encoder, dictSize int) (digest.Digest, *chunk.Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	var total int64
	for _, c := range m.Chunks {
		total += min(c.Length, zchunk.DictSamplePiece)
	}
	s := bootstrap.NewSampler(total)
	buf := make([]byte, zchunk.DictSamplePiece)
	for _, c := range m.Chunks {
		if !s.Want() {
			continue
		}
		n := min(c.Length, zchunk.DictSamplePiece)
		if _, err := f.ReadAt(buf[:n], c.Offset); err != nil {
			return "", nil, fmt.Errorf("blob %s: sampling for a dictionary: %w", m.Blob, err)
		}
		s.Add(buf[:n])
	}
	denc, err := bootstrap.WithTrainedDict(enc, s.Samples(), dictSize)
	if err != nil {
		return "", nil, err
	}
	tmp := path + ".stored"
	sm, err := bootstrap.EncodeBlob(f, m, tmp, denc)
	if err != nil {
		return "", nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", nil, err
	}
	return sm.Blob, sm, nil
}

func readBlob(ctx context.Context, src Source, d digest.Digest, limit int64) ([]byte, error) {
	rc, err := src.Open(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return bootstrap.ReadAllLimited(rc, limit, "blob "+d.String())
}

// progress prints, about once a second, how many layers are done and how many compressed bytes
// have been read.
type progress struct {
	w      io.Writer
	what   string
	layers int
	total  int64
	read   atomic.Int64
	done   atomic.Int64
	start  time.Time
}

func newProgress(w io.Writer, what string, layers []ocispec.Descriptor) *progress {
	p := &progress{w: w, what: what, layers: len(layers), start: time.Now()}
	for _, l := range layers {
		p.total += l.Size
	}
	return p
}

func (p *progress) layerDone() { p.done.Add(1) }

func (p *progress) line() {
	el := time.Since(p.start).Seconds()
	rate := int64(float64(p.read.Load()) / max(el, 0.001))
	fmt.Fprintf(p.w, "%s: layers %d/%d, %s of %s read (%s/s)\n", p.what, p.done.Load(), p.layers,
		units.Bytes(p.read.Load()), units.Bytes(p.total), units.Bytes(rate))
}

// run prints progress until the returned stop is called (which waits for the printer to end).
func (p *progress) run() (stop func()) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				p.line()
			}
		}
	})
	return func() {
		close(quit)
		wg.Wait()
		p.line()
	}
}
