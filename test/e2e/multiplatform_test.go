package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"

	"github.com/kiln-dev/kiln/internal/testenv"
)

// multiDockerfile builds its base from the busybox of the target
// architecture, so every RUN executes that architecture's code: natively,
// or under QEMU binfmt emulation (hack/setup-multiplatform.sh).
const multiDockerfile = `FROM scratch AS busybox
ARG TARGETARCH
COPY busybox-${TARGETARCH} /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM busybox
RUN uname -m > /arch
`

// busyboxFor returns a static busybox for arch: the host's own
// /bin/busybox, or bin/busybox-<arch> that hack/setup.sh extracts from
// Debian's busybox-static for the other architecture.
func busyboxFor(t *testing.T, arch string) []byte {
	t.Helper()
	p := "/bin/busybox"
	if arch != runtime.GOARCH {
		p = filepath.Join(repoRoot, "bin", "busybox-"+arch)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		testenv.Missing(t, "the %s busybox is required for multi-platform tests: %v (run hack/setup.sh, which fetches it)", arch, err)
	}
	return b
}

// requireEmulation fails the test (or skips it, with KILN_SKIP_MISSING=1)
// when the kernel cannot run the other architecture's binaries: the
// foreign-architecture builder's RUN steps would fail with "exec format
// error" for a reason that has nothing to do with kiln.
func requireEmulation(t *testing.T) {
	t.Helper()
	handler := map[string]string{"amd64": "qemu-aarch64", "arm64": "qemu-x86_64"}[runtime.GOARCH]
	st, err := os.ReadFile("/proc/sys/fs/binfmt_misc/" + handler)
	if err == nil && strings.HasPrefix(string(st), "enabled") {
		return
	}
	msg := "QEMU emulation is required for multi-platform tests: /proc/sys/fs/binfmt_misc/" + handler + " is not enabled (run hack/setup.sh)"
	testenv.Missing(t, "%s", msg)
}

