package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
	"github.com/shoal-p2p/shoal/internal/units"
)

func init() {
	register(&command{name: "image build", summary: "build an image from a directory tree", run: runImageBuild})
	register(&command{name: "image inspect", summary: "describe an image layout", run: runImageInspect})
}

func runImageBuild(ctx context.Context, args []string) error {
	fs := newFlags("image build", "SRC_DIR OUT_DIR [--chunk-size SIZE]",
		"Builds an EROFS image of SRC_DIR (bootstrap + data blob + chunk manifests) as an OCI image\nlayout in OUT_DIR, which must not exist.")
	chunk := fs.String("chunk-size", "1M", "chunk size: a power of two from 4K to 16M (suffixes K, M)")
	ref := fs.String("ref", "latest", "ref name recorded in the layout's index.json")
	quiet := fs.Bool("quiet", false, "print only the summary")
	engine := fs.String("engine", bootstrap.EngineGo, "what writes the EROFS image: go (Shoal's writer) or mkfs (mkfs.erofs)")
	compression, level := compressionFlags(fs)
	dict := dictFlag(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		fs.Usage()
		return errUsage
	}
	dictSize, err := dictBytes(*compression, *dict)
	if err != nil {
		return err
	}
	size, err := units.ParseBytes(*chunk)
	if err != nil {
		return fmt.Errorf("--chunk-size: %w", err)
	}
	var progress io.Writer = os.Stderr
	if *quiet {
		progress = nil
	}
	res, err := bootstrap.Build(ctx, pos[0], pos[1], bootstrap.BuildOptions{ChunkSize: size, Ref: *ref, Progress: progress, Engine: *engine,
		Compression: *compression, CompressionLevel: compressionLevel(*compression, *level), DictSize: dictSize})
	if err != nil {
		return err
	}
	fmt.Printf("built %s\n", pos[1])
	fmt.Printf("  manifest   %s\n", res.Image.Digest)
	fmt.Printf("  files      %d (%s), %d directories, %d other\n", res.Files, units.Bytes(res.FileBytes), res.Dirs, res.Others)
	fmt.Printf("  bootstrap  %s\n", units.Bytes(res.Bootstrap))
	if res.BlobBytes != res.DeviceBytes {
		fmt.Printf("  blobs      %d (%s stored, %s uncompressed)\n", len(res.Image.Blobs), units.Bytes(res.BlobBytes), units.Bytes(res.DeviceBytes))
	} else {
		fmt.Printf("  blobs      %d (%s)\n", len(res.Image.Blobs), units.Bytes(res.BlobBytes))
	}
	fmt.Printf("  chunks     %d of %s (%s)\n", res.Chunks, units.Bytes(size), units.Bytes(res.ChunkBytes))
	for _, b := range res.Image.Blobs {
		if len(b.Manifest.Dict) > 0 {
			fmt.Printf("  dictionary %s (blob %d)\n", units.Bytes(int64(len(b.Manifest.Dict))), b.Device)
		}
	}
	fmt.Printf("  dedup      %s saved\n", units.Bytes(res.DedupSaved))
	fmt.Printf("  took       %v (%s)\n", res.Elapsed.Round(time.Millisecond), *engine)
	return nil
}

// compressionFlags adds --compression and --compression-level (image build, image convert).
func compressionFlags(fs *flag.FlagSet) (compression *string, level *int) {
	compression = fs.String("compression", bootstrap.CompressionZstd, "chunk compression in the data blobs: zstd (each chunk where it pays) or none")
	level = fs.Int("compression-level", zchunk.DefaultLevel, "zstd level, 1 (fastest) to 22 (smallest)")
	return compression, level
}

// dictFlag adds --dict-size (image build, image convert).
func dictFlag(fs *flag.FlagSet) *string {
	return fs.String("dict-size", "128K", // zchunk.DefaultDictSize
		"zstd dictionary trained per blob on a sample of its chunks, up to 1M (suffix K, M); 0 turns it off")
}

