package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
)

// bakeHCL is the bake file of issue 6, as a user writes it.
const bakeHCL = `variable "TAG" { default = "latest" }
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

// bakePushHCL is a second file a CI job adds with -f to push to its
// registry: it only changes the tags, and reads TAG from the first file.
const bakePushHCL = `variable "REGISTRY" {}
target "app" { tags = ["${REGISTRY}/myrepo/app:${TAG}"] }
target "worker" { tags = ["${REGISTRY}/myrepo/worker:${TAG}"] }
`

// bakeAppDockerfile builds each platform from its own architecture's
// busybox, so /app.txt says where it ran; the worker is built FROM the
// app target's result.
const bakeAppDockerfile = `FROM scratch AS busybox
ARG TARGETARCH
COPY busybox-${TARGETARCH} /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM busybox
ARG NODE_VERSION
RUN echo "node=$NODE_VERSION arch=$(uname -m)" > /app.txt
`

const bakeWorkerDockerfile = `FROM app
RUN cat /app.txt > /worker.txt && echo worker >> /worker.txt
`

// bakeBuilds lists a project's builds, newest first.
func (s *server) bakeBuilds(t *testing.T, project string) []*cliv1.Build {
	t.Helper()
	res, err := s.api().ListBuilds(t.Context(), bearer(&cliv1.ListBuildsRequest{ProjectId: project, PageSize: 1000}, s.Token))
	if err != nil {
		t.Fatalf("ListBuilds(%s): %v", project, err)
	}
	return res.Msg.Builds
}

// writeKilnJSON makes project the default project of dir.
func writeKilnJSON(t *testing.T, dir, project string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "kiln.json"), []byte(`{"id":"`+project+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The bake file: both targets build (the two-platform app on both
// builders, the worker FROM the app's result), TAG=v2 changes the tags,
// --print shows the resolved targets without building, and only the
// targets asked for are pushed.
func TestBakeHCLFile(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	reg := startRegistry(t)
	proj := s.createProject(t, "bake")
	dir := writeMultiContext(t) // busybox-amd64, busybox-arm64
	for name, content := range map[string]string{
		"Dockerfile":        bakeAppDockerfile,
		"Dockerfile.worker": bakeWorkerDockerfile,
		"docker-bake.hcl":   bakeHCL,
		"push.hcl":          bakePushHCL,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeKilnJSON(t, dir, proj)

	// --print: the resolved JSON, variables applied; nothing is built.
	printed := func(env ...string) map[string]struct {
		Tags      []string
		Platforms []string
		Contexts  map[string]string
		Args      map[string]string
	} {
		t.Helper()
		r := s.kiln(t, dir, env, "bake", "--print")
		if r.Err != nil {
			t.Fatalf("kiln bake --print: %v\n%s", r.Err, r.Stderr)
		}
		var def struct {
			Group  map[string]struct{ Targets []string }
			Target map[string]struct {
				Tags      []string
				Platforms []string
				Contexts  map[string]string
				Args      map[string]string
			}
		}
		if err := json.Unmarshal([]byte(r.Stdout), &def); err != nil {
			t.Fatalf("--print output is not JSON: %v\n%s", err, r.Stdout)
		}
		if !slices.Equal(def.Group["default"].Targets, []string{"app", "worker"}) {
			t.Errorf("--print groups = %v", def.Group)
		}
		return def.Target
	}
	def := printed()
	if !slices.Equal(def["app"].Tags, []string{"myrepo/app:latest"}) || !slices.Equal(def["worker"].Tags, []string{"myrepo/worker:latest"}) {
		t.Errorf("--print tags: app %v, worker %v", def["app"].Tags, def["worker"].Tags)
	}
	if !slices.Equal(def["app"].Platforms, []string{"linux/amd64", "linux/arm64"}) || def["app"].Args["NODE_VERSION"] != "20" ||
		def["worker"].Contexts["app"] != "target:app" {
		t.Errorf("--print: app %+v, worker %+v", def["app"], def["worker"])
	}
	def = printed("TAG=v2")
	if !slices.Equal(def["app"].Tags, []string{"myrepo/app:v2"}) || !slices.Equal(def["worker"].Tags, []string{"myrepo/worker:v2"}) {
		t.Errorf("TAG=v2 --print tags: app %v, worker %v", def["app"].Tags, def["worker"].Tags)
	}
	if n := len(s.bakeBuilds(t, proj)); n != 0 {
		t.Fatalf("--print created %d builds", n)
	}

	// A plain bake builds both targets as one build of the project.
	r := s.kiln(t, dir, nil, "bake", "--progress", "plain")
	if r.Err != nil {
		t.Fatalf("kiln bake: %v\n%s", r.Err, tail(r.Stderr, 8000))
	}
	for _, want := range []string{"target app: done", "target worker: done", "[app linux/arm64 ", "[worker "} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("kiln bake output lacks %q:\n%s", want, tail(r.Stderr, 6000))
		}
	}
	builds := s.bakeBuilds(t, proj)
	if len(builds) != 1 || builds[0].Status != cliv1.BuildStatus_BUILD_STATUS_FINISHED {
		t.Fatalf("after kiln bake, builds = %v", builds)
	}
	var names []string
	for _, st := range s.steps(t, proj, builds[0].Id) {
		names = append(names, st.Name)
	}
	all := strings.Join(names, "\n")
	for _, want := range []string{"[app linux/amd64 ", "[app linux/arm64 ", "[worker "} {
		if !strings.Contains(all, want) {
			t.Errorf("stored steps lack %q:\n%s", want, all)
		}
	}

	// TAG=v2 with a second file pushing to a registry: both images under
	// the v2 tags, the app as a two-platform index, the worker built FROM
	// the app (its amd64 image, since the worker has no platforms).
	meta := filepath.Join(t.TempDir(), "meta.json")
	r = s.kiln(t, dir, []string{"TAG=v2", "REGISTRY=" + reg}, "bake", "-f", "docker-bake.hcl", "-f", "push.hcl", "--push", "--progress", "plain", "--metadata-file", meta)
	if r.Err != nil {
		t.Fatalf("TAG=v2 kiln bake --push: %v\n%s", r.Err, tail(r.Stderr, 8000))
	}
	idx := mpRemoteIndex(t, reg+"/myrepo/app:v2")
	var plats []string
	for _, m := range idx.Manifests {
		if m.Platform != nil && m.Platform.OS != "unknown" {
			plats = append(plats, m.Platform.OS+"/"+m.Platform.Architecture)
		}
	}
	slices.Sort(plats)
	if !slices.Equal(plats, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("myrepo/app:v2 platforms = %v", plats)
	}
	for plat, arch := range mpWantArch {
		img := bakeRemoteImage(t, reg+"/myrepo/app:v2", plat)
		if got := mpImageFile(t, img, "app.txt"); got != "node=20 arch="+arch {
			t.Errorf("app %s /app.txt = %q", plat, got)
		}
	}
	worker := bakeRemoteImage(t, reg+"/myrepo/worker:v2", "linux/amd64")
	if got := mpImageFile(t, worker, "worker.txt"); got != "node=20 arch=x86_64\nworker" {
		t.Errorf("worker /worker.txt = %q (want the app's amd64 result)", got)
	}
	if _, err := remote.Head(mpRef(t, reg+"/myrepo/app:latest")); err == nil {
		t.Errorf("myrepo/app:latest was pushed although TAG=v2")
	}
	var md map[string]map[string]any
	if dt, err := os.ReadFile(meta); err != nil || json.Unmarshal(dt, &md) != nil {
		t.Fatalf("--metadata-file: %v\n%s", err, dt)
	}
	build := s.bakeBuilds(t, proj)[0].Id
	for _, target := range []string{"app", "worker"} {
		m := md[target]
		if m["buildx.build.ref"] != "kiln/"+proj+"/"+build || !strings.HasPrefix(fmt.Sprint(m["containerimage.digest"]), "sha256:") {
			t.Errorf("metadata of %s = %v", target, m)
		}
	}
	if d := mpRemoteDigest(t, reg+"/myrepo/app:v2"); md["app"]["containerimage.digest"] != d {
		t.Errorf("metadata app digest %v, registry has %s", md["app"]["containerimage.digest"], d)
	}

	// Only the targets asked for are pushed: the app is built for the
	// worker's context but not pushed.
	r = s.kiln(t, dir, []string{"TAG=v3", "REGISTRY=" + reg}, "bake", "-f", "docker-bake.hcl", "-f", "push.hcl", "--push", "worker")
	if r.Err != nil {
		t.Fatalf("kiln bake --push worker: %v\n%s", r.Err, tail(r.Stderr, 8000))
	}
	if got := mpImageFile(t, bakeRemoteImage(t, reg+"/myrepo/worker:v3", "linux/amd64"), "worker.txt"); got != "node=20 arch=x86_64\nworker" {
		t.Errorf("worker:v3 /worker.txt = %q", got)
	}
	if _, err := remote.Head(mpRef(t, reg+"/myrepo/app:v3")); err == nil {
		t.Errorf("myrepo/app:v3 was pushed although only worker was asked for")
	}
	if n := len(s.bakeBuilds(t, proj)); n != 3 {
		t.Errorf("builds after three bakes: %d", n)
	}
}