// writeMultiContext is a context with both architectures' busybox.
func writeMultiContext(t *testing.T) string {
	t.Helper()
	requireEmulation(t)
	dir := writeContext(t, map[string]string{"Dockerfile": multiDockerfile})
	for _, arch := range []string{"amd64", "arm64"} {
		if err := os.WriteFile(filepath.Join(dir, "busybox-"+arch), busyboxFor(t, arch), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

var mpWantArch = map[string]string{"linux/amd64": "x86_64", "linux/arm64": "aarch64"}

const twoPlatforms = "linux/amd64,linux/arm64"

func (s *server) mpBuildCount(t *testing.T, project string) int {
	t.Helper()
	res, err := s.api().ListBuilds(t.Context(), bearer(&cliv1.ListBuildsRequest{ProjectId: project, PageSize: 1000}, s.Token))
	if err != nil {
		t.Fatalf("ListBuilds: %v", err)
	}
	return len(res.Msg.Builds)
}

// mpBuilderPlatforms lists the platforms project has builders for.
func (s *server) mpBuilderPlatforms(t *testing.T, project string) []string {
	t.Helper()
	var out []string
	for _, b := range s.builders(t) {
		if b.ProjectID == project {
			out = append(out, b.Platform)
		}
	}
	slices.Sort(out)
	return out
}

// mpOCIArchive is an OCI layout tar, read into memory.
type mpOCIArchive map[string][]byte

func readMPArchive(t *testing.T, path string) mpOCIArchive {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a := mpOCIArchive{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return a
		}
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		b, _ := io.ReadAll(tr)
		a[strings.TrimPrefix(h.Name, "./")] = b
	}
}

func (a mpOCIArchive) blob(t *testing.T, d string) []byte {
	t.Helper()
	b, ok := a["blobs/"+strings.Replace(d, ":", "/", 1)]
	if !ok {
		t.Fatalf("OCI archive lacks blob %s", d)
	}
	return b
}

type mpDescriptor struct {
	MediaType   string
	Digest      string
	Platform    *struct{ OS, Architecture, Variant string }
	Annotations map[string]string
}

func (d mpDescriptor) platform() string {
	if d.Platform == nil {
		return ""
	}
	return d.Platform.OS + "/" + d.Platform.Architecture
}

// mpLayerFile returns path from the topmost of a manifest's layers that has
// it (gzip or uncompressed layers).
func mpLayerFile(t *testing.T, layers [][]byte, path string) string {
	t.Helper()
	found := ""
	for _, l := range layers {
		var r io.Reader = bytes.NewReader(l)
		if zr, err := gzip.NewReader(bytes.NewReader(l)); err == nil {
			r = zr
		}
		tr := tar.NewReader(r)
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			if strings.TrimPrefix(h.Name, "./") == strings.TrimPrefix(path, "/") {
				b, _ := io.ReadAll(tr)
				found = string(b)
			}
		}
	}
	return found
}

// TestMultiPlatformBuild: a user builds one Dockerfile for linux/amd64 and
// linux/arm64 in one `kiln build`, and gets one image index whichever way
// they ask for it, each platform's RUN having run as that architecture.
func TestMultiPlatformBuild(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	proj := s.createProject(t, "multi")
	ctxDir := writeMultiContext(t)
	out := t.TempDir()

	t.Run("oci archive holds one index of both platforms", func(t *testing.T) {
		before := s.mpBuildCount(t, proj)
		ociPath := filepath.Join(out, "multi.tar")
		meta := filepath.Join(out, "meta.json")
		r := s.mustKiln(t, ctxDir, "build", "--project", proj, "--platform", twoPlatforms, "--progress", "plain",
			"-o", "type=oci,dest="+ociPath, "--metadata-file", meta, ".")
		for _, p := range []string{"linux/amd64", "linux/arm64"} {
			if !strings.Contains(r.Stderr, "["+p+" stage-1 1/1] RUN uname -m > /arch") {
				t.Errorf("progress does not show %s's RUN step with its platform:\n%s", p, tail(r.Stderr, 3000))
			}
		}

		a := readMPArchive(t, ociPath)
		var top struct{ Manifests []mpDescriptor }
		if err := json.Unmarshal(a["index.json"], &top); err != nil || len(top.Manifests) != 1 {
			t.Fatalf("index.json: %v %s", err, a["index.json"])
		}
		if top.Manifests[0].MediaType != "application/vnd.oci.image.index.v1+json" {
			t.Fatalf("index.json points at a %s, want an image index", top.Manifests[0].MediaType)
		}
		var idx struct{ Manifests []mpDescriptor }
		json.Unmarshal(a.blob(t, top.Manifests[0].Digest), &idx)
		got := map[string]string{}
		for _, m := range idx.Manifests {
			if m.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
				continue // none by default for an oci archive (inline-only provenance), allowed if asked
			}
			var man struct{ Layers []struct{ Digest string } }
			json.Unmarshal(a.blob(t, m.Digest), &man)
			var layers [][]byte
			for _, l := range man.Layers {
				layers = append(layers, a.blob(t, l.Digest))
			}
			got[m.platform()] = strings.TrimSpace(mpLayerFile(t, layers, "/arch"))
		}
		if len(got) != 2 || got["linux/amd64"] != mpWantArch["linux/amd64"] || got["linux/arm64"] != mpWantArch["linux/arm64"] {
			t.Errorf("index platforms → uname -m = %v, want %v", got, mpWantArch)
		}
		var md map[string]any
		dt, _ := os.ReadFile(meta)
		if err := json.Unmarshal(dt, &md); err != nil || md["containerimage.digest"] != top.Manifests[0].Digest {
			t.Errorf("metadata containerimage.digest = %v, want the index %s (%v)", md["containerimage.digest"], top.Manifests[0].Digest, err)
		}

		// One kiln build, on both of the project's builders.
		if n := s.mpBuildCount(t, proj) - before; n != 1 {
			t.Errorf("a two-platform build made %d builds, want 1", n)
		}
		if got := s.mpBuilderPlatforms(t, proj); !slices.Equal(got, []string{"linux/amd64", "linux/arm64"}) {
			t.Errorf("builders used: %v, want one per platform", got)
		}
		id := s.latestBuild(t, proj)
		if st := s.buildStatus(t, proj, id); st != cliv1.BuildStatus_BUILD_STATUS_FINISHED {
			t.Errorf("build %s is %v", id, st)
		}
		var stepPlatforms []string
		for _, st := range s.steps(t, proj, id) {
			for p := range mpWantArch {
				if strings.HasPrefix(st.Name, "["+p+" ") && strings.Contains(st.Name, "uname") {
					stepPlatforms = append(stepPlatforms, p)
				}
			}
		}
		slices.Sort(stepPlatforms)
		if !slices.Equal(stepPlatforms, []string{"linux/amd64", "linux/arm64"}) {
			t.Errorf("stored RUN steps by platform: %v", stepPlatforms)
		}
	})

	t.Run("local output has a directory per platform", func(t *testing.T) {
		dest := filepath.Join(out, "local")
		s.mustKiln(t, ctxDir, "build", "--project", proj, "--platform", twoPlatforms, "--progress", "plain", "-o", "type=local,dest="+dest, ".")
		for p, want := range mpWantArch {
			got, err := os.ReadFile(filepath.Join(dest, strings.ReplaceAll(p, "/", "_"), "arch"))
			if err != nil || strings.TrimSpace(string(got)) != want {
				t.Errorf("%s/arch = %q, %v; want %s", strings.ReplaceAll(p, "/", "_"), got, err, want)
			}
		}
		if _, err := os.Stat(filepath.Join(dest, "arch")); err == nil {
			t.Errorf("a platform's files were written at the top of dest")
		}
	})

	t.Run("push without provenance: exactly the two platform manifests", func(t *testing.T) {
		reg := startRegistry(t)
		ref := reg + "/team/multi:1"
		iid := filepath.Join(out, "iid")
		s.mustKiln(t, ctxDir, "build", "--project", proj, "--platform", twoPlatforms, "--progress", "plain",
			"-t", ref, "-t", reg+"/team/multi:also", "--push", "--provenance=false", "--iidfile", iid, ".")
		idx := mpRemoteIndex(t, ref)
		var plats []string
		for _, m := range idx.Manifests {
			plats = append(plats, m.Platform.OS+"/"+m.Platform.Architecture)
			img, err := remote.Image(mpRef(t, reg+"/team/multi@"+m.Digest.String()))
			if err != nil {
				t.Fatalf("pull %s: %v", m.Digest, err)
			}
			if got := mpImageFile(t, img, "/arch"); got != mpWantArch[plats[len(plats)-1]] {
				t.Errorf("%s image: uname -m = %q", plats[len(plats)-1], got)
			}
		}
		slices.Sort(plats)
		if !slices.Equal(plats, []string{"linux/amd64", "linux/arm64"}) {
			t.Errorf("pushed index lists %v, want exactly linux/amd64 and linux/arm64", plats)
		}
		d1, d2 := mpRemoteDigest(t, ref), mpRemoteDigest(t, reg+"/team/multi:also")
		if d1 != d2 {
			t.Errorf("the two tags point at %s and %s", d1, d2)
		}
		if got, _ := os.ReadFile(iid); string(got) != d1 {
			t.Errorf("--iidfile = %q, want the index digest %s", got, d1)
		}
	})

	t.Run("push with default provenance adds attestation manifests", func(t *testing.T) {
		reg := startRegistry(t)
		ref := reg + "/team/multi:2"
		s.mustKiln(t, ctxDir, "build", "--project", proj, "--platform", twoPlatforms, "--progress", "plain", "-t", ref, "--push", ".")
		idx := mpRemoteIndex(t, ref)
		images := map[string]v1.Hash{}
		attested := map[string]bool{}
		for _, m := range idx.Manifests {
			if m.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
				attested[m.Annotations["vnd.docker.reference.digest"]] = true
				if m.Platform == nil || m.Platform.OS != "unknown" {
					t.Errorf("attestation manifest platform %v, want unknown/unknown", m.Platform)
				}
				continue
			}
			images[m.Platform.OS+"/"+m.Platform.Architecture] = m.Digest
		}
		if len(images) != 2 || len(idx.Manifests) != 4 {
			t.Errorf("index lists %d manifests (%d images), want 2 images + 2 attestations", len(idx.Manifests), len(images))
		}
		for p, d := range images {
			if !attested[d.String()] {
				t.Errorf("%s image %s has no attestation manifest", p, d)
			}
		}
	})

	t.Run("forced build platform runs every platform on one builder", func(t *testing.T) {
		forced := s.createProject(t, "multi-forced")
		dest := filepath.Join(out, "forced")
		s.mustKiln(t, ctxDir, "build", "--project", forced, "--platform", twoPlatforms, "--build-platform", "linux/amd64",
			"--progress", "plain", "-o", "type=local,dest="+dest, ".")
		for p, want := range mpWantArch {
			got, _ := os.ReadFile(filepath.Join(dest, strings.ReplaceAll(p, "/", "_"), "arch"))
			if strings.TrimSpace(string(got)) != want {
				t.Errorf("%s built on the amd64 builder: uname -m = %q, want %s", p, got, want)
			}
		}
		// One foreign platform, forced onto the same builder.
		single := filepath.Join(out, "forced-single")
		s.mustKiln(t, ctxDir, "build", "--project", forced, "--platform", "linux/arm64", "--build-platform", "linux/amd64",
			"--progress", "plain", "-o", "type=local,dest="+single, ".")
		if got, _ := os.ReadFile(filepath.Join(single, "arch")); strings.TrimSpace(string(got)) != "aarch64" {
			t.Errorf("linux/arm64 alone on the amd64 builder: uname -m = %q", got)
		}
		if got := s.mpBuilderPlatforms(t, forced); !slices.Equal(got, []string{"linux/amd64"}) {
			t.Errorf("--build-platform linux/amd64 used builders %v", got)
		}
	})

	t.Run("bad multi-platform requests fail before any build", func(t *testing.T) {
		before := s.mpBuildCount(t, proj)
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{"--platform", twoPlatforms, "-t", "app:1", "--load"}, "docker exporter does not currently support exporting manifest lists"},
			{[]string{"--platform", twoPlatforms, "-o", "type=docker,dest=" + filepath.Join(out, "d.tar")}, "manifest lists"},
			{[]string{"--platform", "linux/amd64,linux/riscv64"}, "no kiln builder or emulator runs linux/riscv64"},
			{[]string{"--platform", "linux/amd64,"}, "empty platform"},
			{[]string{"--platform", "linux//arm64"}, `--platform "linux//arm64"`},
			{[]string{"--platform", twoPlatforms, "--build-platform", "linux/s390x"}, "--build-platform"},
		} {
			r := s.kiln(t, ctxDir, nil, append(append([]string{"build", "--project", proj}, c.args...), ".")...)
			if r.Err == nil || !strings.Contains(r.Stderr, c.want) {
				t.Errorf("kiln build %v: err=%v, want an error containing %q:\n%s", c.args, r.Err, c.want, tail(r.Stderr, 1500))
			}
		}
		if n := s.mpBuildCount(t, proj) - before; n != 0 {
			t.Errorf("refused requests created %d builds", n)
		}
		// --load with one platform selected is fine as far as the flags go.
		one := s.kiln(t, ctxDir, []string{"DOCKER_HOST=unix:///nonexistent/docker.sock"}, "build", "--project", proj, "--platform", "linux/arm64", "-t", "app:1", "--load", ".")
		if strings.Contains(one.Stderr, "manifest lists") {
			t.Errorf("--load of one platform refused as multi-platform:\n%s", one.Stderr)
		}
	})
}

func mpRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mpRemoteIndex(t *testing.T, ref string) *v1.IndexManifest {
	t.Helper()
	idx, err := remote.Index(mpRef(t, ref))
	if err != nil {
		t.Fatalf("read index %s: %v", ref, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	return im
}

func mpRemoteDigest(t *testing.T, ref string) string {
	t.Helper()
	d, err := remote.Head(mpRef(t, ref))
	if err != nil {
		t.Fatalf("HEAD %s: %v", ref, err)
	}
	return d.Digest.String()
}

// mpImageFile reads path from a pulled image's layers.
func mpImageFile(t *testing.T, img v1.Image, path string) string {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var layers [][]byte
	for _, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		layers = append(layers, b)
	}
	return strings.TrimSpace(mpLayerFile(t, layers, path))
}