// dictBytes is the dictionary size to pass on: 0 without compression.
func dictBytes(compression, s string) (int, error) {
	n, err := units.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("--dict-size: %w", err)
	}
	if compression == bootstrap.CompressionNone {
		return 0, nil
	}
	if n != 0 && (n < zchunk.MinDictSize || n > chunk.MaxDictSize) {
		return 0, fmt.Errorf("--dict-size %s: want 0 or %s to %s", s, units.Bytes(zchunk.MinDictSize), units.Bytes(chunk.MaxDictSize))
	}
	return int(n), nil
}

// compressionLevel is the level to pass on: none with the default level is no level at all.
func compressionLevel(compression string, level int) int {
	if compression == bootstrap.CompressionNone && level == zchunk.DefaultLevel {
		return 0
	}
	return level
}

// inspectJSON is the stable shape of `shoal image inspect --json`.
type inspectJSON struct {
	Manifest  string        `json:"manifest"`
	Bootstrap inspectDesc   `json:"bootstrap"`
	Blobs     []inspectBlob `json:"blobs"`
	DataBytes int64         `json:"dataBytes"`
	// StoredBytes is what the chunks take in the blobs as stored (compressed, if they are).
	StoredBytes int64 `json:"storedBytes"`
}

type inspectDesc struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

type inspectBlob struct {
	Digest         string        `json:"digest"`
	Size           int64         `json:"size"`
	Device         int           `json:"device"`
	Chunking       string        `json:"chunking"`
	ChunkSize      int64         `json:"chunkSize"`
	ManifestDigest string        `json:"chunkManifest"`
	Chunks         []chunk.Chunk `json:"chunks"`
}

func runImageInspect(ctx context.Context, args []string) error {
	fs := newFlags("image inspect", "LAYOUT_DIR [--json]", "Describes the Shoal image in an OCI image layout directory.")
	asJSON := fs.Bool("json", false, "print JSON: manifest, bootstrap, blobs with their chunks")
	ref := fs.String("ref", "", "ref name to pick when the layout holds several images")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	im, _, err := bootstrap.Layout{Dir: pos[0]}.ReadImage(*ref)
	if err != nil {
		return err
	}
	out := inspectJSON{
		Manifest:  im.Digest.String(),
		Bootstrap: inspectDesc{im.Bootstrap.Digest.String(), im.Bootstrap.Size},
		Blobs:     []inspectBlob{},
		DataBytes: im.DataBytes(), StoredBytes: im.StoredBytes(),
	}
	for _, b := range im.Blobs {
		out.Blobs = append(out.Blobs, inspectBlob{
			Digest: b.Digest.String(), Size: b.Size, Device: b.Device,
			Chunking: b.Manifest.Chunking, ChunkSize: b.Manifest.ChunkSize,
			ManifestDigest: b.ManifestDigest.String(), Chunks: append([]chunk.Chunk{}, b.Manifest.Chunks...),
		})
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	fmt.Printf("image     %s\n", out.Manifest)
	fmt.Printf("bootstrap %s  %s\n", out.Bootstrap.Digest, units.Bytes(out.Bootstrap.Size))
	fmt.Printf("data      %s in %d chunks, %s stored\n\n", units.Bytes(out.DataBytes), countChunks(out.Blobs), units.Bytes(out.StoredBytes))
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tBLOB\tSIZE\tCHUNKING\tCHUNK SIZE\tCHUNKS")
	for _, b := range out.Blobs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\n", b.Device, b.Digest, units.Bytes(b.Size), b.Chunking, units.Bytes(b.ChunkSize), len(b.Chunks))
	}
	return tw.Flush()
}

func countChunks(bs []inspectBlob) int {
	n := 0
	for _, b := range bs {
		n += len(b.Chunks)
	}
	return n
}