// bakeRemoteImage is the image of platform in ref (an index or an image).
func bakeRemoteImage(t *testing.T, ref, platform string) v1.Image {
	t.Helper()
	p, err := v1.ParsePlatform(platform)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(mpRef(t, ref), remote.WithPlatform(*p))
	if err != nil {
		t.Fatalf("pull %s (%s): %v", ref, platform, err)
	}
	return img
}

// A Compose file whose services name their own projects: one build in each
// project, on each project's builder, and --load puts both images into the
// Docker engine.
func TestBakeComposeProjects(t *testing.T) {
	t.Parallel()
	d := startDockerd(t)
	s := sharedServer(t)
	web, worker := s.createProject(t, "web"), s.createProject(t, "worker")
	dir := t.TempDir()
	for svc := range map[string]bool{"web": true, "worker": true} {
		ctx := writeContext(t, map[string]string{"Dockerfile": baseStages + "\nFROM busybox\nRUN echo " + svc + " > /who\nCMD [\"cat\", \"/who\"]\n"})
		if err := os.Rename(ctx, filepath.Join(dir, svc)); err != nil {
			t.Fatal(err)
		}
	}
	compose := `services:
  web:
    image: kiln-e2e/web:1
    build:
      context: web
      x-depot:
        project-id: ` + web + `
  worker:
    image: kiln-e2e/worker:1
    build:
      context: worker
      x-kiln:
        project-id: ` + worker + `
  db:
    image: postgres:16
`
	if err := os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte(compose), 0o644); err != nil {
		t.Fatal(err)
	}

	r := s.kiln(t, dir, []string{"DOCKER_HOST=" + d.Host}, "bake", "--load", "--progress", "plain")
	if r.Err != nil {
		t.Fatalf("kiln bake --load: %v\n%s", r.Err, tail(r.Stderr, 8000))
	}
	for project, target := range map[string]string{web: "web", worker: "worker"} {
		builds := s.bakeBuilds(t, project)
		if len(builds) != 1 || builds[0].Status != cliv1.BuildStatus_BUILD_STATUS_FINISHED {
			t.Errorf("project %s (%s): builds = %v", project, target, builds)
			continue
		}
		if !strings.Contains(r.Stderr, "build "+builds[0].Id+" in project "+project+": "+target+"\n") {
			t.Errorf("the bake does not say target %s builds in %s:\n%s", target, project, tail(r.Stderr, 4000))
		}
		if !slices.Contains(s.mpBuilderPlatforms(t, project), "linux/amd64") {
			t.Errorf("project %s has no builder of its own: %v", project, s.builders(t))
		}
	}
	ls, err := d.docker(t, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}")
	if err != nil {
		t.Fatalf("docker image ls: %v %s", err, ls)
	}
	for _, img := range []string{"kiln-e2e/web:1", "kiln-e2e/worker:1"} {
		if !strings.Contains(ls, img) {
			t.Errorf("docker image ls lacks %s:\n%s", img, ls)
		}
		svc := strings.TrimSuffix(strings.TrimPrefix(img, "kiln-e2e/"), ":1")
		if got, err := d.docker(t, "run", "--rm", "--network", "none", img); err != nil || got != svc+"\n" {
			t.Errorf("docker run %s: %q %v", img, got, err)
		}
	}
}

