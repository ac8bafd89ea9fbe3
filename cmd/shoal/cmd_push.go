package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/shoal-p2p/shoal/internal/units"
	"github.com/shoal-p2p/shoal/origin"
)

func init() {
	register(&command{name: "image push", summary: "upload an image layout to a registry", run: runImagePush})
}

func runImagePush(ctx context.Context, args []string) error {
	fs := newFlags("image push", "LAYOUT_DIR REF [flags]",
		"Uploads the image in an OCI image layout to the registry reference REF (host[:port]/name[:tag]):\n"+
			"the blobs the registry lacks, then the manifest.")
	config := registryFlags(fs)
	var mount multiFlag
	fs.Var(&mount, "mount-from", "repository of the same registry to mount blobs from (repeatable)")
	refName := fs.String("ref", "", "ref name of the manifest to push when the layout holds several")
	quiet := fs.Bool("quiet", false, "print only the result")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		fs.Usage()
		return errUsage
	}
	cfg, err := config()
	if err != nil {
		return err
	}
	last := map[string]time.Time{}
	progress := func(p origin.PushProgress) {
		if *quiet {
			return
		}
		d := p.Digest.Encoded()[:12]
		switch p.State {
		case origin.PushUploading:
			if time.Since(last[d]) < time.Second {
				return
			}
			last[d] = time.Now()
			fmt.Fprintf(os.Stderr, "%s uploading %s / %s\n", d, units.Bytes(p.Done), units.Bytes(p.Size))
		default:
			fmt.Fprintf(os.Stderr, "%s %s (%s)\n", d, p.State, units.Bytes(p.Size))
		}
	}
	desc, err := origin.Push(ctx, pos[0], pos[1], cfg, origin.PushOptions{RefName: *refName, MountFrom: mount, Progress: progress})
	if err != nil {
		return err
	}
	fmt.Printf("pushed %s@%s\n", pos[1], desc.Digest)
	return nil
}
