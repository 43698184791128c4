package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
)

// bxDockerfile writes a file whose content comes from a build argument, so
// a test can tell its builds apart in the resulting images.
const bxDockerfile = baseStages + `
FROM busybox AS final
ARG MESSAGE=hello
RUN echo "$MESSAGE from kiln" > /file
CMD ["cat", "/file"]
`

func (s *server) bxBuildCount(t *testing.T, project string) int {
	t.Helper()
	res, err := s.api().ListBuilds(t.Context(), bearer(&cliv1.ListBuildsRequest{ProjectId: project, PageSize: 1000}, s.Token))
	if err != nil {
		t.Fatalf("ListBuilds: %v", err)
	}
	return len(res.Msg.Builds)
}

func bxReadJSON(t *testing.T, path string) map[string]any {
	t.Helper()
	dt, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(dt, &m); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, dt)
	}
	return m
}

func bxReadFile(t *testing.T, path string) string {
	t.Helper()
	dt, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(dt))
}

// bxManifest is the part of a manifest or index the tests read.
type bxManifest struct {
	MediaType string
	Manifests []struct {
		MediaType   string
		Digest      string
		Platform    *struct{ OS, Architecture string }
		Annotations map[string]string
	}
	Layers []struct {
		MediaType   string
		Digest      string
		Annotations map[string]string
	}
}

// bxRemote fetches ref from a loopback registry: its digest and manifest.
func bxRemote(t *testing.T, ref string) (string, bxManifest) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(r)
	if err != nil {
		t.Fatalf("GET %s: %v", ref, err)
	}
	var m bxManifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		t.Fatalf("%s: %v", ref, err)
	}
	if m.MediaType == "" {
		m.MediaType = string(desc.MediaType)
	}
	return desc.Digest.String(), m
}

// attestationManifests counts an index's attestation manifests, as buildx
// attaches them: platform unknown/unknown, annotated
// vnd.docker.reference.type=attestation-manifest.
func (m bxManifest) attestationManifests() int {
	n := 0
	for _, d := range m.Manifests {
		if d.Annotations["vnd.docker.reference.type"] == "attestation-manifest" ||
			(d.Platform != nil && d.Platform.OS == "unknown") {
			n++
		}
	}
	return n
}

