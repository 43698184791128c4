package bake

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	bkerrdefs "github.com/moby/buildkit/solver/errdefs"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
)

// issueHCL is the bake file of issue 6.
const issueHCL = `variable "TAG" { default = "latest" }
group "default" { targets = ["app", "worker"] }
target "app" {
  dockerfile = "Dockerfile"
  platforms  = ["linux/amd64", "linux/arm64"]
  tags       = ["myrepo/app:${TAG}"]
  args       = { NODE_VERSION = "20" }
}
target "worker" {
  dockerfile = "Dockerfile.worker"
  tags       = ["myrepo/worker:${TAG}"]
  contexts   = { app = "target:app" }
}
`

// inDir writes files into a new directory and makes it the working
// directory for the test (bake files are read relative to it).
func inDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(dir)
	return dir
}

func load(t *testing.T, o LoadOptions) *Definition {
	t.Helper()
	d, err := Load(t.Context(), o)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return d
}

func loadErr(t *testing.T, o LoadOptions) error {
	t.Helper()
	d, err := Load(t.Context(), o)
	if err == nil {
		t.Fatalf("Load succeeded, want an error; targets %v", slices.Sorted(func(yield func(string) bool) {
			for k := range d.Targets {
				if !yield(k) {
					return
				}
			}
		}))
	}
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("error %q does not wrap ErrInvalid", err)
	}
	return err
}

func TestLoadIssueFile(t *testing.T) {
	inDir(t, map[string]string{"docker-bake.hcl": issueHCL})
	d := load(t, LoadOptions{})
	if got := d.Requested; !slices.Equal(got, []string{"app", "worker"}) {
		t.Fatalf("requested = %v", got)
	}
	if got := d.Targets["app"].Tags; !slices.Equal(got, []string{"myrepo/app:latest"}) {
		t.Errorf("app tags = %v", got)
	}

	t.Setenv("TAG", "v2")
	d = load(t, LoadOptions{})
	if got := d.Targets["worker"].Tags; !slices.Equal(got, []string{"myrepo/worker:v2"}) {
		t.Errorf("TAG=v2: worker tags = %v", got)
	}

	builds, err := d.Builds()
	if err != nil {
		t.Fatal(err)
	}
	app, worker := builds[0], builds[1]
	if app.Name != "app" || worker.Name != "worker" {
		t.Fatalf("builds = %s, %s", app.Name, worker.Name)
	}
	if !slices.Equal(platform.Strings(app.Request.Platforms), []string{"linux/amd64", "linux/arm64"}) || !maps.Equal(app.Request.Args, map[string]string{"NODE_VERSION": "20"}) {
		t.Errorf("app request = %+v", app.Request)
	}
	if app.Request.Dockerfile.Path != "Dockerfile" || app.Request.Context.Dir != "." {
		t.Errorf("app context %q dockerfile %q", app.Request.Context.Dir, app.Request.Dockerfile.Path)
	}
	if worker.Request.Dockerfile.Path != "Dockerfile.worker" || len(worker.Request.NamedContexts) != 0 {
		t.Errorf("worker dockerfile %q contexts %v", worker.Request.Dockerfile.Path, worker.Request.NamedContexts)
	}
	if worker.Links["app"] != "app" {
		t.Errorf("worker links = %v", worker.Links)
	}
}

func TestLoadOnlyDependencyIsNotRequested(t *testing.T) {
	inDir(t, map[string]string{"docker-bake.hcl": issueHCL})
	d := load(t, LoadOptions{Targets: []string{"worker"}, Overrides: []string{"*.push=true"}})
	if !slices.Equal(d.Requested, []string{"worker"}) {
		t.Fatalf("requested = %v", d.Requested)
	}
	builds, err := d.Builds()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range builds {
		switch b.Name {
		case "app":
			// Built for worker only: buildx gives it no output, so it
			// is neither pushed nor loaded.
			if b.Requested || len(b.Request.Outputs) != 0 { // type=cacheonly
				t.Errorf("app: requested=%v outputs=%v", b.Requested, b.Request.Outputs)
			}
		case "worker":
			if !b.Requested || len(b.Request.Outputs) != 1 || b.Request.Outputs[0].String() != "type=image,push=true" {
				t.Errorf("worker: requested=%v outputs=%v", b.Requested, b.Request.Outputs)
			}
		}
	}
}

