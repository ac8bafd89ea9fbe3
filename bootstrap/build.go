package bootstrap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-p2p/shoal/internal/units"
)

// DefaultChunkSize is the chunk size of images built without --chunk-size: large enough that a
// blob's chunk manifest stays small, small enough that a demand read fetches little it does not
// need.
const DefaultChunkSize = 1 << 20

// MaxChunkSize bounds chunk sizes: peers exchange whole chunks in one frame.
const MaxChunkSize = 16 << 20

// BuildOptions configures Build.
type BuildOptions struct {
	ChunkSize int64 // power of two, 4 KiB..16 MiB; 0 means DefaultChunkSize
	// Engine writes the EROFS image: EngineGo (the default, WriteEROFS) or EngineMkfs (drives
	// mkfs.erofs; kept as the tests' oracle and for comparison).
	Engine string
	Mkfs   string // mkfs.erofs binary for EngineMkfs; "" looks it up in PATH
	Ref    string // ref name recorded in index.json; "" means "latest"
	// Compression of the data blob's chunks: CompressionZstd (each chunk a zstd frame where that
	// pays, raw otherwise; a schema 2 chunk manifest) or CompressionNone / "" (uncompressed, as
	// images were before; the CLI's default is zstd). The bootstrap is never compressed.
	Compression string
	// CompressionLevel is the zstd level (1-22); 0 means zchunk.DefaultLevel.
	CompressionLevel int
	// DictSize, with CompressionZstd, trains a zstd dictionary of about this many bytes (at
	// most chunk.MaxDictSize) on a sample of the tree's files and compresses chunks with it
	// (chunk.CodecZstdDict, the dictionary in the chunk manifest); 0: none. The CLI's default
	// is zchunk.DefaultDictSize.
	DictSize int
	Progress io.Writer // progress lines, nil for none
}

// BuildResult summarises a build.
type BuildResult struct {
	Image       *Image
	Files       int           // regular files
	Dirs        int           // directories, the root included
	Others      int           // symlinks, devices, fifos, sockets
	FileBytes   int64         // sum of regular file sizes (hard links counted once)
	BlobBytes   int64         // size of the data blob(s) as stored (compressed, if it is)
	DeviceBytes int64         // size of the uncompressed blob(s): the EROFS devices
	Chunks      int           // chunks over all blobs
	ChunkBytes  int64         // bytes the chunks cover
	DedupSaved  int64         // block-rounded file data that identical chunks did not store again
	Bootstrap   int64         // bootstrap size
	Elapsed     time.Duration // writing the image (reading the tree, chunking, the bootstrap)

	longestName int
}

// Engines of Build.
const (
	EngineGo   = "go"
	EngineMkfs = "mkfs"
)

// ErrNoMkfs is returned when mkfs.erofs cannot be found.
var ErrNoMkfs = errors.New("mkfs.erofs not found (install erofs-utils)")

// Build turns the directory tree src into a Shoal image in the OCI layout directory out, which
// must not exist yet: 4 KiB blocks, every regular file chunk-indexed into one data blob, the
// chunk manifest, a runnable manifest (RunnableConfig with no source config). On error nothing
// is left at out.
func Build(ctx context.Context, src, out string, opts BuildOptions) (*BuildResult, error) {
	if opts.ChunkSize == 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	if c := opts.ChunkSize; c < chunk.BlockSize || c > MaxChunkSize || c&(c-1) != 0 {
		return nil, fmt.Errorf("chunk size %d: must be a power of two from %d to %d", c, chunk.BlockSize, MaxChunkSize)
	}
	if opts.Ref == "" {
		opts.Ref = "latest"
	}
	enc, err := ChunkEncoder(opts.Compression, opts.CompressionLevel)
	if err != nil {
		return nil, err
	}
	switch opts.Engine {
	case "":
		opts.Engine = EngineGo
	case EngineGo, EngineMkfs:
	default:
		return nil, fmt.Errorf("build engine %q: want %q or %q", opts.Engine, EngineGo, EngineMkfs)
	}
	mkfs := opts.Mkfs
	if mkfs == "" && opts.Engine == EngineMkfs {
		p, err := exec.LookPath("mkfs.erofs")
		if err != nil {
			return nil, ErrNoMkfs
		}
		mkfs = p
	}
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	st, err := os.Stat(src)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("source %s is not a directory", src)
	}
	if _, err := os.Lstat(out); err == nil {
		return nil, fmt.Errorf("output %s already exists: choose a new directory", out)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("output: %w", err)
	}
	var trained time.Duration // counted in Elapsed: the build's time
	if enc != nil && opts.DictSize != 0 {
		t0 := time.Now()
		samples, err := sampleTree(ctx, src)
		if err != nil {
			return nil, err
		}
		if enc, err = WithTrainedDict(enc, samples, opts.DictSize); err != nil {
			return nil, err
		}
		trained = time.Since(t0)
	}
	res := &BuildResult{}
	if opts.Engine == EngineMkfs {
		if err := scanSource(ctx, src, res, progress); err != nil {
			return nil, err
		}
	}
	parent := filepath.Dir(filepath.Clean(out))
	stage, err := os.MkdirTemp(parent, "."+filepath.Base(out)+".building-")
	if err != nil {
		return nil, fmt.Errorf("output: %w", err)
	}
	defer os.RemoveAll(stage)
	bootPath := filepath.Join(stage, "bootstrap")
	blobPath := filepath.Join(stage, "blob")
	start := time.Now()
	var m *chunk.Manifest
	blobSynced := func() error { return nil } // mkfs.erofs's blob is not synced here
	if opts.Engine == EngineGo {
		if m, blobSynced, err = buildGo(ctx, src, bootPath, blobPath, opts.ChunkSize, enc, res, progress); err != nil {
			return nil, err
		}
		defer func() { _ = blobSynced() }() // on every path out: the fsync's goroutine has ended
	} else if err := runMkfs(ctx, mkfs, src, bootPath, blobPath, opts.ChunkSize, res, progress); err != nil {
		return nil, err
	}
	res.Elapsed = time.Since(start) + trained
	return finishBuild(stage, out, bootPath, blobPath, m, blobSynced, enc, opts, res, progress)
}

