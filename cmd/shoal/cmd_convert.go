package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-p2p/shoal/convert"
	"github.com/shoal-p2p/shoal/internal/units"
	"github.com/shoal-p2p/shoal/origin"
)

func init() {
	register(&command{name: "image convert", summary: "turn an OCI or Docker image into a runnable Shoal image", run: runImageConvert})
}

func runImageConvert(ctx context.Context, args []string) error {
	fs := newFlags("image convert", "SRC_REF [DST_REF | --output DIR] [flags]",
		"Converts the image SRC_REF (a registry reference or an OCI layout) into a runnable Shoal image:\n"+
			"one data blob per source layer, a merged EROFS bootstrap, the source's config. Pushes it to\n"+
			"DST_REF (blobs the registry lacks, the tag last), or writes it as the OCI layout DIR.\n"+
			"With --into-index the Shoal manifest joins the source tag's index after the original\n"+
			"manifests (DST_REF defaults to SRC_REF and must be in its repository): Shoal hosts pick it,\n"+
			"every other runtime keeps pulling the original.")
	config := registryFlags(fs)
	output := fs.String("output", "", "write an OCI layout to this new directory instead of pushing")
	var platforms multiFlag
	fs.Var(&platforms, "platform", "os/arch[/variant] to convert from an index (repeatable; default this host's)")
	all := fs.Bool("all-platforms", false, "convert every platform of an index")
	into := fs.Bool("into-index", false, "publish in the source tag's index beside the original manifests")
	chunkSize := fs.String("chunk-size", "1M", "chunk size: a power of two from 4K to 16M")
	workDir := fs.String("work-dir", "", "directory for the converted image before it is pushed (default the system temp dir)")
	quiet := fs.Bool("quiet", false, "print only the result")
	compression, level := compressionFlags(fs)
	dict := dictFlag(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 || len(pos) > 2 || *output != "" && (len(pos) != 1 || *into) || *output == "" && len(pos) == 1 && !*into {
		fs.Usage()
		return errUsage
	}
	cfg, err := config()
	if err != nil {
		return err
	}
	size, err := units.ParseBytes(*chunkSize)
	if err != nil {
		return fmt.Errorf("--chunk-size: %w", err)
	}
	dictSize, err := dictBytes(*compression, *dict)
	if err != nil {
		return err
	}
	opts := convert.Options{ChunkSize: size, AllPlatforms: *all, Compression: *compression, CompressionLevel: compressionLevel(*compression, *level), DictSize: dictSize}
	for _, p := range platforms {
		pl, err := origin.ParsePlatform(p)
		if err != nil {
			return fmt.Errorf("--platform: %w", err)
		}
		opts.Platforms = append(opts.Platforms, pl)
	}
	var progress io.Writer = os.Stderr
	if *quiet {
		progress = nil
	}
	opts.Progress = progress
	s, err := origin.Open(pos[0], cfg)
	if err != nil {
		return err
	}
	src, ok := s.(convert.Source)
	if !ok {
		return fmt.Errorf("%s: cannot read manifests from this source", pos[0])
	}
	dst := pos[0]
	if len(pos) == 2 {
		dst = pos[1]
	}
	if *output == "" {
		if _, err := origin.ParseReference(dst); err != nil {
			return fmt.Errorf("destination: %w", err)
		}
	}
	start := time.Now()
	out := *output
	if out == "" {
		tmp, err := os.MkdirTemp(*workDir, "shoal-convert-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		out = tmp + "/image"
	}
	res, err := convert.Convert(ctx, src, out, opts)
	if err != nil {
		return err
	}
	for _, im := range res.Images {
		for _, n := range im.Notes {
			fmt.Fprintln(os.Stderr, "note:", n)
		}
		fmt.Printf("converted %s (%s): %d layers → %d blobs, %d files, %s of data (%s stored), bootstrap %s\n",
			origin.PlatformString(im.Platform), im.SourceManifest, im.Layers, im.Blobs, im.Files,
			units.Bytes(im.ChunkBytes), units.Bytes(im.StoredBytes), units.Bytes(im.Bootstrap))
	}
	if *output != "" {
		fmt.Printf("wrote %s in %v\n", *output, time.Since(start).Round(time.Millisecond))
		return nil
	}
	last := map[string]time.Time{}
	push := func(p origin.PushProgress) {
		if *quiet {
			return
		}
		d := p.Digest.Encoded()[:12]
		if p.State == origin.PushUploading {
			if time.Since(last[d]) < time.Second {
				return
			}
			last[d] = time.Now()
			fmt.Fprintf(os.Stderr, "%s uploading %s / %s\n", d, units.Bytes(p.Done), units.Bytes(p.Size))
			return
		}
		fmt.Fprintf(os.Stderr, "%s %s (%s)\n", d, p.State, units.Bytes(p.Size))
	}
	desc, err := convert.Push(ctx, res, out, pos[0], dst, cfg, convert.PushOptions{IntoIndex: *into, Progress: push})
	if err != nil {
		return err
	}
	what := "manifest"
	if desc.MediaType == ocispec.MediaTypeImageIndex {
		what = "index"
	}
	fmt.Printf("pushed %s %s@%s in %v\n", what, strings.TrimSuffix(dst, "@"+desc.Digest.String()), desc.Digest, time.Since(start).Round(time.Millisecond))
	return nil
}
