package engine

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/kilntest"
	"github.com/kiln-dev/kiln/internal/platform"
	"github.com/moby/buildkit/client"
	digest "github.com/opencontainers/go-digest"
)

func TestPrepareMultiPlatform(t *testing.T) {
	ctxDir := kilntest.Context(t)
	r := mustPrepare(t, Options{ContextPath: ctxDir, Platform: "linux/amd64,linux/arm64", Outputs: []string{"type=oci,dest=" + filepath.Join(t.TempDir(), "o.tar")}})
	if !r.MultiPlatform() || !slices.Equal(platform.Strings(r.Platforms()), []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("Platforms() = %q, MultiPlatform() = %v", r.Platforms(), r.MultiPlatform())
	}
	if _, ok := r.FrontendAttrs()["platform"]; ok {
		t.Errorf("a multi-platform request sets the frontend's platform attribute (it is set per solve)")
	}
	if !r.Platform().IsZero() {
		t.Errorf("Platform() = %q for a multi-platform request", r.Platform())
	}
	if got := platform.Strings(r.BuilderPlatforms()); !slices.Equal(got, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("BuilderPlatforms() = %q", got)
	}

	one := mustPrepare(t, Options{ContextPath: ctxDir, Platform: "arm64"})
	if one.MultiPlatform() || one.Platform() != platform.ARM64 || one.FrontendAttrs()["platform"] != "linux/arm64" {
		t.Errorf("single platform: multi=%v platform=%q attrs=%v", one.MultiPlatform(), one.Platform(), one.FrontendAttrs())
	}
	none := mustPrepare(t, Options{ContextPath: ctxDir})
	if len(none.Platforms()) != 0 || !slices.Equal(platform.Strings(none.BuilderPlatforms()), []string{"linux/amd64"}) {
		t.Errorf("no platform: Platforms()=%q BuilderPlatforms()=%q", none.Platforms(), none.BuilderPlatforms())
	}
}

func TestBuilderPlatform(t *testing.T) {
	ctxDir := kilntest.Context(t)
	cases := []struct {
		platform, buildPlatform string
		want                    map[string]string // target → builder
		builders                []string
	}{
		{"linux/amd64,linux/arm64", "", map[string]string{"linux/amd64": "linux/amd64", "linux/arm64": "linux/arm64"}, []string{"linux/amd64", "linux/arm64"}},
		{"linux/amd64,linux/arm64", "dynamic", map[string]string{"linux/amd64": "linux/amd64", "linux/arm64": "linux/arm64"}, []string{"linux/amd64", "linux/arm64"}},
		{"linux/arm64,linux/amd64", "linux/amd64", map[string]string{"linux/amd64": "linux/amd64", "linux/arm64": "linux/amd64"}, []string{"linux/amd64"}},
		{"linux/amd64,linux/arm64", "arm64", map[string]string{"linux/amd64": "linux/arm64", "linux/arm64": "linux/arm64"}, []string{"linux/arm64"}},
		{"linux/arm/v7,linux/386", "", map[string]string{"linux/arm/v7": "linux/arm64", "linux/386": "linux/amd64"}, []string{"linux/arm64", "linux/amd64"}},
		{"", "linux/arm64", map[string]string{"": "linux/arm64"}, []string{"linux/arm64"}},
		{"linux/arm64", "", map[string]string{"linux/arm64": "linux/arm64"}, []string{"linux/arm64"}},
	}
	for _, c := range cases {
		r := mustPrepare(t, Options{ContextPath: ctxDir, Platform: c.platform, BuildPlatform: c.buildPlatform})
		for target, want := range c.want {
			var tp platform.Platform
			if target != "" {
				tp, _ = platform.Parse(target)
			}
			if got := r.BuilderPlatform(tp).String(); got != want {
				t.Errorf("--platform %q --build-platform %q: BuilderPlatform(%q) = %q, want %q", c.platform, c.buildPlatform, target, got, want)
			}
		}
		if got := platform.Strings(r.BuilderPlatforms()); !slices.Equal(got, c.builders) {
			t.Errorf("--platform %q --build-platform %q: BuilderPlatforms() = %q, want %q", c.platform, c.buildPlatform, got, c.builders)
		}
	}

	for _, bad := range []string{"linux/arm/v7", "linux/386", "windows/amd64", "static", "linux/amd64,linux/arm64", "???"} {
		_, err := prepareOptions(Options{ContextPath: ctxDir, BuildPlatform: bad})
		if err == nil || !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "--build-platform") {
			t.Errorf("--build-platform %q: err = %v, want an invalid-argument error naming the flag", bad, err)
		}
	}
}

