package engine

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/archive"
	"github.com/moby/buildkit/client"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
)

// testLayout writes an OCI layout as BuildKit's OCI exporter (tar=false)
// leaves one for a single platform: a config, a layer, a manifest and —
// with attest — an attestation manifest and an index of the two.
type testLayout struct {
	dir      string
	manifest ocispecs.Descriptor // the platform's image manifest
	attest   ocispecs.Descriptor // its attestation manifest (zero without)
	top      ocispecs.Descriptor // what index.json lists
}

func putBlob(t *testing.T, dir, mediaType string, dt []byte) ocispecs.Descriptor {
	t.Helper()
	d := ocispecs.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(dt), Size: int64(len(dt))}
	if err := writeBlob(dir, d.Digest, dt); err != nil {
		t.Fatal(err)
	}
	return d
}

func putJSON(t *testing.T, dir, mediaType string, v any) ocispecs.Descriptor {
	t.Helper()
	dt, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return putBlob(t, dir, mediaType, dt)
}

func writeIndexJSON(t *testing.T, dir string, ds ...ocispecs.Descriptor) {
	t.Helper()
	dt, _ := json.Marshal(ocispecs.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispecs.MediaTypeImageIndex, Manifests: ds})
	if err := os.WriteFile(filepath.Join(dir, ocispecs.ImageIndexFile), dt, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ocispecs.ImageLayoutFile), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
}

func newTestLayout(t *testing.T, arch string, attest bool) testLayout {
	t.Helper()
	dir := t.TempDir()
	l := testLayout{dir: dir}
	cfg := putJSON(t, dir, ocispecs.MediaTypeImageConfig, ocispecs.Image{Platform: ocispecs.Platform{OS: "linux", Architecture: arch}})
	layer := putBlob(t, dir, ocispecs.MediaTypeImageLayerGzip, []byte("layer of "+arch))
	shared := putBlob(t, dir, ocispecs.MediaTypeImageLayerGzip, []byte("a layer both platforms share"))
	l.manifest = putJSON(t, dir, ocispecs.MediaTypeImageManifest, ocispecs.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispecs.MediaTypeImageManifest,
		Config: cfg, Layers: []ocispecs.Descriptor{shared, layer},
	})
	l.manifest.Platform = &ocispecs.Platform{OS: "linux", Architecture: arch}
	if !attest {
		top := l.manifest
		top.Platform = nil // BuildKit's index.json entry has names, not always a platform
		top.Annotations = map[string]string{containerdImageName: "docker.io/library/app:1", ocispecs.AnnotationRefName: "1", "org.opencontainers.image.created": "2026-01-01T00:00:00Z"}
		l.top = top
		writeIndexJSON(t, dir, top)
		return l
	}
	stmt := putBlob(t, dir, "application/vnd.in-toto+json", []byte(`{"predicateType":"https://slsa.dev/provenance/v0.2","subject":"`+arch+`"}`))
	acfg := putBlob(t, dir, ocispecs.MediaTypeImageConfig, []byte(`{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}`))
	l.attest = putJSON(t, dir, ocispecs.MediaTypeImageManifest, ocispecs.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispecs.MediaTypeImageManifest, Config: acfg, Layers: []ocispecs.Descriptor{stmt},
	})
	l.attest.Platform = &ocispecs.Platform{OS: "unknown", Architecture: "unknown"}
	l.attest.Annotations = map[string]string{"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": l.manifest.Digest.String()}
	l.top = putJSON(t, dir, ocispecs.MediaTypeImageIndex, ocispecs.Index{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispecs.MediaTypeImageIndex,
		Manifests: []ocispecs.Descriptor{l.manifest, l.attest},
	})
	writeIndexJSON(t, dir, l.top)
	return l
}

func readMergedIndex(t *testing.T, dir string, desc ocispecs.Descriptor) ocispecs.Index {
	t.Helper()
	dt, err := readBlob(dir, desc)
	if err != nil {
		t.Fatal(err)
	}
	var idx ocispecs.Index
	if err := json.Unmarshal(dt, &idx); err != nil {
		t.Fatal(err)
	}
	return idx
}

