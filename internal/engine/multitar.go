package engine

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/platform"
)

// platformTar is one platform's type=tar output, as its solve wrote it.
type platformTar struct {
	Platform string
	File     string
}

// combinePlatformTars writes one tar archive to w holding each platform's
// archive under a top directory named after the platform ("linux_amd64/…"),
// as BuildKit's tar exporter lays out a multi-platform build. Entries are
// copied as they are (modes, owners, times, links); hard links are
// re-pointed into their platform's directory. An entry whose name would
// leave its directory fails the merge.
func combinePlatformTars(w io.Writer, parts []platformTar) error {
	tw := tar.NewWriter(w)
	for _, p := range parts {
		if err := appendPlatformTar(tw, p); err != nil {
			return fmt.Errorf("%s: %w", p.Platform, err)
		}
	}
	return tw.Close()
}

func appendPlatformTar(tw *tar.Writer, p platformTar) error {
	pl, err := platform.Parse(p.Platform)
	if err != nil {
		return err
	}
	prefix := pl.Dir()
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: prefix + "/", Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	f, err := os.Open(p.File)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the platform's archive: %w", err)
		}
		name, ok := prefixedName(prefix, h.Name)
		if !ok {
			return fmt.Errorf("archive entry %q leaves the archive", h.Name)
		}
		if name == "" {
			continue // the archive's root: already written as prefix/
		}
		if h.Typeflag == tar.TypeDir {
			name += "/"
		}
		h.Name = name
		if h.Typeflag == tar.TypeLink {
			target, ok := prefixedName(prefix, h.Linkname)
			if !ok || target == "" {
				return fmt.Errorf("hard link %q points outside the archive", h.Linkname)
			}
			h.Linkname = target
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
}

// prefixedName returns name inside prefix, cleaned, or "" for the root.
// ok is false for a name that climbs out ("../x").
func prefixedName(prefix, name string) (string, bool) {
	clean := path.Clean("/" + strings.TrimPrefix(name, "./"))
	if strings.Contains(name, "..") {
		for _, el := range strings.Split(name, "/") {
			if el == ".." {
				return "", false
			}
		}
	}
	if clean == "/" {
		return "", true
	}
	return prefix + clean, true
}