// A user switching from `docker buildx build --load` gets the image in
// their own Docker engine (DOCKER_HOST), tagged, and runs it.
func TestLoadIntoDocker(t *testing.T) {
	t.Parallel()
	d := startDockerd(t)
	s := startServer(t)
	proj := s.createProject(t, "load")
	dir := writeContext(t, map[string]string{"Dockerfile": bxDockerfile})
	env := []string{"DOCKER_HOST=" + d.Host}
	out := t.TempDir()
	meta, iid := filepath.Join(out, "meta.json"), filepath.Join(out, "iid")

	r := s.kiln(t, dir, env, "build", "--project", proj, "-t", "kiln-e2e/load:1", "--load", "--build-arg", "MESSAGE=loaded",
		"--progress", "plain", "--metadata-file", meta, "--iidfile", iid, ".")
	if r.Err != nil {
		t.Fatalf("kiln build --load: %v\n%s", r.Err, tail(r.Stderr, 6000))
	}
	if !strings.Contains(r.Stderr, "Loaded image: kiln-e2e/load:1") || !strings.Contains(r.Stderr, "loaded into Docker as kiln-e2e/load:1") {
		t.Errorf("the load is not reported:\n%s", tail(r.Stderr, 3000))
	}
	got, err := d.docker(t, "run", "--rm", "--network", "none", "kiln-e2e/load:1", "cat", "/file")
	if err != nil || got != "loaded from kiln\n" {
		t.Fatalf("docker run of the loaded image: %q %v", got, err)
	}
	// --iidfile holds the ID Docker gives the image (the config digest).
	id, err := d.docker(t, "image", "inspect", "--format", "{{.Id}}", "kiln-e2e/load:1")
	if err != nil || strings.TrimSpace(id) != bxReadFile(t, iid) {
		t.Errorf("docker image ID %q (%v), --iidfile %q", id, err, bxReadFile(t, iid))
	}
	m := bxReadJSON(t, meta)
	if m["containerimage.config.digest"] != bxReadFile(t, iid) || m["buildx.build.ref"] != "kiln/"+proj+"/"+s.latestBuild(t, proj) {
		t.Errorf("metadata file: %v", m)
	}
	if _, ok := m["containerimage.descriptor"].(map[string]any); !ok {
		t.Errorf("metadata file: containerimage.descriptor is not an object: %v", m["containerimage.descriptor"])
	}

	// Without -t the image is loaded untagged, as with buildx, and can be
	// run by the ID in --iidfile.
	r = s.kiln(t, dir, env, "build", "--project", proj, "--load", "--build-arg", "MESSAGE=untagged", "--iidfile", iid, ".")
	if r.Err != nil {
		t.Fatalf("untagged --load: %v\n%s", r.Err, tail(r.Stderr, 4000))
	}
	if !strings.Contains(r.Stderr, "Loaded image ID: ") {
		t.Errorf("untagged load does not print the image ID:\n%s", tail(r.Stderr, 2000))
	}
	got, err = d.docker(t, "run", "--rm", "--network", "none", bxReadFile(t, iid), "cat", "/file")
	if err != nil || got != "untagged from kiln\n" {
		t.Errorf("docker run of the untagged image: %q %v", got, err)
	}

	// --load and an OCI archive in one build (buildx allows several outputs).
	archive := filepath.Join(out, "img.tar")
	r = s.kiln(t, dir, env, "build", "--project", proj, "-t", "kiln-e2e/load:2", "--load", "-o", "type=oci,dest="+archive, "--build-arg", "MESSAGE=both", ".")
	if r.Err != nil {
		t.Fatalf("--load with -o type=oci: %v\n%s", r.Err, tail(r.Stderr, 4000))
	}
	if got, _ := d.docker(t, "run", "--rm", "--network", "none", "kiln-e2e/load:2"); got != "both from kiln\n" {
		t.Errorf("docker run (CMD) of the second image: %q", got)
	}
	if got := ociFile(t, archive, "file"); got != "both from kiln\n" {
		t.Errorf("oci archive /file = %q", got)
	}

	// An engine that is not there: a clear error, and no build was started.
	before := s.bxBuildCount(t, proj)
	r = s.kiln(t, dir, []string{"DOCKER_HOST=unix:///nonexistent/kiln-e2e/docker.sock"}, "build", "--project", proj, "--load", ".")
	if r.Err == nil || !strings.Contains(r.Stderr, "cannot reach the Docker engine at unix:///nonexistent/kiln-e2e/docker.sock") {
		t.Errorf("--load to a missing engine: %v\n%s", r.Err, r.Stderr)
	}
	if n := s.bxBuildCount(t, proj); n != before {
		t.Errorf("a build was created (%d → %d) although the Docker engine was unreachable", before, n)
	}
}