func TestMergeOCILayouts(t *testing.T) {
	amd := newTestLayout(t, "amd64", false)
	arm := newTestLayout(t, "arm64", true)
	dst := t.TempDir()
	desc, err := mergeOCILayouts(dst, []platformLayout{{"linux/amd64", amd.dir}, {"linux/arm64", arm.dir}})
	if err != nil {
		t.Fatal(err)
	}
	if desc.MediaType != ocispecs.MediaTypeImageIndex {
		t.Errorf("merged media type %q", desc.MediaType)
	}
	idx := readMergedIndex(t, dst, desc)
	if idx.SchemaVersion != 2 || idx.MediaType != ocispecs.MediaTypeImageIndex {
		t.Errorf("index header %+v", idx)
	}
	var got []string
	for _, m := range idx.Manifests {
		p := "<none>"
		if m.Platform != nil {
			p = m.Platform.OS + "/" + m.Platform.Architecture
		}
		got = append(got, m.Digest.String()+" "+p)
	}
	want := []string{amd.manifest.Digest.String() + " linux/amd64", arm.manifest.Digest.String() + " linux/arm64", arm.attest.Digest.String() + " unknown/unknown"}
	if !slices.Equal(got, want) {
		t.Errorf("merged manifests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Names belong to index.json, not to the entries of an image index.
	if a := idx.Manifests[0].Annotations; a[containerdImageName] != "" || a[ocispecs.AnnotationRefName] != "" {
		t.Errorf("platform manifest kept layout name annotations: %v", a)
	}
	if a := idx.Manifests[2].Annotations; a["vnd.docker.reference.digest"] != arm.manifest.Digest.String() {
		t.Errorf("attestation manifest lost its annotations: %v", a)
	}
	// Every blob of both layouts is there, shared ones once.
	for _, l := range []testLayout{amd, arm} {
		for _, d := range []ocispecs.Descriptor{l.manifest, l.top} {
			if _, err := readBlob(dst, ocispecs.Descriptor{Digest: d.Digest, Size: d.Size}); err != nil {
				t.Errorf("merged layout: %v", err)
			}
		}
	}

	if err := writeOCILayoutIndex(dst, desc, []string{"docker.io/library/app:1", "reg:5000/app:2"}); err != nil {
		t.Fatal(err)
	}
	top, err := readOCIIndex(dst)
	if err != nil {
		t.Fatal(err)
	}
	if len(top.Manifests) != 2 || top.Manifests[0].Digest != desc.Digest ||
		top.Manifests[1].Annotations[containerdImageName] != "reg:5000/app:2" || top.Manifests[1].Annotations[ocispecs.AnnotationRefName] != "2" {
		t.Errorf("index.json = %+v", top.Manifests)
	}
	// An OCI layout build context can use the merged layout.
	if _, _, _, err := parseOCILayout(dst + ":1"); err != nil {
		t.Errorf("merged layout is not usable as oci-layout:// context: %v", err)
	}

	var buf bytes.Buffer
	if err := tarOCILayout(&buf, dst); err != nil {
		t.Fatal(err)
	}
	names, files := multiTarEntries(t, buf.Bytes())
	if len(names) < 3 || names[0] != "oci-layout" || names[1] != "index.json" {
		t.Errorf("archive starts with %q", names[:min(3, len(names))])
	}
	if _, ok := files["blobs/sha256/"+desc.Digest.Encoded()]; !ok {
		t.Errorf("archive lacks the merged index blob")
	}
	var again bytes.Buffer
	_ = tarOCILayout(&again, dst)
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Errorf("archiving the same layout twice gave different bytes")
	}
}

func TestMergeOCILayoutsHostile(t *testing.T) {
	cases := []struct {
		name string
		mod  func(t *testing.T, l testLayout)
		want string
	}{
		{"no index.json", func(t *testing.T, l testLayout) { os.Remove(filepath.Join(l.dir, "index.json")) }, "index.json"},
		{"index.json garbage", func(t *testing.T, l testLayout) { os.WriteFile(filepath.Join(l.dir, "index.json"), []byte("{"), 0o644) }, "index.json"},
		{"two images", func(t *testing.T, l testLayout) { writeIndexJSON(t, l.dir, l.top, l.manifest) }, "lists 2 images"},
		{"no images", func(t *testing.T, l testLayout) { writeIndexJSON(t, l.dir) }, "lists 0 images"},
		{"bad digest", func(t *testing.T, l testLayout) {
			d := l.top
			d.Digest = "sha256:../../../etc/passwd"
			writeIndexJSON(t, l.dir, d)
		}, "index.json"},
		{"unknown media type", func(t *testing.T, l testLayout) {
			d := l.top
			d.MediaType = "application/x-evil"
			writeIndexJSON(t, l.dir, d)
		}, "unexpected media type"},
		{"tampered index blob", func(t *testing.T, l testLayout) {
			os.WriteFile(blobPath(l.dir, l.top.Digest), []byte(`{"manifests":[]}`), 0o644)
		}, "does not match"},
		{"huge index blob", func(t *testing.T, l testLayout) {
			d := l.top
			d.Size = 1 << 40
			writeIndexJSON(t, l.dir, d)
		}, "out of bounds"},
		{"missing child", func(t *testing.T, l testLayout) { os.Remove(blobPath(l.dir, l.manifest.Digest)) }, "missing"},
		{"empty sub-index", func(t *testing.T, l testLayout) {
			d := putJSON(t, l.dir, ocispecs.MediaTypeImageIndex, ocispecs.Index{Versioned: specs.Versioned{SchemaVersion: 2}})
			writeIndexJSON(t, l.dir, d)
		}, "lists no manifests"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := newTestLayout(t, "arm64", true)
			c.mod(t, l)
			_, err := mergeOCILayouts(t.TempDir(), []platformLayout{{"linux/arm64", l.dir}})
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "linux/arm64") {
				t.Errorf("err = %v, want one naming linux/arm64 and containing %q", err, c.want)
			}
		})
	}

	// Symlinks and stray files among the blobs are not copied.
	l := newTestLayout(t, "amd64", false)
	os.Symlink("/etc/passwd", filepath.Join(l.dir, "blobs", "sha256", strings.Repeat("b", 64)))
	os.WriteFile(filepath.Join(l.dir, "blobs", "sha256", "not-a-digest"), []byte("x"), 0o644)
	dst := t.TempDir()
	if _, err := mergeOCILayouts(dst, []platformLayout{{"linux/amd64", l.dir}}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{strings.Repeat("b", 64), "not-a-digest"} {
		if _, err := os.Lstat(filepath.Join(dst, "blobs", "sha256", name)); err == nil {
			t.Errorf("%s was copied into the merged layout", name)
		}
	}
}