func runMkfs(ctx context.Context, mkfs, src, bootPath, blobPath string, chunkSize int64, res *BuildResult, progress io.Writer) error {
	opts := struct{ ChunkSize int64 }{chunkSize}
	fmt.Fprintf(progress, "mkfs.erofs: %d files, %s\n", res.Files, units.Bytes(res.FileBytes))
	cmd := exec.CommandContext(ctx, mkfs,
		fmt.Sprintf("--chunksize=%d", opts.ChunkSize),
		"--blobdev="+blobPath,
		"-Eforce-chunk-indexes",
		bootPath, src)
	var stderr bytes.Buffer
	total := res.Files + res.Dirs + res.Others
	cmd.Stdout, cmd.Stderr = &mkfsProgress{w: progress, total: total, last: time.Now()}, &stderr
	if err := cmd.Run(); err != nil {
		hint := ""
		if res.longestName >= 255 {
			hint = " (the source has a 255-byte name, which some mkfs.erofs versions cannot store)"
		}
		return fmt.Errorf("mkfs.erofs failed%s: %w: %s", hint, err, strings.TrimSpace(lastLines(stderr.String(), 10)))
	}
	return nil
}

// finishBuild checks the image just written, computes its chunk manifest unless the writer
// already did (m), and moves the layout into place once blobSynced (the blob's fsync, running
// beside the checks) has returned.
//
// With an encoder and no manifest (mkfs.erofs wrote an uncompressed blob), the blob is encoded
// into its stored form after chunking.
func finishBuild(stage, out, bootPath, blobPath string, m *chunk.Manifest, blobSynced func() error, enc *zchunk.Encoder, opts BuildOptions, res *BuildResult, progress io.Writer) (*BuildResult, error) {
	// Read whole: the checks below read metadata in small pieces (tens of thousands of preads
	// for a tree of 15 000 files), and the bootstrap is metadata only, small next to the tree.
	boot, err := os.ReadFile(bootPath)
	if err != nil {
		return nil, err
	}
	res.Bootstrap = int64(len(boot))
	efs, err := Open(bytes.NewReader(boot), int64(len(boot)))
	if err != nil {
		return nil, fmt.Errorf("reading the image %s wrote: %w", opts.Engine, err)
	}
	if efs.BlockSize() != chunk.BlockSize {
		return nil, fmt.Errorf("%s wrote %d-byte blocks; Shoal needs %d", opts.Engine, efs.BlockSize(), chunk.BlockSize)
	}
	if n := len(efs.Devices()); n != 1 {
		return nil, fmt.Errorf("%s wrote %d extra devices, want 1", opts.Engine, n)
	}
	blobFile, err := os.Open(blobPath)
	if err != nil {
		return nil, err
	}
	defer blobFile.Close()
	blobSt, err := blobFile.Stat()
	if err != nil {
		return nil, err
	}
	res.BlobBytes, res.DeviceBytes = blobSt.Size(), blobSt.Size()
	if m != nil {
		res.DeviceBytes = m.BlobSize
	}
	if err := efs.Check([]int64{res.DeviceBytes}); err != nil {
		return nil, fmt.Errorf("the image %s wrote: %w", opts.Engine, err)
	}
	var manifests []*chunk.Manifest
	if m != nil {
		manifests = []*chunk.Manifest{m}
	} else {
		fmt.Fprintf(progress, "chunking: %s blob\n", units.Bytes(res.BlobBytes))
		blobDigest, err := digest.SHA256.FromReader(io.NewSectionReader(blobFile, 0, blobSt.Size()))
		if err != nil {
			return nil, fmt.Errorf("hashing blob: %w", err)
		}
		manifests, err = ChunkManifests(efs, []BlobData{{Digest: blobDigest, Size: blobSt.Size(), R: blobFile}}, opts.ChunkSize)
		if err != nil {
			return nil, err
		}
		// Dedup: the blob bytes file data would take without sharing (each file's extents,
		// rounded to the block) minus what the chunks take.
		var logical int64
		if err := efs.WalkExtents(func(_ string, _ *Inode, e Extent) error {
			if !e.Hole && e.Device > 0 {
				logical += roundUp(e.Length, chunk.BlockSize)
			}
			return nil
		}); err != nil {
			return nil, err
		}
		res.DedupSaved = max(0, logical-manifests[0].DataBytes())
		if enc != nil {
			fmt.Fprintf(progress, "compressing: %s blob\n", units.Bytes(res.BlobBytes))
			storedPath := blobPath + ".stored"
			sm, err := EncodeBlob(blobFile, manifests[0], storedPath, enc)
			if err != nil {
				return nil, err
			}
			manifests[0], blobPath, res.BlobBytes = sm, storedPath, sm.StoredSize
		}
	}
	for _, m := range manifests {
		res.Chunks += len(m.Chunks)
		res.ChunkBytes += m.DataBytes()
	}
	w, err := NewLayoutWriter(filepath.Join(stage, "layout"))
	if err != nil {
		return nil, err
	}
	bootDesc, err := w.PutFile(bootPath, MediaTypeBootstrap)
	if err != nil {
		return nil, err
	}
	blobDesc, err := w.PutFileAs(blobPath, MediaTypeBlob, manifests[0].Blob, manifests[0].StoredBlobSize())
	if err != nil {
		return nil, err
	}
	md, mb, err := w.WriteImage(ImageSpec{Bootstrap: bootDesc, Blobs: []ocispec.Descriptor{blobDesc}, Manifests: manifests, Platform: HostPlatform()})
	if err == nil {
		err = w.WriteIndex([]ocispec.Descriptor{md}, opts.Ref)
	}
	if err != nil {
		return nil, fmt.Errorf("writing layout: %w", err)
	}
	im, err := ParseImage(mb, w.l.Fetch)
	if err != nil {
		return nil, fmt.Errorf("reading back the layout: %w", err)
	}
	if err := blobSynced(); err != nil {
		return nil, err
	}
	if err := os.Rename(w.l.Dir, out); err != nil {
		return nil, fmt.Errorf("output: %w", err)
	}
	res.Image = im
	return res, nil
}