// `--push` to a registry: the builder pushes with the session's
// credentials, the pushed digest is the one reported, Docker pulls the
// same digest back, and attestations and compression are as asked.
func TestPushToRegistry(t *testing.T) {
	t.Parallel()
	reg := startRegistry(t)
	d := startDockerd(t)
	s := startServer(t)
	proj := s.createProject(t, "push")
	dir := writeContext(t, map[string]string{"Dockerfile": bxDockerfile})
	out := t.TempDir()
	meta, iid := filepath.Join(out, "meta.json"), filepath.Join(out, "iid")
	ref := reg + "/kiln-e2e/app:1"

	r := s.kiln(t, dir, nil, "build", "--project", proj, "-t", ref, "--push", "--build-arg", "MESSAGE=pushed",
		"--progress", "plain", "--metadata-file", meta, "--iidfile", iid, ".")
	if r.Err != nil {
		t.Fatalf("kiln build --push: %v\n%s", r.Err, tail(r.Stderr, 6000))
	}
	if !strings.Contains(r.Stderr, "pushing") {
		t.Errorf("no push progress:\n%s", tail(r.Stderr, 3000))
	}
	digest, m := bxRemote(t, ref)
	md := bxReadJSON(t, meta)
	if md["containerimage.digest"] != digest || md["image.name"] != ref || md["buildx.build.ref"] != "kiln/"+proj+"/"+s.latestBuild(t, proj) {
		t.Errorf("metadata %v; registry digest %s", md, digest)
	}
	if desc, _ := md["containerimage.descriptor"].(map[string]any); desc == nil || desc["digest"] != digest {
		t.Errorf("containerimage.descriptor %v, want digest %s", md["containerimage.descriptor"], digest)
	}
	if !strings.Contains(r.Stderr, "pushed "+ref+" ("+digest+")") {
		t.Errorf("the last line does not say what was pushed:\n%s", tail(r.Stderr, 1000))
	}
	// buildx's default: min provenance, attached as an attestation manifest.
	if n := m.attestationManifests(); !strings.Contains(m.MediaType, "index") || n != 1 {
		t.Errorf("default push: %s with %d attestation manifests, want an index with 1:\n%+v", m.MediaType, n, m)
	}
	// The result is an index (image + attestation): --iidfile names it.
	if got := bxReadFile(t, iid); got != digest {
		t.Errorf("--iidfile %q, want the index digest %s", got, digest)
	}

	// Docker pulls the same digest back and runs it (127.0.0.0/8 is an
	// insecure registry for dockerd by default).
	if o, err := d.docker(t, "pull", ref); err != nil {
		t.Fatalf("docker pull %s: %v\n%s", ref, err, o)
	}
	rd, err := d.docker(t, "image", "inspect", "--format", "{{json .RepoDigests}}", ref)
	if err != nil || !strings.Contains(rd, "@"+digest) {
		t.Errorf("pulled RepoDigests %s (%v), want @%s", rd, err, digest)
	}
	if got, err := d.docker(t, "run", "--rm", "--network", "none", ref, "cat", "/file"); err != nil || got != "pushed from kiln\n" {
		t.Errorf("docker run of the pulled image: %q %v", got, err)
	}

	// --provenance=false: no attestation manifests at all.
	noProv := reg + "/kiln-e2e/app:noprov"
	s.mustKiln(t, dir, "build", "--project", proj, "-t", noProv, "--push", "--provenance=false", ".")
	if _, m := bxRemote(t, noProv); m.attestationManifests() != 0 || len(m.Layers) == 0 {
		t.Errorf("--provenance=false pushed %s with %d attestation manifests, %d layers", m.MediaType, m.attestationManifests(), len(m.Layers))
	}
	// --provenance=mode=max through -o type=registry (and registry.insecure
	// for the plain-HTTP loopback registry).
	maxProv := reg + "/kiln-e2e/app:max"
	s.mustKiln(t, dir, "build", "--project", proj, "-o", "type=registry,name="+maxProv+",registry.insecure=true", "--provenance=mode=max", ".")
	if _, m := bxRemote(t, maxProv); m.attestationManifests() != 1 {
		t.Errorf("--provenance=mode=max: %d attestation manifests", m.attestationManifests())
	}

	// Compression: the pushed layers carry the requested media types.
	for _, tc := range []struct{ comp, mediaType, annotation string }{
		{"zstd", "application/vnd.oci.image.layer.v1.tar+zstd", ""},
		{"estargz", "application/vnd.oci.image.layer.v1.tar+gzip", "containerd.io/snapshot/stargz/toc.digest"},
		{"gzip", "application/vnd.oci.image.layer.v1.tar+gzip", ""},
	} {
		cref := reg + "/kiln-e2e/app:" + tc.comp
		s.mustKiln(t, dir, "build", "--project", proj, "--provenance=false", "-o",
			"type=image,name="+cref+",push=true,compression="+tc.comp+",compression-level=3,force-compression=true,oci-mediatypes=true", ".")
		_, m := bxRemote(t, cref)
		if m.MediaType != "application/vnd.oci.image.manifest.v1+json" || len(m.Layers) == 0 {
			t.Errorf("%s: manifest %s with %d layers", tc.comp, m.MediaType, len(m.Layers))
		}
		for _, l := range m.Layers {
			if l.MediaType != tc.mediaType {
				t.Errorf("%s: layer %s has media type %s, want %s", tc.comp, l.Digest, l.MediaType, tc.mediaType)
			}
			if tc.annotation != "" && l.Annotations[tc.annotation] == "" {
				t.Errorf("%s: layer %s lacks the %s annotation: %v", tc.comp, l.Digest, tc.annotation, l.Annotations)
			}
		}
	}
}