func TestPrepareMultiPlatformRefusesDockerOutputs(t *testing.T) {
	ctxDir := kilntest.Context(t)
	cases := []struct {
		name string
		mod  func(o *Options)
	}{
		{"--load", func(o *Options) { o.Load = true }},
		{"type=docker to a file", func(o *Options) { o.Outputs = []string{"type=docker,dest=" + filepath.Join(t.TempDir(), "d.tar")} }},
		{"type=docker load", func(o *Options) { o.Outputs = []string{"type=docker"} }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := Options{ContextPath: ctxDir, Platform: "linux/amd64,linux/arm64", Tags: []string{"app:dev"}}
			c.mod(&o)
			r, err := prepareOptions(o)
			if err == nil {
				r.Close()
				t.Fatalf("Prepare succeeded; want the buildx error for manifest lists")
			}
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), "manifest lists") && !strings.Contains(err.Error(), "multi-platform") {
				t.Errorf("error %q does not say why", err)
			}
		})
	}
	// One platform selected: --load is fine.
	r := mustPrepare(t, Options{ContextPath: ctxDir, Platform: "linux/arm64", Outputs: []string{"type=docker,dest=" + filepath.Join(t.TempDir(), "d.tar")}})
	if r.MultiPlatform() {
		t.Errorf("one platform is not multi-platform")
	}
}