func TestDefaultFileOrder(t *testing.T) {
	// Later files override earlier ones: the override HCL wins over the
	// JSON file and the compose file.
	inDir(t, map[string]string{
		"compose.yaml":              "services:\n  app:\n    build: .\n    image: from/compose\n",
		"docker-bake.json":          `{"target": {"app": {"tags": ["from/json"]}}}`,
		"docker-bake.override.hcl":  `target "app" { tags = ["from/override-hcl"] }`,
		"docker-bake.override.json": `{"target": {"app": {"args": {"A": "1"}}}}`,
	})
	d := load(t, LoadOptions{Targets: []string{"app"}})
	if !slices.Equal(d.Files, []string{"compose.yaml", "docker-bake.json", "docker-bake.override.json", "docker-bake.override.hcl"}) {
		t.Errorf("files = %v", d.Files)
	}
	if got := d.Targets["app"].Tags; !slices.Equal(got, []string{"from/override-hcl"}) {
		t.Errorf("tags = %v", got)
	}
	if v := d.Targets["app"].Args["A"]; v == nil || *v != "1" {
		t.Errorf("args = %v", d.Targets["app"].Args)
	}
}

func TestNoBakeFile(t *testing.T) {
	inDir(t, nil)
	err := loadErr(t, LoadOptions{})
	if !strings.Contains(err.Error(), "docker-bake.hcl") || !strings.Contains(err.Error(), "-f") {
		t.Errorf("error = %v", err)
	}
	err = loadErr(t, LoadOptions{Files: []string{"missing.hcl"}})
	if !strings.Contains(err.Error(), "missing.hcl") {
		t.Errorf("error = %v", err)
	}
}

func TestFlagFilesStdinAndSet(t *testing.T) {
	inDir(t, nil)
	d := load(t, LoadOptions{
		Files:     []string{"-"},
		Stdin:     strings.NewReader(issueHCL),
		Overrides: []string{"app.tags=other/app:1", "*.args.EXTRA=x", "worker.platform=linux/arm64", "worker.output=type=local,dest=out", "app.secrets=id=s,src=/etc/hostname", "app.ssh=default"},
	})
	if got := d.Targets["app"].Tags; !slices.Equal(got, []string{"other/app:1"}) {
		t.Errorf("app tags = %v", got)
	}
	if v := d.Targets["worker"].Args["EXTRA"]; v == nil || *v != "x" {
		t.Errorf("worker args = %v", d.Targets["worker"].Args)
	}
	if got := d.Targets["worker"].Platforms; !slices.Equal(got, []string{"linux/arm64"}) {
		t.Errorf("worker platforms = %v", got)
	}
	loadErr(t, LoadOptions{Files: []string{"-", "-"}, Stdin: strings.NewReader(issueHCL)})
}