// --cache-to/--cache-from type=registry carry one project's cache to
// another builder; CI cache backends are accepted with a warning.
func TestRegistryCacheRoundTrip(t *testing.T) {
	t.Parallel()
	reg := startRegistry(t)
	s := startServer(t)
	a, b := s.createProject(t, "cache-to"), s.createProject(t, "cache-from")
	dir := writeContext(t, map[string]string{"Dockerfile": bxDockerfile + "RUN echo second > /second\n"})
	cacheRef := reg + "/kiln-e2e/cache:buildcache"

	first := s.mustKiln(t, dir, "build", "--project", a, "--progress", "rawjson",
		"--cache-to", "type=registry,ref="+cacheRef+",mode=max", "--cache-to", "type=gha,scope=main", ".")
	if n := cachedCount(dockerfileSteps(t, first.Stdout+first.Stderr)); n != 0 {
		t.Errorf("first build of a new project: %d cached steps", n)
	}
	if !strings.Contains(first.Stderr, "kiln: warning: --cache-to type=gha,scope=main: ignored: the project's builder cache is persistent") {
		t.Errorf("no warning for type=gha:\n%s", tail(first.Stderr, 2000))
	}
	if _, m := bxRemote(t, cacheRef); len(m.Layers) == 0 && len(m.Manifests) == 0 {
		t.Errorf("the cache export pushed nothing: %+v", m)
	}

	// Project b has its own, empty builder: every step comes from the
	// registry cache.
	second := s.mustKiln(t, dir, "build", "--project", b, "--progress", "rawjson",
		"--cache-from", "type=registry,ref="+cacheRef, "--cache-from", "type=local,src=/nonexistent", ".")
	steps := dockerfileSteps(t, second.Stdout+second.Stderr)
	for name, v := range steps {
		if !v.Cached {
			t.Errorf("project b with --cache-from: step %q not CACHED", name)
		}
	}
	if !strings.Contains(second.Stderr, "--cache-from type=local,src=/nonexistent: ignored") {
		t.Errorf("no warning for type=local:\n%s", tail(second.Stderr, 2000))
	}
}