// One failing target fails the bake, as in buildx: the other target is
// canceled, both outcomes are listed, kiln exits non-zero and the build is
// recorded as failed.
func TestBakeFailingTargetCancelsTheOthers(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	proj := s.createProject(t, "bake-fail")
	dir := writeContext(t, map[string]string{
		"Dockerfile.bad":  baseStages + "\nFROM busybox\nRUN sleep 1; echo broken; exit 3\n",
		"Dockerfile.slow": baseStages + "\nFROM busybox\nRUN sleep 120\n",
		"docker-bake.hcl": `group "default" { targets = ["bad", "slow"] }
target "bad" { dockerfile = "Dockerfile.bad" }
target "slow" { dockerfile = "Dockerfile.slow" }
`,
	})
	writeKilnJSON(t, dir, proj)
	r := s.kiln(t, dir, nil, "bake", "--progress", "plain")
	if r.Err == nil {
		t.Fatalf("a bake with a failing target succeeded:\n%s", tail(r.Stderr, 4000))
	}
	if r.Took > 60e9 {
		t.Errorf("the bake took %s: the slow target was not canceled", r.Took)
	}
	for _, want := range []string{"target bad: FAILED", "exit code: 3", "target slow: canceled", `bake failed: target "bad"`} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("output lacks %q:\n%s", want, tail(r.Stderr, 4000))
		}
	}
	builds := s.bakeBuilds(t, proj)
	if len(builds) != 1 || builds[0].Status != cliv1.BuildStatus_BUILD_STATUS_FAILED {
		t.Errorf("builds = %v", builds)
	}
}