func TestFunctionsMatrixInherits(t *testing.T) {
	inDir(t, map[string]string{"docker-bake.hcl": `
variable "REPO" { default = "r" }
function "tag" {
  params = [name, v]
  result = "${REPO}/${name}:${v}"
}
target "base" {
  project_id = "projbase"
  args = { FROM_BASE = "1" }
}
target "svc" {
  name     = "svc-${v}"
  inherits = ["base"]
  matrix   = { v = ["a", "b"] }
  tags     = [tag("svc", v)]
}
target "own" {
  inherits   = ["base"]
  project_id = "projown"
}
group "default" { targets = ["svc", "own"] }
`})
	d := load(t, LoadOptions{})
	if !slices.Equal(d.Requested, []string{"own", "svc-a", "svc-b"}) {
		t.Fatalf("requested = %v", d.Requested)
	}
	if got := d.Targets["svc-b"].Tags; !slices.Equal(got, []string{"r/svc:b"}) {
		t.Errorf("svc-b tags = %v", got)
	}
	want := map[string]string{"svc-a": "projbase", "svc-b": "projbase", "own": "projown"}
	for k, v := range want {
		if d.ProjectIDs[k] != v {
			t.Errorf("project of %s = %q, want %q (all: %v)", k, d.ProjectIDs[k], v, d.ProjectIDs)
		}
	}

	d = load(t, LoadOptions{Overrides: []string{"svc-*.project_id=projset", "base.args.X=1"}})
	if d.ProjectIDs["svc-a"] != "projset" || d.ProjectIDs["own"] != "projown" {
		t.Errorf("after --set: %v", d.ProjectIDs)
	}
	d = load(t, LoadOptions{Overrides: []string{"base.project_id=fromparent"}})
	if d.ProjectIDs["svc-a"] != "fromparent" || d.ProjectIDs["own"] != "projown" {
		t.Errorf("--set on the parent: %v", d.ProjectIDs)
	}
	err := loadErr(t, LoadOptions{Overrides: []string{"nothing.project_id=x"}})
	if !strings.Contains(err.Error(), "nothing") {
		t.Errorf("error = %v", err)
	}
	loadErr(t, LoadOptions{Overrides: []string{"svc-a.project_id=has space"}})
	loadErr(t, LoadOptions{Overrides: []string{"svc-a.project_id"}})
}

func TestProjectIDInJSONAndPrint(t *testing.T) {
	inDir(t, map[string]string{"docker-bake.json": `{
  "variable": {"P": {"default": "projjson"}},
  "target": {
    "app": {"tags": ["a:${P}"], "project_id": "${P}"},
    "plain": {"dockerfile-inline": "FROM scratch\nCOPY $${X} /\n"}
  }
}`})
	d := load(t, LoadOptions{Targets: []string{"app", "plain"}})
	if d.ProjectIDs["app"] != "projjson" {
		t.Errorf("projects = %v", d.ProjectIDs)
	}
	if _, ok := d.ProjectIDs["plain"]; ok {
		t.Errorf("plain has a project: %v", d.ProjectIDs)
	}
	var buf bytes.Buffer
	if err := d.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var printed struct {
		Group  map[string]struct{ Targets []string }
		Target map[string]map[string]any
	}
	if err := json.Unmarshal(buf.Bytes(), &printed); err != nil {
		t.Fatalf("--print output is not JSON: %v\n%s", err, buf.String())
	}
	if printed.Target["app"]["project_id"] != "projjson" || printed.Target["app"]["context"] != "." {
		t.Errorf("printed app = %v", printed.Target["app"])
	}
	if _, ok := printed.Target["plain"]["project_id"]; ok {
		t.Errorf("printed plain = %v", printed.Target["plain"])
	}
	if !slices.Equal(printed.Group["default"].Targets, []string{"app", "plain"}) {
		t.Errorf("printed groups = %v", printed.Group)
	}
	// Like buildx, ${ in values is printed escaped, so the output is a
	// valid bake file again.
	if !strings.Contains(buf.String(), `COPY $${X} /`) {
		t.Errorf("dockerfile-inline not escaped:\n%s", buf.String())
	}
	if !strings.HasPrefix(buf.String(), "{\n  \"group\": {") {
		t.Errorf("not indented like buildx:\n%s", buf.String())
	}

	builds, err := d.Builds()
	if err != nil {
		t.Fatal(err)
	}
	if df := builds[1].Request.Dockerfile; df.Path != "" || string(df.Inline) != "FROM scratch\nCOPY ${X} /\n" {
		t.Errorf("inline Dockerfile = %q (path %q)", df.Inline, df.Path)
	}
}