// The Dockerfile frontend's checks: --call=check prints them like buildx
// and exits 1; --lint prints them before building and fails on errors.
func TestLintAndCall(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	proj := s.createProject(t, "lint")
	badDockerfile := baseStages + "\nFROM busybox as final\nRUN echo hi > /x\n"
	bad := writeContext(t, map[string]string{"Dockerfile": badDockerfile})
	clean := writeContext(t, map[string]string{"Dockerfile": baseStages + "\nFROM busybox AS final\nRUN echo hi > /x\n"})
	strict := writeContext(t, map[string]string{"Dockerfile": "# check=error=true\n" + badDockerfile})
	line := 0
	for i, l := range strings.Split(badDockerfile, "\n") {
		if strings.HasPrefix(l, "FROM busybox as") {
			line = i + 1
		}
	}
	where := fmt.Sprintf("Dockerfile:%d", line)

	t.Run("call check", func(t *testing.T) {
		r := s.kiln(t, bad, nil, "build", "--project", proj, "--call=check", ".")
		if r.Err == nil {
			t.Error("--call=check with a violation exited 0")
		}
		for _, want := range []string{"Check complete, 1 warning has been found!", "FromAsCasing", where, ">>> FROM busybox as final"} {
			if !strings.Contains(r.Stdout, want) {
				t.Errorf("--call=check stdout lacks %q:\n%s\nstderr:\n%s", want, r.Stdout, tail(r.Stderr, 2000))
			}
		}
		r = s.mustKiln(t, clean, "build", "--project", proj, "--check", ".")
		if !strings.Contains(r.Stdout, "Check complete, no warnings found.") {
			t.Errorf("--check of a clean Dockerfile:\n%s", r.Stdout)
		}
		r = s.kiln(t, bad, nil, "build", "--project", proj, "--call=check,format=json,ignorestatus=true", ".")
		var res struct {
			Warnings []struct {
				RuleName string
				Location struct {
					Ranges []struct{ Start struct{ Line int } }
				}
			}
		}
		if r.Err != nil || json.Unmarshal([]byte(r.Stdout), &res) != nil || len(res.Warnings) != 1 ||
			res.Warnings[0].RuleName != "FromAsCasing" || res.Warnings[0].Location.Ranges[0].Start.Line != line {
			t.Errorf("format=json,ignorestatus=true: %v %+v\n%s", r.Err, res, r.Stdout)
		}
	})
	t.Run("call targets and outline", func(t *testing.T) {
		r := s.mustKiln(t, clean, "build", "--project", proj, "--call=targets", ".")
		if !strings.Contains(r.Stdout, "busybox") || !strings.Contains(r.Stdout, "final") {
			t.Errorf("--call=targets:\n%s", r.Stdout)
		}
		r = s.mustKiln(t, bad, "build", "--project", proj, "--call=outline,format=json", ".")
		if !json.Valid([]byte(strings.TrimSpace(r.Stdout))) {
			t.Errorf("--call=outline,format=json is not JSON:\n%s", r.Stdout)
		}
	})
	t.Run("lint", func(t *testing.T) {
		// Warnings are printed with their line; they do not stop the build.
		r := s.mustKiln(t, bad, "build", "--project", proj, "--lint", "--progress", "plain", ".")
		for _, want := range []string{"--lint: 1 violation in Dockerfile", "FromAsCasing", where} {
			if !strings.Contains(r.Stderr, want) {
				t.Errorf("--lint stderr lacks %q:\n%s", want, tail(r.Stderr, 3000))
			}
		}
		if !strings.Contains(r.Stderr, "[final 1/1] RUN echo hi > /x") {
			t.Errorf("--lint with warnings did not build:\n%s", tail(r.Stderr, 2000))
		}
		// A clean Dockerfile prints nothing from the linter.
		r = s.mustKiln(t, clean, "build", "--project", proj, "--lint", "--progress", "plain", ".")
		if strings.Contains(r.Stderr, "--lint") || strings.Contains(r.Stderr, "WARNING") {
			t.Errorf("--lint of a clean Dockerfile printed:\n%s", tail(r.Stderr, 2000))
		}
		// Errors stop the build: warnings promoted by --lint-fail-on=warn
		// or by the Dockerfile's own check=error=true.
		for _, c := range []struct {
			dir  string
			args []string
		}{{bad, []string{"--lint-fail-on=warn"}}, {strict, nil}} {
			before := s.bxBuildCount(t, proj)
			r = s.kiln(t, c.dir, nil, append([]string{"build", "--project", proj, "--lint", "--progress", "plain"}, append(c.args, ".")...)...)
			if r.Err == nil || !strings.Contains(r.Stderr, "1 lint error") || !strings.Contains(r.Stderr, "FromAsCasing") {
				t.Errorf("--lint %v: err %v\n%s", c.args, r.Err, tail(r.Stderr, 3000))
			}
			if strings.Contains(r.Stderr, "[final 1/1] RUN echo hi > /x") {
				t.Errorf("--lint %v ran the build after a lint error", c.args)
			}
			if n := s.bxBuildCount(t, proj); n != before+1 || s.buildStatusByIndex(t, proj, 0) != cliv1.BuildStatus_BUILD_STATUS_FAILED {
				t.Errorf("the refused build is not recorded as failed (%d → %d builds)", before, n)
			}
		}
	})
}