// Mistakes in bake files are reported with where they are, before any
// build is created.
func TestBakeBadInput(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	proj, other := s.createProject(t, "bake-bad"), s.createProject(t, "bake-other")
	cases := []struct {
		name string
		file string
		args []string
		want []string
	}{
		{
			name: "syntax error",
			file: "target \"app\" {\n  dockerfile = \"Dockerfile\"\n  tags = [\n}\n",
			want: []string{"docker-bake.hcl:4", "tags = ["},
		},
		{
			name: "unknown target",
			file: bakeHCL,
			args: []string{"nope"},
			want: []string{"failed to find target nope"},
		},
		{
			name: "cyclic inherits",
			file: "target \"a\" {\n  inherits = [\"b\"]\n}\ntarget \"b\" {\n  inherits = [\"a\"]\n}\n",
			args: []string{"a"},
			want: []string{"cyclic inherits: a → b → a"},
		},
		{
			name: "cyclic contexts",
			file: "target \"a\" {\n  contexts = { x = \"target:b\" }\n}\ntarget \"b\" {\n  contexts = { y = \"target:a\" }\n}\n",
			args: []string{"a"},
			want: []string{"infinite loop from"},
		},
		{
			name: "undefined variable",
			file: "target \"app\" {\n  tags = [\"app:${NOPE}\"]\n}\n",
			want: []string{"docker-bake.hcl:2", `There is no variable named "NOPE"`},
		},
		{
			name: "target context from another project",
			file: "target \"app\" {\n  project_id = \"" + other + "\"\n}\ntarget \"worker\" {\n  contexts = { app = \"target:app\" }\n}\n",
			args: []string{"worker"},
			want: []string{"another project"},
		},
		{
			name: "unknown --set key",
			file: bakeHCL,
			args: []string{"--set", "app.nope=1"},
			want: []string{"unknown key: nope"},
		},
		{
			name: "missing Dockerfile",
			file: "target \"app\" {\n  dockerfile = \"Dockerfile.missing\"\n}\n",
			want: []string{`target "app"`, "Dockerfile.missing"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := writeContext(t, map[string]string{"Dockerfile": baseStages, "Dockerfile.worker": "FROM app\n", "docker-bake.hcl": c.file})
			writeKilnJSON(t, dir, proj)
			args := c.args
			if args == nil {
				args = []string{"app"}
			}
			r := s.kiln(t, dir, nil, append([]string{"bake"}, args...)...)
			if r.Err == nil {
				t.Fatalf("kiln bake %v succeeded:\n%s", args, r.Stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.Stderr, w) {
					t.Errorf("error lacks %q:\n%s", w, r.Stderr)
				}
			}
		})
	}
	// No bake file at all.
	r := s.kiln(t, t.TempDir(), nil, "bake", "--project", proj)
	if r.Err == nil || !strings.Contains(r.Stderr, "no bake file") {
		t.Errorf("kiln bake without a file: %v\n%s", r.Err, r.Stderr)
	}
	for _, p := range []string{proj, other} {
		if n := len(s.bakeBuilds(t, p)); n != 0 {
			t.Errorf("project %s has %d builds after bad input", p, n)
		}
	}
	if r := s.mustKiln(t, t.TempDir(), "bake", "--help"); !strings.Contains(r.Stdout, "Examples:") || !strings.Contains(r.Stdout, "one failing target fails the bake") {
		t.Errorf("kiln bake --help:\n%s", r.Stdout)
	}
}

