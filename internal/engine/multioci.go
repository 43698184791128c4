package engine

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kiln-dev/kiln/internal/platform"
)

// maxManifestBytes bounds a manifest or index read from a layout: BuildKit's
// are a few KiB, and anything far larger is not one of ours.
const maxManifestBytes = 4 << 20

// platformLayout is one platform's OCI layout directory, as its solve's OCI
// exporter (tar=false) left it: the blobs, and an index.json with one entry
// that is either the platform's image manifest or, when BuildKit attached
// attestations, an index of that manifest and its attestation manifests.
type platformLayout struct {
	Platform string
	Dir      string
}

// mergeOCILayouts copies the blobs of every layout into dst (an OCI layout
// directory, created if needed) and adds one OCI image index listing each
// platform's manifest and its attestation manifests, in the order of
// layouts. It returns the index's descriptor; [writeOCILayoutIndex] names
// it in dst's index.json.
func mergeOCILayouts(dst string, layouts []platformLayout) (ocispecs.Descriptor, error) {
	var manifests []ocispecs.Descriptor
	for _, l := range layouts {
		ds, err := layoutManifests(l)
		if err != nil {
			return ocispecs.Descriptor{}, fmt.Errorf("OCI layout of %s: %w", l.Platform, err)
		}
		if err := copyBlobs(l.Dir, dst); err != nil {
			return ocispecs.Descriptor{}, fmt.Errorf("OCI layout of %s: %w", l.Platform, err)
		}
		for _, d := range ds {
			if _, err := os.Stat(blobPath(dst, d.Digest)); err != nil {
				return ocispecs.Descriptor{}, fmt.Errorf("OCI layout of %s: manifest %s is missing", l.Platform, d.Digest)
			}
			if !slices.ContainsFunc(manifests, func(m ocispecs.Descriptor) bool { return m.Digest == d.Digest }) {
				manifests = append(manifests, d)
			}
		}
	}
	// Images first, attestations after them, as BuildKit orders the index
	// of a multi-platform build: a client that takes the first entry gets
	// an image.
	slices.SortStableFunc(manifests, func(a, b ocispecs.Descriptor) int {
		return boolRank(isAttestation(a.Annotations)) - boolRank(isAttestation(b.Annotations))
	})
	idx := ocispecs.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispecs.MediaTypeImageIndex,
		Manifests: manifests,
	}
	dt, err := json.Marshal(idx)
	if err != nil {
		return ocispecs.Descriptor{}, err
	}
	desc := ocispecs.Descriptor{MediaType: ocispecs.MediaTypeImageIndex, Digest: digest.FromBytes(dt), Size: int64(len(dt))}
	if err := writeBlob(dst, desc.Digest, dt); err != nil {
		return ocispecs.Descriptor{}, err
	}
	return desc, nil
}

// layoutManifests returns the descriptors a merged index lists for l.
func layoutManifests(l platformLayout) ([]ocispecs.Descriptor, error) {
	idx, err := readOCIIndex(l.Dir)
	if err != nil {
		return nil, err
	}
	if len(idx.Manifests) != 1 {
		return nil, fmt.Errorf("index.json lists %d images, want 1", len(idx.Manifests))
	}
	top := idx.Manifests[0]
	if err := top.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	switch top.MediaType {
	case ocispecs.MediaTypeImageManifest, images.MediaTypeDockerSchema2Manifest:
		d := descriptorOnly(top)
		// The layout's index.json names the image; the platform manifest
		// inside an index does not.
		delete(d.Annotations, ocispecs.AnnotationRefName)
		delete(d.Annotations, containerdImageName)
		if len(d.Annotations) == 0 {
			d.Annotations = nil
		}
		if d.Platform == nil {
			p, err := platform.Parse(l.Platform)
			if err != nil {
				return nil, err
			}
			oci := p.OCI()
			d.Platform = &oci
		}
		return []ocispecs.Descriptor{d}, nil
	case ocispecs.MediaTypeImageIndex, images.MediaTypeDockerSchema2ManifestList:
		dt, err := readBlob(l.Dir, top)
		if err != nil {
			return nil, err
		}
		var sub ocispecs.Index
		if err := json.Unmarshal(dt, &sub); err != nil {
			return nil, fmt.Errorf("image index %s: %w", top.Digest, err)
		}
		if len(sub.Manifests) == 0 {
			return nil, fmt.Errorf("image index %s lists no manifests", top.Digest)
		}
		out := make([]ocispecs.Descriptor, 0, len(sub.Manifests))
		for _, m := range sub.Manifests {
			if err := m.Digest.Validate(); err != nil {
				return nil, fmt.Errorf("image index %s: %w", top.Digest, err)
			}
			out = append(out, descriptorOnly(m))
		}
		return out, nil
	default:
		return nil, fmt.Errorf("index.json: unexpected media type %q", top.MediaType)
	}
}

// descriptorOnly is d without fields an index entry should not repeat
// (inline data), with its maps copied.
func descriptorOnly(d ocispecs.Descriptor) ocispecs.Descriptor {
	d.Data = nil
	d.Annotations = maps.Clone(d.Annotations)
	if d.Platform != nil {
		p := *d.Platform
		p.OSFeatures = slices.Clone(p.OSFeatures)
		d.Platform = &p
	}
	return d
}

// blobPath is where an OCI layout keeps the blob d. d must be valid.
func blobPath(dir string, d digest.Digest) string {
	return filepath.Join(dir, ocispecs.ImageBlobsDir, d.Algorithm().String(), d.Encoded())
}