// scanSource counts the tree and fails early, naming the path, on anything mkfs.erofs could not
// read.
func scanSource(ctx context.Context, src string, res *BuildResult, progress io.Writer) error {
	seen := map[[2]uint64]bool{}
	last := time.Now()
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		res.longestName = max(res.longestName, len(d.Name()))
		switch {
		case d.IsDir():
			res.Dirs++
			f, err := os.Open(p)
			if err != nil {
				return fmt.Errorf("source: %w", err)
			}
			f.Close()
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return fmt.Errorf("source: %w", err)
			}
			if id, ok := fileID(info); ok {
				if seen[id] {
					return nil
				}
				seen[id] = true
			}
			f, err := os.Open(p)
			if err != nil {
				return fmt.Errorf("source: %w", err)
			}
			f.Close()
			res.Files++
			res.FileBytes += info.Size()
		default:
			res.Others++
		}
		if time.Since(last) > time.Second {
			last = time.Now()
			fmt.Fprintf(progress, "scanning: %d files, %s\n", res.Files, units.Bytes(res.FileBytes))
		}
		return nil
	})
}

// mkfsProgress turns mkfs.erofs's "Processing <path> ..." output into a progress line a second,
// so a large tree does not look stuck.
type mkfsProgress struct {
	w     io.Writer
	total int
	done  int
	last  time.Time
}

func (p *mkfsProgress) Write(b []byte) (int, error) {
	p.done += bytes.Count(b, []byte("Processing "))
	if time.Since(p.last) >= time.Second {
		p.last = time.Now()
		fmt.Fprintf(p.w, "mkfs.erofs: %d of %d entries\n", min(p.done, p.total), p.total)
	}
	return len(b), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