// --save keeps each requested target in kiln's registry under its own tag
// (<build id>-<target>, <save tag>-<target>); a target built only as
// another's context is not saved.
func TestBakeSave(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	s.requireRegistry(t)
	proj := s.createProject(t, "bake-save")
	dir := writeContext(t, map[string]string{
		"Dockerfile.base": baseStages + "\nFROM busybox\nRUN echo base > /base\n",
		"Dockerfile.app":  "FROM base\nRUN cat /base > /app && echo app >> /app\n",
		"docker-bake.hcl": `group "default" { targets = ["app"] }
target "base" { dockerfile = "Dockerfile.base" }
target "app" {
  dockerfile = "Dockerfile.app"
  contexts   = { base = "target:base" }
}
`,
	})
	writeKilnJSON(t, dir, proj)
	r := s.kiln(t, dir, nil, "bake", "--save", "--save-tag", "v1", "--progress", "plain")
	if r.Err != nil {
		t.Fatalf("kiln bake --save: %v\n%s", r.Err, tail(r.Stderr, 6000))
	}
	id := s.bakeBuilds(t, proj)[0].Id
	host := s.registryHost()
	if want := "saved to kiln's registry as " + host + "/" + proj + ":" + id + "-app, " + host + "/" + proj + ":v1-app"; !strings.Contains(r.Stderr, want) {
		t.Errorf("output lacks %q:\n%s", want, tail(r.Stderr, 3000))
	}
	auth := remote.WithAuth(&authn.Basic{Username: "x-token", Password: s.Token})
	for _, tag := range []string{id + "-app", "v1-app"} {
		img, err := remote.Image(mpRef(t, host+"/"+proj+":"+tag), auth)
		if err != nil {
			t.Errorf("saved image %s: %v", tag, err)
			continue
		}
		if got := mpImageFile(t, img, "app"); got != "base\napp" {
			t.Errorf("%s /app = %q", tag, got)
		}
	}
	for _, tag := range []string{id + "-base", "v1-base", id, "v1"} {
		if _, err := remote.Head(mpRef(t, host+"/"+proj+":"+tag), auth); err == nil {
			t.Errorf("%s:%s was saved, but only app was asked for (and each target gets its own tag)", proj, tag)
		}
	}
}