// readBlob reads a manifest-sized blob and checks its size and digest.
func readBlob(dir string, desc ocispecs.Descriptor) ([]byte, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, err
	}
	if desc.Size < 0 || desc.Size > maxManifestBytes {
		return nil, fmt.Errorf("blob %s: size %d is out of bounds", desc.Digest, desc.Size)
	}
	f, err := os.Open(blobPath(dir, desc.Digest))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	defer f.Close()
	dt, err := io.ReadAll(io.LimitReader(f, maxManifestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if int64(len(dt)) != desc.Size || digest.FromBytes(dt) != desc.Digest {
		return nil, fmt.Errorf("blob %s: content does not match its descriptor", desc.Digest)
	}
	return dt, nil
}

func writeBlob(dir string, d digest.Digest, dt []byte) error {
	p := blobPath(dir, d)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, dt, 0o644)
}

// copyBlobs copies (hard-links when it can) the regular files under
// src/blobs/<algorithm>/<encoded digest> to dst. Anything else in the
// directory (links, oddly named files) is not part of a layout and is
// ignored.
func copyBlobs(src, dst string) error {
	root := filepath.Join(src, ocispecs.ImageBlobsDir)
	algs, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("reading blobs: %w", err)
	}
	for _, alg := range algs {
		if !alg.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(root, alg.Name()))
		if err != nil {
			return fmt.Errorf("reading blobs: %w", err)
		}
		for _, f := range files {
			d := digest.NewDigestFromEncoded(digest.Algorithm(alg.Name()), f.Name())
			if !f.Type().IsRegular() || d.Validate() != nil {
				continue
			}
			if err := copyBlob(filepath.Join(root, alg.Name(), f.Name()), blobPath(dst, d)); err != nil {
				return err
			}
		}
	}
	return nil
}

func copyBlob(from, to string) error {
	if _, err := os.Lstat(to); err == nil {
		return nil // content-addressed: the same name is the same bytes
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	if err := os.Link(from, to); err == nil {
		return nil
	}
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := to + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, to)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// writeOCILayoutIndex writes dir's oci-layout file and an index.json that
// lists desc once per name, annotated the way BuildKit's OCI exporter
// names images (io.containerd.image.name = the full name,
// org.opencontainers.image.ref.name = its tag), or once unnamed.
func writeOCILayoutIndex(dir string, desc ocispecs.Descriptor, names []string) error {
	layout, err := json.Marshal(ocispecs.ImageLayout{Version: ocispecs.ImageLayoutVersion})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, ocispecs.ImageLayoutFile), layout, 0o644); err != nil {
		return err
	}
	idx := ocispecs.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispecs.MediaTypeImageIndex}
	if len(names) == 0 {
		idx.Manifests = append(idx.Manifests, desc)
	}
	for _, n := range names {
		d := desc
		d.Annotations = map[string]string{containerdImageName: n}
		if named, err := reference.ParseNormalizedNamed(n); err == nil {
			if tagged, ok := reference.TagNameOnly(named).(reference.Tagged); ok {
				d.Annotations[ocispecs.AnnotationRefName] = tagged.Tag()
			}
		}
		idx.Manifests = append(idx.Manifests, d)
	}
	dt, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, ocispecs.ImageIndexFile), dt, 0o644)
}

// imageNames parses an exporter's name= attribute (comma-separated image
// references) into full names with a tag (":latest" when none was given),
// as BuildKit's exporters report them.
func imageNames(attr string) ([]string, error) {
	var out []string
	for n := range strings.SplitSeq(attr, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		named, err := reference.ParseNormalizedNamed(n)
		if err != nil {
			return nil, fmt.Errorf("image name %q: %w", n, err)
		}
		if _, digested := named.(reference.Digested); !digested {
			named = reference.TagNameOnly(named)
		}
		out = append(out, named.String())
	}
	return out, nil
}

// tarOCILayout writes the OCI layout in dir to w as a tar archive:
// oci-layout and index.json first, then the blobs, in a fixed order with
// fixed owners and times, so the same layout gives the same bytes.
func tarOCILayout(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if d.IsDir() || d.Type().IsRegular() {
			paths = append(paths, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return err
	}
	rank := func(p string) int {
		switch p {
		case ocispecs.ImageLayoutFile:
			return 0
		case ocispecs.ImageIndexFile:
			return 1
		}
		return 2
	}
	slices.SortFunc(paths, func(a, b string) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		return strings.Compare(a, b)
	})
	for _, p := range paths {
		if err := tarFile(tw, filepath.Join(dir, filepath.FromSlash(p)), p); err != nil {
			return err
		}
	}
	return tw.Close()
}

func tarFile(tw *tar.Writer, path, name string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	h := &tar.Header{Name: name, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
	if fi.IsDir() {
		h.Typeflag, h.Name, h.Mode = tar.TypeDir, name+"/", 0o755
		return tw.WriteHeader(h)
	}
	h.Typeflag, h.Mode, h.Size = tar.TypeReg, 0o644, fi.Size()
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(tw, f)
	if err == nil && n != fi.Size() {
		err = fmt.Errorf("%s changed while it was archived", name)
	}
	return err
}

// attestationManifest is the vnd.docker.reference.type annotation value
// BuildKit gives an attestation manifest in an image index.
const attestationManifest = "attestation-manifest"

// isAttestation reports whether an index entry's annotations mark it as an
// attestation manifest rather than an image.
func isAttestation(annotations map[string]string) bool {
	return annotations["vnd.docker.reference.type"] == attestationManifest
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}