func TestPlatformVertexName(t *testing.T) {
	cases := map[string]string{
		"[build 2/3] RUN make":                 "[linux/arm64 build 2/3] RUN make",
		"[2/3] RUN make":                       "[linux/arm64 2/3] RUN make",
		"[internal] load build definition":     "[linux/arm64 internal] load build definition",
		"exporting to image":                   "[linux/arm64] exporting to image",
		"[not closed":                          "[linux/arm64] [not closed",
		"":                                     "[linux/arm64] ",
		"[stage-1 1/1] RUN uname -m > /arch":   "[linux/arm64 stage-1 1/1] RUN uname -m > /arch",
		"[auth] library/alpine:pull token for": "[linux/arm64 auth] library/alpine:pull token for",
	}
	for in, want := range cases {
		if got := PlatformVertexName("linux/arm64", in); got != want {
			t.Errorf("PlatformVertexName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPlatformStatus(t *testing.T) {
	d1, d2 := digest.FromString("one"), digest.FromString("two")
	st := &client.SolveStatus{
		Vertexes: []*client.Vertex{{Digest: d2, Inputs: []digest.Digest{d1}, Name: "[1/1] RUN x"}, nil},
		Statuses: []*client.VertexStatus{{ID: "s", Vertex: d2}},
		Logs:     []*client.VertexLog{{Vertex: d2, Data: []byte("hi")}},
		Warnings: []*client.VertexWarning{{Vertex: d1, Short: []byte("w")}},
	}
	amd, arm := platformStatus("linux/amd64", st), platformStatus("linux/arm64", st)
	if st.Vertexes[0].Digest != d2 || st.Vertexes[0].Name != "[1/1] RUN x" {
		t.Fatalf("platformStatus changed its input")
	}
	if amd.Vertexes[0].Digest == arm.Vertexes[0].Digest || amd.Vertexes[0].Digest == d2 {
		t.Errorf("the same step on two platforms keeps one digest")
	}
	if again := platformStatus("linux/amd64", st); again.Vertexes[0].Digest != amd.Vertexes[0].Digest {
		t.Errorf("digest mapping is not stable across updates")
	}
	a := amd.Vertexes[0]
	if a.Name != "[linux/amd64 1/1] RUN x" || len(amd.Vertexes) != 1 {
		t.Errorf("vertexes = %+v", amd.Vertexes)
	}
	if amd.Statuses[0].Vertex != a.Digest || amd.Logs[0].Vertex != a.Digest {
		t.Errorf("statuses and logs do not follow their vertex")
	}
	if amd.Warnings[0].Vertex != a.Inputs[0] || a.Inputs[0] == d1 {
		t.Errorf("inputs and warnings are not remapped consistently")
	}
	if platformStatus("linux/amd64", nil) != nil {
		t.Errorf("nil status")
	}
}

func TestPlanPlatformExports(t *testing.T) {
	work := t.TempDir()
	user := []client.ExportEntry{
		{Type: client.ExporterLocal, OutputDir: "/out"},
		{Type: client.ExporterOCI, Attrs: map[string]string{"name": "app:1"}, Output: fileOutput(filepath.Join(work, "x"))},
		{Type: client.ExporterImage, Attrs: map[string]string{"name": "reg.example/a/app:1,reg.example/a/app:2,other.example/b:3", "push": "true", "name-canonical": "true"}},
		{Type: client.ExporterImage, Attrs: map[string]string{"name": "app:1"}},
		{Type: client.ExporterTar, Output: fileOutput(filepath.Join(work, "y"))},
	}
	p, err := planPlatformExports(work, 1, "linux/arm64", user)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.exports) != len(user) {
		t.Fatalf("%d exports for %d", len(p.exports), len(user))
	}
	if got := p.exports[0].OutputDir; got != "/out/linux_arm64" {
		t.Errorf("local OutputDir = %q", got)
	}
	oci := p.exports[1]
	if oci.Output != nil || oci.OutputDir == "" || oci.Attrs["tar"] != "false" || oci.Attrs["name"] != "app:1" || p.kinds[1] != partOCI {
		t.Errorf("oci export = %+v kind %d", oci, p.kinds[1])
	}
	push := p.exports[2]
	if push.Attrs["name"] != "reg.example/a/app,other.example/b" || push.Attrs["push-by-digest"] != "true" || push.Attrs["push"] != "true" || p.kinds[2] != partPush {
		t.Errorf("push export attrs = %v kind %d", push.Attrs, p.kinds[2])
	}
	if _, ok := push.Attrs["name-canonical"]; ok {
		t.Errorf("name-canonical kept for a push by digest")
	}
	if user[2].Attrs["name"] != "reg.example/a/app:1,reg.example/a/app:2,other.example/b:3" {
		t.Errorf("the user's export was modified")
	}
	if p.kinds[3] != partInPlace || p.exports[3].Attrs["name"] != "app:1" {
		t.Errorf("an image output that does not push changed: %+v", p.exports[3])
	}
	if p.kinds[4] != partTar || p.exports[4].Output == nil || !strings.HasPrefix(p.parts[4], work) {
		t.Errorf("tar export kind %d part %q", p.kinds[4], p.parts[4])
	}

	if _, err := planPlatformExports(work, 0, "linux/amd64", []client.ExportEntry{{Type: client.ExporterDocker}}); err == nil {
		t.Errorf("a docker export was planned for a multi-platform build")
	}
}

func TestImageNamesAndRepositories(t *testing.T) {
	names, err := imageNames("app, reg:5000/x/y:v1,ghcr.io/o/r@sha256:" + strings.Repeat("a", 64))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"docker.io/library/app:latest", "reg:5000/x/y:v1", "ghcr.io/o/r@sha256:" + strings.Repeat("a", 64)}
	if !slices.Equal(names, want) {
		t.Errorf("imageNames = %q, want %q", names, want)
	}
	repos, err := repositories("app:1,app:2,reg:5000/x/y:v1")
	if err != nil || !slices.Equal(repos, []string{"docker.io/library/app", "reg:5000/x/y"}) {
		t.Errorf("repositories = %q, %v", repos, err)
	}
	for _, bad := range []string{"", " , ", "upper/CASE", "a b"} {
		if _, err := repositories(bad); err == nil {
			t.Errorf("repositories(%q) succeeded", bad)
		}
	}
	if _, err := imageNames("bad name"); err == nil {
		t.Errorf("imageNames accepted a bad name")
	}
}

// multiTarEntries lists the names of a tar archive, and file contents.
func multiTarEntries(t *testing.T, b []byte) ([]string, map[string]string) {
	t.Helper()
	var names []string
	files := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names, files
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Typeflag == tar.TypeReg {
			dt, _ := io.ReadAll(tr)
			files[h.Name] = string(dt)
		}
		if h.Typeflag == tar.TypeLink {
			files[h.Name] = "link:" + h.Linkname
		}
	}
}
