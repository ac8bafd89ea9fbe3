package convert

import (
	"archive/tar"
	"bytes"
	"path/filepath"
	"testing"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/convert/converttest"
)

// FuzzReadLayer: any bytes as a layer (gzip, zstd or a tar) are read, applied and written as
// an EROFS image, or refused with an error: never a panic or a hang.
func FuzzReadLayer(f *testing.F) {
	tb := converttest.Tar(f, []converttest.Entry{
		{Name: "d/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "d/f", Type: tar.TypeReg, Mode: 0o644, Data: []byte("hello"), Xattrs: map[string]string{"user.a": "b"}},
		{Name: "d/l", Type: tar.TypeLink, Link: "d/f"},
		{Name: "d/.wh.x", Type: tar.TypeReg},
		{Name: "s", Type: tar.TypeSymlink, Link: "/d/f"},
	})
	f.Add(tb)
	f.Add(converttest.Compress(f, tb, "gzip"))
	f.Add(converttest.Compress(f, tb, "zstd"))
	f.Fuzz(func(t *testing.T, b []byte) {
		bw, err := bootstrap.NewBlobWriter(filepath.Join(t.TempDir(), "blob"), 1, 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		defer bw.Abort()
		ch := bootstrap.NewChunker(bw, 64<<10)
		d, err := readLayer(bytes.NewReader(b), "", ch)
		if werr := ch.Wait(); err == nil {
			err = werr
		}
		if err != nil {
			return
		}
		tree := bootstrap.NewTree()
		if err := apply(tree, d); err != nil {
			return
		}
		_, _ = bootstrap.WriteEROFS(tree, bootstrap.WriteOptions{ChunkSize: 64 << 10, Devices: []bootstrap.DeviceSpec{{Size: bw.Size()}}})
	})
}
