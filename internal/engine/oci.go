package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/moby/buildkit/identity"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
)

// containerdImageName is the index annotation containerd and BuildKit use
// for an image's name.
const containerdImageName = "io.containerd.image.name"

// parseOCILayout parses the part after "oci-layout://" of a named context:
// "path", "path:tag", "path@digest" or "path:tag@digest". It resolves a tag
// (default "latest", or the only manifest when no tag was given) against
// the layout's index.json and returns the frontend attribute value, the
// session store id to serve the layout under, and the layout directory.
func parseOCILayout(s string) (attr, storeID, dir string, err error) {
	p, dgst := s, ""
	if i := strings.LastIndex(s, "@"); i >= 0 {
		p, dgst = s[:i], s[i+1:]
		if _, err := digest.Parse(dgst); err != nil {
			return "", "", "", fmt.Errorf("invalid digest %q: %w", dgst, err)
		}
	}
	tag := ""
	if i := strings.LastIndex(p, ":"); i >= 0 && i > strings.LastIndex(p, "/") {
		p, tag = p[:i], p[i+1:]
		if tag == "" {
			return "", "", "", errors.New("empty tag after ':'")
		}
	}
	if p == "" {
		return "", "", "", errors.New("missing OCI layout path")
	}
	dir, err = filepath.Abs(p)
	if err != nil {
		return "", "", "", err
	}
	idx, err := readOCIIndex(dir)
	if err != nil {
		return "", "", "", err
	}
	if dgst == "" {
		want := tag
		if want == "" {
			want = "latest"
		}
		for _, m := range idx.Manifests {
			if m.Annotations[ocispecs.AnnotationRefName] == want || m.Annotations[containerdImageName] == want ||
				strings.HasSuffix(m.Annotations[containerdImageName], ":"+want) {
				dgst = m.Digest.String()
				break
			}
		}
		if dgst == "" && tag == "" && len(idx.Manifests) == 1 {
			dgst = idx.Manifests[0].Digest.String()
		}
		if dgst == "" {
			return "", "", "", fmt.Errorf("no image tagged %q in the OCI layout at %s", want, dir)
		}
	}
	storeID = identity.NewID()
	attr = "oci-layout://" + storeID
	if tag != "" {
		attr += ":" + tag
	}
	return attr + "@" + dgst, storeID, dir, nil
}

func readOCIIndex(dir string) (*ocispecs.Index, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no OCI layout at %s", dir)
		}
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not an OCI layout directory", dir)
	}
	dt, err := os.ReadFile(filepath.Join(dir, ocispecs.ImageIndexFile))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s is not an OCI layout: no %s", dir, ocispecs.ImageIndexFile)
		}
		return nil, err
	}
	var idx ocispecs.Index
	if err := json.Unmarshal(dt, &idx); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", filepath.Join(dir, ocispecs.ImageIndexFile), err)
	}
	return &idx, nil
}