func TestComposeProjects(t *testing.T) {
	inDir(t, map[string]string{
		".env": "WORKER_PROJECT=projworker\n",
		"compose.yaml": `services:
  web:
    image: example/web:1
    build:
      context: ./web
      dockerfile: Dockerfile.web
      args:
        A: "1"
      x-depot:
        project-id: projweb
  worker.svc:
    build:
      context: ./worker
      x-kiln:
        project-id: ${WORKER_PROJECT}
      x-depot:
        project-id: ignored-when-x-kiln-is-set
  db:
    image: postgres
  plain:
    build: ./plain
`,
	})
	d := load(t, LoadOptions{})
	if !slices.Equal(d.Requested, []string{"plain", "web", "worker_svc"}) {
		t.Fatalf("requested = %v", d.Requested)
	}
	want := map[string]string{"web": "projweb", "worker_svc": "projworker"}
	if len(d.ProjectIDs) != 2 || d.ProjectIDs["web"] != want["web"] || d.ProjectIDs["worker_svc"] != want["worker_svc"] {
		t.Errorf("projects = %v, want %v", d.ProjectIDs, want)
	}
	builds, err := d.Builds()
	if err != nil {
		t.Fatal(err)
	}
	web := builds[1]
	if web.Request.Context.Dir != "web" || web.Request.Dockerfile.Path != filepath.Join("web", "Dockerfile.web") {
		t.Errorf("web context %q dockerfile %q", web.Request.Context.Dir, web.Request.Dockerfile.Path)
	}
	if !slices.Equal(web.Request.Tags, []string{"example/web:1"}) || !maps.Equal(web.Request.Args, map[string]string{"A": "1"}) {
		t.Errorf("web request = %+v", web.Request)
	}

	groups, err := Group(builds, "projdefault")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, g := range groups {
		var names []string
		for _, b := range g.Builds {
			names = append(names, b.Name)
		}
		got = append(got, g.ProjectID+":"+strings.Join(names, ","))
	}
	if !slices.Equal(got, []string{"projdefault:plain", "projweb:web", "projworker:worker_svc"}) {
		t.Errorf("groups = %v", got)
	}
	if _, err := Group(builds, ""); err == nil || !strings.Contains(err.Error(), `"plain"`) {
		t.Errorf("Group without a default project: %v", err)
	}
}