// Malformed buildx flags are refused before a build exists; the server
// keeps serving.
func TestBuildxFlagsBadInput(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	proj := s.createProject(t, "bx-bad")
	dir := writeContext(t, map[string]string{"Dockerfile": bxDockerfile})
	out := t.TempDir()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"-o", "type=image,name=r.example/x,push=true,compression=lz4"}, `unknown compression "lz4"`},
		{[]string{"-o", "type=image,name=r.example/x,compression=gzip,compression-level=99"}, "out of range"},
		{[]string{"-o", "type=bogus"}, `unknown output type "bogus"`},
		{[]string{"-o", "type=registry"}, "a tag is needed when pushing"},
		{[]string{"--push"}, "a tag is needed when pushing"},
		{[]string{"-t", "x", "--push", "-o", "type=image,oci-mediatypes=perhaps"}, `oci-mediatypes="perhaps"`},
		{[]string{"--provenance", "everything"}, `--provenance "everything"`},
		{[]string{"--provenance", "mode=maximal"}, `unknown provenance mode "maximal"`},
		{[]string{"--attest", "type=vex"}, `unknown attestation type "vex"`},
		{[]string{"--cache-to", "type=registry,mode=max"}, "type=registry needs ref="},
		{[]string{"--cache-to", "type=redis,ref=x"}, `unknown cache type "redis"`},
		{[]string{"--cache-from", "type=registry,ref=Not A Ref"}, `--cache-from "type=registry,ref=Not A Ref"`},
		{[]string{"--call", "explain"}, `unknown method "explain"`},
		{[]string{"--lint", "--lint-fail-on", "sometimes"}, `--lint-fail-on "sometimes"`},
		{[]string{"--iidfile", filepath.Join(out, "iid"), "-o", "type=local,dest=" + out}, "--iidfile: the build has no image output"},
	}
	before := s.bxBuildCount(t, proj)
	for _, c := range cases {
		r := s.kiln(t, dir, nil, append(append([]string{"build", "--project", proj}, c.args...), ".")...)
		if r.Err == nil || !strings.Contains(r.Stderr, c.want) {
			t.Errorf("kiln build %v: err %v, stderr lacks %q:\n%s", c.args, r.Err, c.want, r.Stderr)
		}
		if strings.Contains(r.Stderr, "panic") || strings.Contains(r.Stderr, "internal error") {
			t.Errorf("kiln build %v: internal failure:\n%s", c.args, r.Stderr)
		}
	}
	if n := s.bxBuildCount(t, proj); n != before {
		t.Errorf("malformed flags created %d builds", n-before)
	}
	s.mustKiln(t, dir, "build", "--project", proj, "--progress", "plain", ".")
}

// kiln serve --insecure-registry reaches the builders' configuration (the
// way kiln's own registry is reached over plain HTTP), and a value that is
// not a host[:port] stops the server at start.
func TestInsecureRegistryFlag(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--insecure-registry", "registry.kiln.test:5000", "--insecure-registry", "kiln-registry")
	proj := s.createProject(t, "insecure-reg")
	dir := writeContext(t, map[string]string{"Dockerfile": bxDockerfile})
	s.mustKiln(t, dir, "build", "--project", proj, ".")
	confs, _ := filepath.Glob(filepath.Join(s.Data, "builders", "*", "*", "buildkitd.toml"))
	if len(confs) != 1 {
		t.Fatalf("builder configs: %v", confs)
	}
	conf := bxReadFile(t, confs[0])
	for _, want := range []string{"[registry.\"registry.kiln.test:5000\"]\n  http = true", "[registry.\"kiln-registry\"]\n  http = true"} {
		if !strings.Contains(conf, want) {
			t.Errorf("buildkitd.toml lacks %q:\n%s", want, conf)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, kilnBin, "serve", "--data", t.TempDir(), "--addr", freeAddr(t), "--buildkitd", buildkitd,
		"--insecure-registry", "evil\"]\ninsecure-entitlements = [\"security.insecure\"]\n[x")
	o, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(o), "insecure registry") {
		t.Errorf("kiln serve with a hostile --insecure-registry: %v\n%s", err, o)
	}
}
