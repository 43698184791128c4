package engine

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/kilntest"
	"github.com/kiln-dev/kiln/internal/platform"
	"github.com/moby/buildkit/client"
)

func mustPrepare(t *testing.T, o Options) *Request {
	t.Helper()
	r, err := prepareOptions(o)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func TestPrepareInvalid(t *testing.T) {
	ctxDir := kilntest.Context(t)
	notDir := filepath.Join(ctxDir, "Dockerfile")
	t.Setenv("KILN_TEST_UNSET_SECRET", "")
	os.Unsetenv("KILN_TEST_UNSET_SECRET")

	cases := []struct {
		name string
		mod  func(o *Options)
		want []string // substrings of the error
	}{
		{"missing context", func(o *Options) { o.ContextPath = filepath.Join(ctxDir, "nope") }, []string{"build context", "nope", "no such directory"}},
		{"context is a file", func(o *Options) { o.ContextPath = notDir }, []string{"build context", "not a directory"}},
		{"missing Dockerfile", func(o *Options) { o.Dockerfile = filepath.Join(ctxDir, "Other.Dockerfile") }, []string{"Dockerfile not found: " + filepath.Join(ctxDir, "Other.Dockerfile")}},
		{"Dockerfile is a dir", func(o *Options) { o.Dockerfile = ctxDir }, []string{"not a regular file"}},
		{"build-context missing dir", func(o *Options) { o.BuildContexts = []string{"base=/nonexistent/kiln"} }, []string{`--build-context "base=/nonexistent/kiln"`, "no such directory"}},
		{"build-context file", func(o *Options) { o.BuildContexts = []string{"base=" + notDir} }, []string{`--build-context "base=` + notDir, "not a directory"}},
		{"build-context oci missing", func(o *Options) { o.BuildContexts = []string{"base=oci-layout:///nonexistent/kiln:v1"} }, []string{`--build-context "base=oci-layout:///nonexistent/kiln:v1"`, "no OCI layout"}},
		{"output tar to dir", func(o *Options) { o.Outputs = []string{"type=tar,dest=" + ctxDir} }, []string{"is a directory"}},
		{"output local to file", func(o *Options) { o.Outputs = []string{"type=local,dest=" + notDir} }, []string{"not a directory"}},
		{"progress", func(o *Options) { o.Progress = "fancy" }, []string{`--progress "fancy"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{ContextPath: ctxDir}
			tc.mod(&o)
			r, err := prepareOptions(o)
			if err == nil {
				r.Close()
				t.Fatal("Prepare succeeded; want an error")
			}
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("error %q does not wrap ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestPrepareAttrs(t *testing.T) {
	ctxDir := kilntest.Context(t)
	kilntest.WriteFile(t, filepath.Join(ctxDir, "build", "App.Dockerfile"), "FROM scratch\n")
	baseDir := t.TempDir()
	secretFile := filepath.Join(t.TempDir(), "tok")
	kilntest.WriteFile(t, secretFile, "s3cret")
	t.Setenv("KILN_TEST_ARG", "from-env")
	t.Setenv("KILN_TEST_SECRET", "v")
	os.Unsetenv("KILN_TEST_NOT_SET")
	outDir := filepath.Join(t.TempDir(), "out")

	r := mustPrepare(t, Options{
		ContextPath:   ctxDir,
		Dockerfile:    filepath.Join(ctxDir, "build", "App.Dockerfile"),
		Tags:          []string{"example.com/app:1", "app"},
		Target:        "final",
		BuildArgs:     []string{"A=1", "B=", "KILN_TEST_ARG", "KILN_TEST_NOT_SET", "C=x=y"},
		Labels:        []string{"org.example=yes", "empty"},
		Secrets:       []string{"id=tok,src=" + secretFile, "id=e,env=KILN_TEST_SECRET", "id=KILN_TEST_SECRET", "type=env,id=t2,src=KILN_TEST_SECRET", "type=file,id=t3,source=" + secretFile},
		NoCacheFilter: []string{"a", "b"},
		BuildContexts: []string{"base=" + baseDir, "docker.io/library/alpine:latest=docker-image://busybox:1", "context=" + baseDir, "src=https://github.com/moby/buildkit.git"},
		Network:       "none",
		Platform:      "linux/arm64",
		Outputs:       []string{outDir},
		Progress:      "plain",
	})
	want := map[string]string{
		"filename":                "App.Dockerfile",
		"target":                  "final",
		"build-arg:A":             "1",
		"build-arg:B":             "",
		"build-arg:C":             "x=y",
		"build-arg:KILN_TEST_ARG": "from-env",
		"label:org.example":       "yes",
		"label:empty":             "",
		"no-cache":                "a,b",
		"force-network-mode":      "none",
		"platform":                "linux/arm64",
		"context:base":            "local:base",
		"context:alpine":          "docker-image://busybox:1",
		"context:context":         "local:_context",
		"context:src":             "https://github.com/moby/buildkit.git",
		"attest:provenance":       "mode=min,inline-only=true", // buildx's default
	}
	got := r.FrontendAttrs()
	for k, v := range want {
		if gv, ok := got[k]; !ok || gv != v {
			t.Errorf("attr %s = %q (present %v), want %q", k, gv, ok, v)
		}
	}
	if _, ok := got["build-arg:KILN_TEST_NOT_SET"]; ok {
		t.Error("unset env build-arg was passed")
	}
	if len(got) != len(want) {
		t.Errorf("attrs = %v, want exactly %v", got, want)
	}
	if r.locals["context"] != ctxDir || r.locals["dockerfile"] != filepath.Join(ctxDir, "build") ||
		r.locals["base"] != baseDir || r.locals["_context"] != baseDir {
		t.Errorf("locals = %v", r.locals)
	}
	if r.OutputType() != client.ExporterLocal || r.OutputDest() != outDir {
		t.Errorf("output = %s %s", r.OutputType(), r.OutputDest())
	}
	if len(r.secrets) != 5 || r.secrets[3].Env != "KILN_TEST_SECRET" || r.secrets[3].FilePath != "" || r.secrets[4].FilePath != secretFile {
		t.Errorf("secrets = %+v", r.secrets)
	}
	if r.ProgressMode() != "plain" || r.Platform() != platform.ARM64 {
		t.Errorf("progress %q platform %q", r.ProgressMode(), r.Platform())
	}
}

func TestPrepareDefaults(t *testing.T) {
	ctxDir := kilntest.Context(t)
	r := mustPrepare(t, Options{ContextPath: ctxDir, NoCache: true, NoCacheFilter: []string{"x"}})
	got := r.FrontendAttrs()
	if got["filename"] != "Dockerfile" || got["no-cache"] != "" || got["attest:provenance"] != "mode=min,inline-only=true" || len(got) != 3 {
		t.Errorf("attrs = %v", got)
	}
	if _, ok := got["no-cache"]; !ok {
		t.Error("no-cache missing")
	}
	if r.DockerfilePath() != filepath.Join(ctxDir, "Dockerfile") || r.ProgressMode() != "auto" || r.OutputType() != "" {
		t.Errorf("dockerfile %q progress %q output %q", r.DockerfilePath(), r.ProgressMode(), r.OutputType())
	}
}

func TestPrepareOutputs(t *testing.T) {
	ctxDir := kilntest.Context(t)
	dir := t.TempDir()
	var stdout bytes.Buffer
	cases := []struct {
		out, typ, dest string
		attrs          map[string]string
	}{
		{"-", client.ExporterTar, "-", map[string]string{}},
		{"type=tar,dest=-", client.ExporterTar, "-", map[string]string{}},
		{"type=oci,dest=" + dir + "/img.tar,oci-mediatypes=true", client.ExporterOCI, dir + "/img.tar", map[string]string{"oci-mediatypes": "true", "name": "app:1"}},
		{"type=docker,dest=" + dir + "/d.tar", client.ExporterDocker, dir + "/d.tar", map[string]string{"name": "app:1"}},
		{"type=docker,dest=" + dir + "/d.tar,name=other", client.ExporterDocker, dir + "/d.tar", map[string]string{"name": "other"}},
		{"type=local,dest=" + dir + "/x", client.ExporterLocal, dir + "/x", map[string]string{}},
	}
	for _, tc := range cases {
		r := mustPrepare(t, Options{ContextPath: ctxDir, Outputs: []string{tc.out}, Stdout: &stdout, Tags: []string{"app:1"}})
		if r.OutputType() != tc.typ || r.OutputDest() != tc.dest {
			t.Errorf("%s: got %s %s", tc.out, r.OutputType(), r.OutputDest())
		}
		if len(r.outputs[0].Attrs) != len(tc.attrs) {
			t.Errorf("%s: attrs %v, want %v", tc.out, r.outputs[0].Attrs, tc.attrs)
		}
		for k, v := range tc.attrs {
			if r.outputs[0].Attrs[k] != v {
				t.Errorf("%s: attr %s = %q, want %q", tc.out, k, r.outputs[0].Attrs[k], v)
			}
		}
	}
}

func TestPrepareStdinDockerfile(t *testing.T) {
	// `kiln build - < Dockerfile`: empty context, Dockerfile from stdin.
	r := mustPrepare(t, Options{ContextPath: "-", Stdin: strings.NewReader("FROM scratch\nCOPY x /\n")})
	dt, err := os.ReadFile(r.DockerfilePath())
	if err != nil || string(dt) != "FROM scratch\nCOPY x /\n" {
		t.Fatalf("dockerfile %q %v", dt, err)
	}
	ents, err := os.ReadDir(r.ContextDir())
	if err != nil || len(ents) != 0 {
		t.Fatalf("context not empty: %v %v", ents, err)
	}
	tmp := r.tmpDir
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("temp dir %s not removed: %v", tmp, err)
	}

	// -f - with a directory context.
	ctxDir := kilntest.Context(t)
	r = mustPrepare(t, Options{ContextPath: ctxDir, Dockerfile: "-", Stdin: strings.NewReader("FROM busybox\n")})
	if dt, _ := os.ReadFile(r.DockerfilePath()); string(dt) != "FROM busybox\n" || r.ContextDir() != ctxDir {
		t.Errorf("dockerfile %q context %s", dt, r.ContextDir())
	}
	if filepath.Base(r.DockerfilePath()) != "Dockerfile" || r.FrontendAttrs()["filename"] != "Dockerfile" {
		t.Errorf("dockerfile path %s", r.DockerfilePath())
	}
}

func TestPrepareStdinTar(t *testing.T) {
	data := makeTar(t, []tarEntry{
		{name: "Dockerfile", body: "FROM scratch\n"},
		{name: "sub/", dir: true},
		{name: "sub/Other.Dockerfile", body: "FROM busybox\n"},
		{name: "link", link: "sub/Other.Dockerfile"},
	})
	r := mustPrepare(t, Options{ContextPath: "-", Stdin: bytes.NewReader(data)})
	if r.DockerfilePath() != filepath.Join(r.ContextDir(), "Dockerfile") {
		t.Errorf("dockerfile %s", r.DockerfilePath())
	}
	r2 := mustPrepare(t, Options{ContextPath: "-", Stdin: bytes.NewReader(data), Dockerfile: "sub/Other.Dockerfile"})
	if r2.FrontendAttrs()["filename"] != "Other.Dockerfile" || r2.locals["dockerfile"] != filepath.Join(r2.ContextDir(), "sub") {
		t.Errorf("attrs %v locals %v", r2.FrontendAttrs(), r2.locals)
	}
	// -f through an in-archive symlink resolves inside the archive.
	r3 := mustPrepare(t, Options{ContextPath: "-", Stdin: bytes.NewReader(data), Dockerfile: "link"})
	if r3.DockerfilePath() != filepath.Join(r3.ContextDir(), "sub", "Other.Dockerfile") {
		t.Errorf("dockerfile %s", r3.DockerfilePath())
	}

	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"missing dockerfile", Options{ContextPath: "-", Stdin: bytes.NewReader(data), Dockerfile: "nope"}, "Dockerfile not found: nope"},
		{"escaping -f", Options{ContextPath: "-", Stdin: bytes.NewReader(data), Dockerfile: "../etc/passwd"}, "escapes"},
		{"absolute -f", Options{ContextPath: "-", Stdin: bytes.NewReader(data), Dockerfile: "/etc/passwd"}, "must be relative"},
		{"bad archive", Options{ContextPath: "-", Stdin: bytes.NewReader(makeTar(t, []tarEntry{{name: "../x", body: "x"}}))}, `entry "../x"`},
		{"-f with stdin dockerfile", Options{ContextPath: "-", Stdin: strings.NewReader("FROM scratch\n"), Dockerfile: "x"}, `-f "x"`},
		{"empty stdin", Options{ContextPath: "-", Stdin: strings.NewReader("")}, "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := prepareOptions(tc.o)
			if err == nil {
				r.Close()
				t.Fatal("want error")
			}
			if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q: want ErrInvalid containing %q", err, tc.want)
			}
		})
	}
}

func TestPrepareOCILayout(t *testing.T) {
	ctxDir := kilntest.Context(t)
	layout := t.TempDir()
	const dgst = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	kilntest.WriteFile(t, filepath.Join(layout, "oci-layout"), `{"imageLayoutVersion":"1.0.0"}`)
	kilntest.WriteFile(t, filepath.Join(layout, "index.json"), `{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"`+dgst+`","size":1,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}`)

	for _, tc := range []struct{ val, want string }{
		{layout + ":v1", ":v1@" + dgst},
		{layout, "@" + dgst}, // single manifest
		{layout + "@" + dgst, "@" + dgst},
	} {
		r := mustPrepare(t, Options{ContextPath: ctxDir, BuildContexts: []string{"base=oci-layout://" + tc.val}})
		attr := r.FrontendAttrs()["context:base"]
		if !strings.HasPrefix(attr, "oci-layout://") || !strings.HasSuffix(attr, tc.want) || len(r.ociStores) != 1 {
			t.Errorf("%s: attr %q stores %v", tc.val, attr, r.ociStores)
		}
		for id, dir := range r.ociStores {
			if dir != layout || !strings.Contains(attr, "//"+id) {
				t.Errorf("%s: store %s=%s attr %s", tc.val, id, dir, attr)
			}
		}
	}
	_, err := prepareOptions(Options{ContextPath: ctxDir, BuildContexts: []string{"base=oci-layout://" + layout + ":v2"}})
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), `no image tagged "v2"`) {
		t.Errorf("missing tag: %v", err)
	}
}