func TestComposeBadProjectID(t *testing.T) {
	for name, ext := range map[string]string{
		"list":    "x-depot:\n        project-id: [a, b]",
		"mapping": "x-kiln: nope",
		"chars":   "x-depot:\n        project-id: \"a/../b\"",
	} {
		t.Run(name, func(t *testing.T) {
			inDir(t, map[string]string{"compose.yaml": "services:\n  web:\n    build:\n      context: .\n      " + ext + "\n"})
			err := loadErr(t, LoadOptions{})
			if !strings.Contains(err.Error(), `"web"`) {
				t.Errorf("error does not name the service: %v", err)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	cases := map[string]struct {
		file    string
		targets []string
		want    []string // substrings of the error
	}{
		"syntax error": {
			file: "target \"app\" {\n  dockerfile = \"Dockerfile\"\n  tags = [\n}\n",
			want: []string{"docker-bake.hcl:4"},
		},
		"undefined variable": {
			file: "target \"app\" {\n  tags = [\"app:${NOPE}\"]\n}\n",
			want: []string{"docker-bake.hcl:2", `"NOPE"`},
		},
		"unknown target": {
			file:    issueHCL,
			targets: []string{"nope"},
			want:    []string{"nope"},
		},
		"cyclic inherits": {
			file:    "target \"a\" {\n inherits = [\"b\"]\n}\ntarget \"b\" {\n inherits = [\"c\"]\n}\ntarget \"c\" {\n inherits = [\"a\"]\n}\n",
			targets: []string{"a"},
			want:    []string{"cyclic inherits", "a → b → c → a"},
		},
		"self inherits": {
			file:    "target \"a\" {\n inherits = [\"a\"]\n}\n",
			targets: []string{"a"},
			want:    []string{"cyclic inherits", "a → a"},
		},
		"cyclic contexts": {
			file:    "target \"a\" {\n contexts = { x = \"target:b\" }\n}\ntarget \"b\" {\n contexts = { y = \"target:a\" }\n}\n",
			targets: []string{"a"},
			want:    []string{"infinite loop"},
		},
		"project_id of the wrong type": {
			file: "target \"app\" {\n  project_id = [\"a\"]\n}\n",
			want: []string{"docker-bake.hcl:2"},
		},
		"project_id with bad characters": {
			file: "target \"app\" {\n  project_id = \"a b\"\n}\n",
			want: []string{`"app"`, "project_id"},
		},
		"bad target name": {
			file: "target \"a/b\" {\n}\n",
			want: []string{"docker-bake.hcl:1", "Invalid name"},
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			inDir(t, map[string]string{"docker-bake.hcl": c.file})
			targets := c.targets
			if targets == nil {
				targets = []string{"app"}
			}
			err := loadErr(t, LoadOptions{Targets: targets})
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestSyntaxErrorCarriesSource(t *testing.T) {
	inDir(t, map[string]string{"docker-bake.hcl": "target \"app\" {\n  tags = [\n}\n"})
	err := loadErr(t, LoadOptions{})
	srcs := bkerrdefs.Sources(err)
	if len(srcs) == 0 {
		t.Fatalf("no source attached to %v", err)
	}
	var buf bytes.Buffer
	if err := srcs[0].Print(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "docker-bake.hcl:3") || !strings.Contains(buf.String(), "tags = [") {
		t.Errorf("printed source:\n%s", buf.String())
	}
}

func TestTranslateOptions(t *testing.T) {
	dir := inDir(t, map[string]string{"docker-bake.hcl": `
target "full" {
  context    = "sub"
  dockerfile = "build/Dockerfile"
  target     = "runtime"
  tags       = ["a:1", "b:2"]
  labels     = { L = "v" }
  args       = { A = "1", UNSET = null }
  secret     = ["id=npm,src=npmrc", "id=tok,env=TOKEN"]
  ssh        = ["default", "keys=k1,k2"]
  output     = ["type=oci,dest=out.tar"]
  annotations = ["index:org.opencontainers.image.title=t"]
  cache-from = ["type=registry,ref=r/cache"]
  cache-to   = ["type=inline"]
  no-cache   = true
  no-cache-filter = ["deps"]
  network    = "none"
  attest     = ["type=provenance,mode=max"]
  contexts   = { base = "docker-image://busybox", dir = "cwd://other", dep = "target:abs" }
  shm-size   = "1g"
}
target "abs" {
  dockerfile = "/abs/Dockerfile"
}
`})
	d := load(t, LoadOptions{Targets: []string{"full"}})
	builds, err := d.Builds()
	if err != nil {
		t.Fatal(err)
	}
	if len(builds) != 2 || builds[0].Name != "abs" || builds[0].Requested || !builds[1].Requested {
		t.Fatalf("builds = %+v", builds)
	}
	if builds[0].Request.Dockerfile.Path != "/abs/Dockerfile" {
		t.Errorf("abs dockerfile = %q", builds[0].Request.Dockerfile.Path)
	}
	o := builds[1].Request
	check := func(what string, got, want any) {
		t.Helper()
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		if !bytes.Equal(g, w) {
			t.Errorf("%s = %s, want %s", what, g, w)
		}
	}
	check("context", o.Context.Dir, "sub")
	check("dockerfile", o.Dockerfile.Path, filepath.Join("sub", "build", "Dockerfile"))
	check("target", o.Target, "runtime")
	check("tags", o.Tags, []string{"a:1", "b:2"})
	check("labels", o.Labels, map[string]string{"L": "v"})
	check("args", o.Args, map[string]string{"A": "1"})
	check("secrets", o.Secrets, []buildreq.Secret{{ID: "npm", Src: "npmrc"}, {ID: "tok", Env: "TOKEN"}})
	check("ssh", o.SSH, []buildreq.SSH{{ID: "default"}, {ID: "keys", Paths: []string{"k1", "k2"}}})
	check("outputs", o.Outputs, []buildreq.Output{{Type: "oci", Dest: "out.tar", Attrs: map[string]string{"annotation-index.org.opencontainers.image.title": "t"}}})
	check("cache-from", o.CacheFrom, []buildreq.Cache{{Type: "registry", Attrs: map[string]string{"ref": "r/cache"}}})
	check("cache-to", o.CacheTo, []buildreq.Cache{{Type: "inline", Attrs: map[string]string{}}})
	check("no-cache", o.NoCache, true)
	check("no-cache-filter", o.NoCacheFilter, []string{"deps"})
	check("network", o.Network, "none")
	check("attests", o.Attests, []buildreq.Attest{{Type: "provenance", Attrs: map[string]string{"mode": "max"}}})
	check("contexts", o.NamedContexts, map[string]buildreq.NamedContext{"base": {Image: "busybox"}, "dir": {Dir: "other"}})
	check("links", builds[1].Links, map[string]string{"dep": "abs"})
	if len(builds[1].Warnings) != 1 || !strings.Contains(builds[1].Warnings[0], "shm-size") {
		t.Errorf("warnings = %v", builds[1].Warnings)
	}
	_ = dir
}

// A git URL context is fetched by the builder, the dockerfile read from
// the same checkout, as with `kiln build URL`.
func TestTranslateGitContext(t *testing.T) {
	inDir(t, map[string]string{"docker-bake.hcl": `
target "app" {
  context = "https://git.example.com/org/app.git#v1:web"
  dockerfile = "build/Dockerfile"
}
target "inline" {
  context = "https://git.example.com/org/app.git"
  dockerfile-inline = "FROM scratch\n"
}
`})
	builds, err := load(t, LoadOptions{Targets: []string{"app", "inline"}}).Builds()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range builds {
		c, df := b.Request.Context, b.Request.Dockerfile
		switch b.Name {
		case "app":
			if c.Git != "https://git.example.com/org/app.git#v1:web" || c.Dir != "" || df.Path != "build/Dockerfile" {
				t.Errorf("app: context %+v dockerfile %+v", c, df)
			}
		case "inline":
			if c.Git == "" || string(df.Inline) != "FROM scratch\n" {
				t.Errorf("inline: context %+v dockerfile %+v", c, df)
			}
		}
	}
}

func TestTranslateRefusals(t *testing.T) {
	for name, body := range map[string]string{
		"stdin context":    `context = "-"`,
		"tarball context":  `context = "https://example.com/app.tar.gz"`,
		"stdin dockerfile": `dockerfile = "-"`,
		"git context, local dockerfile": `context = "https://git.example.com/org/app.git"
  dockerfile = "cwd://Dockerfile"`,
		"git context with credentials": `context = "https://user:pw@git.example.com/org/app.git"`,
		"git context, ref option":      `context = "https://git.example.com/org/app.git#--upload-pack=x"`,
		"call":                         `call = "outline"`,
	} {
		t.Run(name, func(t *testing.T) {
			inDir(t, map[string]string{"docker-bake.hcl": "target \"app\" {\n  " + body + "\n}\n"})
			d := load(t, LoadOptions{Targets: []string{"app"}})
			_, err := d.Builds()
			if err == nil || !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), `target "app"`) {
				t.Errorf("Builds: %v", err)
			}
		})
	}
}

func TestGroupLinksStayInOneProject(t *testing.T) {
	inDir(t, map[string]string{"docker-bake.hcl": `
target "app" { project_id = "p1" }
target "worker" {
  project_id = "p2"
  contexts = { app = "target:app" }
}
target "same" {
  project_id = "p1"
  contexts = { app = "target:app" }
}
`})
	d := load(t, LoadOptions{Targets: []string{"worker"}})
	builds, err := d.Builds()
	if err != nil {
		t.Fatal(err)
	}
	_, err = Group(builds, "pdefault")
	if err == nil || !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "another project") {
		t.Fatalf("Group across projects: %v", err)
	}

	d = load(t, LoadOptions{Targets: []string{"same"}})
	builds, _ = d.Builds()
	groups, err := Group(builds, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 1 || groups[0].ProjectID != "p1" || len(groups[0].Builds) != 2 {
		t.Errorf("groups = %+v", groups)
	}

	// A link to a target of the default project from a target of the
	// default project is fine; from an explicit project it is not.
	inDir(t, map[string]string{"docker-bake.hcl": `
target "base" {}
target "a" { contexts = { b = "target:base" } }
target "c" {
  project_id = "other"
  contexts = { b = "target:base" }
}
`})
	d = load(t, LoadOptions{Targets: []string{"a"}})
	builds, _ = d.Builds()
	if _, err := Group(builds, "pdefault"); err != nil {
		t.Errorf("default project link: %v", err)
	}
	d = load(t, LoadOptions{Targets: []string{"c"}})
	builds, _ = d.Builds()
	if _, err := Group(builds, "pdefault"); err == nil {
		t.Errorf("link from project other to the default project was accepted")
	}
	if !NeedsDefaultProject(builds) {
		t.Errorf("NeedsDefaultProject = false")
	}
}

// --load on a target that writes local files loads nothing (buildx leaves
// such a target as it is): Run warns, naming it; LoadSkipped finds it.
func TestLoadSkippedForLocalOutputs(t *testing.T) {
	inDir(t, map[string]string{"docker-bake.hcl": `
group "default" { targets = ["app", "files", "tarball"] }
target "app" {}
target "files" { output = ["type=local,dest=out"] }
target "tarball" { output = ["type=tar,dest=out.tar"] }
`})
	d := load(t, LoadOptions{Overrides: []string{"*.load=true"}})
	var got []string
	for _, l := range d.LoadSkipped([]string{"*.load=true"}) {
		got = append(got, l.String())
	}
	want := []string{`target "files" (output type=local)`, `target "tarball" (output type=tar)`}
	if !slices.Equal(got, want) {
		t.Errorf("LoadSkipped = %q, want %q", got, want)
	}
	if got := d.LoadSkipped([]string{"files.load=false", "app.load=true"}); len(got) != 0 {
		t.Errorf("no load asked for files: %q", got)
	}
	if got := d.LoadSkipped(nil); len(got) != 0 {
		t.Errorf("no --load: %q", got)
	}

	var stderr bytes.Buffer
	err := Run(t.Context(), RunOptions{Overrides: []string{"*.load=true"}, Targets: []string{"files"}, Progress: "quiet", Project: "p1",
		Stdout: io.Discard, Stderr: &stderr, Config: func() (client.Config, error) { return client.Config{}, errors.New("stop here") }})
	if err == nil || !strings.Contains(stderr.String(), `kiln: warning: --load loads nothing for target "files" (output type=local)`) ||
		!strings.Contains(stderr.String(), "--set files.output=type=docker") {
		t.Errorf("Run: %v; stderr:\n%s", err, stderr.String())
	}
}

// --print shows the project every target builds in, the default one
// (kiln.json here) for targets that name none.
func TestPrintShowsDefaultProject(t *testing.T) {
	inDir(t, map[string]string{
		"docker-bake.hcl": `target "default" {}
target "other" { project_id = "own" }
`,
		"kiln.json": `{"id": "fromkilnjson"}`,
	})
	t.Setenv("KILN_PROJECT_ID", "")
	t.Setenv("DEPOT_PROJECT_ID", "")
	var stdout bytes.Buffer
	if err := Run(t.Context(), RunOptions{Print: true, Targets: []string{"default", "other"}, Stdout: &stdout, Stderr: io.Discard}); err != nil {
		t.Fatal(err)
	}
	var printed struct{ Target map[string]map[string]any }
	if err := json.Unmarshal(stdout.Bytes(), &printed); err != nil {
		t.Fatalf("%v\n%s", err, stdout.String())
	}
	if printed.Target["default"]["project_id"] != "fromkilnjson" || printed.Target["other"]["project_id"] != "own" {
		t.Errorf("printed projects: default %v, other %v", printed.Target["default"]["project_id"], printed.Target["other"]["project_id"])
	}
}