func writeTar(t *testing.T, path string, entries []*tar.Header, content map[string]string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		if c, ok := content[h.Name]; ok {
			h.Size = int64(len(c))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if c, ok := content[h.Name]; ok {
			tw.Write([]byte(c))
		}
	}
	tw.Close()
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCombinePlatformTars(t *testing.T) {
	dir := t.TempDir()
	amd, arm := filepath.Join(dir, "amd.tar"), filepath.Join(dir, "arm.tar")
	entries := func() []*tar.Header {
		return []*tar.Header{
			{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "arch", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1000},
			{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "/bin/busybox"},
			{Name: "bin/ash", Typeflag: tar.TypeLink, Linkname: "arch"},
		}
	}
	writeTar(t, amd, entries(), map[string]string{"arch": "x86_64\n"})
	writeTar(t, arm, entries(), map[string]string{"arch": "aarch64\n"})
	var buf bytes.Buffer
	if err := combinePlatformTars(&buf, []platformTar{{"linux/amd64", amd}, {"linux/arm64", arm}}); err != nil {
		t.Fatal(err)
	}
	names, files := multiTarEntries(t, buf.Bytes())
	want := []string{"linux_amd64/", "linux_amd64/arch", "linux_amd64/bin/", "linux_amd64/bin/sh", "linux_amd64/bin/ash",
		"linux_arm64/", "linux_arm64/arch", "linux_arm64/bin/", "linux_arm64/bin/sh", "linux_arm64/bin/ash"}
	if !slices.Equal(names, want) {
		t.Errorf("entries = %q, want %q", names, want)
	}
	if files["linux_amd64/arch"] != "x86_64\n" || files["linux_arm64/arch"] != "aarch64\n" {
		t.Errorf("contents = %v", files)
	}
	if files["linux_arm64/bin/ash"] != "link:linux_arm64/arch" {
		t.Errorf("hard link = %q", files["linux_arm64/bin/ash"])
	}

	for name, h := range map[string]*tar.Header{
		"climbing name": {Name: "../../etc/passwd", Typeflag: tar.TypeReg},
		"climbing link": {Name: "x", Typeflag: tar.TypeLink, Linkname: "../../etc/shadow"},
		"nested climb":  {Name: "a/../../b", Typeflag: tar.TypeReg},
	} {
		evil := filepath.Join(dir, "evil.tar")
		writeTar(t, evil, []*tar.Header{h}, nil)
		err := combinePlatformTars(&bytes.Buffer{}, []platformTar{{"linux/amd64", evil}})
		if err == nil || !strings.Contains(err.Error(), "linux/amd64") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	os.WriteFile(filepath.Join(dir, "junk.tar"), []byte("not a tar at all, just bytes that go on and on"), 0o644)
	if err := combinePlatformTars(&bytes.Buffer{}, []platformTar{{"linux/amd64", filepath.Join(dir, "junk.tar")}}); err == nil {
		t.Errorf("a corrupt archive was combined")
	}
}

// With attestations on every platform, the images still come first.
func TestMergeOCILayoutsOrdersImagesFirst(t *testing.T) {
	amd := newTestLayout(t, "amd64", true)
	arm := newTestLayout(t, "arm64", true)
	dst := t.TempDir()
	desc, err := mergeOCILayouts(dst, []platformLayout{{"linux/amd64", amd.dir}, {"linux/arm64", arm.dir}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range readMergedIndex(t, dst, desc).Manifests {
		got = append(got, m.Digest.String())
	}
	want := []string{amd.manifest.Digest.String(), arm.manifest.Digest.String(), amd.attest.Digest.String(), arm.attest.Digest.String()}
	if !slices.Equal(got, want) {
		t.Errorf("order = %q, want %q", got, want)
	}
}

// nopCloserBuffer collects what an exporter Output writes.
type nopCloserBuffer struct {
	bytes.Buffer
	closed bool
}

func (b *nopCloserBuffer) Close() error { b.closed = true; return nil }

// The parts two platform solves left are merged into the user's outputs:
// an OCI archive, an OCI layout directory that already lists an image, and
// a tar archive.
func TestFinishPlatformExports(t *testing.T) {
	amd := newTestLayout(t, "amd64", false)
	arm := newTestLayout(t, "arm64", true)
	dir := t.TempDir()
	amdTar, armTar := filepath.Join(dir, "amd.tar"), filepath.Join(dir, "arm.tar")
	writeTar(t, amdTar, []*tar.Header{{Name: "arch", Typeflag: tar.TypeReg, Mode: 0o644}}, map[string]string{"arch": "x86_64\n"})
	writeTar(t, armTar, []*tar.Header{{Name: "arch", Typeflag: tar.TypeReg, Mode: 0o644}}, map[string]string{"arch": "aarch64\n"})

	layoutDir := newTestLayout(t, "amd64", false).dir // a layout the user already has
	var ociOut, tarOut nopCloserBuffer
	user := []client.ExportEntry{
		{Type: client.ExporterOCI, Attrs: map[string]string{"name": "app:1"}, Output: func(map[string]string) (io.WriteCloser, error) { return &ociOut, nil }},
		{Type: client.ExporterOCI, Attrs: map[string]string{"name": "app:dir", "tar": "false"}, OutputDir: layoutDir},
		{Type: client.ExporterTar, Output: func(map[string]string) (io.WriteCloser, error) { return &tarOut, nil }},
		{Type: client.ExporterLocal, OutputDir: filepath.Join(dir, "local")},
	}
	plans := []*platformPlan{
		{platform: "linux/amd64", kinds: []int{partOCI, partOCI, partTar, partInPlace}, parts: []string{amd.dir, amd.dir, amdTar, ""}},
		{platform: "linux/arm64", kinds: []int{partOCI, partOCI, partTar, partInPlace}, parts: []string{arm.dir, arm.dir, armTar, ""}},
	}
	resp, err := finishPlatformExports(t.Context(), nil, user, plans, make([]*client.SolveResponse, 2))
	if err != nil {
		t.Fatal(err)
	}
	if !ociOut.closed || !tarOut.closed {
		t.Errorf("outputs not closed")
	}

	// The OCI archive: one named index of both platforms.
	extracted := t.TempDir()
	if _, err := archive.Extract(bytes.NewReader(ociOut.Bytes()), extracted, archive.Limits{}, archive.Policy{}); err != nil {
		t.Fatal(err)
	}
	idx, err := readOCIIndex(extracted)
	if err != nil || len(idx.Manifests) != 1 || idx.Manifests[0].Annotations[containerdImageName] != "docker.io/library/app:1" {
		t.Fatalf("archive index.json = %+v, %v", idx, err)
	}
	merged := readMergedIndex(t, extracted, idx.Manifests[0])
	if len(merged.Manifests) != 3 {
		t.Errorf("archive index lists %d manifests, want 2 images + 1 attestation", len(merged.Manifests))
	}
	if resp.ExporterResponse["containerimage.digest"] == "" || resp.ExporterResponse["image.name"] == "" {
		t.Errorf("exporter response = %v", resp.ExporterResponse)
	}

	// The directory: the old entry is kept, the index is added by name.
	dirIdx, err := readOCIIndex(layoutDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range dirIdx.Manifests {
		names = append(names, m.Annotations[containerdImageName])
	}
	if !slices.Contains(names, "docker.io/library/app:1") || !slices.Contains(names, "docker.io/library/app:dir") {
		t.Errorf("layout directory lists %q, want the old image and the new index", names)
	}

	// The tar archive: a directory per platform.
	_, files := multiTarEntries(t, tarOut.Bytes())
	if files["linux_amd64/arch"] != "x86_64\n" || files["linux_arm64/arch"] != "aarch64\n" {
		t.Errorf("tar output = %v", files)
	}
}
